"""ShapesWorld captions: a small grammar, rendered from and parsed back to a Description.

A Description is what a caption says (it may leave size, color or background
unsaid); a Scene is what an image shows. `clauses(description)` lists the
checkable statements of a caption, and `evaluate(clause, scene)` decides one
against a scene, whether that scene is the ground-truth spec or the exact
checker's parse of generated pixels. Several phrasings (templates) per scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from focusdiff.errors import FocusdiffError
from focusdiff.shapes.world import BACKGROUNDS, COLORS, RELATIONS, SHAPES, SIZES, Obj, Scene

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
PREFIXES: tuple[str, ...] = ("", "a photo of ", "an image of ", "a picture of ")
RELATION_PHRASES: dict[str, tuple[str, str]] = {
    "left": ("to the left of", "on the left of"),
    "right": ("to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
# Glyph phrasings: {kind} is "letter" or "digit".
GLYPH_TEMPLATES: tuple[str, ...] = ('the {kind} "{c}"', 'the {kind} "{c}" written in {color}', 'a {color} {kind} "{c}"')


@dataclass(frozen=True)
class Group:
    """`count` objects of one description ("two small red circles")."""

    count: int
    shape: str
    color: str | None = None
    size: str | None = None

    def matches(self, obj: Obj) -> bool:
        return (
            obj.shape == self.shape
            and (self.color is None or obj.color == self.color)
            and (self.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class Description:
    """What a caption states. `relation` reads: groups[0] <relation> groups[1]."""

    groups: tuple[Group, ...] = ()
    relation: str | None = None
    background: str | None = None
    glyph: str | None = None
    glyph_color: str | None = None
    numeral: bool = False  # "one red circle" instead of "a red circle" (counting)
    template: int = 0  # phrasing choice; the same template renders both prompts of a pair

    def with_(self, **changes) -> "Description":
        return replace(self, **changes)


# ---------------------------------------------------------------- rendering


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def group_phrase(g: Group, numeral: bool = False) -> str:
    words = [w for w in (g.size, g.color) if w] + [g.shape + ("s" if g.count > 1 else "")]
    if g.count == 1 and not numeral:
        det = _article(words[0])
    else:
        det = NUMBERS[g.count]
    return " ".join([det, *words])


def caption(d: Description) -> str:
    """Render a description with its template; deterministic."""
    t = d.template
    prefix = PREFIXES[t % len(PREFIXES)]
    if d.glyph is not None:
        kind = "digit" if d.glyph.isdigit() else "letter"
        if d.glyph_color is None:
            body = GLYPH_TEMPLATES[0].format(kind=kind, c=d.glyph)
        else:
            tpl = GLYPH_TEMPLATES[1 + (t // len(PREFIXES)) % 2]
            body = tpl.format(kind=kind, c=d.glyph, color=d.glyph_color)
    else:
        parts = [group_phrase(g, d.numeral) for g in d.groups]
        if d.relation is not None:
            phrase = RELATION_PHRASES[d.relation][(t // len(PREFIXES)) % 2]
            body = f"{parts[0]} {phrase} {parts[1]}"
        else:
            body = " and ".join(parts)
    text = prefix + body
    if d.background is not None:
        text += f" on {_article(d.background)} {d.background} background"
    return text


N_TEMPLATES = len(PREFIXES) * 2

# ---------------------------------------------------------------- parsing

_alt = "|".join
_NUM_WORDS = {v: k for k, v in NUMBERS.items()}
_GROUP_RE = re.compile(
    rf"^(?P<det>a|an|{_alt(NUMBERS.values())}) "
    rf"(?:(?P<size>{_alt(SIZES)}) )?(?:(?P<color>{_alt(COLORS)}) )?"
    rf"(?P<shape>{_alt(SHAPES)})(?P<plural>s?)$"
)
_BG_RE = re.compile(rf"^(?P<body>.+) on an? (?P<bg>{_alt(BACKGROUNDS)}) background$")
_GLYPH_RE = re.compile(
    rf'^(?:the (?P<k1>letter|digit) "(?P<c1>.)"(?: written in (?P<col1>{_alt(COLORS)}))?'
    rf'|a (?P<col2>{_alt(COLORS)}) (?P<k2>letter|digit) "(?P<c2>.)")$'
)
_REL_RE = re.compile(
    "^(?P<a>.+?) (?P<phrase>"
    + _alt(re.escape(p) for ps in RELATION_PHRASES.values() for p in ps)
    + ") (?P<b>.+)$"
)
_PHRASE_TO_REL = {p: rel for rel, ps in RELATION_PHRASES.items() for p in ps}


class CaptionError(FocusdiffError, ValueError):
    """A caption outside the ShapesWorld grammar."""


def _parse_group(text: str, caption_text: str) -> tuple[Group, bool]:
    m = _GROUP_RE.match(text)
    if not m:
        raise CaptionError(f"not a ShapesWorld caption: cannot read {text!r} in {caption_text!r}")
    det = m["det"]
    count = 1 if det in ("a", "an") else _NUM_WORDS[det]
    if (count > 1) != bool(m["plural"]):
        raise CaptionError(f"number disagreement in {text!r} of {caption_text!r}")
    return Group(count, m["shape"], m["color"], m["size"]), det == "one"


def parse_caption(text: str) -> Description:
    """Parse a ShapesWorld caption back into its Description (template not recovered)."""
    original, text = text, text.strip().lower()
    background = None
    if m := _BG_RE.match(text):
        text, background = m["body"], m["bg"]
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if m := _GLYPH_RE.match(text):
        char = (m["c1"] or m["c2"]).upper()
        color = m["col1"] or m["col2"]
        return Description(background=background, glyph=char, glyph_color=color)
    relation = None
    if m := _REL_RE.match(text):
        relation = _PHRASE_TO_REL[m["phrase"]]
        pieces = [m["a"], m["b"]]
    else:
        pieces = text.split(" and ")
    if not 1 <= len(pieces) <= 2:
        raise CaptionError(f"not a ShapesWorld caption: {original!r}")
    parsed = [_parse_group(p, original) for p in pieces]
    return Description(
        groups=tuple(g for g, _ in parsed),
        relation=relation,
        background=background,
        numeral=any(n for _, n in parsed),
    )


# ---------------------------------------------------------------- clauses


@dataclass(frozen=True)
class Clause:
    """One checkable statement: kind in {count, relation, background, glyph, glyph_color}."""

    kind: str
    group: Group | None = None
    other: Group | None = None
    value: str | None = None

    def __str__(self) -> str:
        if self.kind == "count":
            return f"count({group_phrase(self.group)})=={self.group.count}"
        if self.kind == "relation":
            return f"{group_phrase(self.group)} {self.value} {group_phrase(self.other)}"
        return f"{self.kind}=={self.value}"


def clauses(d: Description) -> list[Clause]:
    out = [Clause("count", group=g) for g in d.groups]
    if d.relation is not None:
        out.append(Clause("relation", group=d.groups[0], other=d.groups[1], value=d.relation))
    if d.background is not None:
        out.append(Clause("background", value=d.background))
    if d.glyph is not None:
        out.append(Clause("glyph", value=d.glyph))
        if d.glyph_color is not None:
            out.append(Clause("glyph_color", value=d.glyph_color))
    return out


def holds(a: Obj, relation: str, b: Obj) -> bool:
    """`a` <relation> `b` with the dominant axis deciding (image rows grow downward)."""
    dx, dy = a.x - b.x, a.y - b.y
    if relation in ("left", "right"):
        return abs(dx) > abs(dy) and (dx < 0 if relation == "left" else dx > 0)
    return abs(dy) > abs(dx) and (dy < 0 if relation == "above" else dy > 0)


def evaluate(clause: Clause, scene: Scene) -> bool:
    if clause.kind == "count":
        return sum(clause.group.matches(o) for o in scene.objects) == clause.group.count
    if clause.kind == "relation":
        a = [o for o in scene.objects if clause.group.matches(o)]
        b = [o for o in scene.objects if clause.other.matches(o)]
        return bool(a and b) and all(holds(x, clause.value, y) for x in a for y in b if x is not y)
    if clause.kind == "background":
        return scene.background == clause.value
    if clause.kind == "glyph":
        return scene.glyph == clause.value
    if clause.kind == "glyph_color":
        return scene.glyph_color == clause.value
    raise ValueError(f"unknown clause kind {clause.kind!r}")


def needs_glyph_parse(d: Description) -> bool:
    return d.glyph is not None


assert set(RELATION_PHRASES) == set(RELATIONS)
