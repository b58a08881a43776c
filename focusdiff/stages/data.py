"""The `data` stage: build (ShapesWorld) or import (user pairs), validate, track.

Entry points: `focusdiff data build` (which `dvc.yaml` runs), the pipeline's
first Prefect task (through `dvc repro data`, which also versions the output),
and tests. The dataset's DVC content hash becomes `data.version` once DVC has
recorded it (see focusdiff.versioning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from focusdiff.config import Params
from focusdiff.data.imports import import_dataset
from focusdiff.data.preview import pair_grid
from focusdiff.data.schema import load_dataset
from focusdiff.data.validate import validate_dataset
from focusdiff.shapes.build import build_shapes_dataset
from focusdiff.tracking import StageRun


class DataResult(BaseModel):
    out: Path
    counts: dict[str, Any]
    mlflow_run_id: str


def dataset_metrics(counts: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics from manifest counts: data.pairs.<category>.<split>, …"""
    metrics: dict[str, float] = {"data.pairs": counts["pairs"], "data.prompts": counts["prompts"]}
    for split, c in counts["by_split"].items():
        metrics[f"data.pairs.{split}"] = c["pairs"]
        metrics[f"data.prompts.{split}"] = c["prompts"]
    for category, by_split in counts["by_category"].items():
        for split, n in by_split.items():
            metrics[f"data.pairs.{category}.{split}"] = n
    return metrics


def log_dataset_summary(run: StageRun, root: Path, version: str | None = None) -> dict[str, Any]:
    """Statistics per category, the manifest and a grid of sample pairs, on one run.
    Returns the dataset's counts."""
    dataset = load_dataset(root)
    run.log_metrics(dataset_metrics(dataset.manifest["counts"]))
    run.log_dict(dataset.manifest, "data/manifest.json")
    run.log_image(pair_grid(dataset), "data/sample_pairs.png")
    tags = {"data.path": str(root), "data.source": dataset.manifest["source"]["kind"]}
    if version is not None:
        tags["data.version"] = version
    run.set_tags(tags)
    return dataset.manifest["counts"]


def run_data_stage(params: Params) -> DataResult:
    cfg = params.data
    with StageRun(params.tracking, "data", params={"data": cfg.model_dump(mode="json", by_alias=True)}) as run:
        if cfg.source == "shapes":
            build_shapes_dataset(cfg.shapes, cfg.out)
        else:
            if cfg.import_ is None:
                raise ValueError("data.source is 'import' but params has no data.import block")
            imp = cfg.import_
            import_dataset(
                imp.pairs_file, cfg.out, unpaired_file=imp.unpaired_file, fmt=imp.format,
                val_fraction=imp.val_fraction, test_fraction=imp.test_fraction,
                max_image_pixels=cfg.max_image_pixels, drop_duplicates=imp.drop_duplicates,
            )
        report = validate_dataset(cfg.out, max_image_pixels=cfg.max_image_pixels)
        run.log_dict(report.model_dump(mode="json"), "data/validation.json")
        counts = log_dataset_summary(run, cfg.out)
        return DataResult(out=cfg.out, counts=counts, mlflow_run_id=run.run_id)
