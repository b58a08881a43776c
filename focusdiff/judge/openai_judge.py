"""A judge behind an OpenAI-compatible chat-completions server (vLLM, SGLang, our own).

At scale the judge is a large VLM (InternVL2.5-26B) served by vLLM or SGLang; this
client asks it QUESTION about each image and reads P(yes) and P(no) off the
log-probs of the *first answer token*, so the score is a probability rather than
a sampled word. One request per item: `max_tokens=1`, `temperature=0`,
`logprobs=true`, `top_logprobs=20`.

Reading the answer:

* Tokens are normalized before matching: leading/trailing whitespace and the
  word-start markers of BPE ("Ġ") and SentencePiece ("▁") tokenizers are
  stripped, and case is ignored, so " yes", "Yes", "ĠYES" and "▁yes" all count
  as yes. P(yes) is the sum of exp(logprob) over every yes-variant among the top
  log-probs; P(no) likewise.
* `answer_tokens="official"` counts only the tokens whose text is exactly yes/Yes/YES or
  no/No/NO, as PairComp's official script sums its vocabulary entries (no leading-space or
  word-start variants); the default `"variants"` counts every normalized form.
* Only one of yes/no among the top log-probs: the other's probability is below
  the k-th most likely token's, and is taken as 0. Our own server (server.py)
  relies on this rule: a probability of exactly 0 has no finite log-prob, so it
  leaves that entry out.
* Neither among them: an error naming the tokens that did come back (the judge
  answered something else; that is not a "no").
* No log-probs at all: an error telling how to serve with log-probs enabled.

Failures. Connection errors, dropped connections, timeouts, HTTP 429 and 5xx and
bodies that are not JSON are transient on a busy inference server: they are
retried with exponential backoff and full jitter (sleep ~ U(0, min(cap, base*2^n)),
so many clients do not retry in lockstep). Any other 4xx is a mistake in the
request and fails at once. When the retry budget is spent the last problem is
raised, with the number of attempts; the base class turns that into an
`ItemFailure` - never a score.

The API key is read from the environment variable `api_key_env` at request time
(so a rotated key is picked up) and sent as a Bearer token. It is never logged,
and it is redacted from any server text quoted in an error. Credentials inside
`base_url` (`http://user:secret@host/v1`) are used as given (httpx sends the
userinfo as Basic auth) but never shown: every message names the URL through
`redact_urls`, and server text is cleared of the password and of the Basic
credentials built from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import json
import logging
import math
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import httpx

from focusdiff.errors import FocusdiffError
from focusdiff.judge.base import QUESTION, ImageLike, Judge, Verdict, to_rgb
from focusdiff.redact import redact_urls

_YES, _NO = "yes", "no"
# The vocabulary entries PairComp's official script sums (../shared/specs/benchmarks.md).
OFFICIAL_ANSWERS = {"yes": _YES, "Yes": _YES, "YES": _YES, "no": _NO, "No": _NO, "NO": _NO}
AnswerTokens = Literal["variants", "official"]
_WORD_START_MARKERS = "Ġ▁"  # BPE (GPT-2 style) and SentencePiece word-start markers
_EXCERPT_CHARS = 500
log = logging.getLogger(__name__)

# The HTTP client of the `ajudge` call in progress. A context variable rather than
# an attribute: the tasks of one call share it, while concurrent calls on the same
# judge (e.g. `judge()` from two threads) each keep their own.
_client: contextvars.ContextVar[httpx.AsyncClient] = contextvars.ContextVar("openai_judge_client")


class JudgeServerError(FocusdiffError):
    """The judge server failed, or answered in a way that yields no verdict."""


class _Transient(Exception):
    """A failure worth retrying: `what` happened (e.g. "HTTP 503"), `detail` says more."""

    def __init__(self, what: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{what}: {detail}")
        self.what, self.detail, self.retry_after = what, detail, retry_after


class OpenAIJudge(Judge):
    """P(yes)/(P(yes)+P(no)) from an OpenAI-compatible `/chat/completions` endpoint.

    `max_retries` counts retries after the first attempt (so at most
    `1 + max_retries` requests per item).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        top_logprobs: int = 20,
        answer_tokens: AnswerTokens = "variants",
    ):
        self.answer_tokens = answer_tokens
        super().__init__(max_concurrency)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {redact_urls(base_url)!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_base < 0 or backoff_cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, got {backoff_base} and {backoff_cap}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.top_logprobs = top_logprobs

    @property
    def url(self) -> str:
        """Where requests go, credentials included: never put it in a message (see `shown_url`)."""
        return f"{self.base_url}/chat/completions"

    @property
    def shown_url(self) -> str:
        """`url` fit for messages and logs: its credentials masked."""
        return redact_urls(self.url)

    # -- one shared connection pool per batch -------------------------------- #

    async def ajudge(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Verdict]:
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            token = _client.set(client)
            try:
                return await super().ajudge(images, prompts)
            finally:
                _client.reset(token)

    async def _judge_one(self, image: ImageLike, prompt: str) -> Verdict:
        body = request_body(self.model, image, prompt, self.top_logprobs, self.template)
        return parse_verdict(await self._post_with_retries(body), self.answer_tokens)

    # -- transport and retries ------------------------------------------------ #

    async def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._post_once(body)
            except _Transient as exc:
                if attempt + 1 == attempts:
                    raise JudgeServerError(f"{exc.what} after {attempts} attempts ({self.shown_url}): {exc.detail}") from None
                delay = self._backoff(attempt, exc.retry_after)
                log.warning("judge request failed (%s); retry %d/%d in %.2f s", exc, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request: the parsed JSON body, `_Transient` to retry, or JudgeServerError."""
        try:
            resp = await _client.get().post(self.url, json=body, headers=self._headers())
        except httpx.TimeoutException as exc:
            raise _Transient("timeout", f"no answer within {self.timeout} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # refused, reset, dropped mid-response
            raise _Transient(type(exc).__name__, self._excerpt(str(exc)) or "connection failed") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Transient(f"HTTP {resp.status_code}", self._excerpt(_server_message(resp)), _retry_after_seconds(resp))
        if resp.status_code >= 400:
            raise JudgeServerError(f"HTTP {resp.status_code} from {self.shown_url}: {self._excerpt(_server_message(resp))}")
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Transient("malformed JSON", repr(self._excerpt(resp.text))) from None

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _secrets(self) -> list[str]:
        """What a server may echo back that must not be shown: the API key, the base URL's
        password, and the Basic credentials httpx sends from the URL's userinfo."""
        secrets = [os.environ.get(self.api_key_env) or ""]
        url = httpx.URL(self.base_url)
        if url.username or url.password:
            secrets.append(url.password)
            secrets.append(base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii"))
        return [s for s in secrets if s]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        if retry_after is not None:  # a 429/503 that says when to come back
            delay = max(delay, min(retry_after, self.backoff_cap))
        return delay

    def _excerpt(self, text: str) -> str:
        """Server text fit for an error message: shortened, the API key and URL credentials redacted."""
        for secret in self._secrets():
            text = text.replace(secret, "<redacted>")
        text = " ".join(redact_urls(text).split())
        return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _server_message(resp: httpx.Response) -> str:
    """The message of an error response: OpenAI/vLLM's error.message, FastAPI's detail, else the raw body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return resp.text


def _retry_after_seconds(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff


# --------------------------------------------------------------------------- #
# Request and response (pure functions, shared with the server's tests)
# --------------------------------------------------------------------------- #


def image_data_url(image: ImageLike) -> str:
    """A PNG data URL (lossless: the judge must see exactly the generated pixels)."""
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_body(model: str, image: ImageLike, prompt: str, top_logprobs: int = 20, template: str = QUESTION) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": template.format(prompt=prompt)},
                ],
            }
        ],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": top_logprobs,
    }


def normalize_token(token: str) -> str:
    return token.strip().lstrip(_WORD_START_MARKERS).strip().lower()


def answer_word(token: str, answer_tokens: AnswerTokens = "variants") -> str:
    """"yes", "no" or another word: what `token` (a token's decoded text) answers, counting
    every normalized variant, or with `official` only the exact entries yes/Yes/YES, no/No/NO."""
    if answer_tokens == "official":
        return OFFICIAL_ANSWERS.get(token, "")
    return normalize_token(token)


def parse_verdict(body: Any, answer_tokens: AnswerTokens = "variants") -> Verdict:
    """P(yes), P(no) from the first answer token's top log-probs (see module docstring)."""
    candidates = list(_first_token_logprobs(body))
    p_yes = p_no = 0.0
    for token, logprob in candidates:
        word = answer_word(token, answer_tokens)
        if word == _YES:
            p_yes += math.exp(logprob)
        elif word == _NO:
            p_no += math.exp(logprob)
    if p_yes == 0.0 and p_no == 0.0:
        shown = ", ".join(f"{t!r}" for t, _ in candidates[:20]) or "none"
        raise JudgeServerError(f"neither yes nor no among the top log-probs of the first answer token; got {shown}")
    # Summed exponentials of log-softmax values may exceed 1 by rounding.
    return Verdict(p_yes=min(p_yes, 1.0), p_no=min(p_no, 1.0))


def _first_token_logprobs(body: Any) -> Iterable[tuple[str, float]]:
    """(token, logprob) pairs of the first answer token, chat or completions style."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise JudgeServerError(f"the response has no choices: {_json_excerpt(body)}") from None
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not logprobs:
        raise JudgeServerError(
            "the server returned no log-probs; serve with logprobs enabled "
            "(vLLM: --max-logprobs 20 or more) and make sure the request's logprobs/top_logprobs are honoured"
        )
    if isinstance(logprobs.get("content"), list):  # chat completions
        if not logprobs["content"]:
            raise JudgeServerError("the server returned an empty logprobs.content (no answer token)")
        first = logprobs["content"][0]
        if not isinstance(first, dict):
            raise JudgeServerError(f"unrecognized logprobs layout: {_json_excerpt(logprobs)}")
        entries = first.get("top_logprobs") or [first]  # top_logprobs=0: only the chosen token
        pairs = [(e.get("token"), e.get("logprob")) if isinstance(e, dict) else (e, None) for e in entries]
    elif isinstance(logprobs.get("top_logprobs"), list) and logprobs["top_logprobs"]:  # completions
        first = logprobs["top_logprobs"][0] or {}
        pairs = list(first.items()) if isinstance(first, dict) else []
    else:
        raise JudgeServerError(f"unrecognized logprobs layout: {_json_excerpt(logprobs)}")
    for token, logprob in pairs:
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            raise JudgeServerError(f"malformed top log-prob entry: token={token!r}, logprob={logprob!r}")
    return pairs


def _json_excerpt(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."
