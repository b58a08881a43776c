"""Labeled image grids for people: MLflow artifacts, `focusdiff generate`, reports."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128
TEXT_WIDTH = 420


def _tile(image: Image.Image | np.ndarray | None) -> Image.Image:
    if image is None:
        tile = Image.new("RGB", (TILE, TILE), (40, 40, 40))
        ImageDraw.Draw(tile).text((8, TILE // 2), "no image", fill=(200, 200, 200))
        return tile
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB").resize((TILE, TILE), Image.NEAREST)  # small renders: keep pixels crisp


def labeled_grid(rows: list[tuple[list[Image.Image | np.ndarray | None], str]]) -> Image.Image:
    """One row per entry: its images as tiles, then its label wrapped to the right."""
    if not rows:
        raise ValueError("no rows to draw")
    columns = max(len(images) for images, _ in rows)
    font = ImageFont.load_default()
    row_h = TILE + 8
    grid = Image.new("RGB", (columns * (TILE + 4) + 12 + TEXT_WIDTH, row_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (images, label) in enumerate(rows):
        y = r * row_h + 4
        for c, image in enumerate(images):
            grid.paste(_tile(image), (4 + c * (TILE + 4), y))
        lines = [w for line in label.split("\n") for w in textwrap.wrap(line, width=64)]
        draw.multiline_text((columns * (TILE + 4) + 12, y + 4), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=4)
    return grid
