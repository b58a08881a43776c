"""The evaluate stages: generate a benchmark's images, score them, aggregate, report, track.

`focusdiff evaluate --benchmark paircomp`, the `evaluate_paircomp` DVC stage and the
Prefect pipeline's evaluation tasks all call `run_benchmark`. Outputs per benchmark:

    <out>/<benchmark>/images/          the official layout (official tools can re-score it)
    <out>/<benchmark>/generation.json  which policy, seed and sampling drew the images
    <out>/<benchmark>/scores.jsonl     one row per image: file, prompt, category, score
    <out>/<benchmark>/report.html      the worst items side by side with their scores
    <metrics_dir>/<benchmark>.json     headline numbers, 95% intervals, deviations (DVC metrics)

Images are reused only when generation.json matches the policy (a cheap checkpoint
fingerprint), seed and sampling; otherwise they are drawn again. Any image without a
score (missing file, judge failure) fails the evaluation: no partial summary is written.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from focusdiff.tracking_config import TrackingConfig
from focusdiff.eval import dpg_bench as dpg
from focusdiff.eval import geneval, paircomp
from focusdiff.eval import t2i_compbench as t2i
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob, generate_jobs, png_bytes, valid_image
from focusdiff.eval.official import official_file
from focusdiff.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonl_text
from focusdiff.judge.base import Judge, JudgeFailure
from focusdiff.judge.select import build_judge
from focusdiff.registry.protocol import EvaluationProtocol
from focusdiff.registry.registration import Registration

BENCHMARKS = ("paircomp", "geneval", "t2i_compbench", "dpg_bench")
JUDGE_CHUNK = 256  # images held in memory per judge call


@dataclass
class EvalResult:
    benchmark: str
    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    deviations: list[str]
    folder: Path
    metrics_file: Path
    seconds: dict[str, float]
    per_item: list[dict[str, Any]] = field(default_factory=list)
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


def judge_files(judge: Judge, folder: Path, jobs: list[ImageJob], benchmark: str) -> list[float]:
    """Scores in job order; a missing image or a judge failure is an IncompleteEvaluation."""
    missing = [j.file for j in jobs if not valid_image(folder / j.file)]
    if missing:
        raise IncompleteEvaluation(benchmark, f"{len(missing)} of {len(jobs)} images missing or unreadable in {folder} "
                                              f"(first: {', '.join(missing[:5])})")
    scores: list[float] = []
    for start in range(0, len(jobs), JUDGE_CHUNK):
        chunk = jobs[start : start + JUDGE_CHUNK]
        images = [np.asarray(Image.open(folder / j.file).convert("RGB")) for j in chunk]
        try:
            scores += [v.score for v in judge.judge(images, [j.prompt for j in chunk])]
        except JudgeFailure as exc:
            raise IncompleteEvaluation(benchmark, f"the judge could not score {len(exc.failures)} images: {exc}") from exc
    return scores


def run_paircomp(cfg: EvalConfig, policy, progress: Callable[[int], None]) -> EvalResult:
    c = cfg.paircomp
    folder = cfg.out / "paircomp"
    folder.mkdir(parents=True, exist_ok=True)
    deviations = []
    if c.suite == "shapes":
        suite_file = folder / "PairComp.json"
        atomic_write_json(suite_file, paircomp.shapes_suite(cfg.data, c.split))
        deviations.append(f"suite: ShapesWorld's {c.split} pairs ({cfg.data}) in the PairComp schema, not the official 550")
    else:
        suite_file = official_file("paircomp", "PairComp.json", cfg.benchmark_dir)
    pairs = paircomp.load_pairs(suite_file)
    if c.evaluator.backend != "openai" or "InternVL2_5-26B" not in (c.evaluator.model or ""):
        deviations.append(f"evaluator: {c.evaluator.backend}"
                          f"{' ' + c.evaluator.model if c.evaluator.model else ''}, not InternVL2.5-26B")
    if c.evaluator.backend in ("openai", "hf"):
        deviations.append("question ends with a period; the official script's question has none")
    jobs = paircomp.jobs(pairs)
    t0 = time.perf_counter()
    images = prepare_images(folder, generation_identity(cfg, policy))

    generate_jobs(policy, jobs, images, cfg.seed, cfg.sampling, cfg.batch_size, progress)
    t1 = time.perf_counter()
    raw = judge_files(build_judge(c.evaluator), images, jobs, "paircomp")
    per_image = {j.file: paircomp.official_score(s) for j, s in zip(jobs, raw)}
    t2 = time.perf_counter()
    matrix = paircomp.score_matrix(pairs, per_image)
    summary = paircomp.aggregate(pairs, matrix, cfg.bootstrap, cfg.seed)
    by_pair = {p.index: p for p in pairs}
    rows = [{"file": j.file, "pair": int(j.file.split("_")[0]), "caption": int(j.file.split("_")[1]),
             "category": by_pair[int(j.file.split("_")[0])].category, "prompt": j.prompt, "score": per_image[j.file]}
            for j in jobs]
    atomic_write_text(folder / "scores.jsonl", jsonl_text(rows))
    atomic_write_json(folder / "score.json", paircomp.official_score_json(pairs, per_image))
    a, g = paircomp.pair_means(matrix)
    per_pair = [{"pair": p.index, "category": p.category, "caption1": p.caption1, "caption2": p.caption2,
                 "a": float(a[k]), "g": float(g[k]), "scores": [float(x) for x in matrix[k]]} for k, p in enumerate(pairs)]
    atomic_write_text(folder / "pairs.jsonl", jsonl_text(per_pair))
    atomic_write_text(folder / "report.html", paircomp_report(pairs, matrix, summary, deviations, cfg.report_pairs))
    return EvalResult("paircomp", summary["metrics"], summary["intervals"], deviations, folder,
                      cfg.metrics_dir / "paircomp.json", {"generate_s": t1 - t0, "score_s": t2 - t1}, per_pair)


def run_geneval(cfg: EvalConfig, policy, progress: Callable[[int], None]) -> EvalResult:
    c = cfg.geneval
    folder = cfg.out / "geneval"
    folder.mkdir(parents=True, exist_ok=True)
    deviations = []
    if c.suite == "shapes":
        meta_file = folder / "evaluation_metadata.jsonl"
        atomic_write_text(meta_file, jsonl_text(geneval.shapes_suite(cfg.seed, c.prompts_per_task)))
        deviations.append(f"suite: ShapesWorld prompts in GenEval's schema ({c.prompts_per_task} per task), not the official 553")
        class_names = None
    else:
        meta_file = official_file("geneval", "evaluation_metadata.jsonl", cfg.benchmark_dir)
        names = official_file("geneval", "object_names.txt", cfg.benchmark_dir)
        class_names = [line.strip() for line in names.read_text("utf-8").splitlines() if line.strip()]
    prompts = geneval.load_metadata(meta_file)
    if c.detector == "shapes":
        detector, colors = geneval.ShapesDetector(), geneval.KnownColors()
        deviations.append("detector and colours: the exact checker's parse of ShapesWorld pixels, not Mask2Former + CLIP")
    else:
        from focusdiff.eval.detectors import ClipColorClassifier, Mask2FormerDetector

        if class_names is None:
            from focusdiff.shapes.world import SHAPES

            class_names = list(SHAPES)
        detector, colors = Mask2FormerDetector(c.detector_model, class_names), ClipColorClassifier(c.color_model)
        deviations.append("detector: transformers' Mask2Former (trained differently from the official mmdet checkpoint)")
    jobs = geneval.jobs(prompts)
    t0 = time.perf_counter()
    images = prepare_images(folder, generation_identity(cfg, policy))
    for p in prompts:  # GenEval's layout: each prompt folder holds its metadata
        atomic_write_text(images / f"{p.index:05d}" / "metadata.jsonl", json.dumps(p.metadata()) + "\n")

    generate_jobs(policy, jobs, images, cfg.seed, cfg.sampling, cfg.batch_size, progress)
    t1 = time.perf_counter()
    missing = [j.file for j in jobs if not valid_image(images / j.file)]
    if missing:
        raise IncompleteEvaluation("geneval", f"{len(missing)} images missing or unreadable (first: {', '.join(missing[:5])})")
    by_index = {p.index: p for p in prompts}
    rows, correct = [], {}
    for j in jobs:
        p = by_index[int(j.file[:5])]
        image = np.asarray(Image.open(images / j.file).convert("RGB"))
        classes = sorted({r["class"] for r in (*p.include, *p.exclude)})
        ok, reason = geneval.evaluate_image(image, p, detector.detect(image, classes), colors)
        correct[j.file] = ok
        rows.append({"file": j.file, "tag": p.tag, "prompt": p.prompt, "correct": ok, "reason": reason})
    t2 = time.perf_counter()
    metrics = geneval.aggregate(prompts, correct)
    intervals = bootstrap_tasks(prompts, correct, cfg.bootstrap, cfg.seed) if cfg.bootstrap else {}
    atomic_write_text(folder / "results.jsonl", jsonl_text(rows))
    return EvalResult("geneval", metrics, intervals, deviations, folder, cfg.metrics_dir / "geneval.json",
                      {"generate_s": t1 - t0, "score_s": t2 - t1})


def bootstrap_tasks(prompts, correct: dict[str, bool], resamples: int, seed: int) -> dict[str, list[float]]:
    """95% intervals of GenEval's task scores and overall, resampling prompts within each task."""
    rng = np.random.default_rng(seed)
    per_prompt: dict[str, list[float]] = {}
    for p in prompts:
        per_prompt.setdefault(p.tag, []).append(
            float(np.mean([correct[geneval.image_file(p.index, i)] for i in range(geneval.IMAGES_PER_PROMPT)])))
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        tasks = {t: float(np.mean(rng.choice(v, len(v)))) for t, v in per_prompt.items()}
        for t, v in tasks.items():
            draws.setdefault(f"geneval.{t}", []).append(v)
        draws.setdefault("geneval.overall", []).append(float(np.mean(list(tasks.values()))))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


def run_t2i_compbench(cfg: EvalConfig, policy, progress: Callable[[int], None]) -> EvalResult:
    c = cfg.t2i_compbench
    folder = cfg.out / "t2i_compbench"
    folder.mkdir(parents=True, exist_ok=True)
    deviations = []
    if c.suite == "shapes":
        lists = folder / "dataset"
        for name, text in t2i.suite_files(t2i.shapes_suite(cfg.seed, c.prompts_per_category)).items():
            atomic_write_text(lists / name, text)
        deviations.append(f"suite: ShapesWorld prompts in T2I-CompBench's files ({c.prompts_per_category} per category), "
                          "not the official 300; shape binds sizes and texture binds the background")
    else:
        for name in [f"{x}_val.txt" for x in c.categories] + ["complex_val_spatial.txt", "complex_val_action.txt"]:
            official_file("t2i_compbench", f"dataset/{name}", cfg.benchmark_dir)
        lists = official_file("t2i_compbench", "dataset/color_val.txt", cfg.benchmark_dir).parent
    prompts = [p for cat in c.categories for p in t2i.load_prompts(lists / f"{cat}_val.txt", cat)]
    spatial_prompts, action_prompts = t2i.read_lists(lists)
    if c.scorers == "shapes":
        scorers = t2i.shapes_scorers()
        deviations.append("scorers: the exact checker (VQA, detection, clause share for CLIPScore) and the ShapesWorld "
                          "grammar for noun chunks, not BLIP-VQA / UniDet / CLIP / spaCy")
    else:
        from focusdiff.eval.t2i_models import transformers_scorers

        scorers = transformers_scorers(c)
        deviations.append(f"spatial detector: {c.detector_model} (open-vocabulary) instead of UniDet")
    jobs = t2i.jobs(prompts)
    t0 = time.perf_counter()
    images = prepare_images(folder, generation_identity(cfg, policy))

    generate_jobs(policy, jobs, images, cfg.seed, cfg.sampling, cfg.batch_size, progress)
    t1 = time.perf_counter()
    missing = [j.file for j in jobs if not valid_image(images / j.file)]
    if missing:
        raise IncompleteEvaluation("t2i_compbench", f"{len(missing)} images missing or unreadable (first: {missing[0]})")
    scores, rows = {}, []
    for p in prompts:
        for k in range(t2i.IMAGES_PER_PROMPT):
            file = t2i.image_file(p, k)
            image = np.asarray(Image.open(images / file).convert("RGB"))
            scores[file] = t2i.score_image(p, image, scorers, spatial_prompts, action_prompts)
            rows.append({"file": file, "category": p.category, "prompt": p.prompt, "score": scores[file]})
    t2 = time.perf_counter()
    metrics = t2i.aggregate(prompts, scores)
    atomic_write_text(folder / "scores.jsonl", jsonl_text(rows))
    intervals = bootstrap_means(prompts, scores, cfg.bootstrap, cfg.seed) if cfg.bootstrap else {}
    return EvalResult("t2i_compbench", metrics, intervals, deviations, folder, cfg.metrics_dir / "t2i_compbench.json",
                      {"generate_s": t1 - t0, "score_s": t2 - t1})


def bootstrap_means(prompts, scores: dict[str, float], resamples: int, seed: int) -> dict[str, list[float]]:
    """95% intervals of per-category means, resampling prompts (their 10 images stay together)."""
    rng = np.random.default_rng(seed)
    per: dict[str, list[float]] = {}
    for p in prompts:
        per.setdefault(p.category, []).append(float(np.mean([scores[t2i.image_file(p, k)] for k in range(t2i.IMAGES_PER_PROMPT)])))
    out = {}
    for cat, values in per.items():
        draws = [float(np.mean(rng.choice(values, len(values)))) for _ in range(resamples)]
        out[f"t2i_compbench.{cat}"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    return out


def run_dpg_bench(cfg: EvalConfig, policy, progress: Callable[[int], None]) -> EvalResult:
    from focusdiff.errors import ConfigError
    from focusdiff.eval.official import file_sha256

    c = cfg.dpg_bench
    folder = cfg.out / "dpg_bench"
    folder.mkdir(parents=True, exist_ok=True)
    deviations = []
    if c.suite == "shapes":
        questions_file = folder / "dpg_bench.csv"
        atomic_write_text(questions_file, dpg.csv_text(dpg.shapes_suite(cfg.seed, c.prompts)))
        deviations.append(f"suite: {c.prompts} dense ShapesWorld prompts with question graphs, not the official 1065")
    else:
        questions_file = official_file("dpg_bench", "dpg_bench.csv", cfg.benchmark_dir)
        deviations.append(f"dpg_bench.csv is fetched at the pinned commit but has no pinned sha256 in this release; "
                          f"this run used sha256 {file_sha256(questions_file)}")
    items = dpg.load_questions(questions_file)
    if c.answerer == "shapes":
        answerer = dpg.ShapesAnswerer()
        deviations.append("answers: the exact checker reads each question's tuple, not mPLUG-large")
    else:
        if c.judge is None:
            raise ConfigError("evaluate.dpg_bench.answerer is judge but evaluate.dpg_bench.judge is not set")
        answerer = dpg.JudgeAnswerer(build_judge(c.judge, template="{prompt}"))
        deviations.append(f"answers: {c.judge.backend} judge {c.judge.model} asked each question, not mPLUG-large")
    deviations.append("fixed official defects: all CSV rows used, every tile's answers pooled per category, "
                      "'Yes' counts as yes (P(yes) > P(no))")
    jobs = dpg.jobs(items)
    t0 = time.perf_counter()
    images = prepare_images(folder, generation_identity(cfg, policy))

    generate_jobs(policy, jobs, images, cfg.seed, cfg.sampling, cfg.batch_size, progress)
    missing = [j.file for j in jobs if not valid_image(images / j.file)]
    if missing:
        raise IncompleteEvaluation("dpg_bench", f"{len(missing)} tiles missing or unreadable (first: {missing[0]})")
    for item in items:  # the official layout: one 2x2 grid per prompt
        tiles = [Image.open(images / dpg.tile_file(item, k)).convert("RGB") for k in range(dpg.TILES)]
        atomic_write_bytes(images / f"{item.item_id}.png", png_bytes(dpg.grid(tiles)))
    t1 = time.perf_counter()
    try:
        answers = dpg.answer_all(items, images, answerer)
    except JudgeFailure as exc:
        raise IncompleteEvaluation("dpg_bench", f"the judge could not answer: {exc}") from exc
    t2 = time.perf_counter()
    metrics = dpg.aggregate(items, answers)
    rows = [{"item_id": i.item_id, "tile": k, "prompt": i.prompt, "answers": answers[i.item_id][k],
             "score": float(np.mean(dpg.apply_dependencies(i, answers[i.item_id][k])))} for i in items for k in range(dpg.TILES)]
    atomic_write_text(folder / "scores.jsonl", jsonl_text(rows))
    intervals = {}
    if cfg.bootstrap:
        rng = np.random.default_rng(cfg.seed)
        per_image = np.array([np.mean([r["score"] for r in rows if r["item_id"] == i.item_id]) for i in items])
        draws = [100 * float(np.mean(rng.choice(per_image, len(per_image)))) for _ in range(cfg.bootstrap)]
        intervals["dpg.overall"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    return EvalResult("dpg_bench", metrics, intervals, deviations, folder, cfg.metrics_dir / "dpg_bench.json",
                      {"generate_s": t1 - t0, "score_s": t2 - t1})


RUNNERS = {"paircomp": run_paircomp, "geneval": run_geneval, "t2i_compbench": run_t2i_compbench, "dpg_bench": run_dpg_bench}


def paircomp_protocol(cfg: EvalConfig) -> EvaluationProtocol:
    """How PairComp is measured under `cfg`. How the images were drawn is part of the protocol:
    scores at CFG 2 and CFG 5 are not comparable."""
    spec = cfg.paircomp.evaluator
    return EvaluationProtocol(backend=spec.backend, model=spec.model or "", suite=cfg.paircomp.suite,
                              split=cfg.paircomp.split, sampling=cfg.sampling, seed=cfg.seed)


def run_benchmark(benchmark: str, cfg: EvalConfig, tracking: TrackingConfig, tags: dict[str, str] | None = None,
                  progress: Callable[[int], None] = lambda n: None,
                  registration: Registration | None = None) -> EvalResult:
    """Evaluate `cfg.policy` on one benchmark, tracked as an MLflow run `evaluate_<benchmark>`.
    With `registration` (a registered version of that policy), the outcome is also written on
    the version: results and files when complete, the reason when it fails."""
    try:
        result = _run_benchmark(benchmark, cfg, tracking, tags, progress)
    except Exception as exc:
        if registration is not None:
            from focusdiff.registry.store import record_failure

            record_failure(registration, tracking, benchmark, f"{type(exc).__name__}: {exc}")
        raise
    if registration is not None:
        from focusdiff.registry.store import record_evaluation

        files = [result.metrics_file] + [result.folder / n for n in ("pairs.jsonl", "scores.jsonl", "results.jsonl")
                                         if (result.folder / n).is_file()]
        protocol = paircomp_protocol(cfg) if benchmark == "paircomp" else None
        record_evaluation(registration, tracking, benchmark, result.metrics, files, protocol)
    return result


def _run_benchmark(benchmark: str, cfg: EvalConfig, tracking: TrackingConfig, tags: dict[str, str] | None,
                   progress: Callable[[int], None]) -> EvalResult:
    from focusdiff.errors import ConfigError
    from focusdiff.model.loading import load_policy
    from focusdiff.tracking import StageRun

    if benchmark not in RUNNERS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    logged = {"evaluate": cfg.model_dump(mode="json"), "benchmark": benchmark}
    with StageRun(tracking, f"evaluate_{benchmark}", params=logged,
                  tags={"benchmark": benchmark, "policy": cfg.policy, **(tags or {})}) as run:
        policy = load_policy(cfg.policy)
        result = RUNNERS[benchmark](cfg, policy, progress)
        payload = {"benchmark": benchmark, "policy": cfg.policy, "metrics": result.metrics,
                   "intervals": result.intervals, "deviations": result.deviations, "seconds": result.seconds,
                   "mlflow_run_id": run.run_id}
        cfg.metrics_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result.metrics_file, payload)
        run.log_metrics(result.metrics)
        run.log_metrics({f"{k}.ci95_low": v[0] for k, v in result.intervals.items()}
                        | {f"{k}.ci95_high": v[1] for k, v in result.intervals.items()}
                        | {f"{benchmark}.{k}": v for k, v in result.seconds.items()})
        run.set_tags({"deviations": " | ".join(result.deviations)[:5000]})
        for name in ("scores.jsonl", "pairs.jsonl", "results.jsonl", "report.html"):
            if (result.folder / name).is_file():
                run.log_artifact(result.folder / name, f"evaluate/{benchmark}")
        run.log_artifact(result.metrics_file, f"evaluate/{benchmark}")
        result.mlflow_run_id = run.run_id
        return result


def paircomp_report(pairs, matrix: np.ndarray, summary: dict[str, Any], deviations: list[str], worst: int) -> str:
    """A self-contained HTML page: headline numbers, then the worst pairs' 4 images with scores."""
    m, ci = summary["metrics"], summary["intervals"]
    head = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td><td>{'' if k not in ci else f'[{ci[k][0]:.1f}, {ci[k][1]:.1f}]'}</td></tr>"
        for k, v in m.items())
    rows = []
    for pair, g, scores in paircomp.worst_pairs(pairs, matrix, worst):
        cells = "".join(
            f"<td><img src='images/{paircomp.image_file(pair.index, c, i)}' width=128 style='image-rendering:pixelated'>"
            f"<br>{scores[2 * c + i]:.3f}</td>" for c in range(2) for i in range(2))
        rows.append(f"<tr><td>#{pair.index} {html.escape(pair.category)}<br>g={g:.3f}<br>1: {html.escape(pair.caption1)}"
                    f"<br>2: {html.escape(pair.caption2)}</td>{cells}</tr>")
    devs = "".join(f"<li>{html.escape(d)}</li>" for d in deviations)
    return (f"<!doctype html><meta charset=utf-8><title>PairComp</title><h1>PairComp</h1>"
            f"<table border=1><tr><th>metric (x100)</th><th>value</th><th>95% interval</th></tr>{head}</table>"
            f"<h2>Deviations from the official protocol</h2><ul>{devs or '<li>none</li>'}</ul>"
            f"<h2>Worst pairs (lowest geometric mean)</h2><table border=1>{''.join(rows)}</table>")
