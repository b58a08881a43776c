"""Serve any judge behind the OpenAI-compatible protocol that `OpenAIJudge` speaks.

Why: training and evaluation talk to one judge protocol whatever the backend. At
scale that is vLLM/SGLang serving a large VLM; for the embedded default (and for
tests) this server puts the exact checker - or any other `Judge` - behind the
same API, so the client path, retries and failure handling are exercised for
real.

Endpoints:

* `POST /v1/chat/completions` - the request `OpenAIJudge` sends: one user message
  holding a `data:` image URL and the text `QUESTION` with the prompt filled in.
  The answer's `message.content` is "yes" or "no" (the likelier), and
  `logprobs.content[0].top_logprobs` lists {"token": "yes", "logprob": log P(yes)}
  and {"token": "no", "logprob": log P(no)}. A probability of exactly 0 (the exact
  judge is certain) has no finite log-prob, so that entry is left out; clients
  read a missing yes/no as probability 0 (see openai_judge.py).
  A malformed request (no image, a remote image URL, a question not in QUESTION's
  wording, an unknown model) is a 4xx saying what is wrong; a `JudgeFailure` is a
  500 carrying its message - never a made-up answer.
* `GET /v1/models` - the one model served; `GET /health` - liveness.

Limits. A request is untrusted input, and a small one can cost a lot: a 236 KB PNG
declaring 9000x9000 decodes into gigabytes. So the body is read in chunks up to
`max_body_bytes` (a larger declared Content-Length, or a chunked body that grows
past it, is a 413 before anything is parsed), and the image's size is read from
its header and checked against `max_image_pixels` before any pixel is decoded (a
400). Both are 4xx: a client must not retry them (OpenAIJudge does not). The
defaults fit real judge inputs with room to spare - generated images are 384-1024
px a side, a few hundred KB as PNG:

* `DEFAULT_MAX_BODY_BYTES` = 8 MiB: a 1024x1024 PNG of pure noise (~3 MiB, ~4 MiB
  as base64) still fits;
* `DEFAULT_MAX_IMAGE_PIXELS` = 4096 x 4096 (16.8 MP, ~50 MB as RGB). Whatever the
  setting, Pillow itself refuses more than 2 x Image.MAX_IMAGE_PIXELS (~179 MP) as
  it reads the header; that is a 400 too.

`focusdiff judge serve --max-body-bytes N --max-image-pixels N` changes them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from focusdiff.errors import ConfigError
from focusdiff.judge.base import QUESTION, Judge, JudgeFailure, Verdict

_BEFORE, _AFTER = QUESTION.split("{prompt}")
_QUESTION_RE = re.compile(re.escape(_BEFORE) + r"(?P<prompt>.*)" + re.escape(_AFTER), re.DOTALL)
_DATA_URL_RE = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.DOTALL)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # see the module docstring
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


def _exact(model: str | None, answer_tokens: str) -> Judge:
    from focusdiff.judge.exact import ExactJudge

    return ExactJudge()  # the exact checker has no weights: `model` is ignored


def _hf(model: str | None, answer_tokens: str) -> Judge:
    if not model:
        raise ConfigError("the hf backend needs --model PATH: a transformers image-text-to-text checkpoint (or hub id)")
    from focusdiff.judge.hf_judge import HFJudge

    return HFJudge(model, answer_tokens=answer_tokens)


def _shapes(model: str | None, answer_tokens: str) -> Judge:
    from focusdiff.judge.configs import ShapesJudgeConfig
    from focusdiff.judge.shapes_judge import ShapesJudge

    return ShapesJudge(model or ShapesJudgeConfig.model_fields["out"].default)  # the judge stage's output


# Backends `focusdiff judge serve --backend` can start: name -> factory(model path or None,
# answer_tokens: which token entries count as yes/no, for the backends that read token probabilities).
BACKENDS: dict[str, Callable[[str | None, str], Judge]] = {"exact": _exact, "shapes": _shapes, "hf": _hf}


def make_backend(name: str, model: str | None = None, answer_tokens: str = "variants") -> Judge:
    """The judge `name`; `model` is the checkpoint for backends that load one (shapes, hf);
    `answer_tokens` (variants | official) matters to those that read yes/no tokens (hf)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown judge backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](model, answer_tokens)


# --------------------------------------------------------------------------- #
# Request parsing: every problem is a 400 that says what is wrong
# --------------------------------------------------------------------------- #


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def _user_content(body: Any) -> list[dict[str, Any]]:
    """The content parts of the last user message."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise _bad_request("'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise _bad_request("no user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        raise _bad_request("the user message has no image: send content parts with an image_url (a data: URL)")
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise _bad_request("the user message's content must be a list of content parts")
    return content


def _image(parts: list[dict[str, Any]], max_pixels: int) -> Image.Image:
    urls = [p.get("image_url") for p in parts if p.get("type") == "image_url"]
    if len(urls) != 1:
        raise _bad_request(f"expected exactly one image_url part, got {len(urls)}")
    url = urls[0].get("url") if isinstance(urls[0], dict) else urls[0]
    match = _DATA_URL_RE.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        # Fetching remote URLs would let a request make this server call anywhere.
        raise _bad_request("the image must be a base64 data URL (data:image/<type>;base64,...)")
    try:
        # Image.open reads the header only; nothing is decoded before the size check below.
        image = Image.open(io.BytesIO(base64.b64decode(match["data"], validate=True)))
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, met while reading the header
        raise _bad_request(f"the image is too large to decode ({exc}); this server accepts at most "
                           f"{max_pixels:,} pixels (--max-image-pixels)") from None
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise _bad_request(f"the image data URL does not decode to an image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _bad_request(f"the image declares {width}x{height} = {width * height:,} pixels; this server accepts "
                           f"at most {max_pixels:,} (--max-image-pixels)")
    try:
        image.load()
    except (ValueError, OSError) as exc:
        raise _bad_request(f"the image data URL does not decode to an image: {exc}") from None
    return image.convert("RGB")


async def _body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read in chunks and never past `max_bytes` (413 beyond it).

    A declared Content-Length over the limit is refused before a byte is read; a body
    without one (chunked) is refused as soon as it grows past the limit. Uvicorn drains
    and discards what the client still sends, so the client reads the 413 rather than
    a reset connection.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"{int(declared):,} bytes", max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(f"more than {max_bytes:,} bytes", max_bytes)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:  # not JSON, or not UTF-8
        raise _bad_request("the request body is not JSON") from None


def _too_large(size: str, max_bytes: int) -> HTTPException:
    return HTTPException(413, f"the request body is {size}; this server accepts at most {max_bytes:,} (--max-body-bytes)")


def _prompt(parts: list[dict[str, Any]]) -> str:
    text = "".join(p.get("text", "") for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str))
    match = _QUESTION_RE.fullmatch(text.strip())
    if match is None:
        raise _bad_request(f"the question must read {QUESTION!r} with the prompt filled in; got {text[:200]!r}")
    return match["prompt"]


# --------------------------------------------------------------------------- #
# Response: the verdict as first-token log-probs
# --------------------------------------------------------------------------- #


def _logprob_entry(token: str, p: float) -> dict[str, Any]:
    return {"token": token, "logprob": math.log(p), "bytes": list(token.encode())}


def completion_body(verdict: Verdict, model: str, logprobs: bool, top_logprobs: int) -> dict[str, Any]:
    answer = "yes" if verdict.p_yes >= verdict.p_no else "no"
    # p = 0 has no finite log-prob: leave it out (clients read a missing yes/no as 0).
    top = [_logprob_entry(t, p) for t, p in (("yes", verdict.p_yes), ("no", verdict.p_no)) if p > 0]
    top.sort(key=lambda e: -e["logprob"])
    chosen = next(e for e in top if e["token"] == answer)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "logprobs": {"content": [{**chosen, "top_logprobs": top[: max(top_logprobs, 0)]}]} if logprobs else None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
    }


def create_app(
    judge: Judge,
    model_name: str,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> FastAPI:
    """The judge server's app; requests over `max_body_bytes` or images over `max_image_pixels` are refused."""
    for name, value in (("max_body_bytes", max_body_bytes), ("max_image_pixels", max_image_pixels)):
        if value < 1:
            raise ConfigError(f"the judge server's {name} must be >= 1, got {value}")
    app = FastAPI(title=f"focusdiff judge ({judge.name})", docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)  # ours, and starlette's own (404, 405)
    async def openai_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # OpenAI's error shape, so any OpenAI client shows the message.
        return JSONResponse(
            status_code=exc.status_code,
            content={
                "error": {
                    "message": exc.detail,
                    "type": "server_error" if exc.status_code >= 500 else "invalid_request_error",
                    "code": exc.status_code,
                }
            },
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "judge": judge.name, "model": model_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "focusdiff"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await _body(request, max_body_bytes)
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        if body.get("model") not in (None, model_name):
            raise HTTPException(404, f"model {body['model']!r} is not served here; this server serves {model_name!r}")
        parts = _user_content(body)
        image, prompt = _image(parts, max_image_pixels), _prompt(parts)
        try:
            [verdict] = await judge.ajudge([image], [prompt])
        except JudgeFailure as exc:
            raise HTTPException(500, str(exc)) from None
        top_logprobs = body.get("top_logprobs")
        return completion_body(
            verdict, model_name, bool(body.get("logprobs")), top_logprobs if isinstance(top_logprobs, int) else 2
        )

    return app


def serve(
    judge: Judge,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> None:
    """Run the judge server in the foreground (loopback unless told otherwise)."""
    import uvicorn

    app = create_app(judge, model_name or f"focusdiff-{judge.name}",
                     max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels)
    uvicorn.run(app, host=host, port=port, log_level="info")
