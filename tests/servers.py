"""Real loopback servers for tests: a moto S3 endpoint and an MLflow tracking server.

Project rule: tests talk to real components over 127.0.0.1, never to monkeypatched
clients. This module starts those components as subprocesses and tears them down
cleanly, so a test run leaves no processes behind.

Building blocks (usable outside pytest):

* :func:`free_port` -- a free TCP port on 127.0.0.1.
* :class:`ManagedProcess` -- context manager that starts an argv in its own process
  group with its output in a log file, waits on a readiness probe, and on exit stops
  the whole process group (SIGTERM, then SIGKILL). Generic on purpose: reuse it for
  any server (e.g. ``prefect server start``).
* :func:`start_s3_server` / :func:`start_mlflow_server` -- context managers that
  yield :class:`S3Server` / :class:`MlflowServer` handles.

Pytest fixtures (loaded via ``pytest_plugins = ["tests.servers"]`` in conftest):

* ``s3_server`` (session) -> :class:`S3Server`
* ``mlflow_server`` (session) -> :class:`MlflowServer`, artifacts proxied into ``s3_server``
* ``mlflow_tracking`` (function) -> the same :class:`MlflowServer`, with the fluent
  ``mlflow.*`` API pointed at it for the duration of one test.
* ``loopback_bypasses_proxy`` (session, used by the above) -> extends NO_PROXY so
  in-process clients never send 127.0.0.1 traffic through a CI proxy.

Startup on a 2-core box: moto ~1.5-2.5 s, mlflow server ~12-20 s (hence session scope).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"

# The test now running, set by tests/conftest.py before each test's fixtures. A server
# started while a test without the `servers` marker runs is an error, so that
# `pytest -m "not servers"` is a run that starts no server (None outside pytest).
CURRENT_TEST: pytest.Item | None = None


def require_servers_marker(what: str) -> None:
    """Raise unless the running test is marked `servers` (or no test is running)."""
    item = CURRENT_TEST
    if item is not None and item.get_closest_marker("servers") is None:
        raise RuntimeError(f"{item.nodeid} starts {what} but is not marked `servers`: mark it "
                           "(pytest.mark.servers), or use a fixture tests/conftest.py lists in SERVER_FIXTURES")

# Dummy, test-only credentials. moto accepts any value; these must never be real.
_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Skip the EC2 metadata service lookup (seconds of timeouts on CI).
    "AWS_EC2_METADATA_DISABLED": "true",
}


def loopback_no_proxy_env() -> dict[str, str]:
    """NO_PROXY/no_proxy extended with loopback, keeping any existing entries.

    Loopback traffic must never go through a CI HTTP(S)_PROXY: requests (MLflow
    client), botocore and aiohttp (dvc-s3) all honour these variables.
    """
    entries = [e for e in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",") if e]
    merged = ",".join(dict.fromkeys([*entries, LOOPBACK, "localhost"]))
    return {"NO_PROXY": merged, "no_proxy": merged}


class ProcessStartError(RuntimeError):
    """A managed process exited early or did not become ready in time."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is currently free on ``host``.

    The OS picks it (bind to port 0). There is an unavoidable window between
    closing this socket and the server binding the port; :class:`ManagedProcess`
    detects the loser of such a race because its process exits.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 2xx. Any error counts as "not ready"."""
    # An explicit empty ProxyHandler: urllib would otherwise honour HTTP(S)_PROXY.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- #
# Generic managed subprocess
# --------------------------------------------------------------------------- #

# Safety net: if pytest dies without running fixture finalizers, atexit still
# stops whatever is running. Weak refs so this registry keeps nothing alive.
_RUNNING: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


@atexit.register
def _stop_all_running() -> None:
    for proc in list(_RUNNING):
        proc.stop()


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process from /proc, or None if gone/unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parens: split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = st
    return stats


def _descendants(root: int) -> set[int]:
    """PIDs of all live descendants of ``root`` (Linux /proc; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return set()
    children: dict[int, list[int]] = {}
    for pid, (_state, ppid, _pgrp) in _all_stats().items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pids: set[int], pgid: int) -> set[int]:
    """Which of ``pids`` or members of group ``pgid`` are still running.

    Zombies count as dead: they hold no resources, and in containers whose PID 1
    does not reap orphans they would otherwise look alive forever.
    """
    if not os.path.isdir("/proc"):  # non-Linux fallback: probe the group only
        try:
            os.killpg(pgid, 0)
            return {pgid}
        except (ProcessLookupError, PermissionError):
            return set()
    return {
        pid
        for pid, (state, _ppid, pgrp) in _all_stats().items()
        if state != "Z" and (pgrp == pgid or pid in pids)
    }


class ManagedProcess:
    """Run a server subprocess for the lifetime of a ``with`` block.

    Example::

        port = free_port()
        with ManagedProcess(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            name="prefect",
            env={"PREFECT_HOME": str(tmp / "prefect")},
            log_path=tmp / "prefect.log",
            ready=lambda: http_ok(f"http://127.0.0.1:{port}/api/health"),
            startup_timeout=90,
        ) as proc:
            ...  # server is up; proc.log_tail() shows its output

    Behaviour:

    * ``env`` is layered over ``os.environ`` (pass ``inherit_env=False`` to start
      from an empty environment instead).
    * stdout and stderr both go to ``log_path``. A file, not a pipe: nobody reads a
      pipe while the test runs, and a full pipe blocks the server.
    * The process is started with ``start_new_session=True`` so it leads its own
      process group; teardown signals that whole group (uvicorn workers, job
      consumers, ...) plus any descendant that moved to another group.
    * ``ready`` is polled until it returns True; exceptions it raises count as
      "not ready yet". If the process exits first, or ``startup_timeout`` passes,
      the process is stopped and :class:`ProcessStartError` is raised with the
      tail of the log.
    * Teardown: SIGTERM, wait up to ``stop_timeout``, then SIGKILL. ``stop()`` is
      idempotent and also runs from an ``atexit`` hook as a last resort.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        startup_timeout: float = 60.0,
        poll_interval: float = 0.25,
        stop_timeout: float = 15.0,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(log_path)
        self.env = {**(os.environ if inherit_env else {}), **(env or {})}
        self.cwd = cwd
        self.ready = ready
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # -- lifecycle --------------------------------------------------------- #

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the process and block until it is ready (or raise)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        require_servers_marker(f"the {self.name} server")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            # The child gets its own dup of the fd; ours can close right away.
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} before becoming ready.\n"
                    f"argv: {self.argv}\n{self._log_excerpt()}"
                )
            if self.ready is None:
                return
            try:
                if self.ready():
                    # Re-check liveness: a probe can succeed against a *foreign*
                    # server if another process won the race for our port.
                    if self.proc.poll() is None:
                        return
                    continue
            except Exception as exc:  # probe failures just mean "not yet"
                last_error = exc
            if time.monotonic() >= deadline:
                hint = f"last probe error: {last_error!r}\n" if last_error else ""
                raise ProcessStartError(
                    f"{self.name} not ready after {self.startup_timeout:.0f}s.\n"
                    f"argv: {self.argv}\n{hint}{self._log_excerpt()}"
                )
            time.sleep(self.poll_interval)

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, wait, then SIGKILL. Idempotent."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        pgid = proc.pid  # leader of its own session => pgid == pid
        # Snapshot descendants *before* signalling: once the leader dies they are
        # re-parented and can no longer be found through it.
        extra = _descendants(proc.pid)
        for sig, timeout in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            self._signal(pgid, extra, sig)
            if self._wait_gone(proc, pgid, extra, timeout):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)

    @staticmethod
    def _signal(pgid: int, extra: set[int], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for pid in extra:  # descendants that left the group (setsid etc.)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    @staticmethod
    def _wait_gone(proc: subprocess.Popen[bytes], pgid: int, extra: set[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            proc.poll()  # reap our direct child so it does not linger as a zombie
            if not _alive(extra, pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    # -- diagnostics ------------------------------------------------------- #

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The last ``max_bytes`` of the process log, decoded leniently."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"<log unreadable: {exc}>"

    def _log_excerpt(self) -> str:
        return f"--- tail of {self.log_path} ---\n{self.log_tail()}\n--- end of log ---"


# --------------------------------------------------------------------------- #
# S3 (moto server)
# --------------------------------------------------------------------------- #


@dataclass
class S3Server:
    """Handle on a running moto S3 endpoint.

    ``env`` holds everything a subprocess (dvc, mlflow server, ...) needs to talk to
    this endpoint: dummy credentials, region, ``AWS_ENDPOINT_URL`` (read by boto3 /
    botocore >= 1.31) and ``MLFLOW_S3_ENDPOINT_URL`` (read by MLflow's S3 artifact
    repository).
    """

    endpoint_url: str
    bucket: str
    env: dict[str, str]
    process: ManagedProcess = field(repr=False)

    def client(self) -> Any:
        """A boto3 S3 client bound to this endpoint with the dummy credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """All object keys in the bucket under ``prefix``."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]


@contextlib.contextmanager
def start_s3_server(
    workdir: Path, bucket: str = "focusdiff-test", startup_timeout: float = 30.0
) -> Iterator[S3Server]:
    """Run ``moto.server`` on 127.0.0.1 with ``bucket`` created; yield an :class:`S3Server`."""
    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    # Keep botocore away from the developer's ~/.aws files. They must point at
    # real (empty) files: aiobotocore, used by dvc-s3, rejects os.devnull with
    # "ConfigNotFound: The specified config file (/dev/null) could not be found".
    aws_dir = workdir / "aws"
    aws_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config", "credentials"):
        (aws_dir / name).touch()
    env = {
        **_DUMMY_AWS_ENV,
        **loopback_no_proxy_env(),
        "AWS_CONFIG_FILE": str(aws_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    # `python -m moto.server` (not the moto_server script) so it runs in this very env.
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    with ManagedProcess(
        argv,
        name="moto-s3",
        env=env,
        cwd=workdir,
        log_path=workdir / "moto.log",
        # moto answers GET / with a ListBuckets XML document once it is serving.
        ready=lambda: http_ok(f"{endpoint}/"),
        startup_timeout=startup_timeout,
    ) as proc:
        server = S3Server(endpoint_url=endpoint, bucket=bucket, env=env, process=proc)
        server.client().create_bucket(Bucket=bucket)
        yield server


# --------------------------------------------------------------------------- #
# MLflow tracking server
# --------------------------------------------------------------------------- #


@dataclass
class MlflowServer:
    """Handle on a running MLflow tracking server (sqlite backend, artifacts in S3).

    Clients only need ``tracking_uri``: artifacts travel through the server's
    ``mlflow-artifacts:`` proxy, so no S3 credentials are needed client-side.
    """

    tracking_uri: str
    backend_store_uri: str
    artifacts_destination: str
    log_path: Path
    s3: S3Server = field(repr=False)
    process: ManagedProcess = field(repr=False)

    def client(self) -> Any:
        """An ``MlflowClient`` bound to this server, its registry included.

        The registry URI is given too: otherwise the client takes the process-wide one, which
        an earlier in-process stage (register_policy calls ``mlflow.set_registry_uri``) may
        have pointed at another project's sqlite store.
        """
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


@contextlib.contextmanager
def start_mlflow_server(
    workdir: Path,
    s3: S3Server,
    artifacts_prefix: str = "mlartifacts",
    startup_timeout: float = 90.0,
) -> Iterator[MlflowServer]:
    """Run ``mlflow server`` on 127.0.0.1; yield an :class:`MlflowServer`.

    Backend store: a sqlite file in ``workdir``. Artifacts: proxied by the server
    (``--serve-artifacts``) into ``s3://<bucket>/<artifacts_prefix>`` on ``s3``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tracking_uri = f"http://{LOOPBACK}:{port}"
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    destination = f"s3://{s3.bucket}/{artifacts_prefix}"
    env = {
        **s3.env,  # dummy creds + MLFLOW_S3_ENDPOINT_URL: the server writes to moto
        # By default `mlflow server` also launches a huey job runner (~7 consumer
        # processes) for server-side jobs (scorers, trace rollups). Tests need none
        # of it, and on a 2-core CI box it competes with the server for CPU.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--host", LOOPBACK,
        "--port", str(port),
        "--workers", "1",  # default is 4 uvicorn workers: too many for a 2-core box
        "--backend-store-uri", backend,
        "--serve-artifacts",
        "--artifacts-destination", destination,
        # New experiments get mlflow-artifacts:/ roots, i.e. go through the proxy.
        "--default-artifact-root", "mlflow-artifacts:/",
    ]  # fmt: skip
    log_path = workdir / "mlflow-server.log"
    with ManagedProcess(
        argv,
        name="mlflow-server",
        env=env,
        cwd=workdir,  # anything mlflow writes relative to cwd stays in the tmp dir
        log_path=log_path,
        ready=lambda: http_ok(f"{tracking_uri}/health"),
        startup_timeout=startup_timeout,
    ) as proc:
        yield MlflowServer(
            tracking_uri=tracking_uri,
            backend_store_uri=backend,
            artifacts_destination=destination,
            log_path=log_path,
            s3=s3,
            process=proc,
        )


# --------------------------------------------------------------------------- #
# pytest fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def loopback_bypasses_proxy() -> Iterator[None]:
    """Make in-process clients (boto3, MLflow) skip any HTTP proxy for 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in loopback_no_proxy_env().items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory, loopback_bypasses_proxy: None) -> Iterator[S3Server]:
    """Session-wide moto S3 endpoint on 127.0.0.1 with one bucket created.

    Shared by all tests: use a unique key prefix per test to stay isolated.
    """
    with start_s3_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[MlflowServer]:
    """Session-wide MLflow tracking server on 127.0.0.1, artifacts proxied into ``s3_server``."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), s3_server) as server:
        yield server


@pytest.fixture
def mlflow_tracking(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """Point the fluent ``mlflow.*`` API (and subprocesses) at ``mlflow_server`` for one test."""
    import mlflow

    # setenv first so monkeypatch restores the caller's MLFLOW_TRACKING_URI afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    try:
        yield mlflow_server
    finally:
        while mlflow.active_run() is not None:  # a failed test may leave a run open
            mlflow.end_run(status="FAILED")
        mlflow.set_tracking_uri(None)  # back to "unset": env var / default resolution
