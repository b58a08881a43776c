"""Sampling ShapesWorld pairs and prompts.

A pair is two descriptions rendered with the same template that differ in one
fine-grained detail, chosen by PairComp category:

    color              one object's color            "a red circle" / "a blue circle"
    counting           the count                     "two red circles" / "three red circles"
    position           the relation                  "... to the left of ..." / "... to the right of ..."
    overall_appearance one object's shape or size    "a small red circle" / "a large red circle"
    style_tone         the background                "... on a white background" / "... on a black background"
    text               the glyph                     'the letter "A"' / 'the letter "K"'

Each description is realised as a scene (unsaid attributes sampled; the second
scene keeps the first one's layout where it can, like a real edit) and every
ground-truth scene is verified to satisfy all clauses of its own caption.
Held-out (color, shape) combinations never appear in the train split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from focusdiff.errors import FocusdiffError
from focusdiff.shapes.grammar import N_TEMPLATES, Description, Group, caption, clauses, evaluate, holds
from focusdiff.shapes.font import GLYPH_CHARS
from focusdiff.shapes.render import glyph_box
from focusdiff.shapes.world import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_BACKGROUND,
    MAX_COUNT,
    RELATIONS,
    SHAPES,
    SIZES,
    Geometry,
    Obj,
    Scene,
)

CATEGORY_ORDER = ("overall_appearance", "color", "counting", "position", "style_tone", "text")
_LAYOUT_TRIES = 2000
_SAMPLE_TRIES = 200


class LayoutError(FocusdiffError, RuntimeError):
    """No valid layout was found for a description (resampled by the caller)."""


@dataclass(frozen=True)
class SampledPair:
    category: str
    description1: Description
    description2: Description
    scene1: Scene
    scene2: Scene

    @property
    def prompt1(self) -> str:
        return caption(self.description1)

    @property
    def prompt2(self) -> str:
        return caption(self.description2)


@dataclass(frozen=True)
class SampledPrompt:
    description: Description
    scene: Scene

    @property
    def prompt(self) -> str:
        return caption(self.description)


class ShapesSampler:
    """Draws descriptions, pairs and scenes from one numpy Generator."""

    def __init__(self, canvas: int, rng: np.random.Generator, holdout: frozenset[tuple[str, str]] = frozenset()):
        self.geo = Geometry(canvas)
        self.rng = rng
        self.holdout = holdout  # (color, shape) combinations this sampler must not produce

    # ------------------------------------------------------------ primitives
    def choice(self, options):
        options = list(options)
        if not options:
            raise LayoutError("nothing left to choose from (held-out combinations exclude every option)")
        return options[int(self.rng.integers(len(options)))]

    def color_for(self, shape: str | None, background: str, exclude: tuple[str, ...] = ()) -> str:
        allowed = [
            c
            for c in COLORS
            if c != background and c not in exclude and (shape is None or (c, shape) not in self.holdout)
        ]
        return self.choice(allowed)

    def _group(self, background: str, count: int, *, p_color: float, p_size: float) -> Group:
        shape = self.choice(SHAPES)
        color = self.color_for(shape, background) if self.rng.random() < p_color else None
        size = self.choice(SIZES) if self.rng.random() < p_size else None
        return Group(count, shape, color, size)

    def _distinct(self, a: Group, b: Group) -> bool:
        """Two groups a caption can tell apart (different shape, or both colored differently)."""
        return a.shape != b.shape or (a.color is not None and b.color is not None and a.color != b.color)

    def _groups(self, n: int, background: str, **kw) -> tuple[Group, ...]:
        for _ in range(_SAMPLE_TRIES):
            gs = tuple(self._group(background, 1, **kw) for _ in range(n))
            if n == 1 or self._distinct(*gs):
                return gs
        raise LayoutError("could not sample distinct groups")

    def template(self) -> int:
        return int(self.rng.integers(N_TEMPLATES))

    # ------------------------------------------------------------ pairs by category
    def pair_descriptions(self, category: str) -> tuple[Description, Description]:
        t = self.template()
        if category == "color":
            gs = self._groups(int(self.rng.integers(1, 3)), DEFAULT_BACKGROUND, p_color=1.0, p_size=0.3)
            i = int(self.rng.integers(len(gs)))
            new = self.color_for(gs[i].shape, DEFAULT_BACKGROUND, exclude=(gs[i].color,))
            gs2 = gs[:i] + (Group(gs[i].count, gs[i].shape, new, gs[i].size),) + gs[i + 1 :]
            return Description(gs, template=t), Description(gs2, template=t)
        if category == "counting":
            (g,) = self._groups(1, DEFAULT_BACKGROUND, p_color=0.8, p_size=0.3)
            n, m = self.rng.choice(np.arange(1, MAX_COUNT + 1), size=2, replace=False)
            d = Description((Group(int(n), g.shape, g.color, g.size),), numeral=True, template=t)
            return d, d.with_(groups=(Group(int(m), g.shape, g.color, g.size),))
        if category == "position":
            gs = self._groups(2, DEFAULT_BACKGROUND, p_color=0.9, p_size=0.3)
            rel = self.choice(RELATIONS)
            d = Description(gs, relation=rel, template=t)
            return d, d.with_(relation=RELATIONS[rel])
        if category == "overall_appearance":
            gs = self._groups(int(self.rng.integers(1, 3)), DEFAULT_BACKGROUND, p_color=0.9, p_size=0.5)
            i = int(self.rng.integers(len(gs)))
            g = gs[i]
            if self.rng.random() < 0.6:
                shapes = [s for s in SHAPES if s != g.shape and (g.color, s) not in self.holdout]
                changed = Group(g.count, self.choice(shapes), g.color, g.size)
            else:
                size = g.size or self.choice(SIZES)
                g = Group(g.count, g.shape, g.color, size)
                gs = gs[:i] + (g,) + gs[i + 1 :]
                changed = Group(g.count, g.shape, g.color, "large" if size == "small" else "small")
            gs2 = gs[:i] + (changed,) + gs[i + 1 :]
            if len(gs2) == 2 and not self._distinct(*gs2):
                raise LayoutError("appearance change made the two groups indistinct")
            return Description(gs, template=t), Description(gs2, template=t)
        if category == "style_tone":
            b1, b2 = self.rng.choice(list(BACKGROUNDS), size=2, replace=False)
            n = int(self.rng.integers(1, 3))
            for _ in range(_SAMPLE_TRIES):
                gs = self._groups(n, str(b1), p_color=0.8, p_size=0.3)
                if all(g.color != b2 for g in gs):
                    break
            else:
                raise LayoutError("no colors compatible with both backgrounds")
            d = Description(gs, background=str(b1), template=t)
            return d, d.with_(background=str(b2))
        if category == "text":
            # Two glyphs of one kind, so the captions differ in the glyph alone.
            kind = self.choice([str.isalpha, str.isdigit])
            c1, c2 = self.rng.choice([c for c in GLYPH_CHARS if kind(c)], size=2, replace=False)
            bg = self.choice(BACKGROUNDS) if self.rng.random() < 0.3 else None
            color = self.color_for(None, bg or DEFAULT_BACKGROUND) if self.rng.random() < 0.6 else None
            d = Description(glyph=str(c1), glyph_color=color, background=bg, template=t)
            return d, d.with_(glyph=str(c2))
        raise ValueError(f"unknown category {category!r}")

    def pair(self, category: str) -> SampledPair:
        for _ in range(_SAMPLE_TRIES):
            try:
                d1, d2 = self.pair_descriptions(category)
                s1 = self.realize(d1)
                if d2.background is not None and any(o.color == d2.background for o in s1.objects):
                    continue  # an unsaid color would vanish on the other background
                s2 = self.realize(d2, like=s1)
            except LayoutError:
                continue
            return SampledPair(category, d1, d2, s1, s2)
        raise LayoutError(f"could not sample a {category} pair in {_SAMPLE_TRIES} tries")

    def unpaired(self) -> SampledPrompt:
        """A single prompt of any kind (unpaired prompts are trained two at a time)."""
        for _ in range(_SAMPLE_TRIES):
            try:
                d, _ = self.pair_descriptions(self.choice(CATEGORY_ORDER))
                return SampledPrompt(d, self.realize(d))
            except LayoutError:
                continue
        raise LayoutError("could not sample an unpaired prompt")

    # ------------------------------------------------------------ realisation
    def realize(self, d: Description, like: Scene | None = None) -> Scene:
        """A scene satisfying every clause of `d`; reuses `like`'s layout where valid."""
        background = d.background or DEFAULT_BACKGROUND
        if d.glyph is not None:
            scene = self._realize_glyph(d, background, like)
        else:
            scene = self._realize_objects(d, background, like)
        if not all(evaluate(c, scene) for c in clauses(d)):
            raise LayoutError("realised scene does not satisfy its description")
        return scene

    def _realize_glyph(self, d: Description, background: str, like: Scene | None) -> Scene:
        if like is not None and like.glyph is not None and like.glyph_color != background:
            color = d.glyph_color or like.glyph_color
            x, y = like.glyph_x, like.glyph_y
        else:
            color = d.glyph_color or self.color_for(None, background)
            x = y = None
        if color == background:
            raise LayoutError("glyph color equals background")
        geo = self.geo
        probe = Scene(background, glyph=d.glyph, glyph_color=color, glyph_x=0, glyph_y=0, canvas=geo.canvas)
        top, left, bottom, right = glyph_box(probe, geo)  # offsets relative to a centre at (0, 0)
        lo_y, hi_y = geo.margin - top, geo.canvas - 1 - geo.margin - bottom
        lo_x, hi_x = geo.margin - left, geo.canvas - 1 - geo.margin - right
        if x is None:
            x, y = int(self.rng.integers(lo_x, hi_x + 1)), int(self.rng.integers(lo_y, hi_y + 1))
        return Scene(background, glyph=d.glyph, glyph_color=color, glyph_x=x, glyph_y=y, canvas=geo.canvas)

    def _object_specs(self, d: Description, background: str, like: Scene | None) -> list[tuple[str, str, str]]:
        specs = []
        for g in d.groups:
            # Unsaid attributes carry over from the same object of `like` (the pair's
            # first scene), so the two images differ only in what the captions say.
            k = len(specs)
            prev = like.objects[min(k, len(like.objects) - 1)] if like is not None and like.objects else None
            color = g.color
            if color is None:
                keep = prev is not None and prev.color != background and (prev.color, g.shape) not in self.holdout
                color = prev.color if keep else self.color_for(g.shape, background)
            size = g.size or (prev.size if prev is not None else self.choice(SIZES))
            if (color, g.shape) in self.holdout or color == background:
                raise LayoutError("held-out or invisible combination")
            specs += [(g.shape, color, size)] * g.count
        return specs

    def _realize_objects(self, d: Description, background: str, like: Scene | None) -> Scene:
        geo = self.geo
        specs = self._object_specs(d, background, like)
        if like is not None and len(like.objects) == len(specs):
            objs = tuple(Obj(s, c, z, o.x, o.y) for (s, c, z), o in zip(specs, like.objects))
            if self._valid_layout(objs, d):
                return Scene(background, objs, canvas=geo.canvas)
        for attempt in range(_LAYOUT_TRIES):
            if attempt and attempt % 100 == 0:
                specs = self._object_specs(d, background, None)  # redraw unsaid sizes/colors too
            objs = []
            for shape, color, size in specs:
                r = geo.size_px(size) // 2
                lo, hi = geo.margin + r, geo.canvas - 1 - geo.margin - r
                objs.append(Obj(shape, color, size, int(self.rng.integers(lo, hi + 1)), int(self.rng.integers(lo, hi + 1))))
            objs = tuple(objs)
            if self._valid_layout(objs, d):
                return Scene(background, objs, canvas=geo.canvas)
        raise LayoutError(f"no layout for {caption(d)!r} in {_LAYOUT_TRIES} tries at {geo.canvas}px")

    def _valid_layout(self, objs: tuple[Obj, ...], d: Description) -> bool:
        geo = self.geo
        for o in objs:
            r = geo.size_px(o.size) // 2
            if not (geo.margin + r <= min(o.x, o.y) and max(o.x, o.y) <= geo.canvas - 1 - geo.margin - r):
                return False
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                need = (geo.size_px(a.size) + geo.size_px(b.size)) / 2 + geo.gap
                if abs(a.x - b.x) < need and abs(a.y - b.y) < need:
                    return False
        if d.relation is not None:
            n0, n1 = d.groups[0].count, d.groups[1].count
            for a in objs[:n0]:
                for b in objs[n0 : n0 + n1]:
                    # Unambiguous: the relation's axis dominates by at least 2:1.
                    major, minor = (a.x - b.x, a.y - b.y) if d.relation in ("left", "right") else (a.y - b.y, a.x - b.x)
                    if not holds(a, d.relation, b) or abs(minor) > 0.5 * abs(major):
                        return False
        return True
