"""The MLflow model registry side: register a trained policy, attach its evaluations, gate it.

* `register_policy`: the policy directory becomes a pyfunc model logged under the training
  run and a new version of the registered model, tagged with its lineage (data version,
  git commit, base model, algorithm, Prefect flow run), described by a plain-words model
  card, aliased `challenger`.
* `record_evaluation` / `record_failure`: each benchmark's outcome is written on the
  version (tags `eval.<benchmark>.status`, `eval.<metric>`) and its files are logged under
  the version's run (`evaluation/<benchmark>/`), PairComp's per-pair scores included, so a
  later comparison never needs to re-run the champion.
* `promote`: reads both versions' evidence, asks the gate (gate.py), writes the decision,
  the numbers and the reasons on the challenger, and moves `champion` when it wins.
  Idempotent; `dry_run` decides without writing.

Reading the champion and challenger (`find_version`, `champion`, `promote`) runs under the
gate's registry budget (`promote.registry_timeout_s`, `promote.registry_retries`) and every
failure is classified once (`classify`): only the registry's own "does not exist" means
missing; a server that does not answer is `RegistryUnreachable`, naming the tracking URI
(credentials masked), within seconds rather than after MLflow's minutes of retries.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TypeVar

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from focusdiff.tracking_config import TrackingConfig
from focusdiff.errors import FocusdiffError
from focusdiff.redact import redact_urls
from focusdiff.registry.gate import Decision, Evidence, GateConfig, decide
from focusdiff.eval.protocol import TAG as PROTOCOL_TAG
from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.registry.registration import Registration
from focusdiff.tracking import tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"
ROLE_TAG, BASE_ROLE = "focusdiff.role", "base"  # the version that is the starting policy, not a trained one


class RegistryError(FocusdiffError):
    """The registry does not hold what a command needs (a version, an alias, evidence)."""


class RegistryUnreachable(RegistryError):
    """The tracking server gave no answer (refused or timed-out connection, 5xx responses)
    within the gate's registry budget."""


def _client(tracking: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri(tracking), registry_uri=tracking_uri(tracking))


class Failure(Enum):
    """What a failed registry call means (see `classify`)."""

    NOT_FOUND = "not found"
    UNREACHABLE = "unreachable"
    OTHER = "other"


# MLflow's stores (sqlalchemy, file, hence also the server) answer a missing alias with
# INVALID_PARAMETER_VALUE and this message, not with RESOURCE_DOES_NOT_EXIST.
_MISSING_ALIAS = re.compile(r"\bRegistered model alias \S+ not found\.")
# What MLflow's HTTP client gives up with, wrapped in the MlflowException it raises: a refused
# or timed-out connection, or retries exhausted on 408/429/5xx responses.
_NO_ANSWER = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)


def classify(exc: MlflowException) -> Failure:
    """The one place that decides what a registry failure means.

    * NOT_FOUND: the registry answered that the model, version or alias does not exist
      (RESOURCE_DOES_NOT_EXIST, or a missing alias, see `_MISSING_ALIAS`);
    * UNREACHABLE: the registry did not answer (TEMPORARILY_UNAVAILABLE, or the `requests`
      error MLflow's HTTP client gave up with);
    * OTHER: it answered with anything else (permission denied, a bad request, a broken
      store). Never "not found": an outage read as "no champion" lets any challenger through.
    """
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return Failure.NOT_FOUND
    if exc.error_code == "INVALID_PARAMETER_VALUE" and _MISSING_ALIAS.search(exc.message):
        return Failure.NOT_FOUND
    if exc.error_code == "TEMPORARILY_UNAVAILABLE":
        return Failure.UNREACHABLE
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, _NO_ANSWER):
            return Failure.UNREACHABLE
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return Failure.OTHER


_BUDGET_LOCK = threading.RLock()


@contextmanager
def _registry_budget(gate: GateConfig) -> Iterator[None]:
    """MLflow's HTTP client takes its retry policy from the environment, read on every request
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _TIMEOUT and MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER
    in mlflow.environment_variables; by default 7 retries, a factor-2 backoff, a 120 s timeout and
    whatever wait a 429/503 asks for: about four minutes before an outage surfaces), and its REST
    store has no per-client setting. So the gate's budget is set there around each registry call
    and the previous values are put back after. The environment is process-wide: these scopes are
    serialized by a lock, and another thread that talks to MLflow meanwhile runs under the same budget."""
    budget = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(gate.registry_retries),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(gate.registry_timeout_s),
              "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}
    with _BUDGET_LOCK:
        before = {key: os.environ.get(key) for key in budget}
        os.environ.update(budget)
        try:
            yield
        finally:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _registry_error(exc: MlflowException, what: str, gate: GateConfig, tracking: TrackingConfig) -> RegistryError:
    """The error a failed registry call becomes, its message naming the call and the tracking URI
    (credentials masked: MLflow accepts them in an http(s) URI and repeats the URI in its errors)."""
    uri = tracking_uri(tracking)
    if classify(exc) is Failure.UNREACHABLE:
        message = (f"{what}: the MLflow tracking server {uri} is unreachable (no answer after "
                   f"{gate.registry_retries} retries, {gate.registry_timeout_s} s timeout each; "
                   "promote.registry_retries / promote.registry_timeout_s): is it running, and do tracking.uri "
                   f"or MLFLOW_TRACKING_URI point at it? {exc.message}")
        return RegistryUnreachable(redact_urls(message))
    answer = exc.message if exc.message.startswith(exc.error_code) else f"{exc.error_code}: {exc.message}"
    return RegistryError(redact_urls(f"{what}: the registry at {uri} answered {answer}"))


T = TypeVar("T")


def _ask(gate: GateConfig, tracking: TrackingConfig, what: str, call: Callable[[], T],
         missing_ok: bool = False) -> T | None:
    """`call()` under the gate's registry budget. None when the registry says the thing does not
    exist and `missing_ok`; every other failure is a RegistryError (`_registry_error`)."""
    try:
        with _registry_budget(gate):
            return call()
    except MlflowException as exc:
        if missing_ok and classify(exc) is Failure.NOT_FOUND:
            return None
        raise _registry_error(exc, what, gate, tracking) from None


def model_card(name: str, version_tags: dict[str, str]) -> str:
    t = version_tags
    what = (f"the starting policy {t.get('base_model', '?')}, registered untrained to be the first champion "
            f"(evaluated with dataset version {t.get('data.version', '?')}, code {t.get('git.commit', '?')[:12]}). "
            if t.get(ROLE_TAG) == BASE_ROLE else
            f"a text-to-image policy trained with {t.get('algorithm', '?')} from {t.get('base_model', '?')} "
            f"on dataset version {t.get('data.version', '?')} (code {t.get('git.commit', '?')[:12]}). ")
    return (f"{name}: {what}"
            "Load it with mlflow.pyfunc.load_model(...).predict(DataFrame(prompt=[...], seed=[...])) for PNG images, "
            "or download its `policy` artifact and use `focusdiff generate --policy <dir>`. "
            "Its benchmark results and the promotion decision are in this version's tags.")


def register_policy(policy_dir: Path, gate: GateConfig, tracking: TrackingConfig, run_id: str,
                    tags: dict[str, str], alias: str | None = CHALLENGER) -> Registration:
    """Log `policy_dir` as a pyfunc model under run `run_id` and register it; `alias` (challenger
    for a trained policy; none for the starting policy, which `crown_first_champion` aliases)."""
    import mlflow

    from focusdiff.registry import pyfunc

    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="policy", python_model=pyfunc.__file__, artifacts={"policy": str(policy_dir)},
            signature=pyfunc.SIGNATURE, input_example=pyfunc.INPUT_EXAMPLE,
            pip_requirements=["focusdiff", "torch", "transformers", "safetensors", "pandas"],
            registered_model_name=gate.model_name, await_registration_for=60)
    version = str(info.registered_model_version)
    client = _client(tracking)
    clean = {k: str(v) for k, v in tags.items() if v not in (None, "")}
    for key, value in clean.items():
        client.set_model_version_tag(gate.model_name, version, key, value)
    client.update_model_version(gate.model_name, version, description=model_card(gate.model_name, clean))
    if alias is not None:
        client.set_registered_model_alias(gate.model_name, alias, version)
    return Registration(model_name=gate.model_name, version=version, run_id=run_id, policy=str(policy_dir))


def _version_tagged(gate: GateConfig, tracking: TrackingConfig, tags: dict[str, str]) -> Registration | None:
    """The newest version of the gate's model that carries all of `tags`; None when none does."""
    client = _client(tracking)
    versions = _ask(gate, tracking, f"registered model {gate.model_name!r}: cannot list versions",
                    lambda: client.search_model_versions(f"name = '{gate.model_name}'", max_results=10_000,
                                                         order_by=["version_number DESC"]))
    for mv in versions:
        if tags.items() <= dict(mv.tags).items():
            return Registration(model_name=gate.model_name, version=str(mv.version), run_id=mv.run_id)
    return None


def registered_by_flow_run(gate: GateConfig, tracking: TrackingConfig, flow_run_id: str) -> Registration:
    """The version a training job registered for this flow run (its `prefect.flow_run_id` tag):
    how the pipeline finds what a PyTorchJob trained on the cluster."""
    registration = _version_tagged(gate, tracking, {"prefect.flow_run_id": flow_run_id})
    if registration is None:
        raise RegistryError(f"registered model {gate.model_name!r} has no version tagged prefect.flow_run_id="
                            f"{flow_run_id}: the training job succeeded but registered nothing "
                            "(is promote.register_trained on in the job's params?)")
    return registration


def registered_base(gate: GateConfig, tracking: TrackingConfig, fingerprint: str) -> Registration | None:
    """The version an earlier `baseline` stage registered for the starting policy whose checkpoint
    has `fingerprint` (its `base.fingerprint` tag), so a stage that stopped between registering and
    crowning reuses it instead of adding another version; None when there is none."""
    return _version_tagged(gate, tracking, {ROLE_TAG: BASE_ROLE, "base.fingerprint": fingerprint})


def crown_first_champion(gate: GateConfig, tracking: TrackingConfig, registration: Registration) -> None:
    """Make `registration` (the evaluated starting policy) the first champion, saying so on the
    version as the gate says its decisions. Refused when a champion appeared meanwhile: the
    gate, not this stage, decides between two versions."""
    client = _client(tracking)
    name, v = gate.model_name, registration.version
    current = champion(gate, tracking, client)
    if current is not None and str(current.version) != v:
        raise RegistryError(f"registered model {name!r} has had a champion (version {current.version}) since this "
                            f"stage began: version {v} (the starting policy) is left uncrowned; gate it with "
                            f"`focusdiff promote --version {v}` if it should compete")
    reason = ("the starting policy, registered and evaluated under the current protocol, is the first champion: "
              "every trained challenger is compared with it pair by pair")

    def write() -> None:
        client.set_model_version_tag(name, v, "gate.decision", "first champion")
        client.set_model_version_tag(name, v, "gate.reason", reason)
        client.set_model_version_tag(name, v, "gate.at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        client.set_registered_model_alias(name, CHAMPION, v)

    _ask(gate, tracking, f"registered model {name!r} version {v}: cannot make it the champion", write)


def record_evaluation(registration: Registration, tracking: TrackingConfig, benchmark: str, metrics: dict[str, float],
                      files: list[Path], protocol: EvaluationProtocol | None = None) -> None:
    """`protocol`: how PairComp was measured (the gate compares versions only under one)."""
    client = _client(tracking)
    name, version = registration.model_name, registration.version
    for path in files:
        client.log_artifact(registration.run_id, str(path), f"evaluation/{benchmark}")
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"eval.{key}", f"{value:.6g}")
    if protocol is not None:
        client.set_model_version_tag(name, version, f"eval.{benchmark}.evaluator", protocol.as_tag())
    client.set_model_version_tag(name, version, f"eval.{benchmark}.status", "complete")


def record_failure(registration: Registration, tracking: TrackingConfig, benchmark: str, reason: str) -> None:
    _client(tracking).set_model_version_tag(registration.model_name, registration.version,
                                            f"eval.{benchmark}.status", f"failed: {reason}"[:4900])


def find_version(gate: GateConfig, tracking: TrackingConfig, ref: str, client: MlflowClient | None = None):
    """Version `ref` (a number or an alias such as `challenger`) of the gate's registered model.
    A RegistryError when the registry says there is no such version; RegistryUnreachable when
    it does not answer."""
    client = client or _client(tracking)
    name = gate.model_name
    version = _ask(gate, tracking, f"registered model {name!r}: cannot read version {ref!r}",
                   (lambda: client.get_model_version(name, ref)) if ref.isdigit()
                   else (lambda: client.get_model_version_by_alias(name, ref)), missing_ok=True)
    if version is None:
        raise RegistryError(f"registered model {name!r} has no version {ref!r} (registry {redact_urls(tracking_uri(tracking))})")
    return version


def gate_metrics(name: str, version, gate: GateConfig) -> dict[str, float]:
    """The metrics the gate reads (`GateConfig.metrics_read`) from the version's `eval.<metric>`
    tags. Other eval tags are not read: a free-text tag (a reviewer's `eval.note` added in the
    MLflow UI) is no metric. A read metric whose value is not a finite number is a RegistryError
    naming the version, the tag and the value: the gate must not decide on it, nor skip it."""
    tags = dict(version.tags)
    metrics: dict[str, float] = {}
    for metric in gate.metrics_read():
        raw = tags.get(f"eval.{metric}")
        if raw is None:
            continue  # the gate reports a missing metric itself
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise RegistryError(f"registered model {name!r} version {version.version}: tag 'eval.{metric}' is "
                                f"{raw!r}, not a finite number; the gate compares {metric} (promote.metric / "
                                "promote.tolerances): correct the tag or re-run that evaluation")
        metrics[metric] = value
    return metrics


def evidence(client: MlflowClient, name: str, version, gate: GateConfig, tracking: TrackingConfig) -> Evidence:
    tags = dict(version.tags)
    metrics = gate_metrics(name, version, gate)
    status = {b: tags.get(f"eval.{b}.status", "missing") for b in gate.required}
    pairs: dict[str, tuple[str, float]] = {}
    if status.get("paircomp") == "complete":
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with _registry_budget(gate):
                    local = client.download_artifacts(version.run_id, "evaluation/paircomp/pairs.jsonl", tmp)
            except MlflowException as exc:
                what = f"{name} version {version.version}: cannot download PairComp's per-pair scores"
                if classify(exc) is Failure.UNREACHABLE:
                    raise _registry_error(exc, what, gate, tracking) from None
                raise RegistryError(f"{name} version {version.version}: PairComp is marked complete but its per-pair "
                                    f"scores are missing from run {version.run_id}: {exc.message}") from None
            for line in Path(local).read_text("utf-8").splitlines():
                row = json.loads(line)
                pairs[f"{row['caption1']}\n{row['caption2']}"] = (row["category"], float(row["g"]))
    return Evidence(str(version.version), metrics, status, pairs, tags.get(PROTOCOL_TAG, ""))


def champion(gate: GateConfig, tracking: TrackingConfig, client: MlflowClient | None = None):
    """The version the champion alias points at, or None when there is no champion yet (no such
    registered model, or no such alias). Any other registry failure (server down, permission
    denied) is a RegistryError: treating it as "no champion" would let any challenger through."""
    client = client or _client(tracking)
    return _ask(gate, tracking, f"registered model {gate.model_name!r}: cannot read its {CHAMPION!r} alias",
                lambda: client.get_model_version_by_alias(gate.model_name, CHAMPION), missing_ok=True)


def promote(gate: GateConfig, tracking: TrackingConfig, challenger: str = CHALLENGER, dry_run: bool = False) -> Decision:
    client = _client(tracking)
    name = gate.model_name
    candidate = find_version(gate, tracking, challenger, client)
    current = champion(gate, tracking, client)
    if current is not None and str(current.version) == str(candidate.version):
        return Decision(False, [f"version {candidate.version} is already the champion"], {"champion": current.version})
    decision = decide(evidence(client, name, candidate, gate, tracking),
                      evidence(client, name, current, gate, tracking) if current is not None else None, gate)
    if dry_run:
        return decision
    v = str(candidate.version)

    def write_decision() -> None:
        client.set_model_version_tag(name, v, "gate.decision", "promoted" if decision.promote else "rejected")
        client.set_model_version_tag(name, v, "gate.compared_with", str(current.version) if current else "none")
        client.set_model_version_tag(name, v, "gate.reason", " | ".join(decision.reasons)[:4900])
        client.set_model_version_tag(name, v, "gate.numbers", json.dumps(decision.numbers, default=str)[:4900])
        client.set_model_version_tag(name, v, "gate.at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        card = model_card(name, dict(candidate.tags))
        client.update_model_version(name, v, description=f"{card}\n\nPromotion gate: {decision.summary()}")
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, v)

    _ask(gate, tracking, f"registered model {name!r} version {v}: cannot record the gate's decision", write_decision)
    return decision
