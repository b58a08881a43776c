"""`focusdiff generate`: prompts -> images (and a labeled grid) from any loadable policy.

Images are drawn in batches by the CFG sampler with one seed per image
(`seed + image index`), so any single image can be reproduced alone. The output
directory is written whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from focusdiff.io import atomic_directory
from focusdiff.model.policy import Policy
from focusdiff.model.sampler import SamplingConfig, sample
from focusdiff.viz import labeled_grid


def generate_images(
    policy: Policy,
    prompts: list[str],
    out: str | Path,
    *,
    images_per_prompt: int = 4,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    batch_size: int = 16,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Path:
    """Write `<out>/<prompt index>_<image index>.png`, `grid.png` and `prompts.json`."""
    if not prompts:
        raise ValueError("no prompts given")
    jobs = [(i, j) for i in range(len(prompts)) for j in range(images_per_prompt)]
    images: dict[tuple[int, int], object] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        rollout = sample(policy, [prompts[i] for i, _ in chunk], [seed + start + k for k in range(len(chunk))], sampling)
        images.update(zip(chunk, rollout.images))
        on_batch(len(chunk))
    with atomic_directory(out) as tmp:
        for (i, j), image in images.items():
            Image.fromarray(image).save(tmp / f"{i:03d}_{j}.png")
        rows = [([images[(i, j)] for j in range(images_per_prompt)], p) for i, p in enumerate(prompts)]
        labeled_grid(rows).save(tmp / "grid.png")
        meta = {
            "policy": policy.source,
            "seed": seed,
            "images_per_prompt": images_per_prompt,
            "sampling": sampling.__dict__,
            "prompts": prompts,
        }
        (tmp / "prompts.json").write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    return Path(out)
