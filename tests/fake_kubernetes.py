"""A loopback Kubernetes API for PyTorchJobs, with a local operator, for the launcher tests.

No cluster can be reached from the test machine, so this app serves the part of the API the
launcher uses (`focusdiff/train/pytorchjob.py`, through the official `kubernetes` client):
create and get of `kubeflow.org/v1` PyTorchJobs in any namespace, 409 AlreadyExists on a
second create. Its "operator" runs each replica's container (`command` + `args`) as a local
process with the environment the Kubeflow training operator gives pods (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK, PET_NNODES, PET_NODE_RANK, plus the container's `env`; none of
the server's MLFLOW_*/FOCUSDIFF_* variables, as a fresh pod has none), in the container's
`workingDir` (default FAKE_K8S_WORKDIR), and moves the job's conditions Created -> Running -> Succeeded, or Failed
with the first failing replica's exit code and last stderr line, as the real one reports.

Test hooks: `POST /faults?get_503=N` makes the next N GETs answer 503; `GET /stats` counts
creates and GETs. `serve(root)` runs it as a uvicorn subprocess and writes a kubeconfig for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
_jobs: dict[tuple[str, str], dict[str, Any]] = {}
_stats: Counter[str] = Counter()
_faults: Counter[str] = Counter()
_tasks: set[asyncio.Task] = set()
PREFIX = "/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"


def _status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                         "message": message, "code": code}, status_code=code)


def _condition(job: dict[str, Any], kind: str, reason: str, message: str) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = job.setdefault("status", {}).setdefault("conditions", [])
    if kind in ("Succeeded", "Failed"):  # as the operator does: the job is no longer running
        for c in conditions:
            if c["type"] == "Running":
                c["status"] = "False"
    conditions.append({"type": kind, "status": "True", "reason": reason, "message": message,
                       "lastUpdateTime": now, "lastTransitionTime": now})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _operate(job: dict[str, Any]) -> None:
    name = job["metadata"]["name"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    pods = [(role, i, spec) for role in ("Master", "Worker") if (spec := specs.get(role))
            for i in range(int(spec.get("replicas", 1)))]
    port = _free_port()
    procs = []
    for rank, (role, i, spec) in enumerate(pods):
        container = spec["template"]["spec"]["containers"][0]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FOCUSDIFF_"))}
        env = {**base, **{e["name"]: str(e["value"]) for e in container.get("env") or []},
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(len(pods)),
               "RANK": str(rank), "PET_NNODES": str(len(pods)), "PET_NODE_RANK": str(rank)}
        argv = [*container.get("command", []), *container.get("args", [])]
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=container.get("workingDir") or os.environ.get("FAKE_K8S_WORKDIR"),
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        procs.append((f"{name}-{role.lower()}-{i}", proc))
    _condition(job, "Running", "PyTorchJobRunning", f"PyTorchJob {name} is running.")
    results = await asyncio.gather(*(p.communicate() for _, p in procs))
    for (pod, proc), (_, stderr) in zip(procs, results):
        if os.environ.get("FAKE_K8S_LOGDIR"):  # `kubectl logs`, for whoever debugs a test
            (Path(os.environ["FAKE_K8S_LOGDIR"]) / f"{pod}.log").write_bytes(stderr)
        if proc.returncode != 0:
            lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
            _condition(job, "Failed", "PyTorchJobFailed",
                       f"pod {pod} exited with code {proc.returncode}: {lines[-1] if lines else ''}")
            return
    _condition(job, "Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {name} is successfully completed.")


@app.post(PREFIX)
async def create(namespace: str, request: Request) -> Any:
    _stats["create"] += 1
    job = await request.json()
    name = (job.get("metadata") or {}).get("name")
    if not name:
        return _status(422, "Invalid", "metadata.name: Required value")
    if (namespace, name) in _jobs:
        return _status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
    job["metadata"]["namespace"] = namespace
    job["metadata"]["uid"] = f"uid-{len(_jobs)}"
    _jobs[(namespace, name)] = job
    _condition(job, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
    task = asyncio.get_running_loop().create_task(_operate(job))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return JSONResponse(job, status_code=201)


@app.get(PREFIX + "/{name}")
async def get(namespace: str, name: str) -> Any:
    _stats["get"] += 1
    if _faults["get_503"] > 0:
        _faults["get_503"] -= 1
        return _status(503, "ServiceUnavailable", "injected fault: the API server is restarting")
    job = _jobs.get((namespace, name))
    if job is None:
        return _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
    return job


@app.post("/faults")
async def faults(get_503: int = 0) -> dict[str, int]:
    _faults["get_503"] = get_503
    return dict(_faults)


@app.get("/stats")
async def stats() -> dict[str, int]:
    # Both counts always present: a test reading them before the first GET must see 0, not a missing key.
    return {"create": _stats["create"], "get": _stats["get"]}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@contextlib.contextmanager
def serve(root: Path, workdir: Path | None = None) -> Iterator[tuple[Path, str]]:
    """Run this app on 127.0.0.1; yields (kubeconfig path, base URL)."""
    from tests.servers import LOOPBACK, ManagedProcess, free_port, http_ok, loopback_no_proxy_env

    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
        "clusters": [{"name": "loopback", "cluster": {"server": url}}],
        "users": [{"name": "nobody", "user": {}}],
        "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "nobody"}}],
    }))
    env = {**loopback_no_proxy_env(), "FAKE_K8S_LOGDIR": str(root), **({"FAKE_K8S_WORKDIR": str(workdir)} if workdir else {})}
    with ManagedProcess([sys.executable, "-m", "uvicorn", "tests.fake_kubernetes:app", "--host", LOOPBACK, "--port", str(port)],
                        name="fake-kubernetes", cwd=Path(__file__).resolve().parents[1], log_path=root / "kubernetes.log",
                        env=env, ready=lambda: http_ok(f"{url}/healthz"), startup_timeout=60):
        yield kubeconfig, url
