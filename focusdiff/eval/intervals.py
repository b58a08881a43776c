"""The one bootstrap for every benchmark's 95% intervals.

A benchmark hands over its resampling units (a prompt, a pair, a DPG item: the images
drawn for one prompt are not independent, so they are resampled together) grouped in
strata, and a statistic that turns one resample into metric values. Each resample draws,
stratum by stratum in the given order, as many units as the stratum holds, with
replacement: a stratified bootstrap keeps each category's size fixed, as the benchmarks
fix them by design (one stratum is the plain bootstrap). The interval is the 2.5th and
97.5th percentile of each metric over the resamples.

One generator seeded with the evaluation seed, consumed resample by resample, stratum by
stratum: the same units, statistic and seed give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

PERCENTILES = (2.5, 97.5)  # the central 95%


def percentile_bootstrap(strata: Mapping[str, np.ndarray], statistic: Callable[[dict[str, np.ndarray]], dict[str, float]],
                         resamples: int, seed: int) -> dict[str, list[float]]:
    """{metric: [low, high]} from `resamples` stratified resamples of the units (rows of each
    stratum's array); no resamples, no intervals."""
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    if not resamples:
        return {}
    empty = [name for name, units in strata.items() if len(units) == 0]
    if empty:
        raise ValueError(f"cannot resample empty strata: {', '.join(empty)}")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        sample = {name: units[rng.integers(0, len(units), len(units))] for name, units in strata.items()}
        for metric, value in statistic(sample).items():
            draws.setdefault(metric, []).append(value)
    return {metric: [float(np.percentile(values, q)) for q in PERCENTILES] for metric, values in draws.items()}
