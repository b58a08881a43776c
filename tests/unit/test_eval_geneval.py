"""GenEval: the official metadata, the clause logic against hand-worked cases, the
ShapesWorld backend on rendered scenes, and the transformers backends (tiny random
Mask2Former and CLIP: the loading and scoring code users run with real weights)."""

from __future__ import annotations


import numpy as np
import pytest

from focusdiff.errors import ConfigError, DataError
from focusdiff.eval import geneval
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.geneval import Detection, GenEvalPrompt, KnownColors, ShapesDetector, evaluate_image, relative_position
from focusdiff.eval.official import official_file
from focusdiff.shapes.render import render
from focusdiff.shapes.world import Obj, Scene
from tests.tiny_models import save_tiny_clip, save_tiny_mask2former
from tests.project import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_official_metadata_has_553_prompts_in_six_tasks():
    prompts = geneval.load_metadata(official_file("geneval", "evaluation_metadata.jsonl", SHARED))
    counts = {t: sum(p.tag == t for p in prompts) for t in geneval.TASKS}
    assert len(prompts) == 553
    assert counts == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
    names = official_file("geneval", "object_names.txt", SHARED).read_text().split("\n")
    assert len([n for n in names if n.strip()]) == 80


@pytest.mark.parametrize("line, message", [
    ('{"tag": "smell", "include": [], "prompt": "p"}', r"row 1, field 'tag': unknown tag 'smell'"),
    ('{"tag": "counting", "prompt": "p"}', r"row 1, field 'include': missing"),
    ('{"tag": "position", "include": [{"class": "a", "count": 1, "position": ["beside", 0]}], "prompt": "p"}',
     r"field 'include\[0\].position': position must be"),
])
def test_bad_metadata_names_row_and_field(tmp_path, line, message):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        geneval.load_metadata(path)


def _det(cls, x1, y1, x2, y2, score=1.0, color=None):
    return Detection(cls, score, (x1, y1, x2, y2), attributes={"color": color} if color else {})


def test_relative_position_allows_for_object_sizes():
    a, b = _det("dog", 0, 0, 10, 10), _det("cat", 20, 0, 30, 10)
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    # centres 12 apart, sizes 10 + 10: revised offset 12 - 0.1 * 20 = 10, normalised 10/12 > 0.5
    assert relative_position(_det("d", 0, 12, 10, 22), _det("c", 0, 0, 10, 10)) == {"below"}
    # centres 2 apart, sizes 20 + 20: revised max(2 - 4, 0) = 0 -> no relation
    assert relative_position(_det("d", 0, 0, 20, 20), _det("c", 2, 0, 22, 20)) == set()
    # diagonal: dx = dy = 10 / sqrt(200) = 0.707 -> both relations (before revision: 10 - 2 = 8 -> 8/14.1 = 0.57)
    assert relative_position(_det("d", 10, 10, 20, 20), _det("c", 0, 0, 10, 10)) == {"right of", "below"}


def test_clause_logic_counts_colors_positions_and_excludes():
    colors = KnownColors()
    img = np.zeros((8, 8, 3), np.uint8)
    counting = GenEvalPrompt(0, "counting", "two clocks", ({"class": "clock", "count": 2},), ({"class": "clock", "count": 3},))
    two = [_det("clock", 0, 0, 1, 1, 0.95), _det("clock", 2, 2, 3, 3, 0.95)]
    assert evaluate_image(img, counting, two, colors)[0]
    # counting keeps only detections above 0.9: a third one at 0.8 does not fire the exclude
    assert evaluate_image(img, counting, two + [_det("clock", 4, 4, 5, 5, 0.8)], colors)[0]
    ok, reason = evaluate_image(img, counting, two + [_det("clock", 4, 4, 5, 5, 0.95)], colors)
    assert not ok and reason == "expected clock<3, found 3"
    ok, reason = evaluate_image(img, counting, two[:1], colors)
    assert not ok and reason == "expected clock>=2, found 1"
    color = GenEvalPrompt(1, "colors", "a red car", ({"class": "car", "count": 1, "color": "red"},))
    assert evaluate_image(img, color, [_det("car", 0, 0, 2, 2, 0.5, "red")], colors)[0]
    assert not evaluate_image(img, color, [_det("car", 0, 0, 2, 2, 0.5, "blue")], colors)[0]
    assert not evaluate_image(img, color, [_det("car", 0, 0, 2, 2, 0.29, "red")], colors)[0]  # below 0.3
    position = GenEvalPrompt(2, "position", "a dog right of a cat",
                             ({"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}))
    assert evaluate_image(img, position, [_det("cat", 0, 0, 10, 10), _det("dog", 20, 0, 30, 10)], colors)[0]
    ok, reason = evaluate_image(img, position, [_det("cat", 20, 0, 30, 10), _det("dog", 0, 0, 10, 10)], colors)
    assert not ok and reason == "expected dog right of target, found left of target"
    ok, reason = evaluate_image(img, position, [_det("dog", 0, 0, 10, 10)], colors)
    assert reason == "expected cat>=1, found 0\nno target for dog to be right of"
    # equal scores rank as GenEval's np.argsort(scores)[::-1] ranks them: the last listed first,
    # so "a red car" checks the blue car listed second (the first-listed red one would pass)
    tie = [_det("car", 0, 0, 2, 2, 1.0, "red"), _det("car", 4, 4, 6, 6, 1.0, "blue")]
    assert [d.attributes["color"] for d in geneval.keep(tie, "colors")["car"]] == ["blue", "red"]
    ok, reason = evaluate_image(img, color, tie, colors)
    assert not ok and "red" in reason
    # at most 16 detections per class are kept
    many = [_det("bird", i, 0, i + 1, 1) for i in range(20)]
    assert len(geneval.keep(many, "single_object")["bird"]) == 16


def test_aggregate_is_an_unweighted_mean_of_tasks_and_refuses_missing_images():
    prompts = [GenEvalPrompt(0, "single_object", "a", ({"class": "a", "count": 1},)),
               GenEvalPrompt(1, "single_object", "b", ({"class": "b", "count": 1},)),
               GenEvalPrompt(2, "counting", "c", ({"class": "c", "count": 2},))]
    correct = {geneval.image_file(p, i): (p == 0 or (p == 2 and i == 0)) for p in range(3) for i in range(4)}
    m = geneval.aggregate(prompts, correct)
    assert m["geneval.single_object"] == 0.5 and m["geneval.counting"] == 0.25
    assert m["geneval.overall"] == pytest.approx(0.375)  # image-weighted it would be 5/12
    del correct["00002/samples/0003.png"]
    with pytest.raises(IncompleteEvaluation, match="geneval: .*1 images have no result"):
        geneval.aggregate(prompts, correct)


def test_shapes_backend_reads_rendered_scenes_like_the_prompt_says():
    scene = Scene(objects=(Obj("circle", "red", "large", 8, 16), Obj("square", "blue", "large", 24, 16)))
    image = render(scene)
    det, colors = ShapesDetector(), KnownColors()
    left = GenEvalPrompt(0, "position", "a photo of a circle to the left of a square",
                         ({"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}))
    right = GenEvalPrompt(1, "position", "a photo of a circle to the right of a square",
                          ({"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}))
    attr = GenEvalPrompt(2, "color_attr", "a photo of a red circle and a blue square",
                         ({"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}))
    for prompt, expected in ((left, True), (right, False), (attr, True)):
        found = det.detect(image, ["circle", "square"])
        assert evaluate_image(image, prompt, found, colors)[0] is expected, prompt.prompt


def test_shapes_suite_uses_the_geneval_schema_and_the_policy_grammar():
    from focusdiff.shapes.grammar import parse_caption

    rows = geneval.shapes_suite(seed=0, per_task=5)
    assert {r["tag"] for r in rows} == set(geneval.TASKS)
    for r in rows:
        parse_caption(r["prompt"])  # every prompt is a ShapesWorld caption the policy was trained on


def test_transformers_backends_load_and_score(tmp_path):
    from focusdiff.eval.detectors import COLORS, ClipColorClassifier, Mask2FormerDetector

    classes = [f"class{i}" for i in range(80)]
    detector = Mask2FormerDetector(save_tiny_mask2former(tmp_path / "m2f"), classes)
    image = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    found = detector.detect(image, classes)
    assert found and all(d.mask.shape == (40, 48) and d.mask.any() for d in found)
    for d in found:
        rows, cols = np.nonzero(d.mask)
        assert d.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) and 0 <= d.score <= 1
    only = detector.detect(image, [found[0].cls])
    assert {d.cls for d in only} == {found[0].cls}
    clip = ClipColorClassifier(save_tiny_clip(tmp_path / "clip", [f"a photo of a {c} object" for c in COLORS]))
    names = clip.colors(image, found[:3], found[0].cls)
    assert len(names) == len(found[:3]) and set(names) <= set(COLORS)
    assert clip.colors(image, found[:3], found[0].cls) == names  # deterministic
    with pytest.raises(ConfigError, match="predicts 80 classes but GenEval's object list has 3"):
        Mask2FormerDetector(tmp_path / "m2f", ["a", "b", "c"])
    with pytest.raises(ConfigError, match="cannot load the CLIP colour classifier"):
        ClipColorClassifier(tmp_path / "nothing-here")
