"""Deployments as users run them: a real `prefect server`, a process worker, `prefect deploy`
from prefect.yaml, and `prefect deployment run`; MLflow on a real server with S3 artifacts,
the DVC remote on the same S3 endpoint. All on 127.0.0.1, all started and stopped here.

The embedded pipeline deployment runs end to end: the trained policy is registered, its
four evaluations land on the version, and the gate makes it champion. A second run with a
malformed parameter fails on the worker with the key named and registers nothing; the promote
deployment then runs on the worker and leaves the champion where it was. (A run that fails
inside a stage is test_pipeline's, a diverging or reward-less training run test_train's and
test_train_faults', a challenger whose benchmark failed, or that is worse but finite, test_registry's
and test_gate's: each further pipeline run here cost a minute or more of the suite's budget and
crossed only the surface these runs already cross.)
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.project import VENV_BIN, make_project
from tests.servers import LOOPBACK, ManagedProcess, MlflowServer, S3Server, free_port, http_ok

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _prefect(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _flow_runs(api: str) -> list[dict]:
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC"}, timeout=30).json()
    return runs


@pytest.mark.timeout(1800)  # a run of the whole (shrunk) pipeline, a failing one and one of the gate
def test_embedded_deployment_runs_on_a_worker_and_promotes(mlflow_server: MlflowServer, s3_server: S3Server,
                                                           tmp_path: Path) -> None:
    proj = make_project(tmp_path / "project", env_extra=s3_server.env)
    model_name = f"focusdiff-shapes-{uuid.uuid4().hex[:8]}"
    proj.update_params({"tracking": {"experiment": f"deploy-{uuid.uuid4().hex[:8]}"}, "promote": {"model_name": model_name}})
    prefix = f"deploy-dvc-{uuid.uuid4().hex[:8]}"
    proj.dvc("remote", "add", "-d", "s3", f"s3://{s3_server.bucket}/{prefix}")
    proj.dvc("remote", "modify", "s3", "endpointurl", s3_server.endpoint_url)
    proj.commit("s3 remote")

    port = free_port()
    api = f"http://{LOOPBACK}:{port}/api"
    env = {**proj.env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
           "FOCUSDIFF_PROJECT_DIR": str(proj.root), "OPENAI_API_KEY": "not-a-secret-nothing-listens"}
    server = ManagedProcess([VENV_BIN / "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port)],
                            name="prefect-server", env=env, inherit_env=False, cwd=tmp_path,
                            log_path=tmp_path / "prefect-server.log", ready=lambda: http_ok(f"{api}/health"),
                            startup_timeout=180)
    with server:
        _prefect(["work-pool", "create", "focusdiff-process", "--type", "process"], env, proj.root)
        _prefect(["deploy", "--name", "embedded", "--name", "promote"], env, proj.root)
        worker = ManagedProcess([VENV_BIN / "prefect", "worker", "start", "--pool", "focusdiff-process"],
                                name="prefect-worker", env=env, inherit_env=False, cwd=proj.root,
                                log_path=tmp_path / "prefect-worker.log")

        def run_deployment(name: str) -> dict:
            before = {r["id"] for r in _flow_runs(api)}
            subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deployment", "run", name, "--watch",
                            "--watch-timeout", "900"], env=env, cwd=proj.root, capture_output=True, timeout=960)
            (new,) = [r for r in _flow_runs(api) if r["id"] not in before]
            return new

        with worker:
            first = run_deployment("focusdiff-pipeline/embedded")
            assert first["state_type"] == "COMPLETED", (first["state"], worker.log_tail())
            assert first["parameters"] == {"project_dir": ".", "push": True}
            client = mlflow_server.client()
            # a fresh registry: the base became version 1 and the first champion; the trained
            # policy, version 2, was gated against it
            base, trained = client.get_model_version(model_name, "1"), client.get_model_version(model_name, "2")
            assert base.tags["focusdiff.role"] == "base" and base.tags["gate.decision"] == "first champion"
            assert trained.tags["gate.compared_with"] == "1" and trained.tags["prefect.flow_run_id"] == first["id"]
            for benchmark in ("paircomp", "geneval", "t2i_compbench", "dpg_bench"):
                assert base.tags[f"eval.{benchmark}.status"] == trained.tags[f"eval.{benchmark}.status"] == "complete"
            champion = client.get_model_version_by_alias(model_name, "champion")
            assert str(champion.version) == ("2" if trained.tags["gate.decision"] == "promoted" else "1")
            first_md5 = {out: proj.lock_md5(out) for out in ("data/pairs", "models/shapes-judge", "models/grpo")}

            # A run with a malformed parameter fails on the worker, naming the key, before any stage ran.
            params = (proj.root / "params.yaml").read_bytes()
            proj.update_params({"train": {"lr": {"peak": -1.0}}})
            malformed = run_deployment("focusdiff-pipeline/embedded")
            assert malformed["state_type"] == "FAILED", malformed["state"]
            assert "train.lr.peak" in str(malformed["state"]), (malformed["state"], worker.log_tail())
            assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{model_name}'")) == ["1", "2"]
            assert str(client.get_model_version_by_alias(model_name, "champion").version) == str(champion.version)
            (proj.root / "params.yaml").write_bytes(params)

            # The promote deployment on the worker: the gate runs again over the registry as it is
            # (nothing new to judge) and leaves the champion where it was.
            gate = run_deployment("focusdiff-promote/promote")
            assert gate["state_type"] == "COMPLETED", (gate["state"], worker.log_tail())
            assert str(client.get_model_version_by_alias(model_name, "champion").version) == str(champion.version)
    # Tracking went to the server (the environment wins over params.yaml's sqlite default),
    # artifacts through its proxy into the bucket.
    assert not (proj.root / "mlflow.db").exists()
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    # the registered pyfunc model's files (MLflow 3 keeps logged models under the experiment)
    assert any(k.endswith("/MLmodel") for k in s3_server.keys(f"mlartifacts/{run.info.experiment_id}/"))
    # The first run's policy, judge and dataset reached the S3 DVC remote.
    keys = set(s3_server.keys(prefix + "/"))
    for out_path, md5 in first_md5.items():
        assert f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" in keys, out_path
