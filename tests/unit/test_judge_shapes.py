"""The learned ShapesWorld judge: regions, vocabulary, failures, loading, and its stage.

Its accuracy gate (>= 95% agreement with the exact checker on the test pairs) is measured
with the real parameters by `focusdiff judge train` / `dvc repro judge` (metrics/judge.json);
here small judges prove the code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from focusdiff.config import load_params
from focusdiff.errors import ConfigError, DataError
from focusdiff.judge.base import JudgeFailure
from focusdiff.judge.configs import ShapesJudgeConfig
from focusdiff.judge.report import calibrate, dataset_items
from focusdiff.judge.select import build_judge
from focusdiff.judge.shapes_judge import (
    IGNORE,
    ShapesJudge,
    Vocabulary,
    background_target,
    build_vocabulary,
    find_regions,
    save_judge,
    scene_says_yes,
    train_judge,
    words,
)
from focusdiff.judge.spec import JudgeSpec
from focusdiff.records import QualityGateError
from focusdiff.shapes.render import render
from focusdiff.shapes.world import Obj, Scene

from tests.project import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = REPO_ROOT
HOLDOUT = frozenset({("purple", "triangle"), ("yellow", "square"), ("pink", "circle")})
TINY = dict(width=32, layers=1, heads=2, steps=3, pairs_per_step=4, warmup_steps=1, threads=1)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> Path:
    cfg = ShapesJudgeConfig(**TINY)
    model, vocab, _ = train_judge(cfg, HOLDOUT)
    out = tmp_path_factory.mktemp("judge") / "shapes-judge"
    out.mkdir()
    save_judge(out, cfg, model, vocab, 32)
    return out


TWO = Scene(background="gray", objects=(Obj("circle", "red", "large", 8, 8), Obj("square", "blue", "small", 10, 24)))


def test_regions_are_the_objects_with_their_place_and_color():
    regions = find_regions(render(TWO), max_objects=10, crop=16, fg_threshold=48, min_area=3)
    assert np.allclose(regions.background * 255, (128, 128, 128))
    assert regions.crops.shape == (2, 1, 16, 16) and regions.geometry.shape == (2, 8)
    red, blue = regions.geometry  # reading order: the red circle starts higher up
    assert np.allclose(red[:3] * 255, (220, 30, 30), atol=1) and np.allclose(blue[:3] * 255, (30, 70, 220), atol=1)
    assert abs(red[4] * 32 - 8.5) < 0.6 and abs(red[5] * 32 - 8.5) < 0.6  # centre, in pixel-centre units
    assert abs(blue[4] * 32 - 10.5) < 0.6 and abs(blue[5] * 32 - 24.5) < 0.6
    assert red[3] > blue[3]  # large vs small area


def test_region_crops_carry_form_not_color():
    """Shape is read from the blob's mask and color from its mean, so a combination never seen
    in training (a purple triangle) looks to the CNN exactly like a seen one (a red triangle)."""
    def crop(color: str) -> np.ndarray:
        scene = Scene(background="gray", objects=(Obj("triangle", color, "large", 16, 16),))
        return find_regions(render(scene), 10, 16, 48, 3).crops[0]

    red, purple = crop("red"), crop("purple")
    assert np.array_equal(red, purple)
    assert red.min() == -1.0 and red.max() == 1.0  # outside and inside the blob


def test_background_targets_read_the_caption_and_the_scene():
    white = Scene(background="white", objects=(Obj("circle", "red", "large", 8, 8),))
    assert background_target(white, "a red circle on a white background") == 1
    assert background_target(white, "a red circle on a black background") == 0
    assert background_target(white, "a red circle") == IGNORE  # no background clause: nothing to learn


def test_empty_image_has_no_regions():
    regions = find_regions(render(Scene(background="black")), 10, 16, 48, 3)
    assert regions.crops.shape[0] == 0 and regions.geometry.shape == (0, 8)


def test_labels_come_from_the_scene():
    assert scene_says_yes(TWO, "a red circle and a blue square")
    assert scene_says_yes(TWO, "a red circle above a blue square")
    assert not scene_says_yes(TWO, "a red circle below a blue square")
    assert not scene_says_yes(TWO, "two red circles")


def test_vocabulary_covers_captions_and_names_unknown_words():
    itos = build_vocabulary()
    assert {"circle", "triangles", "left", "background", "letter", "digit", '"', "A", "7"} <= set(itos)
    vocab = Vocabulary(itos, max_words=12)
    assert words('the letter "K" on a white background') == ["the", "letter", '"', "K", '"', "on", "a", "white",
                                                              "background"]
    with pytest.raises(ValueError, match="never seen: 'dog', 'sleeping'"):
        vocab.encode("a sleeping dog")
    with pytest.raises(ValueError, match="caption has 14 words, more than this judge reads \\(12\\)"):
        vocab.encode("a red circle and a blue square and a green triangle and a cat")


def test_judge_scores_are_probabilities_and_deterministic(tiny_judge):
    judge = build_judge(JudgeSpec(backend="shapes", model=str(tiny_judge)))
    assert isinstance(judge, ShapesJudge)
    images, prompts = [render(TWO)] * 3, ["a red circle", "a blue square", 'the letter "A"']
    first, second = judge.judge(images, prompts), judge.judge(images, prompts)
    assert first == second
    assert all(0.0 < v.p_yes < 1.0 and abs(v.p_yes + v.p_no - 1.0) < 1e-9 for v in first)


def test_unreadable_items_fail_alone_and_are_never_scored(tiny_judge):
    judge = ShapesJudge(tiny_judge)
    images = [render(TWO), render(TWO), np.zeros((64, 64, 3), dtype=np.uint8)]
    with pytest.raises(JudgeFailure) as info:
        judge.judge(images, ["a red circle", "a purple elephant", "a red circle"])
    failure = info.value
    assert [f.index for f in failure.failures] == [1, 2]
    assert "never seen: 'elephant'" in failure.failures[0].reason
    assert "64x64 px; this judge reads 32x32" in failure.failures[1].reason
    assert failure.verdicts[0] is not None and failure.verdicts[1] is None and failure.verdicts[2] is None


def test_loading_errors_name_the_file(tiny_judge, tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none' / 'config.json'}: missing; train the ShapesWorld judge"):
        ShapesJudge(tmp_path / "none")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        (bad / name).write_bytes((tiny_judge / name).read_bytes())
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "width": 64}))
    with pytest.raises(ConfigError, match="model.safetensors: does not match config.json"):
        ShapesJudge(bad)
    (bad / "config.json").write_text(json.dumps({**config, "kind": "something-else"}))
    with pytest.raises(ConfigError, match="not a ShapesWorld judge"):
        ShapesJudge(bad)


def test_calibration_on_dataset_needs_both_images(tmp_path):
    from focusdiff.config import ShapesDataConfig
    from focusdiff.shapes.build import build_shapes_dataset

    data = tmp_path / "data"
    build_shapes_dataset(ShapesDataConfig(pairs_per_category={"train": 1, "val": 1, "test": 1},
                                          prompts={"train": 1, "val": 1, "test": 1}), data)
    items = dataset_items(data, "test")
    assert len(items.prompts) == 6 * 4 and items.labels.sum() == 12
    exact = calibrate(build_judge(JudgeSpec(backend="exact")), items)
    assert exact.agreement == 1.0 and exact.accuracy == 1.0  # the partner caption is false for every image
    lines = (data / "pairs.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    record["image2"] = None
    (data / "pairs.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(record)]) + "\n")
    with pytest.raises(DataError, match=f"pair '{record['id']}' has no image2"):
        dataset_items(data, record["split"])


def test_stage_writes_judge_and_metrics_or_nothing(tmp_path, monkeypatch):
    """Small judge: gate 0 writes the judge, its record and metrics; an unreachable gate leaves
    the previous judge untouched and fails naming the gate."""
    from focusdiff.stages.judge import run_judge_stage
    from focusdiff.shapes.build import build_shapes_dataset

    monkeypatch.chdir(tmp_path)
    params = load_params(ROOT / "params.yaml", {
        "data.shapes.pairs_per_category": {"train": 1, "val": 1, "test": 2}, "data.shapes.prompts": {"train": 1, "val": 1, "test": 1},
        **{f"judge.{k}": v for k, v in TINY.items()}, "judge.min_accuracy": 0.0,
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.artifact_location": str(tmp_path / "art"),
    })
    build_shapes_dataset(params.data.shapes, params.data.out)
    result = run_judge_stage(params)
    out = tmp_path / "models" / "shapes-judge"
    record = json.loads((out / "record.json").read_text())
    assert record["command"] == "focusdiff judge train" and set(record["files"]) == {"config.json", "vocab.json", "model.safetensors"}
    metrics = json.loads((tmp_path / "metrics" / "judge.json").read_text())
    assert metrics == result.metrics and metrics["judge.test.items"] == 6 * 2 * 4
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    strict = params.model_copy(update={"judge": params.judge.model_copy(update={"min_accuracy": 1.0, "seed": 1})})
    assert result.metrics["judge.test.agreement"] < 1.0  # 3 steps of training
    with pytest.raises(QualityGateError, match="below the gate judge.min_accuracy=100%; models/shapes-judge left unchanged"):
        run_judge_stage(strict)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["shapes-judge"]  # no temporary left behind
