"""ASGI apps for the judge-client tests, run as real uvicorn subprocesses.

* `faults` - one app, one fault per path prefix, so a single server process
  covers every failure mode (`base_url = http://127.0.0.1:PORT/<fault>/v1`):

  - `500`         HTTP 500 with a fixed body, every time;
  - `malformed`   HTTP 200 whose body is not JSON;
  - `nologprobs`  a well-formed completion without log-probs;
  - `noyesno`     log-probs whose top tokens hold neither yes nor no;
  - `auth`        yes (P=0.8) when an `Authorization: Bearer ...` header arrived,
                  HTTP 401 "no Authorization header arrived" otherwise; it
                  never echoes the header's value;
  - `leak`        a hostile 500 that echoes the Authorization header back, to
                  prove the client redacts the key from its error messages.

  `GET /stats` returns how many requests each fault path received, so tests can
  tell "retried to the budget" from "failed at once".
* `slow_exact` - the real judge server app (`create_app`) around the exact judge,
  slowed to 0.2 s per item so a test can kill the server mid-batch.

Run e.g.: `python -m uvicorn tests.fake_judge_servers:faults --host 127.0.0.1 --port P`.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from focusdiff.judge.base import Judge
from focusdiff.judge.exact import ExactJudge
from focusdiff.judge.server import create_app

FAULT_500_BODY = "injected fault: the judge backend is down"

faults = FastAPI()
_hits: Counter[str] = Counter()


def _completion(top_logprobs: list[dict] | None) -> dict:
    logprobs = None if top_logprobs is None else {"content": [{**top_logprobs[0], "top_logprobs": top_logprobs}]}
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": logprobs}],
    }


@faults.get("/stats")
async def stats() -> dict[str, int]:
    return dict(_hits)


@faults.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@faults.post("/{fault}/v1/chat/completions")
async def chat(fault: str, request: Request):
    _hits[fault] += 1
    auth = request.headers.get("authorization", "")
    if fault == "500":
        return PlainTextResponse(FAULT_500_BODY, status_code=500)
    if fault == "malformed":
        return PlainTextResponse('{"choices": [{"index": 0, "logprobs": ', media_type="application/json")
    if fault == "nologprobs":
        return _completion(None)
    if fault == "noyesno":
        return _completion([{"token": "Maybe", "logprob": -0.1}, {"token": " The", "logprob": -2.5}])
    if fault == "auth":
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return JSONResponse({"error": {"message": "no Authorization header arrived"}}, status_code=401)
        return _completion([{"token": "Yes", "logprob": -0.2231435513142097}])  # log 0.8
    if fault == "leak":
        return PlainTextResponse(f"upstream rejected the request with Authorization: {auth}", status_code=500)
    return JSONResponse({"error": {"message": f"unknown fault {fault!r}"}}, status_code=404)


class SlowJudge(Judge):
    """Another judge, `delay` seconds slower per item."""

    def __init__(self, inner: Judge, delay: float):
        super().__init__(inner.max_concurrency)
        self.inner, self.delay, self.name = inner, delay, inner.name

    async def _judge_one(self, image, prompt):
        await asyncio.sleep(self.delay)
        return await self.inner._judge_one(image, prompt)


slow_exact = create_app(SlowJudge(ExactJudge(), delay=0.2), "focusdiff-exact")
