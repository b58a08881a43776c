"""T2I-CompBench: the official prompt files, the scoring formulas against hand-worked cases,
the ShapesWorld scorers on rendered scenes, and the transformers scorers (tiny random
BLIP-VQA, OWLv2, CLIP) with spaCy's missing-model error."""

from __future__ import annotations


import numpy as np
import pytest

from focusdiff.errors import ConfigError
from focusdiff.eval import t2i_compbench as t2i
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.geneval import Detection
from focusdiff.eval.official import official_file
from focusdiff.shapes.render import render
from focusdiff.shapes.world import Obj, Scene
from tests.tiny_models import save_tiny_blip_vqa, save_tiny_clip, save_tiny_owlv2
from tests.project import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("category", t2i.CATEGORIES)
def test_official_val_files_have_300_prompts(category):
    path = official_file("t2i_compbench", f"dataset/{category}_val.txt", SHARED)
    assert len(t2i.load_prompts(path, category)) == 300


def test_official_layout_names_images_by_prompt_and_running_index():
    p = t2i.T2IPrompt("color", 3, "a green bench and a blue bowl")
    assert t2i.image_file(p, 7) == "color/samples/a green bench and a blue bowl_000037.png"


class _Chunks:
    """A fixed noun-chunk reading of one prompt (spaCy's role), to test the question rule."""

    def __init__(self, chunks):
        self._chunks = chunks

    def chunks(self, prompt):
        return self._chunks

    def nouns(self, prompt):
        return []


def test_questions_drop_position_words_and_stop_at_eight():
    chunks = ["the left", "a cat", "top", "the side", "the right"] + [f"thing {i}" for i in range(10)]
    assert t2i.questions("p", _Chunks(chunks)) == ["a cat?"] + [f"thing {i}?" for i in range(7)]


def _det(cls, x1, y1, x2, y2, score=1.0):
    return Detection(cls, score, (x1, y1, x2, y2))


def test_position_score_by_hand():
    a, b = _det("a", 0, 0, 10, 10), _det("b", 20, 0, 30, 10)
    assert t2i.position_score("left", a, b, 479) == 1.0  # dx = -20, no overlap
    assert t2i.position_score("right", a, b, 479) == 0.0  # wrong side
    # overlapping boxes, a left of b: IoU = 50 / 150 = 1/3 -> 0.1 / (1/3) = 0.3
    assert t2i.position_score("left", _det("a", 0, 0, 10, 10), _det("b", 5, 0, 15, 10), 479) == pytest.approx(0.3)
    # dominant axis: dx = -10 but dy = 20 -> not "left"
    assert t2i.position_score("left", _det("a", 0, 0, 10, 10), _det("b", 10, 20, 20, 30), 479) == 0.0
    assert t2i.position_score("top", _det("a", 0, 0, 10, 10), _det("b", 0, 30, 10, 40), 479) == 1.0
    # near: 150 px at short side 479; at 32 px the threshold is 150 * 32 / 479 = 10.02
    far = (_det("a", 0, 0, 2, 2), _det("b", 20, 20, 22, 22))  # |dx| = |dy| = 20
    assert t2i.position_score("near", *far, 32) == pytest.approx(150 * 32 / 479 / 20)
    assert t2i.position_score("near", *far, 479) == 1.0


def test_shapes_scorers_on_rendered_scenes():
    s = t2i.shapes_scorers()
    both = render(Scene(objects=(Obj("circle", "red", "large", 8, 16), Obj("square", "blue", "large", 24, 16))))
    one = render(Scene(objects=(Obj("circle", "red", "large", 8, 16),)))
    assert t2i.blip_vqa_score(both, "a red circle and a blue square", s) == 1.0
    assert t2i.blip_vqa_score(one, "a red circle and a blue square", s) == 0.0  # one question says no
    # both found at confidence 1: 0.25 + 0.25 + 0.5 * pos
    assert t2i.spatial_score(both, "a circle on the left of a square", s) == 1.0
    assert t2i.spatial_score(both, "a circle on the right of a square", s) == 0.5
    assert t2i.spatial_score(one, "a circle on the left of a square", s) == 0.0  # 0.25 < 0.5
    assert s.similarity.similarity(both, "a red circle and a green square") == 0.5  # 1 of 2 clauses
    prompt = "a red circle on the left of a blue square"
    spatial_only = t2i.complex_score(both, prompt, s, {prompt}, set())
    assert spatial_only == (1.0 + 1.0) / 2
    assert t2i.complex_score(both, prompt, s, set(), {prompt}) == (1.0 + 1.0) / 2  # BLIP + CLIP
    assert t2i.complex_score(both, prompt + " on a gray background", s, set(), set()) == pytest.approx(1.0)


def test_shapes_suite_speaks_the_policy_grammar_and_splits_complex():
    from focusdiff.shapes.grammar import parse_caption

    suite = t2i.shapes_suite(seed=0, per_category=6)
    for category in t2i.CATEGORIES:
        assert len(suite[category]) == 6
        for prompt in suite[category]:
            parse_caption(prompt)
    assert set(suite["complex_val_spatial"]) | set(suite["complex_val_action"]) < set(suite["complex"])


def test_aggregate_means_per_category_and_refuses_missing_images():
    prompts = [t2i.T2IPrompt("color", 0, "a"), t2i.T2IPrompt("spatial", 0, "b")]
    scores = {t2i.image_file(p, k): (1.0 if p.category == "color" else k / 10) for p in prompts for k in range(10)}
    m = t2i.aggregate(prompts, scores)
    assert m["t2i_compbench.color"] == 1.0 and m["t2i_compbench.spatial"] == pytest.approx(0.45)
    assert m["t2i_compbench.mean_of_categories"] == pytest.approx(0.725)
    del scores[t2i.image_file(prompts[1], 9)]
    with pytest.raises(IncompleteEvaluation, match="t2i_compbench: .*1 images have no score"):
        t2i.aggregate(prompts, scores)


def test_transformers_scorers_load_and_score(tmp_path):
    from focusdiff.eval.t2i_models import BlipVQA, ClipSimilarity, OwlDetector, SpacyParser

    image = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    vqa = BlipVQA(save_tiny_blip_vqa(tmp_path / "blip", ["a red circle?", "a blue square?"]))
    p = vqa.yes_probability(image, "a red circle?")
    assert 0.0 < p < 1.0 and vqa.yes_probability(image, "a red circle?") == p
    owl = OwlDetector(save_tiny_owlv2(tmp_path / "owl", ["a photo of a circle", "a photo of a square"]))
    found = owl.detect(image, ["circle", "square"])
    assert found and {d.cls for d in found} <= {"circle", "square"}
    assert all(0 <= d.score <= 1 and d.box[0] <= d.box[2] for d in found)
    clip = ClipSimilarity(save_tiny_clip(tmp_path / "clip", ["a red circle"]))
    assert -1.0 <= clip.similarity(image, "a red circle") <= 1.0
    with pytest.raises(ConfigError, match=r"spaCy model 'en_core_web_sm' is not installed; install it with `python -m spacy download en_core_web_sm`"):
        SpacyParser("en_core_web_sm")
    with pytest.raises(ConfigError, match="cannot load the BLIP-VQA model from"):
        BlipVQA(tmp_path / "missing")
