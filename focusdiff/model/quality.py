"""How well a policy draws ShapesWorld prompts, measured by the exact checker.

For fresh pairs of every category (the test distribution: held-out combinations
included), one image per caption is sampled and checked. Reported: the share of
images whose every clause holds (overall, per category, and for single-object
prompts), clause accuracy, and the share of pairs with both images right.
This is how the shipped base is gated ("good but imperfect, like Janus-Pro").

`edit_locality` measures the image tokenizer against the same pairs: how many of an
image's tokens a pair's one-detail edit changes, next to how many of the token grid's
pixel blocks it touches. Pair-GRPO's hard negative (the other prompt's ground truth) and
its per-token loss assume that a small edit is a small change in tokens.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pydantic import BaseModel

from focusdiff.model.policy import Policy
from focusdiff.model.sampler import SamplingConfig, sample
from focusdiff.model.vq import LocalityReport, tokenizer_locality
from focusdiff.shapes.accuracy import sample_pairs
from focusdiff.shapes.checker import check_description
from focusdiff.shapes.generate import SampledPair
from focusdiff.shapes.grammar import Description
from focusdiff.shapes.render import render


class QualityReport(BaseModel):
    images: int
    image_accuracy: float
    clause_accuracy: float
    single_object_accuracy: float
    pair_accuracy: float
    by_category: dict[str, float]  # image accuracy
    pair_by_category: dict[str, float]


def is_single_object(d: Description) -> bool:
    return d.glyph is None and d.relation is None and len(d.groups) == 1 and d.groups[0].count == 1


def draw_pairs(policy: Policy, pairs: list[SampledPair], seed: int, s: SamplingConfig, batch: int = 48) -> list[np.ndarray]:
    """One image per prompt of every pair (prompt1, prompt2, prompt1, ...), image k drawn with seed + k."""
    prompts = [prompt for p in pairs for prompt in (p.prompt1, p.prompt2)]
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        images.extend(sample(policy, chunk, [seed + start + j for j in range(len(chunk))], s).images)
    return images


def policy_quality(
    policy: Policy, pairs_per_category: int = 20, seed: int = 1234, s: SamplingConfig = SamplingConfig(), batch: int = 48
) -> QualityReport:
    pairs = sample_pairs(pairs_per_category, policy.image_size, seed)
    items = [(i, d) for i, p in enumerate(pairs) for d in (p.description1, p.description2)]
    images = draw_pairs(policy, pairs, seed, s, batch)
    correct = [check_description(img, d) for img, (_, d) in zip(images, items)]
    by_cat: dict[str, list[int]] = defaultdict(list)
    pair_ok: dict[str, list[int]] = defaultdict(list)
    single = [r.correct for r, (_, d) in zip(correct, items) if is_single_object(d)]
    for k, (r, (i, _)) in enumerate(zip(correct, items)):
        by_cat[pairs[i].category].append(r.correct)
        if k % 2 == 1:
            pair_ok[pairs[i].category].append(r.correct and correct[k - 1].correct)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    clauses = [ok for r in correct for ok in r.passed]
    return QualityReport(
        images=len(images),
        image_accuracy=mean([r.correct for r in correct]),
        clause_accuracy=mean(clauses),
        single_object_accuracy=mean(single),
        pair_accuracy=mean([x for v in pair_ok.values() for x in v]),
        by_category={k: mean(v) for k, v in sorted(by_cat.items())},
        pair_by_category={k: mean(v) for k, v in sorted(pair_ok.items())},
    )


def edit_locality(policy: Policy, pairs: list[SampledPair]) -> LocalityReport:
    """How local the policy's image tokenizer is on `pairs` (focusdiff/model/vq.py, `tokenizer_locality`)."""
    if pairs and render(pairs[0].scene1).shape[:2] != (policy.image_size, policy.image_size):
        size = render(pairs[0].scene1).shape[1]
        raise ValueError(f"a {pairs[0].category} pair is rendered at {size}x{size}, the policy draws "
                         f"{policy.image_size}x{policy.image_size}")
    return tokenizer_locality(policy.model.model.vqmodel, pairs)
