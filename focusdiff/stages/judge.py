"""The `judge` stage: train the learned ShapesWorld reward judge and prove it on held-out pairs.

The judge trains from scratch on fresh train-distribution pairs (focusdiff/judge/
shapes_judge.py), then is calibrated on the dataset's *test* pairs, which include the
held-out color/shape combinations: each ground-truth image is asked its own caption and
its partner's, and its answers are compared with the exact checker's. The stage writes
the judge only if that agreement reaches `judge.min_accuracy`; otherwise the previous
judge (if any) stays and the stage fails, saying by how much. Everything is logged to an
MLflow run `judge`; `metrics/judge.json` is the DVC metrics file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from focusdiff.config import Params
from focusdiff.io import atomic_directory, atomic_write_json
from focusdiff.judge.report import calibrate, dataset_items
from focusdiff.judge.shapes_judge import ShapesJudge, save_judge, train_judge
from focusdiff.progress import Reporter, metric_text
from focusdiff.records import QualityGateError, file_hashes
from focusdiff.tracking import StageRun


class JudgeResult(BaseModel):
    out: Path
    metrics: dict[str, Any]
    mlflow_run_id: str


def calibration_metrics(report) -> dict[str, float]:
    metrics = {"judge.test.accuracy": report.accuracy, "judge.test.agreement": report.agreement,
               "judge.test.auroc": report.auroc, "judge.test.items": report.overall.items}
    for category, c in report.by_category.items():
        metrics[f"judge.test.{category}.agreement"] = c.agreement
        metrics[f"judge.test.{category}.accuracy"] = c.accuracy
    return metrics


def run_judge_stage(params: Params, command: str = "focusdiff judge train") -> JudgeResult:
    cfg = params.judge
    canvas = params.data.shapes.canvas
    holdout = frozenset(tuple(h) for h in params.data.shapes.holdout)
    test_items = dataset_items(params.data.out, "test")  # fail on a missing dataset before training
    logged = {"judge": cfg.model_dump(mode="json"), "data.shapes.holdout": sorted(holdout), "data.out": str(params.data.out)}
    with StageRun(params.tracking, "judge", params=logged) as run:
        with Reporter("judge", cfg.steps, describe=lambda m: metric_text(m, ("judge/loss", "judge/train_accuracy"))) as progress:
            model, vocab, seconds = train_judge(cfg, holdout, canvas, log=lambda m, step: run.log_metrics(m, step),
                                                on_progress=progress.update)
        with atomic_directory(cfg.out) as tmp:
            save_judge(tmp, cfg, model, vocab, canvas)
            report = calibrate(ShapesJudge(tmp), test_items, canvas=canvas)
            metrics = {**calibration_metrics(report), "judge.train_seconds": seconds}
            run.log_metrics(metrics)
            run.log_dict(metrics, "judge/test_calibration.json")
            if report.agreement < cfg.min_accuracy:
                raise QualityGateError(
                    f"the ShapesWorld judge agrees with the exact checker on {report.agreement:.2%} of the test items, "
                    f"below the gate judge.min_accuracy={cfg.min_accuracy:.0%}; {cfg.out} left unchanged")
            record = {"command": command, "params": logged, "test": metrics, "files": file_hashes(tmp),
                      "mlflow_run_id": run.run_id}
            atomic_write_json(tmp / "record.json", record)
        cfg.metrics.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg.metrics, metrics)
        run.set_tags({"judge.sha256": record["files"]["model.safetensors"]})
        return JudgeResult(out=cfg.out, metrics=metrics, mlflow_run_id=run.run_id)
