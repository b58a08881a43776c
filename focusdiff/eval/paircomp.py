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
by the exact checker (the held-out evaluator) unless configured otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focusdiff.data.schema import CATEGORIES, load_dataset, normalize_category
from focusdiff.errors import DataError
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob

IMAGES_PER_CAPTION = 2


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
    intervals = _bootstrap(cats, a, g, bootstrap, seed) if bootstrap else {}
    return {"metrics": metrics, "intervals": intervals, "pairs": len(pairs),
            "pairs_per_category": {c: cats.count(c) for c in s_a}}


def _bootstrap(cats: list[str], a: np.ndarray, g: np.ndarray, n: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    groups = {c: np.array([k for k, x in enumerate(cats) if x == c]) for c in CATEGORIES if c in cats}
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        per_a, per_g = {}, {}
        for c, idx in groups.items():
            pick = idx[rng.integers(0, len(idx), len(idx))]
            per_a[c], per_g[c] = a[pick].mean(), g[pick].mean()
            draws.setdefault(f"paircomp.{c}.s_a", []).append(100 * per_a[c])
            draws.setdefault(f"paircomp.{c}.s_g", []).append(100 * per_g[c])
        draws.setdefault("paircomp.s_a", []).append(100 * float(np.mean(list(per_a.values()))))
        draws.setdefault("paircomp.s_g", []).append(100 * float(np.mean(list(per_g.values()))))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


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
