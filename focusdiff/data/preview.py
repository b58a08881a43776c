"""A grid of sample pairs (both prompts side by side), for MLflow and a quick look."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

from focusdiff.data.schema import Dataset, PairRecord

_TILE = 128
_TEXT_W = 420


def _tile(dataset: Dataset, rel: str | None) -> Image.Image:
    if rel is None:
        tile = Image.new("RGB", (_TILE, _TILE), (40, 40, 40))
        ImageDraw.Draw(tile).text((8, _TILE // 2), "no image", fill=(200, 200, 200))
        return tile
    with Image.open(dataset.image_path(rel)) as im:
        return im.convert("RGB").resize((_TILE, _TILE), Image.NEAREST)


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
    font = ImageFont.load_default()
    row_h = _TILE + 8
    grid = Image.new("RGB", (2 * _TILE + 16 + _TEXT_W, row_h * len(chosen)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, p in enumerate(chosen):
        y = i * row_h + 4
        grid.paste(_tile(dataset, p.image1), (4, y))
        grid.paste(_tile(dataset, p.image2), (_TILE + 8, y))
        lines = [f"[{p.category or 'uncategorized'}] {p.id}"]
        for n, text in ((1, p.prompt1), (2, p.prompt2)):
            lines += textwrap.wrap(f"{n}: {text}", width=64)
        draw.multiline_text((2 * _TILE + 16, y + 4), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=4)
    return grid
