"""Issue #24, registry and gate: nothing lost, nothing made up.

* An outage of the tracking server is an 'unreachable' error naming the server (without its
  credentials) within seconds, never "no such version" or "no champion" after minutes of
  MLflow's retries; a server that answers something else (403) is that answer, never "missing".
* An eval tag the gate does not read (a reviewer's note) is ignored; a metric tag it reads
  that is not a number stops it with an error naming the version, the tag and the value.

Real components only: a real `mlflow server` (tests/servers.py), a loopback port nothing
listens on, and a uvicorn subprocess answering like a broken server (registry_fault_server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from focusdiff.config import TrackingConfig
from focusdiff.model.sampling import SamplingConfig
from focusdiff.registry.gate import GateConfig
from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.registry.registration import Registration
from focusdiff.registry.store import RegistryError, champion, promote, record_evaluation
from tests.servers import LOOPBACK, ManagedProcess, free_port, http_ok, loopback_no_proxy_env
from tests.project import REPO_ROOT

REPO = REPO_ROOT
SECRET = "s3cr3t-test-password"  # test-only, never a real credential
OUTAGE_BUDGET_S = 30  # MLflow's own defaults take about four minutes


def _closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    return free_port()


def _hits(root: str) -> dict[str, int]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{root}/stats", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def fault_registry(tmp_path_factory, loopback_bypasses_proxy) -> Iterator[str]:
    """The broken-registry app as a uvicorn subprocess; yields its root URL (faults under /<fault>)."""
    port = free_port()
    log = tmp_path_factory.mktemp("registry-faults") / "server.log"
    with ManagedProcess([sys.executable, "-m", "uvicorn", "tests.faults.registry_fault_server:app",
                         "--host", LOOPBACK, "--port", str(port)],
                        name="registry-faults", cwd=REPO, env={"OMP_NUM_THREADS": "1", **loopback_no_proxy_env()},
                        log_path=log, ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/health"), startup_timeout=60):
        yield f"http://{LOOPBACK}:{port}"


# --------------------------------------------------------------------------- case 4: outage


def test_promote_with_the_tracking_server_down_is_unreachable_within_seconds(loopback_bypasses_proxy):
    port = _closed_port()
    tracking = TrackingConfig(uri=f"http://alice:{SECRET}@{LOOPBACK}:{port}")
    gate = GateConfig(model_name="focusdiff-outage")
    start = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        promote(gate, tracking)
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert elapsed < OUTAGE_BUDGET_S, f"took {elapsed:.0f} s: {message}"
    assert f"the MLflow tracking server http://***@{LOOPBACK}:{port} is unreachable" in message
    assert "registered model 'focusdiff-outage': cannot read version 'challenger'" in message
    assert "has no version" not in message  # an outage is not a missing version
    assert SECRET not in message and "alice" not in message


def test_the_champion_of_an_unreachable_registry_is_an_error_never_none(loopback_bypasses_proxy):
    """'No champion yet' lets any challenger through the gate: an outage must not read as that."""
    port = _closed_port()
    gate = GateConfig(model_name="focusdiff-outage")
    start = time.monotonic()
    with pytest.raises(RegistryError, match=rf"cannot read its 'champion' alias: the MLflow tracking server "
                                            rf"http://{LOOPBACK}:{port} is unreachable"):
        champion(gate, TrackingConfig(uri=f"http://{LOOPBACK}:{port}"))
    assert time.monotonic() - start < OUTAGE_BUDGET_S


def test_focusdiff_promote_reports_an_outage_in_one_line(tmp_path, loopback_bypasses_proxy):
    port = _closed_port()
    env = {**os.environ, **loopback_no_proxy_env(), "MLFLOW_TRACKING_URI": f"http://bob:{SECRET}@{LOOPBACK}:{port}"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "focusdiff.cli", "promote", "--params", str(REPO / "params.yaml"),
                           "-S", "promote.model_name=focusdiff-outage"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=OUTAGE_BUDGET_S + 60)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: registered model 'focusdiff-outage': cannot read version 'challenger': "
                                  f"the MLflow tracking server http://***@{LOOPBACK}:{port} is unreachable"), done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert elapsed < OUTAGE_BUDGET_S + 20  # the interpreter and its imports start in the rest


def test_a_registry_answering_503_is_unreachable_after_the_configured_retries(fault_registry):
    tracking = TrackingConfig(uri=f"{fault_registry}/down")
    before = _hits(fault_registry).get("down", 0)
    start = time.monotonic()
    with pytest.raises(RegistryError, match=rf"cannot read version 'challenger': the MLflow tracking server "
                                            rf"{fault_registry}/down is unreachable .*too many 503 error responses"):
        promote(GateConfig(model_name="focusdiff-down"), tracking)
    assert time.monotonic() - start < OUTAGE_BUDGET_S
    assert _hits(fault_registry)["down"] - before == 3  # the default: one request and two retries

    # the budget is the gate's configuration
    before = _hits(fault_registry)["down"]
    with pytest.raises(RegistryError, match=r"is unreachable \(no answer after 0 retries, 2 s timeout each"):
        promote(GateConfig(model_name="focusdiff-down", registry_retries=0, registry_timeout_s=2), tracking)
    assert _hits(fault_registry)["down"] - before == 1


def test_a_registry_that_refuses_is_that_refusal_never_a_missing_version(fault_registry):
    from tests.faults.registry_fault_server import DENIED_MESSAGE

    tracking = TrackingConfig(uri=f"{fault_registry}/denied")
    with pytest.raises(RegistryError) as caught:
        promote(GateConfig(model_name="focusdiff-denied"), tracking)
    message = str(caught.value)
    assert f"answered PERMISSION_DENIED: {DENIED_MESSAGE}" in message
    assert "has no version" not in message and "unreachable" not in message
    with pytest.raises(RegistryError, match="cannot read its 'champion' alias: .*answered PERMISSION_DENIED"):
        champion(GateConfig(model_name="focusdiff-denied"), tracking)


# --------------------------------------------------------------------------- case 5: eval tags


def _challenger(server, tmp_path: Path, tags: dict[str, str]) -> tuple[GateConfig, TrackingConfig, str]:
    """A registered version aliased challenger, PairComp recorded complete (with its per-pair
    scores) plus `tags`: what `focusdiff promote` reads, without logging a real model."""
    client = MlflowClient(server.tracking_uri)
    name = f"focusdiff-tags-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    run_id = client.create_run("0").info.run_id
    version = client.create_model_version(name, source=f"runs:/{run_id}/policy", run_id=run_id).version
    client.set_registered_model_alias(name, "challenger", version)
    tracking = TrackingConfig(uri=server.tracking_uri)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"category": "color", "caption1": f"a{i}", "caption2": f"b{i}", "g": 0.3}) + "\n"
                             for i in range(4)))
    registration = Registration(model_name=name, version=str(version), run_id=run_id)
    protocol = EvaluationProtocol(backend="exact", suite="shapes", split="test", sampling=SamplingConfig(), seed=0)
    record_evaluation(registration, tracking, "paircomp", {"paircomp.s_g": 30.0}, [pairs], protocol=protocol)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return GateConfig(model_name=name, required=("paircomp",), floor=25.0, bootstrap=100), tracking, str(version)


def test_a_free_text_eval_tag_is_not_read_by_the_gate(mlflow_tracking, tmp_path):
    note = "looks fine to me, but check the blue squares (reviewer: carol)"
    gate, tracking, version = _challenger(mlflow_tracking, tmp_path, {"eval.note": note})
    decision = promote(gate, tracking, dry_run=True)
    assert decision.promote
    assert decision.reasons[0] == "no champion yet; paircomp.s_g 30.00 >= floor 25.00"
    # and the registry's own "no such model" is still "no such version", not an outage
    with pytest.raises(RegistryError, match=r"registered model 'focusdiff-nonexistent-\w+' has no version 'challenger'"):
        promote(GateConfig(model_name=f"focusdiff-nonexistent-{uuid.uuid4().hex[:8]}"), tracking)


@pytest.mark.parametrize("value", ["pending review", "nan"])
def test_a_metric_tag_the_gate_reads_must_be_a_number(mlflow_tracking, tmp_path, value):
    gate, tracking, version = _challenger(mlflow_tracking, tmp_path, {"eval.paircomp.s_g": value})
    with pytest.raises(RegistryError) as caught:
        promote(gate, tracking)
    assert str(caught.value).startswith(f"registered model {gate.model_name!r} version {version}: tag "
                                        f"'eval.paircomp.s_g' is {value!r}, not a finite number")
    tags = MlflowClient(mlflow_tracking.tracking_uri).get_model_version(gate.model_name, version).tags
    assert "gate.decision" not in tags  # nothing decided on it
