"""ShapesWorld: rendering, grammar, pair sampling, and the exact checker's accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from focusdiff.shapes.accuracy import CLEAN_GATE, PERTURBED_GATE, checker_accuracy
from focusdiff.shapes.checker import check, parse_image
from focusdiff.shapes.font import GLYPHS, MIN_GLYPH_DISTANCE
from focusdiff.shapes.generate import CATEGORY_ORDER, ShapesSampler
from focusdiff.shapes.grammar import (
    N_TEMPLATES,
    CaptionError,
    Description,
    Group,
    caption,
    clauses,
    evaluate,
    parse_caption,
)
from focusdiff.shapes.render import render, shape_mask
from focusdiff.shapes.world import COLORS, Geometry, Obj, Scene


def test_shape_masks_are_the_designed_rasters():
    # 7 px at a 32 px canvas: areas by pixel-centre tests (hand-counted rows).
    assert shape_mask("square", 7).sum() == 49
    assert shape_mask("circle", 7).sum() == 7 + 2 * 7 + 2 * 5 + 2 * 3  # rows 3,5,7,7,7,5,3
    assert shape_mask("triangle", 7).sum() == 1 + 1 + 3 + 3 + 5 + 5 + 7
    assert not shape_mask("circle", 7)[0, 0] and shape_mask("square", 7)[0, 0]
    assert not shape_mask("triangle", 7)[0, 0] and shape_mask("triangle", 7)[-1, 0]


def test_geometry_scales_with_canvas_and_rejects_tiny():
    assert (Geometry(32).small, Geometry(32).large) == (7, 11)
    assert Geometry(64).small % 2 == 1 and Geometry(64).large > Geometry(64).small
    with pytest.raises(ValueError, match="at least 32 px"):
        Geometry(16)


def test_render_is_deterministic_and_places_pixels():
    scene = Scene("white", (Obj("square", "red", "small", 10, 12),), canvas=32)
    a, b = render(scene), render(scene)
    assert np.array_equal(a, b)
    assert tuple(a[12, 10]) == COLORS["red"] and tuple(a[0, 0]) == (255, 255, 255)
    assert (a != 255).any(axis=-1).sum() == 49


def test_render_rejects_objects_off_canvas():
    with pytest.raises(ValueError, match="outside the 32px canvas"):
        render(Scene(objects=(Obj("circle", "red", "large", 2, 2),)))


def test_font_glyphs_are_separable():
    chars = list(GLYPHS)
    assert len(chars) >= 20
    for i, a in enumerate(chars):
        for b in chars[i + 1 :]:
            assert (GLYPHS[a] != GLYPHS[b]).sum() >= MIN_GLYPH_DISTANCE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a photo of a small red circle", Description((Group(1, "circle", "red", "small"),))),
        ("three orange squares on a white background", Description((Group(3, "square", "orange"),), background="white")),
        (
            "a red circle to the left of a large blue triangle",
            Description((Group(1, "circle", "red"), Group(1, "triangle", "blue", "large")), relation="left"),
        ),
        ('a green digit "3"', Description(glyph="3", glyph_color="green")),
        ("one circle", Description((Group(1, "circle"),), numeral=True)),
    ],
)
def test_parse_caption(text, expected):
    assert parse_caption(text) == expected


@pytest.mark.parametrize("bad", ["a red dog", "two red circle", "a circle and a square and a triangle", ""])
def test_parse_caption_rejects_outside_grammar(bad):
    with pytest.raises(CaptionError):
        parse_caption(bad)


def test_every_template_round_trips():
    sampler = ShapesSampler(32, np.random.default_rng(1))
    for category in CATEGORY_ORDER:
        for _ in range(20):
            d = sampler.pair(category).description1
            for t in range(N_TEMPLATES):
                text = caption(d.with_(template=t))
                assert caption(parse_caption(text).with_(template=t)) == text


def test_count_and_relation_clauses_on_hand_built_scene():
    scene = Scene(objects=(Obj("circle", "red", "small", 6, 16), Obj("square", "blue", "large", 24, 16)))
    (c_red, c_blue, rel) = clauses(parse_caption("a red circle to the left of a blue square"))
    assert evaluate(c_red, scene) and evaluate(c_blue, scene) and evaluate(rel, scene)
    (_, _, rel_wrong) = clauses(parse_caption("a red circle to the right of a blue square"))
    assert not evaluate(rel_wrong, scene)
    (two,) = clauses(parse_caption("two red circles"))
    assert not evaluate(two, scene)


@pytest.mark.parametrize("category", CATEGORY_ORDER)
def test_pairs_differ_in_one_stated_detail(category):
    sampler = ShapesSampler(32, np.random.default_rng(2))
    for _ in range(40):
        p = sampler.pair(category)
        assert p.prompt1 != p.prompt2
        # Both ground truths satisfy their own caption, and at least one clause of the
        # other caption fails on them: the pair is really distinguishable.
        for scene, own, other in ((p.scene1, p.description1, p.description2), (p.scene2, p.description2, p.description1)):
            assert all(evaluate(c, scene) for c in clauses(own))
            assert not all(evaluate(c, scene) for c in clauses(other))
        if category in ("position", "style_tone", "text"):
            same = lambda s: [(o.shape, o.color, o.size) for o in s.objects]  # noqa: E731
            assert same(p.scene1) == same(p.scene2)  # only the stated detail changes


def test_holdout_combinations_never_sampled():
    holdout = frozenset({("red", "circle"), ("blue", "square")})
    sampler = ShapesSampler(32, np.random.default_rng(3), holdout)
    for category in CATEGORY_ORDER:
        for _ in range(60):
            p = sampler.pair(category)
            for s in (p.scene1, p.scene2):
                assert not {(o.color, o.shape) for o in s.objects} & holdout


def test_checker_reads_a_hand_built_scene():
    scene = Scene(
        "black",
        (Obj("circle", "red", "small", 8, 8), Obj("triangle", "white", "large", 22, 20), Obj("square", "yellow", "small", 8, 24)),
    )
    assert set(parse_image(render(scene)).objects) == set(scene.objects)
    result = check(render(scene), "a small red circle above a small yellow square on a black background")
    assert result.correct and len(result.passed) == 4
    assert not check(render(scene), "two red circles").correct


def test_checker_reads_glyphs():
    for ch in GLYPHS:
        scene = Scene("gray", glyph=ch, glyph_color="blue", glyph_x=15, glyph_y=16)
        parsed = parse_image(render(scene), glyph=True)
        assert (parsed.glyph, parsed.glyph_color) == (ch, "blue")


def test_checker_rejects_non_square_input():
    with pytest.raises(ValueError, match="square RGB image"):
        parse_image(np.zeros((32, 40, 3), dtype=np.uint8))


@pytest.mark.slow
def test_checker_accuracy_gates():
    """>= 99.5% clause accuracy clean and >= 97% under VQ-like perturbations.

    200 pairs x 6 categories = 2400 ground-truth scenes per condition, each checked
    against its own and its partner's caption (about 9000 clauses per condition).
    """
    results = checker_accuracy(pairs_per_category=200, seed=123)
    by_name = {r.condition: r for r in results}
    assert by_name["clean"].clauses > 8000
    assert by_name["clean"].accuracy >= CLEAN_GATE
    for name in ("noise", "blur", "color_shift", "offset", "vq_like"):
        assert by_name[name].accuracy >= PERTURBED_GATE, (name, by_name[name].accuracy)
    assert all(r.passed for r in results)
