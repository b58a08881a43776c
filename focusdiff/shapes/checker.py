"""The exact checker: parse a ShapesWorld image back into a scene and verify captions.

It is the held-out evaluator of the embedded default, so it is built to be right
under the artefacts a VQ decoder adds (noise, blur, color shift, small offsets):

1. background = majority nearest background color of the border pixels;
2. every pixel gets its nearest palette color; pixels not of the background form
   connected components (specks dropped);
3. per component: color = nearest palette color to the median of its eroded core;
   its mask is then refined at half contrast between background and that color,
   so blurred edges neither grow nor shrink it;
4. shape from fill ratio and top/bottom corner occupancy, matched to prototypes
   rendered by the renderer itself at this canvas size; size from the box;
5. glyph captions: all foreground is one glyph, sampled on the 5x7 grid of its
   bounding box and matched to the font.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from focusdiff.shapes.font import GLYPHS
from focusdiff.shapes.grammar import Clause, Description, clauses, evaluate, parse_caption
from focusdiff.shapes.render import shape_mask
from focusdiff.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES, Geometry, Obj, Scene

_COLOR_NAMES = list(COLORS)
_COLOR_RGB = np.array(list(COLORS.values()), dtype=np.float32)
_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_EIGHT = np.ones((3, 3), dtype=bool)


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"expected a square RGB image, got array of shape {arr.shape}")
    return arr.astype(np.float32)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    d = ((pixels[..., None, :] - palette) ** 2).sum(-1)
    return d.argmin(-1)


def _background(img: np.ndarray) -> str:
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    votes = np.bincount(_nearest(border, _BG_RGB), minlength=len(_BG_NAMES))
    return _BG_NAMES[int(votes.argmax())]


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """(fill ratio, top-corner occupancy, bottom-corner occupancy) of a cropped mask."""
    h, w = mask.shape
    k = max(2, round(0.25 * min(h, w)))
    top = (mask[:k, :k].mean() + mask[:k, -k:].mean()) / 2
    bottom = (mask[-k:, :k].mean() + mask[-k:, -k:].mean()) / 2
    return np.array([mask.mean(), top, bottom])


@functools.lru_cache(maxsize=16)
def _prototypes(canvas: int) -> tuple[list[str], np.ndarray]:
    geo = Geometry(canvas)
    names, feats = [], []
    for shape in SHAPES:
        for size in SIZES:
            names.append(shape)
            feats.append(_shape_features(shape_mask(shape, geo.size_px(size))))
    return names, np.stack(feats)


def _color_of(img: np.ndarray, mask: np.ndarray) -> str:
    core = ndimage.binary_erosion(mask)
    pixels = img[core if core.sum() >= 3 else mask]
    return _COLOR_NAMES[int(_nearest(np.median(pixels, axis=0), _COLOR_RGB))]


def _half_contrast(img: np.ndarray, bg: np.ndarray, color: str) -> np.ndarray:
    """Pixels more than halfway from the background color towards `color`."""
    c = _COLOR_RGB[_COLOR_NAMES.index(color)] - bg
    t = ((img - bg) @ c) / float(c @ c)
    return t > 0.5


def _components(img: np.ndarray, bg_name: str, min_area: int) -> list[np.ndarray]:
    bg = np.array(BACKGROUNDS[bg_name], dtype=np.float32)
    palette = np.concatenate([bg[None], _COLOR_RGB])
    labels = _nearest(img, palette)
    foreground = labels != 0
    # A palette color equal to the background (white on white) is background too.
    foreground &= ~np.all(palette[labels] == bg, axis=-1)
    comp, n = ndimage.label(foreground, structure=_EIGHT)
    return [comp == i for i in range(1, n + 1) if (comp == i).sum() >= min_area]


def parse_image(image: Image.Image | np.ndarray, glyph: bool = False) -> Scene:
    """Read a scene from pixels. `glyph=True` reads the foreground as one glyph."""
    img = as_array(image)
    canvas = img.shape[0]
    geo = Geometry(canvas)
    bg_name = _background(img)
    bg = np.array(BACKGROUNDS[bg_name], dtype=np.float32)
    if glyph:
        return _parse_glyph(img, bg_name, bg, geo)
    min_area = max(4, int(0.35 * shape_mask("circle", geo.small).sum()))
    names, protos = _prototypes(canvas)
    size_threshold = (geo.small + geo.large) / 2
    objects = []
    for comp in _components(img, bg_name, min_area):
        color = _color_of(img, comp)
        grown = ndimage.binary_dilation(comp, structure=_EIGHT)
        mask = grown & _half_contrast(img, bg, color)
        if mask.sum() < min_area:
            continue
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        crop = mask[top : bottom + 1, left : right + 1]
        shape = names[int(np.linalg.norm(protos - _shape_features(crop), axis=1).argmin())]
        size = "small" if max(crop.shape) < size_threshold else "large"
        objects.append(Obj(shape, color, size, x=int(round((left + right) / 2)), y=int(round((top + bottom) / 2))))
    return Scene(background=bg_name, objects=tuple(objects), canvas=canvas)


def _parse_glyph(img: np.ndarray, bg_name: str, bg: np.ndarray, geo: Geometry) -> Scene:
    comps = _components(img, bg_name, min_area=max(2, geo.glyph_scale**2 // 2))
    if not comps:
        return Scene(background=bg_name, canvas=geo.canvas)
    union = np.any(comps, axis=0)
    color = _color_of(img, union)
    mask = ndimage.binary_dilation(union, structure=_EIGHT) & _half_contrast(img, bg, color)
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    crop = mask[top : bottom + 1, left : right + 1].astype(np.float32)
    # Occupancy of each of the 5x7 cells, from the central half of the cell.
    h, w = crop.shape
    occ = np.zeros((7, 5), dtype=np.float32)
    for r in range(7):
        y0, y1 = int(np.floor(r * h / 7 + h / 28)), int(np.ceil((r + 1) * h / 7 - h / 28))
        for c in range(5):
            x0, x1 = int(np.floor(c * w / 5 + w / 20)), int(np.ceil((c + 1) * w / 5 - w / 20))
            occ[r, c] = crop[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean()
    char = min(GLYPHS, key=lambda ch: float(np.abs(occ - GLYPHS[ch]).sum()))
    return Scene(
        background=bg_name,
        glyph=char,
        glyph_color=color,
        glyph_x=int(round((left + right) / 2)),
        glyph_y=int(round((top + bottom) / 2)),
        canvas=geo.canvas,
    )


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one (image, caption): one boolean per clause."""

    caption: str
    clauses: tuple[Clause, ...]
    passed: tuple[bool, ...]
    parsed: Scene

    @property
    def correct(self) -> bool:
        return all(self.passed)

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed)


def check_description(image: Image.Image | np.ndarray, description: Description, text: str = "") -> CheckResult:
    parsed = parse_image(image, glyph=description.glyph is not None)
    cls = tuple(clauses(description))
    return CheckResult(text, cls, tuple(evaluate(c, parsed) for c in cls), parsed)


def check(image: Image.Image | np.ndarray, caption: str) -> CheckResult:
    """Verify a ShapesWorld caption against an image, clause by clause."""
    return check_description(image, parse_caption(caption), caption)
