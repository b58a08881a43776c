"""Every learning-rate schedule of the project, as plain functions of the step.

A top-level module, not in any package, so that the trainers that need a schedule (the
bootstrap VQ and LM, the ShapesWorld judge, Pair-GRPO) share one implementation without
depending on each other's packages. Pure arithmetic: no torch, no configs.

* `warmup_cosine`: linear warm-up, then cosine decay to a floor (the floor and the EMA keep
  the last steps of the bootstrap trainers from wobbling); Pair-GRPO's `lr.schedule: cosine`.
* `three_phase`: the reference FocusDiff run's schedule, Pair-GRPO's `lr.schedule: reference`.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def three_phase(step: int, total_steps: int, peak: float, warmup: int, mid: float, mid_step: int,
                final: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, linear to `mid` at `mid_step`, then linear
    to `final` at the last step (`step` is 0-based, of `total_steps`)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < mid_step:
        return peak + (mid - peak) * (step - warmup) / max(1, mid_step - warmup)
    last = max(total_steps - 1, mid_step + 1)
    return mid + (final - mid) * min(1.0, (step - mid_step) / (last - mid_step))
