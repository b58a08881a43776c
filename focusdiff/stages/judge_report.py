"""`focusdiff judge report`: calibrate a judge on renders, a dataset's pairs, or a policy's own samples.

The calibration itself (items, accuracy, AUROC, agreement) is focusdiff/judge/report.py and
needs no model. Measuring the judge on a policy's samples - where Pair-GRPO uses it - needs
the policy to draw them, so that part lives here, in the layer that may join judge and model.
The gap between the agreement on renders and on samples is the room the policy has to please
the judge without pleasing the checker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focusdiff.errors import ConfigError
from focusdiff.judge.exact import ExactJudge
from focusdiff.judge.report import (DEFAULT_SEED, CalibrationReport, _Items, calibrate, calibration_report,
                                    dataset_items)
from focusdiff.judge.server import make_backend
from focusdiff.shapes.accuracy import sample_pairs


def policy_items(policy, pairs_per_category: int, seed: int = DEFAULT_SEED, sampling=None, batch: int = 48) -> _Items:
    """Four items per pair, as `calibration_items`, but the images are the policy's own samples
    (image k drawn with seed + k) and the labels are the exact checker's reading of them. The
    judge is then measured where Pair-GRPO uses it: on what the policy draws, not on renders."""
    # torch only here: a report on renders or a dataset does not load the model code
    from focusdiff.model.quality import draw_pairs
    from focusdiff.model.sampling import SamplingConfig

    sampling = sampling or SamplingConfig(cfg_weight=policy.guidance_scale)
    pairs = sample_pairs(pairs_per_category, policy.image_size, seed)
    sides = [(pair, own, partner) for pair in pairs for own, partner in ((pair.prompt1, pair.prompt2), (pair.prompt2, pair.prompt1))]
    drawn = draw_pairs(policy, pairs, seed, sampling, batch)
    images, prompts, categories = [], [], []
    for image, (pair, own, partner) in zip(drawn, sides):
        for prompt in (own, partner):
            images.append(image)
            prompts.append(prompt)
            categories.append(pair.category)
    labels = (np.array(ExactJudge().scores(images, prompts)) > 0.5).astype(int)
    return _Items(images, prompts, labels, np.array(categories))


def judge_report(backend: str, model: str | None, pairs_per_category: int, seed: int | None, canvas: int,
                 data: Path | None, split: str, policy: str | None) -> tuple[CalibrationReport, str]:
    """The judge `backend`'s calibration and a line saying what it was measured on."""
    if policy is not None and data is not None:
        raise ConfigError("--policy and --data are exclusive: the images are either a policy's samples or the dataset's")
    judge = make_backend(backend, model)
    if policy is not None:
        from focusdiff.model.loading import load_policy

        seed = DEFAULT_SEED if seed is None else seed
        loaded = load_policy(policy)
        report = calibrate(judge, policy_items(loaded, pairs_per_category, seed), pairs_per_category, seed, canvas)
        source = (f"{policy}'s samples (CFG {loaded.guidance_scale:g}), {pairs_per_category} pairs x "
                  f"{len(report.by_category)} categories x 4 items, seed {seed}; labels from the exact checker")
    elif data is not None:
        report = calibrate(judge, dataset_items(data, split), canvas=canvas)
        source = f"{data} ({split} split) x 4 items"
    else:
        seed = DEFAULT_SEED if seed is None else seed
        report = calibration_report(judge, pairs_per_category, seed, canvas)
        source = f"{pairs_per_category} pairs x {len(report.by_category)} categories x 4 items, {canvas}px, seed {seed}"
    return report, source
