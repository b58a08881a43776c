"""PairComp: does the policy render BOTH prompts of a fine-grained pair right? (the promotion gate)

Protocol (../shared/specs/benchmarks.md, FocusDiff's PairComp code):
  * pairs {category, caption1, caption2}; the official set has 550;
  * 2 images per caption, 4 per pair, named `{pair}_{caption}_{image}.png` in one folder;
  * per image S = P(yes) / (P(yes) + P(no)) from a judge asked whether the image matches;
  * per pair a_i = mean of its 4 scores, g_i = their geometric mean;
  * per category s_a = mean a_i, s_g = mean g_i; "average" = unweighted mean of the
    categories; all reported x100.
The geometric mean punishes a pair where one prompt fails: it measures fine-grained control.

ShapesWorld's suite is the dataset's held-out test pairs in the same JSON schema, scored
by the exact checker (the held-out evaluator) unless configured otherwise. `BENCHMARK` is
PairComp for the evaluation path (focusdiff/eval/orchestrate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from focusdiff.data.schema import CATEGORIES, load_dataset, normalize_category
from focusdiff.errors import DataError
from focusdiff.eval.benchmark import Benchmark, Row, Suite
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob
from focusdiff.eval.intervals import percentile_bootstrap
from focusdiff.eval.official import official_file
from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.io import atomic_write_json, jsonl_text
from focusdiff.judge.select import build_judge
from focusdiff.judge.spec import JudgeSpec

IMAGES_PER_CAPTION = 2
JUDGE_CHUNK = 256  # images held in memory per judge call


@dataclass(frozen=True)
class PairCompPair:
    index: int
    category: str  # slug (data.schema.CATEGORIES)
    caption1: str
    caption2: str

    def captions(self) -> tuple[str, str]:
        return self.caption1, self.caption2


def load_pairs(path: str | Path) -> list[PairCompPair]:
    """The official PairComp.json schema: a list of {category, caption1, caption2}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError("PairComp prompt file not found", file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON: {exc}", file=path) from None
    if not isinstance(raw, list) or not raw:
        raise DataError("expected a non-empty JSON list of {category, caption1, caption2}", file=path)
    pairs = []
    for i, row in enumerate(raw):
        if not isinstance(row, dict):
            raise DataError(f"expected an object, got {type(row).__name__}", file=path, row=i + 1)
        for field in ("category", "caption1", "caption2"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise DataError("missing or empty", file=path, row=i + 1, field=field)
        try:
            category = normalize_category(row["category"])
        except ValueError as exc:
            raise DataError(str(exc), file=path, row=i + 1, field="category") from None
        pairs.append(PairCompPair(i, category, row["caption1"].strip(), row["caption2"].strip()))
    return pairs


def shapes_suite(dataset_dir: str | Path, split: str = "test") -> list[dict[str, str]]:
    """ShapesWorld's PairComp: the dataset's `split` pairs, in the official JSON schema."""
    pairs = load_dataset(dataset_dir).split(split).pairs
    if not pairs:
        raise DataError(f"no {split} pairs for the PairComp suite", file=Path(dataset_dir) / "pairs.jsonl")
    return [{"category": CATEGORIES[p.category or "overall_appearance"], "caption1": p.prompt1, "caption2": p.prompt2}
            for p in pairs]


def image_file(pair: int, caption: int, image: int) -> str:
    return f"{pair}_{caption}_{image}.png"


def jobs(pairs: list[PairCompPair]) -> list[ImageJob]:
    return [ImageJob(image_file(p.index, c, i), caption)
            for p in pairs for c, caption in enumerate(p.captions()) for i in range(IMAGES_PER_CAPTION)]


# --------------------------------------------------------------------------- aggregation


def pair_means(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, 4) image scores -> per-pair arithmetic and geometric means."""
    a = scores.mean(axis=1)
    with np.errstate(divide="ignore"):
        g = np.exp(np.log(scores).mean(axis=1))  # log(0) = -inf -> g = 0, as the 4th root of a product with a 0
    return a, g


def category_means(categories: list[str], values: np.ndarray) -> dict[str, float]:
    return {c: float(values[[k for k, x in enumerate(categories) if x == c]].mean())
            for c in CATEGORIES if c in categories}


def aggregate(pairs: list[PairCompPair], scores: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Headline numbers (x100) from the (pairs, 4) score matrix, with bootstrap 95% intervals:
    pairs are resampled within each category (the category sizes are fixed by design)."""
    if scores.shape != (len(pairs), 2 * IMAGES_PER_CAPTION):
        raise ValueError(f"expected scores of shape ({len(pairs)}, 4), got {scores.shape}")
    cats = [p.category for p in pairs]
    a, g = pair_means(scores)
    s_a, s_g = category_means(cats, a), category_means(cats, g)
    metrics: dict[str, Any] = {"paircomp.s_a": 100 * float(np.mean(list(s_a.values()))),
                               "paircomp.s_g": 100 * float(np.mean(list(s_g.values())))}
    for c in s_a:
        metrics[f"paircomp.{c}.s_a"] = 100 * s_a[c]
        metrics[f"paircomp.{c}.s_g"] = 100 * s_g[c]
    intervals = percentile_bootstrap(category_units(cats, a, g), statistic, bootstrap, seed)
    return {"metrics": metrics, "intervals": intervals, "pairs": len(pairs),
            "pairs_per_category": {c: cats.count(c) for c in s_a}}


def category_units(cats: list[str], a: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    """The bootstrap's units: each pair's (a, g), stratified by category in CATEGORIES order."""
    return {c: np.column_stack([a, g])[[k for k, x in enumerate(cats) if x == c]] for c in CATEGORIES if c in cats}


def statistic(sample: dict[str, np.ndarray]) -> dict[str, float]:
    """s_a and s_g (x100) per category and overall, of resampled (a, g) pairs."""
    per_a = {c: units[:, 0].mean() for c, units in sample.items()}
    per_g = {c: units[:, 1].mean() for c, units in sample.items()}
    out: dict[str, float] = {}
    for c in sample:
        out[f"paircomp.{c}.s_a"], out[f"paircomp.{c}.s_g"] = 100 * per_a[c], 100 * per_g[c]
    out["paircomp.s_a"] = 100 * float(np.mean(list(per_a.values())))
    out["paircomp.s_g"] = 100 * float(np.mean(list(per_g.values())))
    return out


def score_matrix(pairs: list[PairCompPair], per_image: dict[str, float]) -> np.ndarray:
    """(pairs, 4) matrix from {file: score}; a missing image's score is an error, never 0."""
    missing = [job.file for job in jobs(pairs) if job.file not in per_image]
    if missing:
        raise IncompleteEvaluation("paircomp", f"{len(missing)} of {4 * len(pairs)} images have no score "
                                   f"(first: {', '.join(missing[:5])})")
    matrix = np.array([[per_image[image_file(p.index, c, i)] for c in range(2) for i in range(IMAGES_PER_CAPTION)]
                       for p in pairs], dtype=np.float64)
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0 or matrix.max() > 1:
        raise ValueError("PairComp scores must be probabilities in [0, 1]")
    return matrix


def worst_pairs(pairs: list[PairCompPair], scores: np.ndarray, k: int = 12) -> list[tuple[PairCompPair, float, list[float]]]:
    _, g = pair_means(scores)
    order = np.argsort(g, kind="stable")[:k]
    return [(pairs[i], float(g[i]), [float(x) for x in scores[i]]) for i in order]


def official_score(p: float) -> float:
    """The official script stores each image's score rounded to 4 decimals before averaging."""
    return round(p, 4)


def official_score_json(pairs: list[PairCompPair], per_image: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """The official `score.json` layout, so FocusDiff's summary_scores.py can re-aggregate our scores."""
    return {str(p.index): [{"pair_idx": p.index, "prompt_idx": c, "image_idx": i,
                            "score": per_image[image_file(p.index, c, i)]}
                           for c in range(2) for i in range(IMAGES_PER_CAPTION)] for p in pairs}


# --------------------------------------------------------------------------- the benchmark


@dataclass
class PairCompSuite(Suite):
    pairs: list[PairCompPair]
    evaluator: JudgeSpec
    report_pairs: int


def judge_images(judge, folder: Path, jobs: list[ImageJob]) -> list[float]:
    """The judge's scores in job order, a chunk of images in memory at a time."""
    scores: list[float] = []
    for start in range(0, len(jobs), JUDGE_CHUNK):
        chunk = jobs[start : start + JUDGE_CHUNK]
        images = [np.asarray(Image.open(folder / j.file).convert("RGB")) for j in chunk]
        scores += [v.score for v in judge.judge(images, [j.prompt for j in chunk])]
    return scores


# Judges whose P(yes) is read off answer-token probabilities: which tokens count is part of their protocol.
ANSWERS_READ_FROM_TOKENS = ("hf", "openai")


class PairComp(Benchmark[PairCompSuite]):
    name = "paircomp"

    def prepare(self, cfg: EvalConfig, folder: Path) -> PairCompSuite:
        c = cfg.paircomp
        deviations = []
        if c.suite == "shapes":
            suite_file = folder / "PairComp.json"
            atomic_write_json(suite_file, shapes_suite(cfg.data, c.split))
            deviations.append(f"suite: ShapesWorld's {c.split} pairs ({cfg.data}) in the PairComp schema, not the official 550")
        else:
            suite_file = official_file("paircomp", "PairComp.json", cfg.benchmark_dir)
        pairs = load_pairs(suite_file)
        if c.evaluator.backend != "openai" or "InternVL2_5-26B" not in (c.evaluator.model or ""):
            deviations.append(f"evaluator: {c.evaluator.backend}"
                              f"{' ' + c.evaluator.model if c.evaluator.model else ''}, not InternVL2.5-26B")
        if c.evaluator.backend in ("openai", "hf"):
            deviations.append("question ends with a period; the official script's question has none")
            if c.evaluator.answer_tokens != "official":
                deviations.append("P(yes) and P(no) sum every word-piece variant of yes/no (' yes', '▁Yes', ...), "
                                  "not only the vocabulary entries yes/Yes/YES and no/No/NO (answer_tokens: variants)")
        return PairCompSuite(jobs(pairs), deviations, pairs, c.evaluator, cfg.report_pairs)

    def score(self, suite: PairCompSuite, images: Path) -> list[Row]:
        raw = judge_images(build_judge(suite.evaluator), images, suite.jobs)  # built after generation: a VLM holds memory
        by_pair = {p.index: p for p in suite.pairs}
        rows = []
        for job, s in zip(suite.jobs, raw):
            pair, caption, _ = (int(x) for x in job.file.removesuffix(".png").split("_"))
            rows.append({"file": job.file, "pair": pair, "caption": caption, "category": by_pair[pair].category,
                         "prompt": job.prompt, "score": official_score(s)})
        return rows

    def _matrix(self, suite: PairCompSuite, rows: list[Row]) -> np.ndarray:
        return score_matrix(suite.pairs, {r["file"]: r["score"] for r in rows})

    def aggregate(self, suite: PairCompSuite, rows: list[Row]) -> dict[str, float]:
        return aggregate(suite.pairs, self._matrix(suite, rows), bootstrap=0)["metrics"]

    def resampling_units(self, suite: PairCompSuite, rows: list[Row]) -> dict[str, np.ndarray]:
        return category_units([p.category for p in suite.pairs], *pair_means(self._matrix(suite, rows)))

    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        return statistic(sample)

    def files(self, suite: PairCompSuite, rows: list[Row], metrics: dict[str, float],
              intervals: dict[str, list[float]]) -> dict[str, Any]:
        from focusdiff.eval.report_html import paircomp_report

        matrix = self._matrix(suite, rows)
        a, g = pair_means(matrix)
        per_pair = [{"pair": p.index, "category": p.category, "caption1": p.caption1, "caption2": p.caption2,
                     "a": float(a[k]), "g": float(g[k]), "scores": [float(x) for x in matrix[k]]}
                    for k, p in enumerate(suite.pairs)]
        return {"score.json": official_score_json(suite.pairs, {r["file"]: r["score"] for r in rows}),
                "pairs.jsonl": jsonl_text(per_pair),
                "report.html": paircomp_report(suite.pairs, matrix, metrics, intervals, suite.deviations, suite.report_pairs)}

    def protocol(self, cfg: EvalConfig) -> EvaluationProtocol:
        # how the images were drawn is part of the protocol: scores at CFG 2 and CFG 5 are not comparable
        spec = cfg.paircomp.evaluator
        return EvaluationProtocol(backend=spec.backend, model=spec.model or "", suite=cfg.paircomp.suite,
                                  split=cfg.paircomp.split, sampling=cfg.sampling, seed=cfg.seed,
                                  answers=spec.answer_tokens if spec.backend in ANSWERS_READ_FROM_TOKENS else "")


BENCHMARK = PairComp()
