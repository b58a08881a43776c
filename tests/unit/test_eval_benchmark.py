"""The one evaluation path: a fifth benchmark is one `Benchmark` object and one registry
entry, and it gets generation, the completeness check, judge failures, the bootstrap
interval, the files and the MLflow run from stages/evaluate.py like the four shipped ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from focusdiff.config import TrackingConfig
from focusdiff.eval import orchestrate
from focusdiff.stages import evaluate as stage
from focusdiff.eval.benchmark import Benchmark, Row, Suite
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob
from focusdiff.eval.intervals import percentile_bootstrap
from focusdiff.judge.base import ItemFailure, JudgeFailure

PROMPTS = {"colour": ["a red circle", "a blue square", "a green triangle"],
           "relation": ["a red circle on the left of a blue square", "a blue square above a green triangle"]}


@dataclass
class TinySuite(Suite):
    strata: dict[str, str]  # file -> stratum


class Tiny(Benchmark[TinySuite]):
    """Two images per ShapesWorld prompt, scored by the share of its clauses the exact
    checker finds; resampled by prompt within each kind of prompt."""

    name = "tiny"

    def __init__(self, fail_judge: bool = False):
        self.fail_judge = fail_judge

    def prepare(self, cfg: EvalConfig, folder: Path) -> TinySuite:
        jobs = [ImageJob(f"{kind}/{i}_{k}.png", p) for kind, ps in PROMPTS.items() for i, p in enumerate(ps) for k in range(2)]
        return TinySuite(jobs, ["suite: five ShapesWorld prompts, a test fixture"], {j.file: j.file.split("/")[0] for j in jobs})

    def score(self, suite: TinySuite, images: Path) -> list[Row]:
        from focusdiff.shapes.checker import check

        if self.fail_judge:
            raise JudgeFailure("tiny", [ItemFailure(0, "a red circle", "refused")], [None])
        return [{"file": j.file, "prompt": j.prompt,
                 "score": check(np.asarray(Image.open(images / j.file).convert("RGB")), j.prompt).fraction}
                for j in suite.jobs]

    def aggregate(self, suite: TinySuite, rows: list[Row]) -> dict[str, float]:
        return {"tiny.overall": float(np.mean([r["score"] for r in rows]))}

    def resampling_units(self, suite: TinySuite, rows: list[Row]) -> dict[str, np.ndarray]:
        per_prompt: dict[str, dict[str, list[float]]] = {}
        for r in rows:
            per_prompt.setdefault(suite.strata[r["file"]], {}).setdefault(r["prompt"], []).append(r["score"])
        return {kind: np.array([np.mean(v) for v in prompts.values()]) for kind, prompts in per_prompt.items()}

    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        return {"tiny.overall": float(np.mean(np.concatenate(list(sample.values()))))}

    def files(self, suite, rows, metrics, intervals):
        return {"summary.txt": f"{metrics['tiny.overall']:.3f}\n", "strata.json": suite.strata}


def _config(tmp_path: Path, **over) -> EvalConfig:
    return EvalConfig.model_validate({"policy": "shapes-base", "out": str(tmp_path / "out"),
                                      "metrics_dir": str(tmp_path / "metrics"), "bootstrap": 200, **over})


def _tracking(tmp_path: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts"))


def test_a_fifth_benchmark_runs_through_the_one_path(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setitem(stage.REGISTRY, "tiny", Tiny())
    cfg = _config(tmp_path)
    result = stage.run_benchmark("tiny", cfg, _tracking(tmp_path))

    folder = cfg.out / "tiny"
    assert len(list((folder / "images").rglob("*.png"))) == 10
    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert (folder / "summary.txt").read_text() == f"{result.metrics['tiny.overall']:.3f}\n"
    assert json.loads((folder / "strata.json").read_text())["colour/0_0.png"] == "colour"

    written = json.loads((cfg.metrics_dir / "tiny.json").read_text())
    assert written["metrics"] == result.metrics and written["deviations"] == ["suite: five ShapesWorld prompts, a test fixture"]
    low, high = written["intervals"]["tiny.overall"]
    assert low <= result.metrics["tiny.overall"] <= high
    assert set(written["seconds"]) == {"load_s", "prepare_s", "generate_s", "score_s", "aggregate_s", "track_s"}

    run = mlflow.MlflowClient(_tracking(tmp_path).uri).get_run(result.mlflow_run_id)
    assert run.data.tags["mlflow.runName"] == "evaluate_tiny" and run.data.tags["benchmark"] == "tiny"
    assert {"tiny.overall", "tiny.overall.ci95_low", "tiny.overall.ci95_high", "tiny.generate_s", "tiny.track_s"} <= set(run.data.metrics)
    assert run.data.tags["deviations"] == "suite: five ShapesWorld prompts, a test fixture"

    again = stage.run_benchmark("tiny", cfg, _tracking(tmp_path))  # same seed: same images, same interval
    assert again.metrics == result.metrics and again.intervals == result.intervals


def test_missing_images_fail_every_benchmark_before_scoring(tmp_path, monkeypatch):
    monkeypatch.setitem(stage.REGISTRY, "tiny", Tiny())
    monkeypatch.setattr(orchestrate, "generate_jobs", lambda *args, **kwargs: {"generated": 0, "kept": 0})
    cfg = _config(tmp_path)
    with pytest.raises(IncompleteEvaluation, match=r"tiny: incomplete evaluation, no score reported: 10 of 10 images "
                                                   r"missing or unreadable .* \(first: colour/0_0.png"):
        stage.run_benchmark("tiny", cfg, _tracking(tmp_path))
    assert not (cfg.metrics_dir / "tiny.json").exists() and not (cfg.out / "tiny" / "scores.jsonl").exists()


def test_a_judge_failure_is_an_incomplete_evaluation(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setitem(stage.REGISTRY, "tiny", Tiny(fail_judge=True))
    cfg = _config(tmp_path)
    with pytest.raises(IncompleteEvaluation, match="tiny: incomplete evaluation, no score reported: the judge could not score 1 images"):
        stage.run_benchmark("tiny", cfg, _tracking(tmp_path))
    assert not (cfg.metrics_dir / "tiny.json").exists()


def test_unknown_benchmark_names_the_known_ones(tmp_path):
    from focusdiff.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown benchmark 'fifth'; known: paircomp, geneval, t2i_compbench, dpg_bench"):
        stage.run_benchmark("fifth", _config(tmp_path), _tracking(tmp_path))


# --------------------------------------------------------------------------- the bootstrap


def test_bootstrap_resamples_within_each_stratum_and_is_reproducible():
    strata = {"a": np.random.default_rng(0).random(20), "b": np.full(3, 10.0)}
    sizes: list[tuple[int, int]] = []

    def statistic(sample):
        sizes.append((len(sample["a"]), len(sample["b"])))
        assert set(sample["b"]) == {10.0}  # never mixed with stratum a
        return {"a": float(sample["a"].mean()), "b": float(sample["b"].mean())}

    first = percentile_bootstrap(strata, statistic, 400, seed=3)
    assert set(sizes) == {(20, 3)} and len(sizes) == 400
    assert first["b"] == [10.0, 10.0]
    assert strata["a"].min() < first["a"][0] < strata["a"].mean() < first["a"][1] < strata["a"].max()
    assert percentile_bootstrap(strata, statistic, 400, seed=3) == first
    assert percentile_bootstrap(strata, statistic, 400, seed=4) != first


def test_bootstrap_without_resamples_gives_no_interval_and_refuses_empty_strata():
    assert percentile_bootstrap({"a": np.arange(3.0)}, lambda s: {"a": 0.0}, 0, seed=0) == {}
    with pytest.raises(ValueError, match="cannot resample empty strata: b"):
        percentile_bootstrap({"a": np.arange(3.0), "b": np.array([])}, lambda s: {"a": 0.0}, 10, seed=0)
