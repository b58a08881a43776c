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


def test_fewer_images_per_prompt_are_drawn_scored_and_recorded_as_a_deviation(tmp_path):
    from focusdiff.config import load_params

    cfg = load_params(REPO_ROOT / "params.yaml").evaluate
    cfg = cfg.model_copy(update={"t2i_compbench": cfg.t2i_compbench.model_copy(update={"images_per_prompt": 2})})
    suite = t2i.BENCHMARK.prepare(cfg, tmp_path)
    assert len(suite.jobs) == 2 * len(suite.prompts) and suite.images_per_prompt == 2
    p = suite.prompts[1]  # the running index counts 2 per prompt
    assert [j.file for j in suite.jobs[2:4]] == [t2i.image_file(p, 0, 2), t2i.image_file(p, 1, 2)]
    assert t2i.image_file(p, 1, 2).endswith(f"_{2 * p.index + 1:06d}.png")
    assert "2 images per prompt, not the official 10" in suite.deviations
    scores = {j.file: 1.0 for j in suite.jobs}
    assert t2i.aggregate(suite.prompts, scores, 2)["t2i_compbench.mean_of_categories"] == 1.0
    with pytest.raises(IncompleteEvaluation, match="have no score"):
        t2i.aggregate(suite.prompts, scores)  # the official 10 asked of 2: not a score


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


class _Answers:
    name = "hand-made"

    def __init__(self, answers):
        self.answers = answers

    def yes_probability(self, image, question):
        return self.answers[question]


def test_blip_vqa_rounds_each_answer_and_the_product_to_four_decimals():
    s = t2i.T2IScorers(parser=_Chunks(["a red cat", "a blue dog"]), vqa=_Answers({"a red cat?": 0.123456, "a blue dog?": 0.98765}),
                       detector=None, similarity=None)
    # round(0.1235 * 0.9877, 4) = 0.1220; from the unrounded answers it would be 0.1219
    assert t2i.blip_vqa_score(np.zeros((4, 4, 3), np.uint8), "p", s) == 0.122


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


class _Found:
    """Hand-made detector output, in the order a detector would list it."""

    name = "hand-made"

    def __init__(self, detections):
        self.detections = detections

    def detect(self, image, names):
        return list(self.detections)


class _Nouns(_Chunks):
    def __init__(self, nouns):
        super().__init__([])
        self._nouns = nouns

    def nouns(self, prompt):
        return self._nouns


def _spatial(detections, nouns=("dog", "cat"), prompt="a dog on the left of a cat"):
    s = t2i.T2IScorers(parser=_Nouns(list(nouns)), vqa=None, detector=_Found(detections), similarity=None)
    return t2i.spatial_score(np.zeros((479, 479, 3), np.uint8), prompt, s)


def test_spatial_counts_only_detections_at_unidets_threshold():
    """Official numbers by hand (UniDet's confidence_threshold 0.5)."""
    left, right = (0, 0, 50, 50), (200, 0, 250, 50)
    # faint boxes in the right arrangement: not found, 0 (0.25*0.05 + 0.25*0.04 + 0.5 = 0.52 without the threshold)
    assert _spatial([_det("dog", *left, score=0.05), _det("cat", *right, score=0.04)]) == 0.0
    # the dog below threshold: only the cat is found, 0.25 * 0.9 = 0.225 < 0.5 -> 0 (0.84 without)
    assert _spatial([_det("dog", *left, score=0.45), _det("cat", *right, score=0.9)]) == 0.0
    # both at or above it: 0.25 * 0.5 + 0.25 * 0.9 + 0.5 * 1
    assert _spatial([_det("dog", *left, score=0.5), _det("cat", *right, score=0.9)]) == pytest.approx(0.85)


def test_spatial_takes_each_class_first_detection_and_one_for_a_repeated_noun():
    left, right = (0, 0, 50, 50), (200, 0, 250, 50)
    # the first dog listed (0.6) is the dog, not the better-scored one after it (0.99 would give 0.9475)
    listed = [_det("dog", *right, score=0.6), _det("dog", *left, score=0.99), _det("cat", 400, 0, 450, 50, score=0.8)]
    assert _spatial(listed) == pytest.approx(0.25 * 0.6 + 0.25 * 0.8 + 0.5)
    # "a dog next to a dog": one detection is both dogs, at distance 0 (near: position 1)
    one_dog = [_det("dog", *left, score=0.8)]
    assert _spatial(one_dog, ("dog", "dog"), "a dog next to a dog") == pytest.approx(0.25 * 0.8 * 2 + 0.5)
    assert _spatial(one_dog, ("dog", "dog"), "a dog on the left of a dog") == 0.0  # 0.4 + 0 < 0.5


def _tagged(tags: dict[str, str]):
    """A small spaCy pipeline built here: a blank English tokenizer and a component that sets
    each token's part of speech from `tags` (en_core_web_sm is a user install)."""
    import spacy
    from spacy.language import Language

    name = f"hand_tags_{abs(hash(tuple(sorted(tags.items()))))}"
    if name not in Language.factories:
        @Language.component(name)
        def _tag(doc):
            for token in doc:
                token.pos_ = tags.get(token.text, "DET")
            return doc
    nlp = spacy.blank("en")
    nlp.add_pipe(name)
    return nlp


class _Said:
    """CLIP's stand-in: records the text it was shown."""

    name = "recorder"

    def __init__(self):
        self.texts = []

    def similarity(self, image, text):
        self.texts.append(text)
        return 0.3


COMPLEX_TAGS = {"red": "ADJ", "small": "ADJ", "book": "NOUN", "bird": "NOUN", "tree": "NOUN", "John": "PROPN",
                "on": "ADP", "of": "ADP", "in": "ADP", "left": "NOUN"}


def test_complex_mode_takes_the_nouns_around_the_preposition_and_clip_sees_no_adjectives():
    from focusdiff.eval.t2i_models import SpacyParser

    class Parser(SpacyParser):
        def chunks(self, prompt):  # BLIP's questions; a blank pipeline has no noun chunks
            return ["a red book", "a small bird"]

    parser = Parser(nlp=_tagged(COMPLEX_TAGS))
    prompt = "a red book on the left of a small bird in a tree"
    relation, start, end = t2i.first_phrase(prompt, t2i.COMPLEX_PREPOSITIONS)
    assert (relation, prompt[start:end]) == ("left", "on the left")
    assert parser.objects_around(prompt, start, end) == ["book", "bird"]  # not the last noun, tree
    assert parser.objects_around("John on the left of a bird", 5, 16) == ["John", "bird"]  # a proper noun before
    assert parser.without_adjectives(prompt) == "a book on the left of a bird in a tree"

    said = _Said()
    s = t2i.T2IScorers(parser=parser, vqa=_Answers({"a red book?": 1.0, "a small bird?": 1.0}),
                       detector=_Found([_det("book", 0, 0, 50, 50, score=0.9), _det("bird", 200, 0, 250, 50, score=0.8)]),
                       similarity=said)
    image = np.zeros((479, 479, 3), np.uint8)
    assert t2i.spatial_score(image, prompt, s) == 0.0  # plain mode: book and tree, one found: 0.225
    spatial = 0.25 * 0.9 + 0.25 * 0.8 + 0.5
    assert t2i.spatial_score(image, prompt, s, complex_mode=True) == pytest.approx(spatial)
    assert t2i.complex_score(image, prompt, s, set(), set()) == pytest.approx((1.0 + spatial + 0.3) / 3)
    assert said.texts == ["a book on the left of a bird in a tree"]
    # one object around the preposition (nothing after it), or no preposition: 0
    assert t2i.spatial_score(image, "a red book on the left", s, complex_mode=True) == 0.0
    assert t2i.spatial_score(image, "a red book and a bird", s, complex_mode=True) == 0.0


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
    blip = save_tiny_blip_vqa(tmp_path / "blip", ["a red circle?", "a blue square?"])
    vqa = BlipVQA(blip, image_size=32)  # the checkpoint's own size (32 for the tiny one)
    p = vqa.yes_probability(image, "a red circle?")
    assert 0.0 < p < 1.0 and vqa.yes_probability(image, "a red circle?") == p
    # at another size (the official 480 against the real checkpoint's 384) the position
    # embeddings are interpolated (without, 36 patches would not fit 16 positions): it runs,
    # and the vision model is shown the image at that size
    larger = BlipVQA(blip, image_size=48)
    seen = []
    larger.model.vision_model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape),
                                                        with_kwargs=True)
    assert 0.0 < larger.yes_probability(image, "a red circle?") < 1.0
    assert [tuple(shape[-2:]) for shape in seen] == [(48, 48)]
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
