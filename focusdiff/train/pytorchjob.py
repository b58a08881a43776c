"""Multi-node Pair-GRPO as a Kubeflow PyTorchJob: render it, submit it, watch it.

On a cluster the pipeline's train task does not train in its own pod. It renders the job
manifest (`cluster.pytorchjob.manifest`, e.g. infra/k8s/pytorchjob-janus-pro-7b.yaml) for
this flow run: a name derived from the flow-run id, the image, the node count, and the
tracking links (the flow-run id and the pipeline's MLflow run) in every container's
environment. It creates the job through the Kubernetes API and polls its conditions until
Succeeded or Failed. The job's pods run `focusdiff train`, whose rank 0 registers the policy
in MLflow tagged with the flow-run id: that tag is how the flow finds the version to evaluate.

Restarts: a flow retried after its worker died renders the same name, gets 409 on create,
and adopts the running job instead of starting a second one (only a job labelled with the
same flow run is adopted); the job's own pods resume from their last checkpoint on the shared
volume (restartPolicy OnFailure). Reading the API retries transient failures (connection
errors, 429, 5xx); a Failed job is an error carrying the operator's reason and message.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from focusdiff.errors import FocusdiffError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
FLOW_RUN_LABEL = "focusdiff/flow-run-id"


class PyTorchJobConfig(BaseModel):
    """How the pipeline submits Pair-GRPO to Kubernetes (`cluster.pytorchjob` in params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Path = Field(Path("infra/k8s/pytorchjob-janus-pro-7b.yaml"), description="the PyTorchJob template")
    namespace: str | None = Field(None, description="overrides the manifest's namespace")
    image: str | None = Field(None, description="overrides every container's image (e.g. a tagged build)")
    nodes: int = Field(2, ge=1, description="pods: 1 Master + (nodes - 1) Workers")
    name_prefix: str = Field("focusdiff-train", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    kubeconfig: Path | None = Field(None, description="default: in-cluster credentials inside a pod, else ~/.kube/config")
    poll_seconds: float = Field(30.0, gt=0)
    timeout_hours: float = Field(96.0, gt=0)


class ClusterConfig(BaseModel):
    """Where the pipeline trains: `local` runs `dvc repro train` in the flow's own process;
    `pytorchjob` submits multi-node training to Kubernetes and evaluates the registered version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    launcher: Literal["local", "pytorchjob"] = "local"
    pytorchjob: PyTorchJobConfig = PyTorchJobConfig()


class TrainingJobError(FocusdiffError):
    """The training job failed, timed out, or cannot be submitted."""


def job_name(prefix: str, flow_run_id: str) -> str:
    """A DNS-1123 name that is the same for every retry of one flow run."""
    digest = hashlib.sha256(flow_run_id.encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def render_job(cfg: PyTorchJobConfig, flow_run_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The manifest with this run's name, label, namespace, image, replica counts and `env`."""
    try:
        job = yaml.safe_load(cfg.manifest.read_text("utf-8"))
    except FileNotFoundError:
        raise TrainingJobError(f"{cfg.manifest}: PyTorchJob manifest not found") from None
    except yaml.YAMLError as exc:
        raise TrainingJobError(f"{cfg.manifest}: not valid YAML: {exc}") from None
    if not isinstance(job, dict) or job.get("kind") != "PyTorchJob" or job.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise TrainingJobError(f"{cfg.manifest}: expected kind PyTorchJob, apiVersion {GROUP}/{VERSION}")
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    if "Master" not in specs:
        raise TrainingJobError(f"{cfg.manifest}: spec.pytorchReplicaSpecs.Master is missing")
    job = copy.deepcopy(job)  # YAML anchors share one template between Master and Worker
    meta = job.setdefault("metadata", {})
    meta["name"] = job_name(cfg.name_prefix, flow_run_id)
    meta.setdefault("labels", {})[FLOW_RUN_LABEL] = flow_run_id
    if cfg.namespace:
        meta["namespace"] = cfg.namespace
    if not meta.get("namespace"):
        raise TrainingJobError(f"{cfg.manifest}: no metadata.namespace and cluster.pytorchjob.namespace is unset")
    specs = job["spec"]["pytorchReplicaSpecs"]
    specs["Master"]["replicas"] = 1
    if cfg.nodes > 1:
        if "Worker" not in specs:
            raise TrainingJobError(f"{cfg.manifest}: nodes={cfg.nodes} needs spec.pytorchReplicaSpecs.Worker")
        specs["Worker"]["replicas"] = cfg.nodes - 1
    else:
        specs.pop("Worker", None)
    extra = [{"name": k, "value": v} for k, v in (env or {}).items()]
    for role, spec in specs.items():
        containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or []
        if not containers:
            raise TrainingJobError(f"{cfg.manifest}: pytorchReplicaSpecs.{role} has no containers")
        for container in containers:
            if cfg.image:
                container["image"] = cfg.image
            container["env"] = [e for e in container.get("env") or [] if e.get("name") not in (env or {})] + extra
    return job


def _transient(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (exc.status or 0) >= 500
    return isinstance(exc, (HTTPError, ConnectionError, TimeoutError))


_api_retry = retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(6),
                   wait=wait_exponential_jitter(initial=1, max=30), reraise=True)


class PyTorchJobs:
    """The PyTorchJob resources of one cluster, through the official Kubernetes client."""

    def __init__(self, kubeconfig: Path | None = None):
        from kubernetes import client, config

        if kubeconfig is None and config.incluster_config.SERVICE_HOST_ENV_NAME in os.environ:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
        else:
            if kubeconfig is not None and not Path(kubeconfig).is_file():
                raise TrainingJobError(f"{kubeconfig}: kubeconfig not found")
            api_client = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)
        self.api = client.CustomObjectsApi(api_client)

    @_api_retry
    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    @_api_retry
    def _create(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)

    def submit(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the job, or adopt the one this flow run created before a restart.
        Returns (job, adopted)."""
        from kubernetes.client.exceptions import ApiException

        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            return self._create(namespace, job), False
        except ApiException as exc:
            if exc.status != 409:
                raise TrainingJobError(f"PyTorchJob {namespace}/{name}: create failed ({exc.status} {exc.reason}): "
                                       f"{_message(exc)}") from None
        existing = self.get(namespace, name)
        owner = ((existing.get("metadata") or {}).get("labels") or {}).get(FLOW_RUN_LABEL)
        if owner != meta["labels"][FLOW_RUN_LABEL]:
            raise TrainingJobError(f"PyTorchJob {namespace}/{name} already exists and belongs to flow run {owner!r}, "
                                   f"not {meta['labels'][FLOW_RUN_LABEL]!r}")
        return existing, True

    def wait(self, namespace: str, name: str, poll_seconds: float, timeout_s: float,
             on_change: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job's Succeeded or Failed condition is true; return the job or raise."""
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            job = self.get(namespace, name)
            state, condition = job_state(job)
            if state != last and on_change is not None:
                on_change(state, condition)
            last = state
            if state == "Succeeded":
                return job
            if state == "Failed":
                raise TrainingJobError(f"PyTorchJob {namespace}/{name} failed: {condition.get('reason', '?')}: "
                                       f"{condition.get('message', '')}")
            if time.monotonic() > deadline:
                raise TrainingJobError(f"PyTorchJob {namespace}/{name} still {state} after {timeout_s:.0f} s "
                                       f"(cluster.pytorchjob.timeout_hours); it was left running")
            time.sleep(poll_seconds)


def job_state(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The latest true condition (Created, Running, Restarting, Succeeded, Failed) or Pending."""
    true = [c for c in (job.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    for final in ("Failed", "Succeeded"):
        for c in true:
            if c.get("type") == final:
                return final, c
    return (true[-1].get("type", "Pending"), true[-1]) if true else ("Pending", {})


def _message(exc: Any) -> str:
    """The API server's Status message, else the start of the body."""
    body = str(getattr(exc, "body", None) or "")
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300]


def run_training_job(cfg: PyTorchJobConfig, flow_run_id: str, env: dict[str, str],
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Submit (or adopt) this flow run's training job and wait for it; returns the final job."""
    job = render_job(cfg, flow_run_id, env)
    jobs = PyTorchJobs(cfg.kubeconfig)
    _, adopted = jobs.submit(job)
    meta = job["metadata"]
    log(f"PyTorchJob {meta['namespace']}/{meta['name']}: {'adopted (flow retried)' if adopted else 'created'}, "
        f"{cfg.nodes} node(s)")
    return jobs.wait(meta["namespace"], meta["name"], cfg.poll_seconds, cfg.timeout_hours * 3600,
                     on_change=lambda state, c: log(f"PyTorchJob {meta['name']}: {state} {c.get('message', '')}".rstrip()))
