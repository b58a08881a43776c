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
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from focusdiff.config import TrackingConfig
from focusdiff.errors import FocusdiffError
from focusdiff.registry.gate import Decision, Evidence, GateConfig, decide
from focusdiff.tracking import tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"


class RegistryError(FocusdiffError):
    """The registry does not hold what a command needs (a version, an alias, evidence)."""


def _client(tracking: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri(tracking), registry_uri=tracking_uri(tracking))


def model_card(name: str, version_tags: dict[str, str]) -> str:
    t = version_tags
    return (f"{name}: a text-to-image policy trained with {t.get('algorithm', '?')} from {t.get('base_model', '?')} "
            f"on dataset version {t.get('data.version', '?')} (code {t.get('git.commit', '?')[:12]}). "
            "Load it with mlflow.pyfunc.load_model(...).predict(DataFrame(prompt=[...], seed=[...])) for PNG images, "
            "or download its `policy` artifact and use `focusdiff generate --policy <dir>`. "
            "Its benchmark results and the promotion decision are in this version's tags.")


def register_policy(policy_dir: Path, gate: GateConfig, tracking: TrackingConfig, run_id: str,
                    tags: dict[str, str]) -> dict[str, Any]:
    """Log `policy_dir` as a pyfunc model under run `run_id` and register it; alias challenger."""
    import mlflow

    from focusdiff.registry import pyfunc

    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="policy", python_model=pyfunc.__file__, artifacts={"policy": str(policy_dir)},
            pip_requirements=["focusdiff", "torch", "transformers", "safetensors", "pandas"],
            registered_model_name=gate.model_name, await_registration_for=60)
    version = str(info.registered_model_version)
    client = _client(tracking)
    clean = {k: str(v) for k, v in tags.items() if v not in (None, "")}
    for key, value in clean.items():
        client.set_model_version_tag(gate.model_name, version, key, value)
    client.update_model_version(gate.model_name, version, description=model_card(gate.model_name, clean))
    client.set_registered_model_alias(gate.model_name, CHALLENGER, version)
    return {"model_name": gate.model_name, "version": version, "run_id": run_id,
            "model_uri": f"models:/{gate.model_name}/{version}", "policy": str(policy_dir)}


def registered_by_flow_run(gate: GateConfig, tracking: TrackingConfig, flow_run_id: str) -> dict[str, Any]:
    """The version a training job registered for this flow run (its `prefect.flow_run_id` tag):
    how the pipeline finds what a PyTorchJob trained on the cluster."""
    client = _client(tracking)
    try:
        versions = client.search_model_versions(f"name = '{gate.model_name}'", max_results=10_000,
                                                order_by=["version_number DESC"])
    except MlflowException as exc:
        raise RegistryError(f"registered model {gate.model_name!r}: cannot list versions: {exc.message}") from None
    for mv in versions:
        if dict(mv.tags).get("prefect.flow_run_id") == flow_run_id:
            return {"model_name": gate.model_name, "version": str(mv.version), "run_id": mv.run_id,
                    "model_uri": f"models:/{gate.model_name}/{mv.version}"}
    raise RegistryError(f"registered model {gate.model_name!r} has no version tagged prefect.flow_run_id="
                        f"{flow_run_id}: the training job succeeded but registered nothing "
                        "(is promote.register_trained on in the job's params?)")


def record_evaluation(registration: dict[str, Any], tracking: TrackingConfig, benchmark: str, metrics: dict[str, float],
                      files: list[Path], evaluator: str | None = None) -> None:
    client = _client(tracking)
    name, version = registration["model_name"], registration["version"]
    for path in files:
        client.log_artifact(registration["run_id"], str(path), f"evaluation/{benchmark}")
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"eval.{key}", f"{value:.6g}")
    if evaluator is not None:
        client.set_model_version_tag(name, version, f"eval.{benchmark}.evaluator", evaluator)
    client.set_model_version_tag(name, version, f"eval.{benchmark}.status", "complete")


def record_failure(registration: dict[str, Any], tracking: TrackingConfig, benchmark: str, reason: str) -> None:
    _client(tracking).set_model_version_tag(registration["model_name"], registration["version"],
                                            f"eval.{benchmark}.status", f"failed: {reason}"[:4900])


def _version(client: MlflowClient, name: str, ref: str):
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r} has no version {ref!r}: {exc.message}") from None


def evidence(client: MlflowClient, name: str, version, gate: GateConfig) -> Evidence:
    tags = dict(version.tags)
    metrics = {k.removeprefix("eval."): float(v) for k, v in tags.items()
               if k.startswith("eval.") and not k.endswith((".status", ".evaluator"))}
    status = {b: tags.get(f"eval.{b}.status", "missing") for b in gate.required}
    pairs: dict[str, tuple[str, float]] = {}
    if status.get("paircomp") == "complete":
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(version.run_id, "evaluation/paircomp/pairs.jsonl", tmp)
            except MlflowException as exc:
                raise RegistryError(f"{name} version {version.version}: PairComp is marked complete but its per-pair "
                                    f"scores are missing from run {version.run_id}: {exc.message}") from None
            for line in Path(local).read_text("utf-8").splitlines():
                row = json.loads(line)
                pairs[f"{row['caption1']}\n{row['caption2']}"] = (row["category"], float(row["g"]))
    return Evidence(str(version.version), metrics, status, pairs, tags.get("eval.paircomp.evaluator", ""))


def champion(gate: GateConfig, tracking: TrackingConfig, client: MlflowClient | None = None):
    """The version the champion alias points at, or None when there is no champion yet (no such
    registered model, or no such alias). Any other registry failure (server down, permission
    denied) is a RegistryError: treating it as "no champion" would let any challenger through."""
    client = client or _client(tracking)
    try:
        return client.get_model_version_by_alias(gate.model_name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or f"alias {CHAMPION} not found" in exc.message:
            return None
        raise RegistryError(f"registered model {gate.model_name!r}: cannot read its {CHAMPION!r} alias: "
                            f"{exc.message}") from None


def promote(gate: GateConfig, tracking: TrackingConfig, challenger: str = CHALLENGER, dry_run: bool = False) -> Decision:
    client = _client(tracking)
    name = gate.model_name
    candidate = _version(client, name, challenger)
    current = champion(gate, tracking, client)
    if current is not None and str(current.version) == str(candidate.version):
        return Decision(False, [f"version {candidate.version} is already the champion"], {"champion": current.version})
    decision = decide(evidence(client, name, candidate, gate),
                      evidence(client, name, current, gate) if current is not None else None, gate)
    if dry_run:
        return decision
    v = str(candidate.version)
    client.set_model_version_tag(name, v, "gate.decision", "promoted" if decision.promote else "rejected")
    client.set_model_version_tag(name, v, "gate.compared_with", str(current.version) if current else "none")
    client.set_model_version_tag(name, v, "gate.reason", " | ".join(decision.reasons)[:4900])
    client.set_model_version_tag(name, v, "gate.numbers", json.dumps(decision.numbers, default=str)[:4900])
    client.set_model_version_tag(name, v, "gate.at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    card = model_card(name, dict(candidate.tags))
    client.update_model_version(name, v, description=f"{card}\n\nPromotion gate: {decision.summary()}")
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, v)
    return decision
