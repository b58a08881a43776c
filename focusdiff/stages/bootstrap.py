"""The bootstrap stages: ShapesWorld's own "pretrained Janus", made reproducibly.

`bootstrap_vq` trains the image tokenizer (focusdiff.model.vq), gates it and writes it
with its record; `bootstrap_vq_local` fine-tunes it to be local (a one-object edit changes
the tokens of that object only: Pair-GRPO's hard negatives rely on it); `bootstrap_lm`
(next) fine-tunes a tiny
Janus language model on caption -> image tokens. Their outputs are small
safetensors checkpoints that ship inside the package, exactly as real users start
from Janus-Pro's weights; each comes with `record.json` (the command, parameters,
quality figures and file hashes) that a test checks the shipped files against.
DVC re-runs a stage only when its code or parameters change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from focusdiff.config import Params
from focusdiff.errors import FocusdiffError
from focusdiff.io import atomic_directory, atomic_write_json
from focusdiff.records import QualityGateError, file_hashes
from focusdiff.progress import Reporter, metric_text
from focusdiff.tracking import StageRun
from focusdiff.viz import labeled_grid

__all__ = ["LMResult", "QualityGateError", "VQResult", "file_hashes", "run_lm_stage", "run_vq_stage"]


def checkpoint_dir(out: Path) -> Path:
    """Resumable training state of a bootstrap stage, beside its output (git-ignored; removed
    once the output is written)."""
    return out.parent / f".{out.name}.checkpoints"


# What the progress lines show (the loops log these every 50 steps; MLflow gets everything).
VQ_PROGRESS = ("vq/loss", "vq/edit_loss", "vq/stability_loss", "vq/images_per_s")
LM_PROGRESS = ("lm/loss", "lm/captions_per_s")


def _logged_with_progress(run: StageRun, progress: Reporter, shown: tuple[str, ...]):
    """The loops' `log` callback: every metric to MLflow, and the step (with the loss, when these
    metrics carry it) to the progress reporter, so a long bootstrap is never silent."""
    def log(metrics, step: int) -> None:
        run.log_metrics(metrics, step)
        resumed = any(k.endswith("/resumed_from_step") for k in metrics)  # logged at the step it continues from
        progress.update(step if resumed else step + 1, metrics if any(k in metrics for k in shown) else None)
    return log


class VQResult(BaseModel):
    out: Path
    accuracy: float
    by_category: dict[str, float]
    tokens_per_block: float  # locality: tokens a one-object edit changes per pixel block it touches
    mlflow_run_id: str


def _reconstruction_grid(vq, n: int = 12) -> Image.Image:
    from focusdiff.model.vq import SceneStream, reconstruct

    originals = SceneStream(vq.config.num_patches * 4, seed=99).batch(n)
    rows = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(reconstruct(vq, originals)), 1)], 0)
    return Image.fromarray(rows).resize((rows.shape[1] * 4, rows.shape[0] * 4), Image.NEAREST)


VQ_BLOCKS = ("vq", "vq_local")


def run_vq_stage(params: Params, block: str = "vq", command: str | None = None,
                 max_minutes: float | None = None) -> VQResult:
    """Train, gate and write a VQ: `bootstrap.vq` (from scratch: the reconstruction tokenizer)
    or `bootstrap.vq_local` (its locality fine-tune). With `max_minutes`, a bounded invocation:
    it stops at the first checkpoint past that time (TrainingPaused) and the next one continues."""
    from focusdiff.model.vq import quality_pairs, tokenizer_locality, train_vq

    if block not in VQ_BLOCKS:
        raise ValueError(f"no VQ block bootstrap.{block}; one of {', '.join(VQ_BLOCKS)}")
    cfg = getattr(params.bootstrap, block)
    key, stage = f"bootstrap.{block}", f"bootstrap_{block}"
    command = command or f"focusdiff bootstrap {block.replace('_', '-')}"
    if cfg.init is not None and not (cfg.init / "record.json").is_file():
        raise FocusdiffError(f"{key}.init: {cfg.init} holds no trained VQ (record.json missing); "
                             f"train it first (`focusdiff bootstrap vq`)")
    with StageRun(params.tracking, stage, params={key: cfg.model_dump(mode="json")}) as run:
        with Reporter(command.removeprefix("focusdiff "), cfg.steps, describe=lambda m: metric_text(m, VQ_PROGRESS)) as progress:
            vq, accuracy = train_vq(cfg, log=_logged_with_progress(run, progress, VQ_PROGRESS),
                                    checkpoint_dir=checkpoint_dir(cfg.out),
                                    stop_after_s=None if max_minutes is None else 60 * max_minutes)
        by_category = {k: v[0] / v[1] for k, v in sorted(accuracy.by_category.items())}
        run.log_metrics({"vq/final_clause_accuracy": accuracy.accuracy, **{f"vq/accuracy.{k}": v for k, v in by_category.items()}})
        run.log_image(_reconstruction_grid(vq), "bootstrap/vq_reconstructions.png")
        # how local it is, on the quality check's held-out pairs: tokens changed per pixel block touched
        locality = tokenizer_locality(vq, quality_pairs(cfg))
        run.log_metrics({"vq/final_locality.tokens_per_block": locality.ratio()})
        if accuracy.accuracy < cfg.min_accuracy:
            raise QualityGateError(
                f"VQ reconstructions keep {accuracy.accuracy:.2%} of checker clauses, below the gate "
                f"{key}.min_accuracy={cfg.min_accuracy:.2%}; {cfg.out} left unchanged"
            )
        with atomic_directory(cfg.out) as tmp:
            vq.save_pretrained(tmp, safe_serialization=True)
            record: dict[str, Any] = {
                "command": command,
                "params": {key: cfg.model_dump(mode="json")},
                "reconstruction_clause_accuracy": accuracy.accuracy,
                "by_category": by_category,
                "locality": locality.model_dump(mode="json") | {"tokens_per_block": locality.ratio()},
                "files": file_hashes(tmp),
                "mlflow_run_id": run.run_id,
            }
            if cfg.init is not None:  # what it was fine-tuned from
                init_record = json.loads((cfg.init / "record.json").read_text("utf-8"))
                record["init"] = {"path": str(cfg.init), "model.safetensors": init_record["files"].get("model.safetensors")}
            atomic_write_json(tmp / "record.json", record)
        shutil.rmtree(checkpoint_dir(cfg.out), ignore_errors=True)
        run.set_tags({f"{key}.sha256": record["files"].get("model.safetensors", "")})
        return VQResult(out=cfg.out, accuracy=accuracy.accuracy, by_category=by_category,
                        tokens_per_block=locality.ratio(), mlflow_run_id=run.run_id)


class LMResult(BaseModel):
    out: Path
    quality: dict[str, Any]
    mlflow_run_id: str


def sample_grid(policy, prompts: list[str], seed: int = 0, per_row: int = 4) -> Image.Image:
    """One row per prompt: a few samples side by side (for MLflow)."""
    from focusdiff.model.sampler import sample

    rollout = sample(policy, [p for p in prompts for _ in range(per_row)], [seed + i for i in range(len(prompts) * per_row)])
    return labeled_grid([(list(rollout.images[i * per_row : (i + 1) * per_row]), p) for i, p in enumerate(prompts)])


GRID_PROMPTS = [
    "a red circle", "a large blue square", "two green triangles", "three yellow circles",
    "a purple square to the left of an orange circle", "a white triangle on a black background", 'the letter "K"',
]


def run_lm_stage(params: Params, command: str = "focusdiff bootstrap lm", max_minutes: float | None = None) -> LMResult:
    """Fine-tune, gate and write the base LM; `max_minutes` as for `run_vq_stage`."""
    from focusdiff.model.sft import train_lm

    cfg = params.bootstrap.lm
    vq_dir = cfg.tokenizer
    if not (vq_dir / "record.json").is_file():
        raise FocusdiffError(f"bootstrap.lm.tokenizer: {vq_dir} holds no trained VQ tokenizer (record.json missing); "
                             "run `focusdiff bootstrap vq` (and `vq-local`) first")
    holdout = frozenset(tuple(h) for h in params.data.shapes.holdout)
    logged = {"bootstrap.lm": cfg.model_dump(mode="json"), "data.shapes.holdout": sorted(holdout)}
    with StageRun(params.tracking, "bootstrap_lm", params=logged) as run:
        with Reporter("bootstrap lm", cfg.steps, describe=lambda m: metric_text(m, LM_PROGRESS)) as progress:
            policy, quality = train_lm(cfg, vq_dir, holdout, log=_logged_with_progress(run, progress, LM_PROGRESS),
                                       checkpoint_dir=checkpoint_dir(cfg.out),
                                       stop_after_s=None if max_minutes is None else 60 * max_minutes)
        run.log_dict(quality.model_dump(mode="json"), "bootstrap/base_quality.json")
        run.log_image(sample_grid(policy, GRID_PROMPTS), "bootstrap/base_samples.png")
        if quality.single_object_accuracy < cfg.min_single_object_accuracy:
            raise QualityGateError(
                f"the base draws {quality.single_object_accuracy:.1%} of single-object prompts right, below the gate "
                f"bootstrap.lm.min_single_object_accuracy={cfg.min_single_object_accuracy:.0%}; {cfg.out} left unchanged"
            )
        with atomic_directory(cfg.out) as tmp:
            policy.model.save_pretrained(tmp, safe_serialization=True)
            policy.tokenizer.save_pretrained(tmp)
            vq_record = json.loads((vq_dir / "record.json").read_text("utf-8"))
            record = {
                "command": command,
                "params": logged,
                "quality": quality.model_dump(mode="json"),
                "vq": {"path": str(vq_dir), "model.safetensors": vq_record["files"].get("model.safetensors")},
                "files": file_hashes(tmp),
                "mlflow_run_id": run.run_id,
            }
            atomic_write_json(tmp / "record.json", record)
        shutil.rmtree(checkpoint_dir(cfg.out), ignore_errors=True)
        run.set_tags({"bootstrap.lm.sha256": record["files"]["model.safetensors"]})
        return LMResult(out=cfg.out, quality=quality.model_dump(mode="json"), mlflow_run_id=run.run_id)
