"""End-to-end checks of the loopback server fixtures in ``tests/servers.py``.

Each test drives a real client (boto3, the dvc CLI, the MLflow client) against a
real server on 127.0.0.1, so a green run proves the fixtures are usable for the
rest of the suite, and that nothing needs to be mocked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.servers import (
    LOOPBACK,
    ManagedProcess,
    MlflowServer,
    ProcessStartError,
    S3Server,
    free_port,
    http_ok,
)

pytestmark = pytest.mark.servers


def _unique(prefix: str) -> str:
    # Servers are session-wide: unique names keep tests independent of each other.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- #
# ManagedProcess itself
# --------------------------------------------------------------------------- #


def _pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /proc")
def test_managed_process_stops_whole_group(tmp_path: Path) -> None:
    """Teardown must also kill grandchildren (like uvicorn workers), not just the leader."""
    port = free_port()
    pid_file = tmp_path / "child.pid"
    # Parent spawns a child that serves HTTP, then waits on it: a two-level tree.
    script = (
        "import subprocess, sys\n"
        f"c = subprocess.Popen([sys.executable, '-m', 'http.server', '-b', '{LOOPBACK}', '{port}'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "c.wait()\n"
    )
    with ManagedProcess(
        [sys.executable, "-c", script],
        name="tree",
        log_path=tmp_path / "tree.log",
        cwd=tmp_path,
        ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/"),
        startup_timeout=30,
    ) as proc:
        leader = proc.pid
        child = int(pid_file.read_text())
        assert _pid_running(leader) and _pid_running(child)
    assert not _pid_running(leader)
    assert not _pid_running(child)


def test_managed_process_reports_early_exit_with_log(tmp_path: Path) -> None:
    script = "import sys; print('boom: cannot bind', file=sys.stderr); sys.exit(3)"
    proc = ManagedProcess(
        [sys.executable, "-c", script],
        name="doomed",
        log_path=tmp_path / "doomed.log",
        ready=lambda: False,
        startup_timeout=30,
    )
    with pytest.raises(ProcessStartError, match=r"(?s)exited with code 3.*boom: cannot bind"):
        proc.start()


def test_managed_process_times_out_with_log(tmp_path: Path) -> None:
    script = "import time; print('still warming up', flush=True); time.sleep(60)"
    proc = ManagedProcess(
        [sys.executable, "-c", script],
        name="slowpoke",
        log_path=tmp_path / "slow.log",
        ready=lambda: False,
        startup_timeout=1.5,
        stop_timeout=5,
    )
    with pytest.raises(ProcessStartError, match=r"(?s)not ready after.*still warming up"):
        proc.start()
    assert proc.proc is None  # stopped on failure, not leaked


# --------------------------------------------------------------------------- #
# S3
# --------------------------------------------------------------------------- #


def test_s3_put_get_roundtrip(s3_server: S3Server) -> None:
    assert s3_server.endpoint_url.startswith(f"http://{LOOPBACK}:")
    client = s3_server.client()
    key = f"{_unique('roundtrip')}/blob.bin"
    payload = os.urandom(4096) + b"\x00tail"
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=payload)
    got = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert got == payload
    assert s3_server.keys(key) == [key]


# --------------------------------------------------------------------------- #
# DVC against S3
# --------------------------------------------------------------------------- #


def _dvc_env(s3_server: S3Server, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        **s3_server.env,  # dummy creds: dvc-s3 (botocore) reads them from the env
        "DVC_NO_ANALYTICS": "1",
        # Isolate from any user/system dvc + git config on the host.
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


def test_dvc_push_pull_via_s3(s3_server: S3Server, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _dvc_env(s3_server, tmp_path)
    dvc = str(Path(sys.executable).parent / "dvc")
    prefix = _unique("dvcstore")

    def run(*argv: str) -> None:
        res = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    data = repo / "data.txt"
    content = b"focusdiff pair 0\nfocusdiff pair 1\n"
    data.write_bytes(content)
    run(dvc, "add", "-q", "data.txt")
    run(dvc, "remote", "add", "-d", "store", f"s3://{s3_server.bucket}/{prefix}")
    run(dvc, "remote", "modify", "store", "endpointurl", s3_server.endpoint_url)
    run(dvc, "push")

    md5 = yaml.safe_load((repo / "data.txt.dvc").read_text())["outs"][0]["md5"]
    assert md5 == hashlib.md5(content).hexdigest()
    # DVC 3 remote layout: <remote>/files/md5/<2 chars>/<rest>.
    assert f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}" in s3_server.keys(prefix)

    # Forget everything local, then restore purely from the S3 remote.
    data.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    run(dvc, "pull")
    assert data.read_bytes() == content
    assert hashlib.md5(data.read_bytes()).hexdigest() == md5


# --------------------------------------------------------------------------- #
# MLflow
# --------------------------------------------------------------------------- #


def test_mlflow_run_with_artifact_in_s3(mlflow_tracking: MlflowServer, tmp_path: Path) -> None:
    import mlflow

    server = mlflow_tracking
    assert server.tracking_uri.startswith(f"http://{LOOPBACK}:")
    exp_name = _unique("servers-test")
    exp_id = mlflow.create_experiment(exp_name)
    artifact = tmp_path / "pairs.json"
    payload = b'{"pair": [0, 1], "note": "bytes must survive the S3 round trip"}\n'
    artifact.write_bytes(payload)

    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_param("beta", "0.04")
        mlflow.log_metric("reward", 0.75, step=1)
        mlflow.log_artifact(str(artifact), artifact_path="eval")
    run_id = run.info.run_id
    # Artifacts go through the server's proxy, not straight to S3.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    client = server.client()
    got = client.get_run(run_id)
    assert got.data.metrics["reward"] == pytest.approx(0.75)
    assert got.data.params["beta"] == "0.04"
    assert got.info.status == "FINISHED"

    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="eval/pairs.json", dst_path=str(tmp_path / "dl")
    )
    assert Path(downloaded).read_bytes() == payload

    # The bytes really landed in the S3 bucket, under the proxied destination.
    keys = server.s3.keys("mlartifacts/")
    matches = [k for k in keys if k.endswith(f"{run_id}/artifacts/eval/pairs.json")]
    assert len(matches) == 1, keys
    body = server.s3.client().get_object(Bucket=server.s3.bucket, Key=matches[0])["Body"].read()
    assert body == payload

    # Model registry on the same backend: a registered model plus an alias.
    model_name = _unique("focusdiff-policy")
    client.create_registered_model(model_name)
    version = client.create_model_version(model_name, source=f"runs:/{run_id}/eval", run_id=run_id)
    client.set_registered_model_alias(model_name, "candidate", version.version)
    assert client.get_model_version_by_alias(model_name, "candidate").run_id == run_id
