"""Issue #24, judge cases: the judge server's request limits, and credentials in URLs.

* Case 3 - the judge server had no request limits: a 236 KB PNG declaring 9000x9000 drove it
  to 15.3 GB, a 20000x20000 one raised an uncaught DecompressionBombError (a 500, which
  clients retry). Now the body is capped (413) and the image's declared size is checked from
  its header before decoding (400); the client fails a 4xx at once.
* Case 7 - credentials inside a URL (`http://user:secret@host`) were printed in errors and
  logged as MLflow parameters. Now every URL that is shown goes through `redact_urls`.

Every server is real: `focusdiff judge serve` or the fault app as a uvicorn subprocess, and
the session's MLflow server, all on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from focusdiff.judge.base import JudgeFailure, question
from focusdiff.judge.openai_judge import OpenAIJudge, request_body
from focusdiff.shapes.generate import ShapesSampler
from focusdiff.shapes.render import render
from tests.servers import LOOPBACK, ManagedProcess, free_port, http_ok, loopback_no_proxy_env
from tests.project import REPO_ROOT

pytestmark = pytest.mark.servers

REPO = REPO_ROOT
SERVE = [sys.executable, "-m", "focusdiff.cli", "judge", "serve", "--backend", "exact"]
FAULTS = [sys.executable, "-m", "uvicorn", "tests.fake_judge_servers:faults"]
NOT_A_SHAPES_CAPTION = "a photo of a cat"  # the exact checker refuses it before looking at the image
NO_WAIT = dict(backoff_base=0.01, backoff_cap=0.05)


@contextlib.contextmanager
def running(argv: list[str], log_path: Path) -> Iterator[str]:
    """A server subprocess on a free loopback port; yields its root URL."""
    port = free_port()
    with ManagedProcess(
        [*argv, "--host", LOOPBACK, "--port", str(port)],
        name=Path(log_path).stem,
        cwd=REPO,
        env={"OMP_NUM_THREADS": "1", **loopback_no_proxy_env()},
        log_path=log_path,
        ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/health"),
        startup_timeout=60,
    ):
        yield f"http://{LOOPBACK}:{port}"


def png_declaring(width: int, height: int, rows: int) -> bytes:
    """An RGB PNG whose header declares width x height; its pixel data holds `rows` black rows.

    With rows == height this is the issue's bomb: 9000 black rows compress to 236 KB and
    decode to 243 MB (and far more once judged). With fewer rows it is small and truncated.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    pixels = zlib.compress((b"\x00" * (1 + 3 * width)) * rows, 9)  # filter byte 0 + the row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def chat_request(png: bytes, prompt: str) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {"model": "focusdiff-exact", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question(prompt)}]}]}


def error_of(resp: httpx.Response) -> dict:
    """The OpenAI-style error of a response (the server's only error shape)."""
    return resp.json()["error"]


def shapes_item(seed: int = 3) -> tuple[np.ndarray, str]:
    pair = ShapesSampler(32, np.random.default_rng(seed)).pair("counting")
    return render(pair.scene1), pair.prompt1


@pytest.fixture(scope="module")
def default_server(tmp_path_factory, loopback_bypasses_proxy) -> Iterator[str]:
    """`focusdiff judge serve --backend exact` with its default limits; yields its /v1 URL."""
    with running(SERVE, tmp_path_factory.mktemp("judge") / "judge-default.log") as url:
        yield f"{url}/v1"


# --------------------------------------------------------------------------- #
# Case 3: request limits
# --------------------------------------------------------------------------- #


def test_judge_server_refuses_a_png_declaring_huge_size_before_decoding(default_server):
    bomb = png_declaring(9000, 9000, rows=9000)  # the 236 KB PNG
    assert len(bomb) < 240_000
    resp = httpx.post(f"{default_server}/chat/completions", json=chat_request(bomb, NOT_A_SHAPES_CAPTION), timeout=60)
    assert resp.status_code == 400, resp.text
    assert error_of(resp) == {
        "message": "the image declares 9000x9000 = 81,000,000 pixels; this server accepts at most 16,777,216 "
                   "(--max-image-pixels)",
        "type": "invalid_request_error",
        "code": 400,
    }

    # Past Pillow's own hard limit (2 x 89.5 MP) Image.open itself raises: a 400, not an uncaught 500.
    resp = httpx.post(f"{default_server}/chat/completions", json=chat_request(png_declaring(20000, 20000, rows=2),
                                                                               NOT_A_SHAPES_CAPTION), timeout=60)
    assert resp.status_code == 400, resp.text
    message = error_of(resp)["message"]
    assert message.startswith("the image is too large to decode (Image size (400000000 pixels) exceeds limit"), message
    assert message.endswith("this server accepts at most 16,777,216 pixels (--max-image-pixels)"), message

    # The server is unharmed: a real item is still judged.
    image, prompt = shapes_item()
    assert httpx.post(f"{default_server}/chat/completions", json=request_body("focusdiff-exact", image, prompt)
                      ).status_code == 200


def test_judge_server_refuses_an_oversized_body_with_413(default_server):
    image, prompt = shapes_item()
    body = request_body("focusdiff-exact", image, prompt)
    assert httpx.post(f"{default_server}/chat/completions", json=body).status_code == 200
    body["padding"] = "x" * (8 * 1024 * 1024)  # a valid request, one byte per char past the 8 MiB default
    raw = json.dumps(body).encode()

    declared = httpx.post(f"{default_server}/chat/completions", content=raw,
                          headers={"content-type": "application/json"}, timeout=60)
    assert declared.status_code == 413, declared.text
    assert error_of(declared) == {
        "message": f"the request body is {len(raw):,} bytes; this server accepts at most 8,388,608 (--max-body-bytes)",
        "type": "invalid_request_error",
        "code": 413,
    }

    # No Content-Length (chunked): refused once what arrived passes the limit.
    chunked = httpx.post(f"{default_server}/chat/completions", timeout=60,
                         content=(raw[i : i + 65536] for i in range(0, len(raw), 65536)))
    assert chunked.status_code == 413, chunked.text
    assert error_of(chunked)["message"] == ("the request body is more than 8,388,608 bytes; "
                                            "this server accepts at most 8,388,608 (--max-body-bytes)")


def test_judge_client_fails_at_once_on_the_servers_limits(tmp_path, loopback_bypasses_proxy):
    """`judge serve --max-body-bytes/--max-image-pixels`: the client's 413 and 400 are errors
    with the server's message, after one request each (no retry)."""
    log = tmp_path / "judge-limited.log"
    with running([*SERVE, "--max-body-bytes", "300000", "--max-image-pixels", "4096"], log) as url:
        judge = OpenAIJudge(f"{url}/v1", "focusdiff-exact", max_retries=3, **NO_WAIT)
        noise = np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)  # ~400 KB as base64 PNG
        with pytest.raises(JudgeFailure) as too_big:
            judge.judge([noise], ["one red circle"])
        [failure] = too_big.value.failures
        assert failure.reason.startswith(
            f"JudgeServerError: HTTP 413 from {url}/v1/chat/completions: the request body is "), failure.reason
        assert failure.reason.endswith("bytes; this server accepts at most 300,000 (--max-body-bytes)"), failure.reason

        with pytest.raises(JudgeFailure) as too_many_pixels:
            judge.judge([noise[:100, :100]], ["one red circle"])
        [failure] = too_many_pixels.value.failures
        assert failure.reason == (f"JudgeServerError: HTTP 400 from {url}/v1/chat/completions: the image declares "
                                  "100x100 = 10,000 pixels; this server accepts at most 4,096 (--max-image-pixels)")
    access = log.read_text()
    assert access.count('"POST /v1/chat/completions HTTP/1.1" 413') == 1
    assert access.count('"POST /v1/chat/completions HTTP/1.1" 400') == 1


def test_judge_server_limits_must_be_positive():
    from focusdiff.errors import ConfigError
    from focusdiff.judge.exact import ExactJudge
    from focusdiff.judge.server import create_app

    with pytest.raises(ConfigError, match=r"^the judge server's max_body_bytes must be >= 1, got 0$"):
        create_app(ExactJudge(), "focusdiff-exact", max_body_bytes=0)
    with pytest.raises(ConfigError, match=r"^the judge server's max_image_pixels must be >= 1, got -1$"):
        create_app(ExactJudge(), "focusdiff-exact", max_image_pixels=-1)


def test_cli_defaults_are_the_servers():
    """`judge serve` spells the defaults out (importing the server would load FastAPI on every command)."""
    import inspect

    from focusdiff import cli
    from focusdiff.judge import server

    options = inspect.signature(cli.judge_serve).parameters
    assert options["max_body_bytes"].default == server.DEFAULT_MAX_BODY_BYTES
    assert options["max_image_pixels"].default == server.DEFAULT_MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- #
# Case 7: credentials in URLs
# --------------------------------------------------------------------------- #

SECRET = "s3cr3t-test-only"  # a dummy, never a real credential
BASIC = base64.b64encode(f"judge-user:{SECRET}".encode()).decode()  # what httpx sends from the userinfo


def test_redact_urls_masks_userinfo_and_secret_query_values():
    from focusdiff.redact import redact_urls  # new in the fix: imported here so the other tests run on the original

    assert redact_urls(f"http://judge-user:{SECRET}@127.0.0.1:8000/v1") == "http://***@127.0.0.1:8000/v1"
    assert (redact_urls(f"postgresql://mlflow:{SECRET}@db:5432/mlflow?sslmode=require")
            == "postgresql://***@db:5432/mlflow?sslmode=require")
    assert (redact_urls(f"https://h/p?api_key={SECRET}&n=2&X-Amz-Signature={SECRET}&token={SECRET}#top")
            == "https://h/p?api_key=***&n=2&X-Amz-Signature=***&token=***#top")
    text = f"failed (http://u:{SECRET}@h/x); mail ops@example.com"
    assert redact_urls(text) == "failed (http://***@h/x); mail ops@example.com"
    for clean in ("http://127.0.0.1:8000/v1", "sqlite:////tmp/mlflow.db", "s3://bucket/key?versionId=3"):
        assert redact_urls(clean) == clean


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory, loopback_bypasses_proxy) -> Iterator[str]:
    with running(FAULTS, tmp_path_factory.mktemp("faults") / "judge-faults.log") as url:
        yield url


def test_judge_client_errors_never_show_url_credentials(fault_server, caplog):
    image, prompt = shapes_item()
    host = fault_server.removeprefix("http://")
    dead = f"{LOOPBACK}:{free_port()}"
    cases = {  # base URL -> how its failure reads (the URL masked)
        f"http://judge-user:{SECRET}@{host}/leak/v1":  # a 500 that echoes the Authorization header back
            f"HTTP 500 after 2 attempts (http://***@{host}/leak/v1/chat/completions): upstream rejected the "
            "request with Authorization: Basic <redacted>",
        f"http://judge-user:{SECRET}@{host}/auth/v1":  # a 401: not retried
            f"HTTP 401 from http://***@{host}/auth/v1/chat/completions: no Authorization header arrived",
        f"http://judge-user:{SECRET}@{dead}/v1":  # nothing listens
            f"ConnectError after 2 attempts (http://***@{dead}/v1/chat/completions): ",
    }
    caplog.set_level(logging.DEBUG, logger="focusdiff")
    for base_url, shown in cases.items():
        with pytest.raises(JudgeFailure) as info:
            OpenAIJudge(base_url, "fault", max_retries=1, **NO_WAIT).judge([image], [prompt])
        [failure] = info.value.failures
        assert failure.reason.startswith(f"JudgeServerError: {shown}"), failure.reason
        for text in (str(info.value), repr(info.value.failures), caplog.text):
            assert SECRET not in text and BASIC not in text, text
    assert "retry 1/1" in caplog.text  # the retries were logged, and without the credentials

    with pytest.raises(ValueError) as info:
        OpenAIJudge(f"ftp://judge-user:{SECRET}@{host}/v1", "fault")
    assert str(info.value) == f"base_url must start with http:// or https://, got 'ftp://***@{host}/v1'"


def test_mlflow_params_and_output_never_hold_url_credentials(mlflow_tracking, monkeypatch, capfd):
    from focusdiff.config import TrackingConfig
    from focusdiff.tracking import StageRun

    # A tracking URI with credentials (the test server ignores them) ...
    with_credentials = mlflow_tracking.tracking_uri.replace("http://", f"http://mlflow-user:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_credentials)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # MLflow's default
    # ... and params holding URLs with credentials, as a run's config would.
    params = {
        "train": {"judge": {"backend": "openai", "base_url": f"http://judge-user:{SECRET}@127.0.0.1:9/v1"}},
        "data": {"sources": [f"s3://bucket/pairs.json?X-Amz-Signature={SECRET}"]},
        "tracking": {"uri": with_credentials},
    }
    with StageRun(TrackingConfig(experiment="issue-24-credentials"), "judge-faults", params=params) as run:
        run.log_metrics({"m": 1.0})
    logged = mlflow_tracking.client().get_run(run.run_id).data.params
    assert logged["train.judge.base_url"] == "http://***@127.0.0.1:9/v1"
    assert logged["data.sources"] == "['s3://bucket/pairs.json?X-Amz-Signature=***']"
    assert logged["tracking.uri"] == mlflow_tracking.tracking_uri.replace("http://", "http://***@")
    assert not [k for k, v in logged.items() if SECRET in v]
    out, err = capfd.readouterr()  # MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends
    assert SECRET not in out + err, out + err


def test_cli_errors_never_print_url_credentials(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  judge:\n    backend: openai\n    base_url: http://judge-user:{SECRET}@127.0.0.1:9/v1\n")
    result = subprocess.run([sys.executable, "-m", "focusdiff.cli", "train", "-p", str(params)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert ("train.judge: the openai judge backend needs base_url and model (got {'backend': 'openai', "
            "'base_url': 'http://***@127.0.0.1:9/v1'})") in result.stderr
    assert SECRET not in result.stdout + result.stderr
