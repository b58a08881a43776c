"""Benchmark image generation: batched, seeded, resumable, in each benchmark's own layout.

A benchmark lists its images as jobs (relative file name, prompt). Job k is drawn with
seed `seed + k` by the CFG sampler, so any image can be regenerated alone and a re-run
skips every image that is already there and valid (a PNG of the policy's size that
decodes), regenerating corrupt or truncated ones. Each image is written atomically, so
an interrupted run leaves only whole images.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from focusdiff.io import atomic_write_bytes
from focusdiff.model.policy import Policy
from focusdiff.model.sampler import SamplingConfig, sample


@dataclass(frozen=True)
class ImageJob:
    file: str  # relative to the benchmark's image folder
    prompt: str


def valid_image(path: Path, size: int | None = None) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
            return size is None or im.size == (size, size)
    except (OSError, ValueError, SyntaxError):
        return False


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def generate_jobs(
    policy: Policy,
    jobs: list[ImageJob],
    folder: Path,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    batch_size: int = 32,
    on_batch: Callable[[int], None] = lambda n: None,
) -> dict[str, int]:
    """Draw every job whose file is missing or invalid; returns counts (generated, kept)."""
    size = policy.image_size
    todo = [(k, job) for k, job in enumerate(jobs) if not valid_image(folder / job.file, size)]
    on_batch(len(jobs) - len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rollout = sample(policy, [job.prompt for _, job in chunk], [seed + k for k, _ in chunk], sampling)
        for (_, job), image in zip(chunk, rollout.images):
            atomic_write_bytes(folder / job.file, png_bytes(image))
        on_batch(len(chunk))
    return {"generated": len(todo), "kept": len(jobs) - len(todo)}
