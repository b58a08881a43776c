"""The `train` stage: Pair-GRPO from a config, tracked in MLflow, with DVC metrics and plots.

The CLI (`focusdiff train`, also under `accelerate launch`/torchrun), `dvc repro train`
and the Prefect pipeline all call `run_train_stage`. Only the main process talks to
MLflow and writes the metrics files; every process trains.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import torch
from accelerate import PartialState

from focusdiff.config import TrackingConfig
from focusdiff.io import atomic_write_json, atomic_write_text
from focusdiff.judge.select import build_judge
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.trainer import TrainResult, train

# Curves DVC plots (`dvc plots show`): one row per step.
CURVE_COLUMNS = ("step", "train/reward_mean", "train/reward_std", "train/kl", "train/clip_fraction", "train/lr",
                 "train/injection_probability", "train/grad_norm", "train/images_per_s")


def run_train_stage(cfg: GRPOConfig, tracking: TrackingConfig, command: str = "focusdiff train",
                    tags: dict[str, str] | None = None) -> TrainResult:
    judge = build_judge(cfg.judge)
    # cpu=True when there is no GPU: without it accelerate ignores torchrun's env (one process each)
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        return train(cfg, judge, progress=False)
    from focusdiff.tracking import StageRun

    logged = {"train": cfg.model_dump(mode="json"), "train.algorithm": cfg.algorithm}
    with StageRun(tracking, "train", params=logged, tags={"algorithm": cfg.algorithm, "base_policy": cfg.policy,
                                                           **(tags or {})}) as run:
        result = train(
            cfg, judge,
            log=lambda metrics, step: run.log_metrics(metrics, step),
            log_grid=lambda image, step: run.log_image(image, f"train/pairs/step_{step:06d}.png"),
            record={"command": command, "mlflow_run_id": run.run_id},
        )
        write_metrics(cfg, result)
        run.set_tags({"train.out": str(result.out), "train.resumed_from": str(result.resumed_from)})
        result.mlflow_run_id = run.run_id
        return result


def summary(result: TrainResult) -> dict[str, Any]:
    """The last step's metrics, plus means over the last 10% of steps (less noisy)."""
    history = result.history
    if not history:
        return {"steps": result.steps, "resumed_from": result.resumed_from}
    tail = history[-max(1, len(history) // 10):]
    keys = ("train/reward_mean", "train/kl", "train/clip_fraction")
    return {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "last": {k: v for k, v in history[-1].items() if k != "step"},
        "tail_mean": {k: sum(h[k] for h in tail) / len(tail) for k in keys},
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
