"""Learning-rate schedule shared by the bootstrap trainers: linear warm-up, then cosine
decay to a floor (the floor and the EMA keep the last steps from wobbling)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
