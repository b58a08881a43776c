"""Deterministic rendering of a ShapesWorld scene to RGB pixels.

Shapes are rasterised by testing pixel centres (no anti-aliasing, no font engine),
so a scene spec maps to exactly one image on every machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from focusdiff.shapes.font import GLYPHS
from focusdiff.shapes.world import BACKGROUNDS, COLORS, Geometry, Obj, Scene


def shape_mask(shape: str, size_px: int) -> np.ndarray:
    """Boolean mask of a filled shape inside its size_px x size_px bounding box."""
    h = size_px / 2
    d = np.arange(size_px) - size_px // 2  # pixel-centre offsets from the centre
    dy, dx = np.meshgrid(d, d, indexing="ij")
    if shape == "square":
        return np.ones((size_px, size_px), dtype=bool)
    if shape == "circle":
        return dx**2 + dy**2 <= h**2
    if shape == "triangle":  # apex up, base on the bottom edge of the box
        half_width = (dy + h) / 2
        return np.abs(dx) <= half_width
    raise ValueError(f"unknown shape {shape!r}")


def glyph_mask(char: str, scale: int) -> np.ndarray:
    return np.kron(GLYPHS[char], np.ones((scale, scale), dtype=bool))


def object_box(obj: Obj, geo: Geometry) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) inclusive pixel bounds of an object."""
    r = geo.size_px(obj.size) // 2
    return obj.y - r, obj.x - r, obj.y + r, obj.x + r


def glyph_box(scene: Scene, geo: Geometry) -> tuple[int, int, int, int]:
    h, w = 7 * geo.glyph_scale, 5 * geo.glyph_scale
    top, left = scene.glyph_y - h // 2, scene.glyph_x - w // 2
    return top, left, top + h - 1, left + w - 1


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a (canvas, canvas, 3) uint8 array."""
    geo = Geometry(scene.canvas)
    img = np.empty((scene.canvas, scene.canvas, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        top, left, bottom, right = object_box(obj, geo)
        if top < 0 or left < 0 or bottom >= scene.canvas or right >= scene.canvas:
            raise ValueError(f"object {obj} lies outside the {scene.canvas}px canvas")
        mask = shape_mask(obj.shape, geo.size_px(obj.size))
        img[top : bottom + 1, left : right + 1][mask] = COLORS[obj.color]
    if scene.glyph is not None:
        top, left, bottom, right = glyph_box(scene, geo)
        if top < 0 or left < 0 or bottom >= scene.canvas or right >= scene.canvas:
            raise ValueError(f"glyph {scene.glyph!r} lies outside the {scene.canvas}px canvas")
        img[top : bottom + 1, left : right + 1][glyph_mask(scene.glyph, geo.glyph_scale)] = COLORS[
            scene.glyph_color
        ]
    return img


def render_pil(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene), mode="RGB")
