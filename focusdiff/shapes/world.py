"""The vocabulary and geometry of ShapesWorld, and the scene spec.

A scene is a background color plus either a few filled shapes or one glyph.
Everything is chosen to be unambiguous at 32 px: palette colors far apart in RGB,
object centres on pixel centres, odd object sizes, a minimum gap between objects.
"""

from __future__ import annotations

from functools import cached_property
from dataclasses import asdict, dataclass, field
from typing import Any

# The 10 GenEval colors. RGB values are far apart (min pairwise distance ~84) so the
# nearest-palette rule survives noise, blur and color shifts of a VQ decoder.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "pink": (255, 120, 190),
    "brown": (120, 70, 30),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
# Background colors. Gray is the default (unmentioned) background; an object never
# has the color of its background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
DEFAULT_BACKGROUND = "gray"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
MAX_COUNT = 4


def _odd(x: float) -> int:
    return 2 * round((x - 1) / 2) + 1


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes for one canvas size (everything scales with the canvas). Cached: layout
    sampling reads them hundreds of thousands of times per training minute."""

    canvas: int

    def __post_init__(self) -> None:
        if self.canvas < 32:
            raise ValueError(f"canvas must be at least 32 px, got {self.canvas}")

    @cached_property
    def small(self) -> int:
        return _odd(0.22 * self.canvas)  # 7 px at 32

    @cached_property
    def large(self) -> int:
        return _odd(0.36 * self.canvas)  # 11 px at 32

    def size_px(self, size: str) -> int:
        return self.small if size == "small" else self.large

    @cached_property
    def gap(self) -> int:
        """Minimum empty pixels between two objects' bounding boxes."""
        return max(3, round(0.08 * self.canvas))

    @cached_property
    def margin(self) -> int:
        return max(1, round(0.03 * self.canvas))

    @cached_property
    def glyph_scale(self) -> int:
        """Pixels per cell of the 5x7 glyph font (3 at 32 px: a 15x21 glyph)."""
        return max(2, round(0.09 * self.canvas))


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: int  # centre column (pixel index)
    y: int  # centre row


@dataclass(frozen=True)
class Scene:
    background: str = DEFAULT_BACKGROUND
    objects: tuple[Obj, ...] = ()
    glyph: str | None = None
    glyph_color: str | None = None
    glyph_x: int | None = None  # centre of the glyph's bounding box
    glyph_y: int | None = None
    canvas: int = 32
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["objects"] = [asdict(o) for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        d = dict(d)
        d["objects"] = tuple(Obj(**o) for o in d.get("objects", ()))
        return cls(**d)
