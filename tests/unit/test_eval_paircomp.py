"""PairComp: the official prompt file (downloaded and verified), the aggregation against
hand-computed numbers, and the evaluation end to end: resumable generation, failures
that never become scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from focusdiff.config import TrackingConfig
from focusdiff.errors import DataError
from focusdiff.eval import paircomp
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.official import official_file
from focusdiff.stages.evaluate import run_benchmark

from tests.tiny_models import save_tiny_world
from tests.project import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(categories: list[str]) -> list[paircomp.PairCompPair]:
    return [paircomp.PairCompPair(i, c, f"a {i}", f"b {i}") for i, c in enumerate(categories)]


def test_aggregation_matches_hand_computed_values():
    pairs = _pairs(["color", "color", "color", "text"])
    scores = np.array([[1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5], [1, 0, 1, 1], [0.16, 1, 1, 1]], dtype=float)
    out = paircomp.aggregate(pairs, scores, bootstrap=0)["metrics"]
    # color: a = 1, .5, .75 -> .75; g = 1, .5, 0 (a zero kills the product) -> .5
    # text: a = .79; g = .16 ** (1/4) = .632456
    assert out["paircomp.color.s_a"] == pytest.approx(75.0)
    assert out["paircomp.color.s_g"] == pytest.approx(50.0)
    assert out["paircomp.text.s_a"] == pytest.approx(79.0)
    assert out["paircomp.text.s_g"] == pytest.approx(63.2456, abs=1e-4)
    # the average weighs categories equally (pair-weighted s_a would be 76.0)
    assert out["paircomp.s_a"] == pytest.approx(77.0)
    assert out["paircomp.s_g"] == pytest.approx((50.0 + 63.2456) / 2, abs=1e-4)


def test_published_check_the_average_is_the_unweighted_mean_of_six_categories():
    """benchmarks.md: Janus-FocusDiff-7B's six category s_a values sum to 509.7, average 84.95 (85.0).
    Only the sum is published here, so any six values with that sum make the check."""
    categories = ["overall_appearance", "color", "counting", "position", "style_tone", "text"]
    values = [0.90, 0.85, 0.80, 0.88, 0.846, 0.821]  # sum 5.097
    sizes = [5, 1, 1, 1, 2, 1]  # unequal category sizes, as in the official 250/50/50/50/100/50
    pairs = _pairs([c for c, n in zip(categories, sizes) for _ in range(n)])
    scores = np.array([[v] * 4 for v, n in zip(values, sizes) for _ in range(n)])
    out = paircomp.aggregate(pairs, scores, bootstrap=0)["metrics"]
    assert sum(out[f"paircomp.{c}.s_a"] for c in categories) == pytest.approx(509.7)
    assert out["paircomp.s_a"] == pytest.approx(84.95)
    assert out["paircomp.s_g"] == pytest.approx(84.95)  # constant scores: g = a


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    pairs = _pairs(["color"] * 30 + ["position"] * 30)
    scores = rng.uniform(0.2, 1.0, (60, 4))
    a = paircomp.aggregate(pairs, scores, bootstrap=300, seed=1)
    low, high = a["intervals"]["paircomp.s_g"]
    assert low < a["metrics"]["paircomp.s_g"] < high and high - low < 20
    assert a["intervals"] == paircomp.aggregate(pairs, scores, bootstrap=300, seed=1)["intervals"]


def test_official_scores_are_rounded_and_missing_images_are_an_error():
    assert paircomp.official_score(0.123456) == 0.1235
    pairs = _pairs(["color"])
    with pytest.raises(IncompleteEvaluation, match=r"paircomp: incomplete evaluation, no score reported: 1 of 4 images have no score \(first: 0_1_1.png\)"):
        paircomp.score_matrix(pairs, {"0_0_0.png": 1.0, "0_0_1.png": 1.0, "0_1_0.png": 1.0})


def test_official_prompt_file_has_550_pairs_in_six_categories():
    pairs = paircomp.load_pairs(official_file("paircomp", "PairComp.json", SHARED))
    counts = {c: sum(p.category == c for p in pairs) for c in {p.category for p in pairs}}
    assert len(pairs) == 550
    assert counts == {"overall_appearance": 250, "color": 50, "counting": 50, "position": 50, "style_tone": 100, "text": 50}


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('[{"category": "Color difference", "caption1": "a"}]', r"row 1.*caption2.*missing or empty"),
    ('[{"category": "Smell difference", "caption1": "a", "caption2": "b"}]', r"row 1.*category.*unknown category 'Smell difference'"),
])
def test_bad_prompt_file_names_row_and_field(tmp_path, content, message):
    path = tmp_path / "PairComp.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        paircomp.load_pairs(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paircomp")
    return save_tiny_world(root, {"train": 1, "val": 1, "test": 2}, {"train": 1, "val": 1, "test": 1})


def _eval_config(world: Path, run: Path, **paircomp_over) -> EvalConfig:
    return EvalConfig.model_validate({
        "policy": str(world / "policy"), "data": str(world / "data"), "out": str(run / "out"),
        "metrics_dir": str(run / "metrics"), "bootstrap": 50, "paircomp": paircomp_over,
    })


def _tracking(run: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{run / 'mlflow.db'}", artifact_location=str(run / "artifacts"))


def test_paircomp_end_to_end_resumes_and_regenerates_only_bad_images(world, tmp_path):
    cfg = _eval_config(world, tmp_path)
    first = run_benchmark("paircomp", cfg, _tracking(tmp_path))
    images = cfg.out / "paircomp" / "images"
    files = sorted(p.name for p in images.iterdir())
    assert len(files) == 4 * 12 and "0_1_1.png" in files  # 12 test pairs (2 per category), official names
    metrics = json.loads((cfg.metrics_dir / "paircomp.json").read_text())
    assert set(metrics["metrics"]) >= {"paircomp.s_a", "paircomp.s_g", "paircomp.color.s_g"}
    assert metrics["metrics"]["paircomp.s_g"] == pytest.approx(first.metrics["paircomp.s_g"])
    assert any("ShapesWorld" in d for d in metrics["deviations"])
    rows = [json.loads(line) for line in (cfg.out / "paircomp" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    official = json.loads((cfg.out / "paircomp" / "score.json").read_text())
    assert len(official) == 12 and len(official["0"]) == 4
    before = {name: (images / name).read_bytes() for name in files}
    mtimes = {name: (images / name).stat().st_mtime_ns for name in files}
    (images / "3_0_1.png").unlink()
    (images / "5_1_0.png").write_bytes(b"not a png")
    second = run_benchmark("paircomp", cfg, _tracking(tmp_path))
    assert second.metrics == first.metrics
    assert {n: (images / n).read_bytes() for n in files} == before  # the same seeds redraw the same images
    changed = {n for n in files if (images / n).stat().st_mtime_ns != mtimes[n]}
    assert changed == {"3_0_1.png", "5_1_0.png"}


def test_images_of_another_policy_are_not_reused(world, tmp_path):
    cfg = _eval_config(world, tmp_path)
    run_benchmark("paircomp", cfg, _tracking(tmp_path))
    marker = cfg.out / "paircomp" / "images" / "0_0_0.png"
    stamp = marker.stat().st_mtime_ns
    reseeded = cfg.model_copy(update={"seed": 7})
    run_benchmark("paircomp", reseeded, _tracking(tmp_path))
    assert marker.stat().st_mtime_ns != stamp


def test_judge_failure_fails_the_evaluation_and_writes_no_metrics(world, tmp_path):
    cfg = _eval_config(world, tmp_path, evaluator={"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                   "model": "nobody", "max_retries": 0})
    with pytest.raises(IncompleteEvaluation, match="paircomp: incomplete evaluation, no score reported: the judge could not score 48 images"):
        run_benchmark("paircomp", cfg, _tracking(tmp_path))
    assert not (cfg.metrics_dir / "paircomp.json").exists()


@pytest.mark.parametrize(("answer_tokens", "declared"), [(None, False), ("official", False), ("variants", True)])
def test_summing_word_piece_variants_is_declared_as_a_deviation(world, tmp_path, answer_tokens, declared):
    """PairComp's evaluator counts the official yes/no entries by default; a run told to sum
    word-piece variants says so in its deviations."""
    evaluator = {"backend": "openai", "model": "vlm", "base_url": "http://127.0.0.1:9/v1",
                 **({"answer_tokens": answer_tokens} if answer_tokens else {})}
    cfg = _eval_config(world, tmp_path, evaluator=evaluator)
    suite = paircomp.BENCHMARK.prepare(cfg, tmp_path)
    assert any("word-piece variant" in d for d in suite.deviations) is declared, suite.deviations
