"""MLflow tracking for every stage, the same way from every entry point.

A stage opens a `StageRun`; it records the stage's parameters, git commit,
and links: when run inside the Prefect pipeline (directly or through `dvc repro`)
the run is a child of the pipeline's MLflow run (FOCUSDIFF_PARENT_RUN_ID) and is
tagged with the Prefect flow-run id. All logging goes through an explicit run id
(MlflowClient), so it is safe from Prefect task threads.

Default tracking is embedded: a sqlite file and a local artifact directory.
MLFLOW_TRACKING_URI in the environment, or `tracking.uri`, points it at a server.
Credentials (e.g. MLFLOW_TRACKING_TOKEN, AWS_*) come from the environment only.
"""

from __future__ import annotations

import os
import sys
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from focusdiff.errors import TrainingPaused
from focusdiff.tracking_config import TrackingConfig
from focusdiff.redact import redact_urls

PARENT_RUN_ENV = "FOCUSDIFF_PARENT_RUN_ID"
FLOW_RUN_ENV = "FOCUSDIFF_FLOW_RUN_ID"
_PARAM_MAX = 6000  # MLflow's limit on a param value


def tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI in effect: MLFLOW_TRACKING_URI, else `tracking.uri` (a relative sqlite path pinned).

    A URI with credentials (`http://user:secret@host`) is used as given, but MLflow would print it
    whole whenever a run on the server ends ("View run ... at: <URI>/#/..."): that print is turned
    off for this process (and its children) as soon as such a URI is in effect.
    """
    uri = _pin_sqlite(os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri)
    if redact_urls(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def _pin_sqlite(uri: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`, resolved against the current directory.

    MLflow caches one store per URI string for the life of the process, so with a
    relative path every project opened later in the same process (another flow run,
    a test) would keep writing into the first project's database.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return uri
    return f"{prefix}{Path(path).resolve()}{sep}{query}"


def _artifact_root(cfg: TrackingConfig, uri: str) -> str | None:
    if uri.startswith(("http://", "https://", "databricks")):
        return None  # the server decides where artifacts go
    if "://" in cfg.artifact_location:
        return cfg.artifact_location
    return Path(cfg.artifact_location).resolve().as_uri()


def client_and_experiment(cfg: TrackingConfig) -> tuple[MlflowClient, str]:
    uri = tracking_uri(cfg)
    # For the fluent API too. mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI
    # to os.environ, which tracking_uri() reads as the user's override: left there,
    # the first project opened in a process would capture every later one (another
    # flow run with another project_dir or params). Keep the environment as it was.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return client, exp.experiment_id
    try:
        return client, client.create_experiment(cfg.experiment, artifact_location=_artifact_root(cfg, uri))
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return client, exp.experiment_id


def git_commit(cwd: str | Path = ".") -> dict[str, str]:
    """{'git.commit': sha, 'git.dirty': 'true'|'false'} or {} outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": sha.strip(), "git.dirty": str(bool(dirty.strip())).lower()}


def prefect_flow_run_id() -> str | None:
    """The Prefect flow run this process works for: FLOW_RUN_ENV (set for the stages a flow
    starts as subprocesses, and for cluster jobs), else the flow run this process runs. A process
    that has not imported prefect runs no flow: importing it only to ask costs ~1 s per command."""
    if os.environ.get(FLOW_RUN_ENV):
        return os.environ[FLOW_RUN_ENV]
    if "prefect" not in sys.modules:
        return None
    try:
        from prefect.runtime import flow_run

        return flow_run.id
    except Exception:  # prefect not importable or no context: not inside a flow
        return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _get_run(client: MlflowClient, run_id: str):
    """The run, or None when this tracking server has no run of that id."""
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def run_exists(cfg: TrackingConfig, run_id: str) -> bool:
    client, _ = client_and_experiment(cfg)
    return _get_run(client, run_id) is not None


def end_abandoned_run(cfg: TrackingConfig, run_id: str, reason: str) -> bool:
    """Mark `run_id` FAILED, with `reason` as its error, if it is still RUNNING: a killed process
    never ends its run, which would otherwise stay RUNNING forever. Returns whether it did so
    (not when the run ended already or is not on this tracking server)."""
    client, _ = client_and_experiment(cfg)
    run = _get_run(client, run_id)
    if run is None or run.info.status != "RUNNING":
        return False
    client.set_tag(run_id, "error", reason[:5000])
    client.set_terminated(run_id, status="FAILED")
    return True


class StageRun:
    """An MLflow run for one stage; use as a context manager.

    On an exception the run ends FAILED with the error recorded as a tag, so a
    failed stage is never mistaken for a finished one. With `resume_run_id` it
    continues an existing run (a training resumed from its checkpoints): the run is
    RUNNING again, a previous error moves to the `error.before_resume` tag, and
    parameters already logged are kept (see `log_params`).
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        stage: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        self.client, self.experiment_id = client_and_experiment(cfg)
        parent = parent_run_id or os.environ.get(PARENT_RUN_ENV)
        all_tags = {"stage": stage, **git_commit(), **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        if flow_run := prefect_flow_run_id():
            all_tags["prefect.flow_run_id"] = str(flow_run)
        self._logged_params: dict[str, str] | None = None  # a resumed run's, which MLflow will not change
        if resume_run_id is None:
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=stage)
            self.run_id = run.info.run_id
        else:
            self.run_id = resume_run_id
            self._resume(all_tags)
        if params:
            self.log_params(params)

    def _resume(self, tags: Mapping[str, str]) -> None:
        run = self.client.get_run(self.run_id)
        self._logged_params = dict(run.data.params)
        self.client.update_run(self.run_id, status="RUNNING")
        if "error" in run.data.tags:
            self.client.set_tag(self.run_id, "error.before_resume", run.data.tags["error"])
            self.client.delete_tag(self.run_id, "error")
        self.set_tags({**tags, "resumed": "true"})

    # -- context manager
    def __enter__(self) -> "StageRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, TrainingPaused):  # a bounded invocation: the next one continues (in a new run)
            self.client.set_tag(self.run_id, "paused", str(exc)[:5000])
            self.client.set_terminated(self.run_id, status="KILLED")
        elif exc is not None:
            self.client.set_tag(self.run_id, "error", f"{exc_type.__name__}: {exc}"[:5000])
            self.client.set_terminated(self.run_id, status="FAILED")
        else:
            self.client.set_terminated(self.run_id, status="FINISHED")

    # -- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record `params`, flattened to dotted keys; any URL in a value has its credentials
        masked first (a judge's base_url may read `http://user:secret@host/v1`)."""
        flat = flatten(params)
        items = [Param(k, redact_urls(str(v))[:_PARAM_MAX]) for k, v in sorted(flat.items())]
        if self._logged_params is not None:
            items = self._not_yet_logged(items)
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _not_yet_logged(self, items: list[Param]) -> list[Param]:
        """A resumed run's params that it does not hold yet. MLflow params cannot change, so a value
        that changed since the run started (a setting that does not change the trajectory, such as
        the judge's URL) is kept as a `param_changed_on_resume.<key>` tag instead."""
        logged = self._logged_params or {}
        changed = [RunTag(f"param_changed_on_resume.{p.key}", p.value) for p in items
                   if p.key in logged and logged[p.key] != p.value]
        if changed:
            self.client.log_batch(self.run_id, tags=changed)
        return [p for p in items if p.key not in logged]

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_dict(self, obj: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)
