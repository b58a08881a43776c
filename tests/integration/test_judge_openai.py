"""The OpenAI-compatible judge client against real judge servers on 127.0.0.1.

Every server here is a uvicorn subprocess (the real `focusdiff judge serve`, or the
fault-injection apps of tests/fake_judge_servers.py) started by ManagedProcess;
nothing is monkeypatched between the client and the socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from focusdiff.judge.base import JudgeFailure, Verdict, question
from focusdiff.judge.exact import ExactJudge
from focusdiff.judge.openai_judge import JudgeServerError, OpenAIJudge, parse_verdict, request_body
from focusdiff.shapes.generate import CATEGORY_ORDER, ShapesSampler
from focusdiff.shapes.render import render
from tests.fake_judge_servers import FAULT_500_BODY
from tests.servers import LOOPBACK, ManagedProcess, _alive, free_port, http_ok, loopback_no_proxy_env
from tests.project import REPO_ROOT

pytestmark = pytest.mark.servers

REPO = REPO_ROOT
KEY_ENV = "FOCUSDIFF_TEST_JUDGE_KEY"
DUMMY_KEY = "sk-dummy-test-key-4f1c9a"  # test-only, never a real credential
FAST = dict(backoff_base=0.01, backoff_cap=0.05)  # retries without the wait
ACCESS_LOG_OK = '"POST /v1/chat/completions HTTP/1.1" 200'


# --------------------------------------------------------------------------- #
# Servers
# --------------------------------------------------------------------------- #


def _server(argv: list[str], log_path: Path, port: int, name: str) -> ManagedProcess:
    return ManagedProcess(
        [sys.executable, *argv, "--host", LOOPBACK, "--port", str(port)],
        name=name,
        cwd=REPO,  # `python -m uvicorn tests....` imports from the checkout
        env={"OMP_NUM_THREADS": "1", **loopback_no_proxy_env()},
        log_path=log_path,
        ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/health"),
        startup_timeout=60,
    )


@contextlib.contextmanager
def running(argv: list[str], log_path: Path, name: str, port: int | None = None) -> Iterator[tuple[str, ManagedProcess]]:
    port = port or free_port()
    with _server(argv, log_path, port, name) as proc:
        yield f"http://{LOOPBACK}:{port}", proc


EXACT_SERVE = ["-m", "focusdiff.cli", "judge", "serve", "--backend", "exact"]
FAULTS = ["-m", "uvicorn", "tests.fake_judge_servers:faults"]
SLOW_EXACT = ["-m", "uvicorn", "tests.fake_judge_servers:slow_exact"]


@pytest.fixture(scope="module")
def exact_server(tmp_path_factory, loopback_bypasses_proxy) -> Iterator[str]:
    """`focusdiff judge serve --backend exact`; yields its base URL (…/v1)."""
    with running(EXACT_SERVE, tmp_path_factory.mktemp("exact") / "server.log", "judge-exact") as (url, _):
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory, loopback_bypasses_proxy) -> Iterator[str]:
    """The fault-injection app; yields its root URL (faults live under /<fault>/v1)."""
    with running(FAULTS, tmp_path_factory.mktemp("faults") / "server.log", "judge-faults") as (url, _):
        yield url


def hits(fault_url: str) -> dict[str, int]:
    return httpx.get(f"{fault_url}/stats").json()


# --------------------------------------------------------------------------- #
# Data: ShapesWorld images with their own and their partner's captions
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def batch() -> tuple[list[np.ndarray], list[str]]:
    """16 items: 8 images, each with its own caption (yes) and its partner's (no)."""
    sampler = ShapesSampler(32, np.random.default_rng(7))
    pairs = [sampler.pair(CATEGORY_ORDER[i % len(CATEGORY_ORDER)]) for i in range(8)]
    images = [render(p.scene1) for p in pairs] * 2
    prompts = [p.prompt1 for p in pairs] + [p.prompt2 for p in pairs]
    return images, prompts


def test_served_exact_judge_equals_in_process(exact_server, batch):
    images, prompts = batch
    expected = ExactJudge().judge(images, prompts)
    served = OpenAIJudge(exact_server, "focusdiff-exact", max_concurrency=4).judge(images, prompts)
    assert served == expected
    assert {v.score for v in served} == {0.0, 1.0}  # both answers occur


def test_batch_survives_a_server_killed_and_restarted_mid_batch(tmp_path, loopback_bypasses_proxy, batch, caplog):
    images, prompts = batch
    expected = ExactJudge().scores(images, prompts)
    port = free_port()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # One request at a time, 0.2 s each: the kill lands mid-batch, mid-request.
    client = OpenAIJudge(f"http://{LOOPBACK}:{port}/v1", "focusdiff-exact", max_concurrency=1,
                         max_retries=200, backoff_base=0.05, backoff_cap=0.3)
    outcome: dict[str, object] = {}

    def run_batch() -> None:
        try:
            outcome["scores"] = client.scores(images, prompts)
        except BaseException as exc:  # re-raised by the assertions below
            outcome["error"] = exc

    with _server(SLOW_EXACT, first_log, port, "judge-slow-1") as first:
        worker = threading.Thread(target=run_batch)
        worker.start()
        deadline = time.monotonic() + 30
        while first_log.read_text().count(ACCESS_LOG_OK) < 3:
            assert time.monotonic() < deadline and worker.is_alive(), first.log_tail()
            time.sleep(0.05)
        pgid = first.pid
        os.killpg(pgid, signal.SIGKILL)  # a crash, not a graceful shutdown
        first.stop()
        assert not _alive(set(), pgid)
    served_before = first_log.read_text().count(ACCESS_LOG_OK)
    assert 3 <= served_before < len(prompts)
    time.sleep(0.5)  # the client meets a refused port for a while
    with _server(SLOW_EXACT, second_log, port, "judge-slow-2"):
        worker.join(timeout=60)
        assert not worker.is_alive(), "the batch did not finish after the restart"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["scores"] == expected
    retried = " ".join(r.getMessage() for r in caplog.records if r.name == "focusdiff.judge.openai_judge")
    assert "ConnectError" in retried  # it did meet the dead port, and retried through it
    # The rest of the batch (and the request cut off by the kill) went to the new server.
    assert second_log.read_text().count(ACCESS_LOG_OK) >= len(prompts) - served_before


@pytest.mark.parametrize(
    ("fault", "reason", "attempts"),
    [
        ("500", f"JudgeServerError: HTTP 500 after 3 attempts (http://{LOOPBACK}:PORT/500/v1/chat/completions): "
                f"{FAULT_500_BODY}", 3),
        ("malformed", "JudgeServerError: malformed JSON after 3 attempts "
                      f"(http://{LOOPBACK}:PORT/malformed/v1/chat/completions): "
                      "'{\"choices\": [{\"index\": 0, \"logprobs\":'", 3),
        ("nologprobs", "JudgeServerError: the server returned no log-probs; serve with logprobs enabled "
                       "(vLLM: --max-logprobs 20 or more)", 1),
        ("noyesno", "JudgeServerError: neither yes nor no among the top log-probs of the first answer token; "
                    "got 'Maybe', ' The'", 1),
    ],
)
def test_faults_fail_with_a_precise_reason_and_no_score(fault_server, batch, fault, reason, attempts):
    images, prompts = batch[0][:2], batch[1][:2]
    before = hits(fault_server).get(fault, 0)
    judge = OpenAIJudge(f"{fault_server}/{fault}/v1", "fault", max_retries=2, **FAST)
    with pytest.raises(JudgeFailure) as info:
        judge.judge(images, prompts)
    err = info.value
    assert err.verdicts == [None, None]  # no 0.0 stands in for a failure
    assert [f.index for f in err.failures] == [0, 1]
    port = fault_server.rsplit(":", 1)[1]
    for failure in err.failures:
        assert failure.reason.startswith(reason.replace("PORT", port)), failure.reason
    # Transient faults use the whole retry budget; the rest fail at the first answer.
    assert hits(fault_server)[fault] - before == attempts * len(prompts)


def test_real_server_rejects_malformed_requests_with_400(exact_server, batch):
    image, prompt = batch[0][0], batch[1][0]
    good = request_body("focusdiff-exact", image, prompt)
    assert httpx.post(f"{exact_server}/chat/completions", json=good).status_code == 200

    odd = request_body("focusdiff-exact", image, prompt)
    odd["messages"][0]["content"][1]["text"] = "Is there a red circle?"
    resp = httpx.post(f"{exact_server}/chat/completions", json=odd)
    assert resp.status_code == 400
    assert "the question must read 'Does this image match the description" in resp.json()["error"]["message"]
    assert "got 'Is there a red circle?'" in resp.json()["error"]["message"]

    no_image = request_body("focusdiff-exact", image, prompt)
    no_image["messages"][0]["content"] = question(prompt)
    resp = httpx.post(f"{exact_server}/chat/completions", json=no_image)
    assert resp.status_code == 400
    assert "the user message has no image" in resp.json()["error"]["message"]

    assert httpx.get(f"{exact_server}/models").json()["data"][0]["id"] == "focusdiff-exact"


def test_wrong_model_fails_at_once_without_retries(exact_server, batch):
    judge = OpenAIJudge(exact_server, "internvl2.5-26b", max_retries=3, backoff_base=5.0, backoff_cap=5.0)
    t0 = time.monotonic()
    with pytest.raises(JudgeFailure, match=r"HTTP 404 from .*model 'internvl2.5-26b' is not served here"):
        judge.judge(batch[0][:1], batch[1][:1])
    assert time.monotonic() - t0 < 4  # a single backoff would have taken up to 5 s


def test_api_key_is_sent_and_never_shown(fault_server, batch, monkeypatch):
    images, prompts = batch[0][:1], batch[1][:1]
    monkeypatch.setenv(KEY_ENV, DUMMY_KEY)
    auth = OpenAIJudge(f"{fault_server}/auth/v1", "fault", api_key_env=KEY_ENV, **FAST)
    [verdict] = auth.judge(images, prompts)  # the server answers only when the header arrived
    assert (verdict.p_yes, verdict.p_no) == (pytest.approx(0.8), 0.0)

    for fault in ("500", "leak"):  # the leak server echoes the header back in its error body
        judge = OpenAIJudge(f"{fault_server}/{fault}/v1", "fault", api_key_env=KEY_ENV, max_retries=1, **FAST)
        with pytest.raises(JudgeFailure) as info:
            judge.judge(images, prompts)
        assert DUMMY_KEY not in str(info.value) and DUMMY_KEY not in repr(info.value.failures)
    assert "Authorization: Bearer <redacted>" in str(info.value)

    monkeypatch.delenv(KEY_ENV)  # no key: the server sees no header, a 401 is not retried
    before = hits(fault_server)["auth"]
    with pytest.raises(JudgeFailure, match="HTTP 401 from .*no Authorization header arrived"):
        auth.judge(images, prompts)
    assert hits(fault_server)["auth"] - before == 1


def test_every_backend_reports_failed_items_as_none(exact_server, fault_server, batch):
    """Exact in-process, openai -> real exact server, openai -> a 500 server: failures are None."""
    images = [batch[0][0], batch[0][1], batch[0][2]]
    prompts = [batch[1][0], "a photo of a cat", batch[1][2]]
    backends = {
        "exact": ExactJudge(),
        "openai->exact": OpenAIJudge(exact_server, "focusdiff-exact", max_retries=1, **FAST),
    }
    for name, judge in backends.items():
        with pytest.raises(JudgeFailure) as info:
            judge.judge(images, prompts)
        err = info.value
        assert [f.index for f in err.failures] == [1], name
        assert "CaptionError: not a ShapesWorld caption" in err.failures[0].reason, name
        assert err.verdicts[1] is None, name
        assert err.verdicts[0] == Verdict(1.0, 0.0) and err.verdicts[2] == Verdict(1.0, 0.0), name
    assert "HTTP 500 after 2 attempts" in str(err)  # the server's JudgeFailure, relayed

    with pytest.raises(JudgeFailure) as info:
        OpenAIJudge(f"{fault_server}/500/v1", "fault", max_retries=1, **FAST).judge(images, prompts)
    assert info.value.verdicts == [None, None, None]


# --------------------------------------------------------------------------- #
# Reading the answer (pure; no server)
# --------------------------------------------------------------------------- #


def _chat(*pairs: tuple[str, float]) -> dict:
    top = [{"token": t, "logprob": lp} for t, lp in pairs]
    return {"choices": [{"logprobs": {"content": [{**top[0], "top_logprobs": top}]}}]}


def test_case_variants_and_word_markers_are_summed():
    body = _chat(("Yes", np.log(0.4)), ("Ġyes", np.log(0.1)), ("▁YES", np.log(0.05)), (" no", np.log(0.3)),
                 ("No", np.log(0.05)), ("The", np.log(0.1)))
    v = parse_verdict(body)
    assert (v.p_yes, v.p_no) == (pytest.approx(0.55), pytest.approx(0.35))
    assert v.score == pytest.approx(0.55 / 0.9)
    completions_style = {"choices": [{"logprobs": {"top_logprobs": [{" yes": np.log(0.2), "no": np.log(0.6)}]}}]}
    assert parse_verdict(completions_style).score == pytest.approx(0.25)
    assert parse_verdict(_chat(("no", 0.0), ("maybe", -3.0))) == Verdict(0.0, 1.0)  # yes below the top-k


def test_official_answer_tokens_count_only_the_vocabulary_entries():
    """answer_tokens official (PairComp's evaluator default): 'Yes' and 'no' count; 'Ġyes', '▁YES', ' no' do not."""
    body = _chat(("Yes", np.log(0.4)), ("Ġyes", np.log(0.1)), ("▁YES", np.log(0.05)), (" no", np.log(0.3)),
                 ("no", np.log(0.05)), ("The", np.log(0.1)))
    v = parse_verdict(body, "official")
    assert (v.p_yes, v.p_no) == (pytest.approx(0.4), pytest.approx(0.05))
    assert v.score == pytest.approx(0.4 / 0.45)
    with pytest.raises(JudgeServerError, match="neither yes nor no"):
        parse_verdict(_chat((" yes", np.log(0.5)), (" no", np.log(0.4))), "official")
