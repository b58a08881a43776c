"""The one evaluation path: draw a benchmark's images, check them, score them, put intervals
on the numbers and write the files (`evaluate`); tracking the run and writing the outcome on
a registered version is the evaluate stage's (focusdiff/stages/evaluate.py, `run_benchmark`),
which `focusdiff evaluate`, the `evaluate@<benchmark>` DVC stages and the flows call. What differs between
benchmarks (suite, scorer, aggregation, resampling, deviations) is each benchmark
module's `Benchmark` object (focusdiff/eval/benchmark.py), listed in REGISTRY below.
Outputs per benchmark:

    <out>/<benchmark>/images/          the official layout (official tools can re-score it)
    <out>/<benchmark>/generation.json  which policy, seed and sampling drew the images
    <out>/<benchmark>/scores.jsonl     one row per image (GenEval: results.jsonl)
    <out>/<benchmark>/...              the benchmark's own files (PairComp: pairs.jsonl, report.html)
    <metrics_dir>/<benchmark>.json     headline numbers, 95% intervals, deviations and the time split
                                       (prepare, generate, score, aggregate; the stage adds load and track)
                                       (DVC metrics; the stage writes it)

Images are reused only when generation.json matches the policy (a cheap checkpoint
fingerprint), seed and sampling; otherwise they are drawn again. Any image without a
score (missing file, judge failure) fails the evaluation: no partial summary is written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusdiff.eval import dpg_bench, geneval, paircomp, t2i_compbench
from focusdiff.eval.benchmark import Benchmark
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import generate_jobs, valid_image
from focusdiff.eval.intervals import percentile_bootstrap
from focusdiff.io import atomic_write_json, atomic_write_text, jsonl_text
from focusdiff.judge.base import JudgeFailure

# The registry: a benchmark is known by adding its module's object here.
REGISTRY: dict[str, Benchmark] = {b.name: b for b in (paircomp.BENCHMARK, geneval.BENCHMARK, t2i_compbench.BENCHMARK,
                                                      dpg_bench.BENCHMARK)}
BENCHMARKS = tuple(REGISTRY)


@dataclass
class EvalResult:
    benchmark: str
    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    deviations: list[str]
    folder: Path
    metrics_file: Path
    seconds: dict[str, float]
    mlflow_run_id: str | None = None


def generation_identity(cfg: EvalConfig, policy) -> dict[str, Any]:
    from focusdiff.model.loading import checkpoint_fingerprint

    directory = Path(policy.model.name_or_path or "")
    return {"policy": policy.source, "seed": cfg.seed, "sampling": cfg.sampling.model_dump(mode="json"),
            "checkpoint": checkpoint_fingerprint(directory) if directory.is_dir() else policy.source}


def prepare_images(folder: Path, identity: dict[str, Any]) -> Path:
    """The image folder, emptied first when its images were drawn by something else."""
    images, record = folder / "images", folder / "generation.json"
    if record.is_file():
        try:
            same = json.loads(record.read_text("utf-8")) == identity
        except (json.JSONDecodeError, UnicodeDecodeError):
            same = False
        if not same:
            shutil.rmtree(images, ignore_errors=True)
    elif images.exists():
        shutil.rmtree(images)  # images of unknown origin
    images.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, identity)
    return images


def evaluate(benchmark: Benchmark, cfg: EvalConfig, policy, progress: Callable[[int], None] = lambda n: None) -> EvalResult:
    """generate -> check completeness -> score -> aggregate -> bootstrap interval -> write files
    (untracked: the stage's `run_benchmark` wraps this in an MLflow run and writes the metrics file)."""
    name = benchmark.name
    folder = cfg.out / name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    suite = benchmark.prepare(cfg, folder)
    t0 = time.perf_counter()
    images = prepare_images(folder, generation_identity(cfg, policy))
    generate_jobs(policy, suite.jobs, images, cfg.seed, cfg.sampling, cfg.batch_size, progress)
    missing = [j.file for j in suite.jobs if not valid_image(images / j.file)]
    if missing:
        raise IncompleteEvaluation(name, f"{len(missing)} of {len(suite.jobs)} images missing or unreadable in {images} "
                                         f"(first: {', '.join(missing[:5])})")
    benchmark.lay_out(suite, images)
    t1 = time.perf_counter()
    try:
        rows = benchmark.score(suite, images)
    except JudgeFailure as exc:
        raise IncompleteEvaluation(name, f"the judge could not score {len(exc.failures)} images: {exc}") from exc
    t2 = time.perf_counter()
    metrics = benchmark.aggregate(suite, rows)
    intervals = percentile_bootstrap(benchmark.resampling_units(suite, rows), benchmark.statistic, cfg.bootstrap, cfg.seed)
    atomic_write_text(folder / benchmark.rows_file, jsonl_text(rows))
    for file, content in benchmark.files(suite, rows, metrics, intervals).items():
        (atomic_write_text if isinstance(content, str) else atomic_write_json)(folder / file, content)
    t3 = time.perf_counter()
    return EvalResult(name, metrics, intervals, suite.deviations, folder, cfg.metrics_dir / f"{name}.json",
                      {"prepare_s": t0 - start, "generate_s": t1 - t0, "score_s": t2 - t1, "aggregate_s": t3 - t2})


def run_paircomp(cfg: EvalConfig, policy, progress: Callable[[int], None] = lambda n: None) -> EvalResult:
    """PairComp on an already loaded policy, untracked (the ablation's and the speed benchmark's entry)."""
    return evaluate(REGISTRY["paircomp"], cfg, policy, progress)
