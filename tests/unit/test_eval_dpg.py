"""DPG-Bench: the question CSV (a hand-written fixture in the official schema), the
dependency rule and aggregation against hand-computed values (with the official script's
defects fixed), and the ShapesWorld answerer on rendered scenes."""

from __future__ import annotations

import numpy as np
import pytest

from focusdiff.errors import ConfigError, DataError
from focusdiff.eval import dpg_bench as dpg
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.judge.openai_judge import request_body
from focusdiff.judge.select import build_judge
from focusdiff.judge.spec import JudgeSpec
from focusdiff.shapes.render import render
from focusdiff.shapes.world import Obj, Scene

HEADER = "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language\n"
FIXTURE = HEADER + (
    'cat1,"A black cat sits on a red mat.",cat|mat,1,0,entity,whole,entity - whole (cat),Is there a cat?\n'
    'cat1,"A black cat sits on a red mat.",cat|mat,2,1,attribute,color,"attribute - color (cat, black)",Is the cat black?\n'
    'cat1,"A black cat sits on a red mat.",cat|mat,3,0,entity,whole,entity - whole (mat),Is there a mat?\n'
    'cat1,"A black cat sits on a red mat.",cat|mat,4,"1,3",relation,spatial,"relation - spatial (cat, mat, on)",Is the cat on the mat?\n'
    'dog2,"Two dogs.",dog,1,0,entity,whole,entity - whole (dog),Is there a dog?\n'
    'dog2,"Two dogs.",dog,2,1,other,count,"other - count (dog, ==2)",Are there two dogs?\n'
)


def _write(tmp_path, text):
    path = tmp_path / "dpg_bench.csv"
    path.write_text(text)
    return path


def test_every_row_is_read_including_the_first(tmp_path):
    items = dpg.load_questions(_write(tmp_path, FIXTURE))
    assert [i.item_id for i in items] == ["cat1", "dog2"]
    cat = items[0]
    assert cat.prompt == "A black cat sits on a red mat." and len(cat.questions) == 4  # the official script drops row 1
    assert cat.questions[3].dependency == (1, 3) and cat.questions[1].l2 == "attribute - color" and cat.questions[1].l1 == "attribute"


@pytest.mark.parametrize("text, message", [
    ("item_id,text\nx,y\n", r"row 1.*missing columns"),
    (HEADER + 'a,p,k,1,2,entity,whole,entity - whole (x),Is there x?\n', r"row 2, field 'dependency'.*depends on propositions \[2\]"),
    (HEADER + 'a,p,k,1,0,e,w,entity - whole (x),Q?\na,p,k,1,0,e,w,entity - whole (x),Q?\n', r"row 3, field 'proposition_id'.*appears twice"),
    (HEADER + 'a,p,k,one,0,e,w,t (x),Q?\n', r"row 2.*not an integer"),
])
def test_bad_question_file_names_row_and_field(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        dpg.load_questions(_write(tmp_path, text))


def test_dependency_rule_cascades_through_zeroed_parents(tmp_path):
    item = dpg.DPGItem("i", "p", (
        dpg.DPGQuestion(1, (0,), "entity - whole (a)", "a?"),
        dpg.DPGQuestion(2, (1,), "attribute - color (a, red)", "red a?"),
        dpg.DPGQuestion(3, (2,), "attribute - size (a, big)", "big red a?"),
        dpg.DPGQuestion(4, (0,), "entity - whole (b)", "b?"),
    ))
    assert dpg.apply_dependencies(item, [False, True, True, True]) == [0.0, 0.0, 0.0, 1.0]
    assert dpg.apply_dependencies(item, [True, False, True, True]) == [1.0, 0.0, 0.0, 1.0]


def test_aggregate_by_hand(tmp_path):
    items = dpg.load_questions(_write(tmp_path, FIXTURE))
    answers = {
        # cat1: tile scores 1, 0.5 (mat missing: relation zeroed), 0.25 (cat missing zeroes its colour), 0
        "cat1": [[True, True, True, True], [True, True, False, True], [False, True, True, False], [False] * 4],
        # dog2: tile scores 1, 0.5, 1, 0.5
        "dog2": [[True, True], [True, False], [True, True], [True, False]],
    }
    m = dpg.aggregate(items, answers)
    assert m["dpg.overall"] == pytest.approx(100 * (np.mean([1, 0.5, 0.25, 0]) + np.mean([1, 0.5, 1, 0.5])) / 2)
    # categories pool the raw answers of ALL tiles (the official script keeps only the last tile's)
    assert m["dpg.l2.entity_whole"] == pytest.approx(100 * 8 / 12)  # cat 2/4, mat 2/4, dog 4/4
    assert m["dpg.l2.attribute_color"] == pytest.approx(100 * 3 / 4)  # raw, before the dependency rule
    assert m["dpg.l1.other"] == pytest.approx(50.0)
    del answers["dog2"][3]
    with pytest.raises(IncompleteEvaluation, match="dpg_bench: .*1 prompts lack answers for all 4 tiles"):
        dpg.aggregate(items, answers)


def test_shapes_answerer_reads_the_tuples():
    scene = Scene(background="white", objects=(Obj("circle", "red", "large", 8, 16), Obj("square", "blue", "small", 24, 10),
                                              Obj("square", "blue", "small", 24, 22)))
    item = dpg.DPGItem("x", "a large red circle to the left of two blue squares on a white background", (
        dpg.DPGQuestion(1, (0,), "entity - whole (circle)", "Is there a circle?"),
        dpg.DPGQuestion(2, (1,), "attribute - size (circle, large)", "Is the circle large?"),
        dpg.DPGQuestion(3, (1,), "attribute - color (circle, green)", "Is the circle green?"),
        dpg.DPGQuestion(4, (0,), "other - count (square, ==2)", "Are there two squares?"),
        dpg.DPGQuestion(5, (1, 4), "relation - spatial (circle, square, left of)", "Is the circle left of the squares?"),
        dpg.DPGQuestion(6, (0,), "global - background (white)", "Is the background white?"),
    ))
    assert dpg.ShapesAnswerer().answers(render(scene), item) == [True, True, False, True, True, True]


def test_shapes_suite_prompts_speak_the_policy_grammar(tmp_path):
    from focusdiff.shapes.grammar import parse_caption

    path = _write(tmp_path, dpg.csv_text(dpg.shapes_suite(seed=0, prompts=6)))
    items = dpg.load_questions(path)
    assert len(items) == 6 and all(len(i.questions) == 8 for i in items)
    for i in items:
        parse_caption(i.prompt)


def test_judges_are_asked_dpg_questions_verbatim():
    body = request_body("m", np.zeros((4, 4, 3), np.uint8), "Is there a cat?", template="{prompt}")
    assert body["messages"][0]["content"][1]["text"] == "Is there a cat?"
    with pytest.raises(ConfigError, match="the exact judge checks captions and cannot answer free questions"):
        build_judge(JudgeSpec(backend="exact"), template="{prompt}")
