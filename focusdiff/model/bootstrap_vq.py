"""The `bootstrap_vq` stage: train the ShapesWorld image tokenizer, gate it, write it with
its record (see bootstrap.py for the pair of stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from focusdiff.config import Params
from focusdiff.io import atomic_directory, atomic_write_json
from focusdiff.records import QualityGateError, file_hashes
from focusdiff.tracking import StageRun


class VQResult(BaseModel):
    out: Path
    accuracy: float
    by_category: dict[str, float]
    mlflow_run_id: str


def _reconstruction_grid(vq, n: int = 12) -> Image.Image:
    from focusdiff.model.vq import SceneStream, reconstruct

    originals = SceneStream(vq.config.num_patches * 4, seed=99).batch(n)
    rows = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(reconstruct(vq, originals)), 1)], 0)
    return Image.fromarray(rows).resize((rows.shape[1] * 4, rows.shape[0] * 4), Image.NEAREST)


def run_vq_stage(params: Params, command: str = "focusdiff bootstrap vq") -> VQResult:
    from focusdiff.model.vq import train_vq

    cfg = params.bootstrap.vq
    with StageRun(params.tracking, "bootstrap_vq", params={"bootstrap.vq": cfg.model_dump(mode="json")}) as run:
        vq, accuracy = train_vq(cfg, log=lambda metrics, step: run.log_metrics(metrics, step))
        by_category = {k: v[0] / v[1] for k, v in sorted(accuracy.by_category.items())}
        run.log_metrics({"vq/final_clause_accuracy": accuracy.accuracy, **{f"vq/accuracy.{k}": v for k, v in by_category.items()}})
        run.log_image(_reconstruction_grid(vq), "bootstrap/vq_reconstructions.png")
        if accuracy.accuracy < cfg.min_accuracy:
            raise QualityGateError(
                f"VQ reconstructions keep {accuracy.accuracy:.2%} of checker clauses, below the gate "
                f"bootstrap.vq.min_accuracy={cfg.min_accuracy:.2%}; {cfg.out} left unchanged"
            )
        with atomic_directory(cfg.out) as tmp:
            vq.save_pretrained(tmp, safe_serialization=True)
            record: dict[str, Any] = {
                "command": command,
                "params": {"bootstrap.vq": cfg.model_dump(mode="json")},
                "reconstruction_clause_accuracy": accuracy.accuracy,
                "by_category": by_category,
                "files": file_hashes(tmp),
                "mlflow_run_id": run.run_id,
            }
            atomic_write_json(tmp / "record.json", record)
        run.set_tags({"bootstrap.vq.sha256": record["files"].get("model.safetensors", "")})
        return VQResult(out=cfg.out, accuracy=accuracy.accuracy, by_category=by_category, mlflow_run_id=run.run_id)
