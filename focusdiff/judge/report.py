"""How well a judge's scores separate true captions from false ones: `focusdiff judge report`.

Why: Pair-GRPO trusts the judge's P(yes)/(P(yes)+P(no)) as its reward, so a judge
backend (a learned or in-process VLM) should first be measured where the answer
is known. On held-out ShapesWorld pairs, each ground-truth image is judged
against its own caption (label yes) and against its partner caption (label no:
the two captions differ in one detail, the one the category tests, so the
partner caption is false for the image). Each pair thus gives four items.

Reported, overall and per category:

* accuracy - the judge says yes (score > 0.5) exactly when the label is yes;
* AUROC - the probability that a random yes-item scores above a random no-item
  (ties count one half): threshold-free, so a judge whose scores rank well but
  sit on the wrong side of 0.5 is seen as such;
* agreement - the judge's yes/no equals the exact checker's on the same item.

With a policy (`focusdiff judge report --policy shapes-base`), the images are instead that
policy's own samples, labelled by the exact checker (focusdiff/stages/judge_report.py: drawing
them needs the model, which the judge package does not import).

A judge that cannot score an item raises `JudgeFailure`, and so does the report:
a summary over the items that happened to work would flatter the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from focusdiff.judge.base import Judge
from focusdiff.judge.exact import ExactJudge
from focusdiff.shapes.accuracy import sample_pairs
from focusdiff.shapes.generate import CATEGORY_ORDER
from focusdiff.shapes.render import render

# Not a seed any dataset split uses: the data stage draws from default_rng([seed, split]).
DEFAULT_SEED = 2718


@dataclass(frozen=True)
class Calibration:
    """The judge's quality on one set of items."""

    items: int
    accuracy: float
    auroc: float
    agreement: float


@dataclass(frozen=True)
class CalibrationReport:
    judge: str
    pairs_per_category: int
    seed: int
    canvas: int
    overall: Calibration
    by_category: dict[str, Calibration]

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    @property
    def auroc(self) -> float:
        return self.overall.auroc

    @property
    def agreement(self) -> float:
        return self.overall.agreement


@dataclass(frozen=True)
class _Items:
    """The judged items: images, prompts, labels (1 = the caption is true) and categories."""

    images: list[np.ndarray]
    prompts: list[str]
    labels: np.ndarray
    categories: np.ndarray


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic.

    AUROC = (R - n1 (n1 + 1) / 2) / (n1 n0), where R is the sum of the ranks of the
    positives among all scores (ascending, from 1) and n1, n0 count positives and
    negatives. Tied scores share their average rank, so each tied
    (positive, negative) couple contributes one half.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-d and of one length, got shapes {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"AUROC needs both classes, got {n1} positives and {n0} negatives")
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ascending ranks; equal values get the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start index of each run of equal values in the sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + 1 + ends) / 2  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def calibration_items(pairs_per_category: int, seed: int = DEFAULT_SEED, canvas: int = 32) -> _Items:
    """Four items per pair: each scene's render with its own caption (yes) and its partner's (no)."""
    images, prompts, labels, categories = [], [], [], []
    for pair in sample_pairs(pairs_per_category, canvas, seed):
        sides = ((pair.scene1, pair.prompt1, pair.prompt2), (pair.scene2, pair.prompt2, pair.prompt1))
        for scene, own, partner in sides:
            image = render(scene)
            for prompt, label in ((own, 1), (partner, 0)):
                images.append(image)
                prompts.append(prompt)
                labels.append(label)
                categories.append(pair.category)
    return _Items(images, prompts, np.array(labels), np.array(categories))


def _calibration(scores: np.ndarray, exact_yes: np.ndarray, labels: np.ndarray) -> Calibration:
    says_yes = scores > 0.5
    return Calibration(
        items=len(scores),
        accuracy=float((says_yes == (labels == 1)).mean()),
        # undefined when one class is absent (a policy's samples can all be wrong in a category)
        auroc=auroc(scores, labels) if 0 < labels.sum() < len(labels) else float("nan"),
        agreement=float((says_yes == exact_yes).mean()),
    )


def dataset_items(root: str | Path, split: str = "test") -> _Items:
    """Four items per pair of a dataset split, as `calibration_items` (ground-truth images
    from disk); a pair without both images cannot be used and is an error naming its row."""
    from focusdiff.data.schema import load_dataset
    from focusdiff.errors import DataError

    dataset = load_dataset(root)
    images, prompts, labels, categories = [], [], [], []
    for pair in dataset.pairs:
        if pair.split != split:
            continue
        if pair.image1 is None or pair.image2 is None:
            missing = "image2" if pair.image1 else "image1"
            raise DataError(f"pair {pair.id!r} has no {missing}: a calibration pair needs both images",
                            file=Path(root) / "pairs.jsonl", field=missing)
        sides = ((pair.image1, pair.prompt1, pair.prompt2), (pair.image2, pair.prompt2, pair.prompt1))
        for rel, own, partner in sides:
            with Image.open(Path(root) / rel) as im:
                image = np.asarray(im.convert("RGB"))
            for prompt, label in ((own, 1), (partner, 0)):
                images.append(image)
                prompts.append(prompt)
                labels.append(label)
                categories.append(pair.category or "uncategorized")
    if not images:
        raise DataError(f"no {split} pairs to calibrate on", file=Path(root) / "pairs.jsonl")
    return _Items(images, prompts, np.array(labels), np.array(categories))


def calibrate(judge: Judge, items: _Items, pairs_per_category: int = 0, seed: int = -1, canvas: int = 32) -> CalibrationReport:
    """Measure `judge` on `items` against their labels and the exact checker; JudgeFailure propagates."""
    scores = np.array(judge.scores(items.images, items.prompts))
    exact_yes = np.array(ExactJudge().scores(items.images, items.prompts)) > 0.5
    by_category = {}
    for category in [c for c in CATEGORY_ORDER if c in set(items.categories)] + sorted(
            set(items.categories) - set(CATEGORY_ORDER)):
        mask = items.categories == category
        by_category[category] = _calibration(scores[mask], exact_yes[mask], items.labels[mask])
    return CalibrationReport(
        judge=judge.name,
        pairs_per_category=pairs_per_category,
        seed=seed,
        canvas=canvas,
        overall=_calibration(scores, exact_yes, items.labels),
        by_category=by_category,
    )


def calibration_report(
    judge: Judge, pairs_per_category: int = 50, seed: int = DEFAULT_SEED, canvas: int = 32
) -> CalibrationReport:
    """Measure `judge` on freshly sampled held-out pairs; JudgeFailure propagates."""
    if pairs_per_category < 1:
        raise ValueError(f"pairs_per_category must be >= 1, got {pairs_per_category}")
    return calibrate(judge, calibration_items(pairs_per_category, seed, canvas), pairs_per_category, seed, canvas)
