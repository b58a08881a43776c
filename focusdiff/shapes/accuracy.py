"""How often the exact checker is right: `focusdiff shapes checker-report`.

For random ShapesWorld pairs, each ground-truth image is checked against its own
caption (every clause true) and against the other caption of its pair (some
clauses false). A clause is counted correct when the checker's verdict from the
pixels equals the verdict on the true scene spec. Measured on clean renders and
under each perturbation in `perturb.PERTURBATIONS` (gated: clean >= 99.5%,
perturbed >= 97%) and `perturb.STRESS` (reported only).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from focusdiff.shapes.checker import parse_image
from focusdiff.shapes.generate import CATEGORY_ORDER, SampledPair, ShapesSampler
from focusdiff.shapes.grammar import clauses, evaluate
from focusdiff.shapes.perturb import PERTURBATIONS, STRESS
from focusdiff.shapes.render import render


CLEAN_GATE = 0.995
PERTURBED_GATE = 0.97


@dataclass
class ConditionAccuracy:
    condition: str
    clauses: int = 0
    correct: int = 0
    by_category: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    by_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    seconds_per_image: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.clauses

    @property
    def gate(self) -> float | None:
        """The accuracy this condition must reach, or None for stress conditions."""
        return CLEAN_GATE if self.condition == "clean" else PERTURBED_GATE if self.condition in PERTURBATIONS else None

    @property
    def passed(self) -> bool:
        return self.gate is None or self.accuracy >= self.gate


def sample_pairs(pairs_per_category: int, canvas: int = 32, seed: int = 0) -> list[SampledPair]:
    sampler = ShapesSampler(canvas, np.random.default_rng(seed))
    return [sampler.pair(cat) for cat in CATEGORY_ORDER for _ in range(pairs_per_category)]


def clause_accuracy(
    condition: str, pairs: list[SampledPair], transform: Callable[[np.ndarray], np.ndarray]
) -> ConditionAccuracy:
    """Agreement of the checker on `transform(batch of renders)` with the true scene specs.

    `transform` maps an (N, H, W, 3) uint8 batch of ground-truth renders to what the
    checker should read: itself (clean), a perturbation, or a VQ round trip.
    """
    acc = ConditionAccuracy(condition)
    scenes = [(p, s, own, other) for p in pairs for s, own, other in (
        (p.scene1, p.description1, p.description2), (p.scene2, p.description2, p.description1))]
    images = transform(np.stack([render(s) for _, s, _, _ in scenes]))
    elapsed = 0.0
    for (p, scene, own, other), img in zip(scenes, images):
        t0 = time.perf_counter()
        parsed = parse_image(img, glyph=own.glyph is not None)
        elapsed += time.perf_counter() - t0
        for d in (own, other):
            for c in clauses(d):
                ok = evaluate(c, parsed) == evaluate(c, scene)
                acc.clauses += 1
                acc.correct += ok
                for table, key in ((acc.by_category, p.category), (acc.by_kind, c.kind)):
                    table[key][0] += ok
                    table[key][1] += 1
    acc.seconds_per_image = elapsed / len(scenes)
    return acc


def checker_accuracy(
    pairs_per_category: int = 200,
    canvas: int = 32,
    seed: int = 0,
    conditions: tuple[str, ...] = ("clean", *PERTURBATIONS, *STRESS),
) -> list[ConditionAccuracy]:
    pairs = sample_pairs(pairs_per_category, canvas, seed)
    perturbations = {**PERTURBATIONS, **STRESS}
    results = []
    for ci, condition in enumerate(conditions):
        rng = np.random.default_rng([seed, ci])
        if condition == "clean":
            transform = lambda batch: batch  # noqa: E731
        else:
            f = perturbations[condition]
            transform = lambda batch, f=f: np.stack([f(img, rng) for img in batch])  # noqa: E731
        results.append(clause_accuracy(condition, pairs, transform))
    return results
