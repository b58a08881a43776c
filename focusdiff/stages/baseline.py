"""The `baseline` stage: with no champion yet, the starting policy becomes the first one.

A fresh registry has no champion, and a gate with nothing to compare against can only hold
the first trained policy to an absolute number (`promote.floor`), one draw's guess. So,
when `promote.first_champion` is `base` (the default) and the registered model has no
champion, this stage registers the starting policy (`train.policy`, the policy training
begins from) as a version, evaluates it on every benchmark the gate requires under the
current evaluation settings (the same protocol a trained challenger gets), and makes it the
champion. The first trained challenger is then judged as every later one is: pair by pair,
with the paired bootstrap's interval and the margin.

With a champion already (any later pipeline run), or with `first_champion: none`, the stage
does nothing but say so. It never replaces a champion. A run that stops between registering
and crowning is picked up again: the base's version is found by its checkpoint fingerprint.

`focusdiff baseline`, `dvc repro baseline` and the pipeline flow's baseline task call
`run_baseline_stage`; the evaluation is the evaluate stage's (`run_benchmark`), written on the
version, its files under outputs/eval/<model>-v<n>/ as for `focusdiff evaluate --version`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from focusdiff.config import Params
from focusdiff.io import atomic_write_json
from focusdiff.model.loading import checkpoint_fingerprint, policy_directory
from focusdiff.progress import Reporter
from focusdiff.registry.registration import Registration
from focusdiff.registry.store import (
    BASE_ROLE,
    ROLE_TAG,
    crown_first_champion,
    register_policy,
    registered_base,
)
from focusdiff.stages.evaluate import run_benchmark, version_config
from focusdiff.stages.promote import champion_version
from focusdiff.stages.train import data_version
from focusdiff.tracking import StageRun, git_commit, prefect_flow_run_id


class BaselineOutcome(BaseModel):
    """What the stage did (its DVC metrics file): `crowned` the starting policy, `kept` the
    champion there was, or nothing because it is `off` (first_champion: none)."""

    action: Literal["crowned", "kept", "off"]
    champion: str | None  # the champion's version afterwards
    reason: str
    policy: str | None = None  # crowned: the starting policy registered
    metrics: dict[str, float] = {}  # crowned: its scores under the current protocol


def run_baseline_stage(params: Params, project_dir: str | Path = ".", record: Path | None = None) -> BaselineOutcome:
    """Make the starting policy the first champion when there is none (see the module docstring);
    with `record`, also write what it did there (JSON)."""
    gate = params.promote
    if gate.first_champion == "none":
        outcome = BaselineOutcome(action="off", champion=champion_version(params),
                                  reason="promote.first_champion is none: the first challenger must reach promote.floor")
    elif (current := champion_version(params)) is not None:
        outcome = BaselineOutcome(action="kept", champion=current, reason=f"{gate.model_name} already has a champion "
                                                                          f"(version {current}): the gate compares with it")
    else:
        registration, scores = crown_starting_policy(params, Path(project_dir))
        outcome = BaselineOutcome(action="crowned", champion=registration.version, policy=params.train.policy,
                                  metrics=scores,
                                  reason=f"no champion: the starting policy {params.train.policy} is version "
                                         f"{registration.version}, evaluated under the current protocol, and the first champion")
    if record is not None:
        atomic_write_json(record, outcome.model_dump(mode="json"))
    return outcome


def crown_starting_policy(params: Params, project_dir: Path) -> tuple[Registration, dict[str, float]]:
    """Register train.policy (or find the version an interrupted run registered), evaluate it on
    the gate's required benchmarks, and make it the champion. Any failed evaluation raises
    before the alias moves: a version with incomplete evidence never becomes champion."""
    gate, tracking = params.promote, params.tracking
    source = params.train.policy
    directory = policy_directory(source)
    fingerprint = checkpoint_fingerprint(directory)
    logged = {"baseline.policy": source, "baseline.fingerprint": fingerprint, "promote.model_name": gate.model_name,
              "benchmarks": ",".join(gate.required)}
    with StageRun(tracking, "baseline", params=logged, tags={"policy": source}) as run:
        registration = registered_base(gate, tracking, fingerprint)
        if registration is None:
            lineage = {ROLE_TAG: BASE_ROLE, "base_model": source, "base.fingerprint": fingerprint,
                       "algorithm": "none (the starting policy)", "data.version": data_version(params.evaluate.data),
                       "prefect.flow_run_id": prefect_flow_run_id() or "", **git_commit()}
            registration = register_policy(directory, gate, tracking, run.run_id, lineage, alias=None)
        registration = registration.model_copy(update={"policy": str(directory)})
        run.set_tags({"registered_model": gate.model_name, "registered_version": registration.version})
        cfg = version_config(params, project_dir, registration)
        scores: dict[str, float] = {}
        for benchmark in gate.required:
            with Reporter(f"baseline {benchmark}: generating", None, unit="images") as progress:
                result = run_benchmark(benchmark, cfg, tracking, tags={"model_version": registration.version},
                                       progress=progress.advance, registration=registration)
            scores.update(result.metrics)
        run.log_metrics(scores)
        crown_first_champion(gate, tracking, registration)
        return registration, scores
