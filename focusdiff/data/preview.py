"""A grid of sample pairs (both prompts side by side), for MLflow and a quick look."""

from __future__ import annotations

from PIL import Image

from focusdiff.data.schema import Dataset, PairRecord
from focusdiff.viz import labeled_grid


def _load(dataset: Dataset, rel: str | None) -> Image.Image | None:
    if rel is None:
        return None
    with Image.open(dataset.image_path(rel)) as im:
        return im.convert("RGB")


def pair_grid(dataset: Dataset, per_category: int = 2, split: str | None = None) -> Image.Image:
    """Rows of (image1, image2, captions), `per_category` pairs of each category."""
    chosen: list[PairRecord] = []
    counts: dict[str | None, int] = {}
    for p in dataset.pairs:
        if split is not None and p.split != split:
            continue
        if counts.get(p.category, 0) < per_category:
            counts[p.category] = counts.get(p.category, 0) + 1
            chosen.append(p)
    if not chosen:
        raise ValueError(f"no pairs to show in {dataset.root} (split={split})")
    return labeled_grid([
        ([_load(dataset, p.image1), _load(dataset, p.image2)],
         f"[{p.category or 'uncategorized'}] {p.id}\n1: {p.prompt1}\n2: {p.prompt2}")
        for p in chosen
    ])
