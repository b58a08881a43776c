"""The `train` stage: Pair-GRPO from a config, tracked in MLflow, with DVC metrics and plots.

The CLI (`focusdiff train`, also under `accelerate launch`/torchrun), `dvc repro train`
and the Prefect pipeline all call `run_train_stage`; `train_inputs` is how the CLI picks
the training section (params.yaml's or a recipe's) and where it records. Only the main
process talks to MLflow and writes the metrics files; every process trains.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from focusdiff.config import load_params, load_recipe, parse_overrides, updated, within
from focusdiff.errors import DataError
from focusdiff.io import atomic_write_json, atomic_write_text
from focusdiff.judge.base import Judge
from focusdiff.judge.select import build_judge
from focusdiff.progress import Reporter, metric_text
from focusdiff.registry.gate import GateConfig
from focusdiff.registry.registration import REGISTRATION_FILE, Registration
from focusdiff.registry.store import register_policy
from focusdiff.tracking import StageRun, end_abandoned_run, git_commit, prefect_flow_run_id, run_exists
from focusdiff.tracking_config import TrackingConfig
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.trainer import Trainer, TrainResult, judge_names
from focusdiff.versioning import DvcError, output_version

DATA_VERSION_ENV = "FOCUSDIFF_DATA_VERSION"  # set by the cluster launcher: the version the flow versioned

# Curves DVC plots (`dvc plots show`): one row per step.
CURVE_COLUMNS = ("step", "train/reward_mean", "train/reward_std", "train/kl", "train/kl_capped_fraction",
                 "train/clip_fraction", "train/lr",
                 "train/injection_probability", "train/grad_norm", "train/images_per_s")


def build_reward_judges(cfg: GRPOConfig) -> Judge | dict[str, Judge]:
    """The run's reward judge, or its judges by name (`train.judges`), built from their specs."""
    if cfg.judges is None:
        return build_judge(cfg.judge)
    return {spec.name: build_judge(spec) for spec in cfg.judges}


def run_train_stage(cfg: GRPOConfig, tracking: TrackingConfig, command: str = "focusdiff train",
                    tags: dict[str, str] | None = None, registry: GateConfig | None = None) -> TrainResult:
    """Train; then, with `registry` (and registry.register_trained), register the policy as a new
    version of `registry.model_name` and write <metrics_dir>/registration.json."""
    expected = os.environ.get(DATA_VERSION_ENV)
    if expected and (found := data_version(cfg.data)) != expected:
        # A cluster job trains on the dataset its pods pulled; it must be the one the flow versioned.
        raise DataError(f"{cfg.data}: dataset version {found} is not the version {expected} this run was submitted "
                        f"with ({DATA_VERSION_ENV}); the image's dvc.lock is stale: rebuild the image or pull that version")
    judge = build_reward_judges(cfg)
    # cpu=True when there is no GPU: without it accelerate ignores torchrun's env (one process each)
    state = PartialState(cpu=not torch.cuda.is_available())
    # Set up first (every process): whether this run resumes, starts fresh or is refused decides
    # which MLflow run it logs to.
    trainer = Trainer(cfg, judge)
    if not state.is_main_process:
        return trainer.train()  # the main process reports progress
    start = trainer.start
    if start.abandoned_run_id:
        where = f"its checkpoints were moved to {start.moved_to}" if start.moved_to else "it wrote no checkpoint"
        end_abandoned_run(tracking, start.abandoned_run_id,
                          f"the training process ended without finishing the run (killed?); {where}. A later run "
                          "started over")
    resumed = start.resumed_run_id if start.resumed_run_id and run_exists(tracking, start.resumed_run_id) else None
    logged = {"train": cfg.model_dump(mode="json"), "train.algorithm": cfg.algorithm}
    with StageRun(tracking, "train", params=logged, resume_run_id=resumed,
                  tags={"algorithm": cfg.algorithm, "base_policy": cfg.policy,
                        "world_size": str(state.num_processes), **(tags or {})}) as run:
        if start.step and resumed is None:
            # the checkpoints' run is not on this tracking server: the new run gets their steps too
            run.set_tags({"train.checkpoint_run_id": start.resumed_run_id or "unknown"})
            for metrics in start.history:
                run.log_metrics({k: v for k, v in metrics.items() if k != "step"}, int(metrics["step"]))
        # train() raises (TrainingFailed) for a run over its dropped-item budget or with no
        # update at all: nothing below, registration included, happens for it
        with Reporter("train", cfg.steps, start=start.step, describe=step_summary) as progress:
            result = trainer.train(
                log=lambda metrics, step: run.log_metrics(metrics, step),
                log_grid=lambda image, step: run.log_image(image, f"train/pairs/step_{step:06d}.png"),
                on_progress=progress.update,
                record={"command": command, "mlflow_run_id": run.run_id},
                run_id=run.run_id,
            )
        write_metrics(cfg, result)
        run.set_tags({"train.out": str(result.out), "train.resumed_from": str(result.resumed_from)})
        registration_file = cfg.metrics_dir / REGISTRATION_FILE
        if registry is not None and registry.register_trained:
            lineage = {"algorithm": cfg.algorithm, "base_model": cfg.policy, "reward_judge": judge_names(cfg),
                       "data.version": data_version(cfg.data),
                       "prefect.flow_run_id": prefect_flow_run_id() or "", **git_commit(), **(tags or {})}
            registration = register_policy(result.out, registry, tracking, run.run_id, lineage)
            registration.save(registration_file)
            run.set_tags({"registered_model": registry.model_name, "registered_version": registration.version})
        else:
            # Written either way (DVC tracks it); a stale registration would attach evaluations
            # to another version, so this one names none.
            Registration.save_unregistered(registration_file)
        result.mlflow_run_id = run.run_id
        return result


def train_inputs(params_file: Path, recipe: Path | None = None, overrides: list[str] | None = None,
                 restart: bool = False) -> tuple[GRPOConfig, TrackingConfig, GateConfig | None]:
    """What `focusdiff train` trains and where it records: params.yaml's train section (with
    `-S` overrides), or a recipe's (its overrides are train.* keys) recorded where params.yaml
    says when there is one, else MLflow's defaults and no registration."""
    if recipe is not None:
        cfg = load_recipe(recipe, within("train", parse_overrides(overrides), f"the recipe {recipe}"))
        project = load_params(params_file, overrides=parse_overrides(None)) if params_file.is_file() else None
        tracking, registry = (project.tracking, project.promote) if project else (TrackingConfig(), None)
    else:
        loaded = load_params(params_file, overrides=parse_overrides(overrides))
        cfg, tracking, registry = loaded.train, loaded.tracking, loaded.promote
    if restart:
        cfg = updated(cfg, restart=True)
    return cfg, tracking, registry


def step_summary(metrics: Mapping[str, float]) -> str:
    """The step's reward and KL for the progress line, or why it made no update."""
    if metrics and "train/reward_mean" not in metrics:
        return f"no update: all {metrics['train/dropped_items']:.0f} items dropped"
    return metric_text(metrics, ("train/reward_mean", "train/kl", "train/images_per_s"))


def data_version(data: Path) -> str:
    """The DVC version (dvc.lock's md5) of the training dataset, or "unversioned" when it is not
    a DVC output here (a dataset passed by path outside the pipeline)."""
    try:
        return output_version(data)
    except DvcError:
        return "unversioned"


def summary(result: TrainResult) -> dict[str, Any]:
    """The last step's metrics, plus means over the last 10% of steps (less noisy)."""
    history = result.history
    if not history:
        return {"steps": result.steps, "resumed_from": result.resumed_from}
    tail = history[-max(1, len(history) // 10):]
    keys = ("train/reward_mean", "train/kl", "train/kl_capped_fraction", "train/clip_fraction")
    # over the steps that have them: a step whose items were all dropped has no reward or KL
    tail_values = {k: [h[k] for h in tail if k in h] for k in keys}
    return {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "last": {k: v for k, v in history[-1].items() if k != "step"},
        "tail_mean": {k: sum(v) / len(v) for k, v in tail_values.items() if v},
    }


def write_metrics(cfg: GRPOConfig, result: TrainResult) -> None:
    cfg.metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.metrics_dir / "train.json", summary(result))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CURVE_COLUMNS)
    for h in result.history:
        writer.writerow([h.get(c, "") for c in CURVE_COLUMNS])
    atomic_write_text(cfg.metrics_dir / "train_curve.csv", buf.getvalue())
