"""Judge calibration: AUROC by hand, the exact judge on its own pairs, failures fail the report."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from typer.testing import CliRunner

from focusdiff.cli import app
from focusdiff.errors import ConfigError
from focusdiff.judge.base import Judge, JudgeFailure, Verdict
from focusdiff.judge.exact import ExactJudge
from focusdiff.judge.report import auroc, calibration_items, calibration_report
from focusdiff.shapes.checker import check
from focusdiff.shapes.generate import CATEGORY_ORDER

# --------------------------------------------------------------------------- #
# AUROC (Mann-Whitney, ties count one half)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.0, 1.0], [0, 1], 1.0),  # perfect
        ([1.0, 0.0], [0, 1], 0.0),  # perfectly wrong
        ([0.5, 0.5, 0.5], [0, 1, 1], 0.5),  # all tied: every couple counts 1/2
        # positives 0.5, 0.9 vs negatives 0.5, 0.2: (0.5,0.5) tie 1/2, (0.5,0.2) 1, (0.9,*) 2 -> 3.5/4
        ([0.5, 0.2, 0.5, 0.9], [0, 0, 1, 1], 0.875),
        # 0/1 scores as the exact judge gives: positives 1, 1, 0 vs negatives 0, 0
        # -> 1 + 1 + 1 + 1 + (1/2 + 1/2) = 5 of 6 couples
        ([1, 1, 0, 0, 0], [1, 1, 1, 0, 0], 5 / 6),
    ],
)
def test_auroc_golden_values(scores, labels, expected):
    assert auroc(scores, labels) == pytest.approx(expected)


def test_auroc_equals_counting_couples_on_random_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40) / 4  # many ties
    labels = rng.integers(0, 2, 40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    by_couples = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert auroc(scores, labels) == pytest.approx(by_couples)


def test_auroc_needs_both_classes_and_binary_labels():
    with pytest.raises(ValueError, match="needs both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="one length"):
        auroc([0.1, 0.2, 0.3], [0, 1])


# --------------------------------------------------------------------------- #
# The report
# --------------------------------------------------------------------------- #


def test_items_are_own_caption_yes_partner_caption_no():
    items = calibration_items(pairs_per_category=2, seed=5)
    assert len(items.prompts) == 2 * len(CATEGORY_ORDER) * 4
    assert items.labels.tolist() == [1, 0] * (len(items.prompts) // 2)
    # The labels are the truth: the exact checker reads every item as labelled.
    assert [int(check(img, p).correct) for img, p in zip(items.images, items.prompts)] == items.labels.tolist()


def test_exact_judge_is_perfect_on_its_own_pairs():
    report = calibration_report(ExactJudge(), pairs_per_category=4, seed=11)
    assert report.judge == "exact"
    assert report.overall.items == 4 * len(CATEGORY_ORDER) * 4
    assert (report.accuracy, report.auroc, report.agreement) == (1.0, 1.0, 1.0)
    assert list(report.by_category) == list(CATEGORY_ORDER)
    assert all((c.items, c.accuracy, c.auroc) == (16, 1.0, 1.0) for c in report.by_category.values())


class Contrarian(Judge):
    """Always the wrong answer, with some confidence: accuracy 0, AUROC 0, agreement 0."""

    name = "contrarian"

    async def _judge_one(self, image, prompt):
        truth = check(image, prompt).correct
        return Verdict(p_yes=0.2 if truth else 0.7, p_no=0.8 if truth else 0.3)


def test_a_wrong_judge_scores_zero():
    report = calibration_report(Contrarian(), pairs_per_category=2, seed=3)
    assert (report.accuracy, report.auroc, report.agreement) == (0.0, 0.0, 0.0)


class FailsOnCircles(Judge):
    """Scores like the exact judge, but cannot judge any prompt mentioning a circle."""

    name = "fails-on-circles"

    async def _judge_one(self, image, prompt):
        if "circle" in prompt:
            raise RuntimeError("model crashed")
        return await ExactJudge()._judge_one(image, prompt)


def test_judge_failure_fails_the_report():
    with pytest.raises(JudgeFailure, match="fails-on-circles") as info:
        calibration_report(FailsOnCircles(), pairs_per_category=3, seed=0)
    assert info.value.failures and all("circle" in f.prompt for f in info.value.failures)


# --------------------------------------------------------------------------- #
# CLI: focusdiff judge report
# --------------------------------------------------------------------------- #


def test_cli_report_prints_the_table():
    result = CliRunner().invoke(app, ["judge", "report", "--backend", "exact", "--pairs-per-category", "2"])
    assert result.exit_code == 0, result.output
    for text in ("AUROC", "agrees with exact", "counting", "all", "100.0%", "1.000"):
        assert text in result.output


def test_cli_report_hf_without_model_is_a_clear_error():
    result = CliRunner().invoke(app, ["judge", "report", "--backend", "hf"])
    assert isinstance(result.exception, ConfigError)
    assert "needs --model PATH" in str(result.exception)


def test_policy_items_are_the_policys_samples_labelled_by_the_checker():
    from focusdiff.judge.report import calibrate
    from focusdiff.stages.judge_report import policy_items
    from focusdiff.model.loading import load_policy

    items = policy_items(load_policy("shapes-base"), pairs_per_category=1, seed=5)
    assert len(items.images) == 4 * len(CATEGORY_ORDER)
    # each sampled image is asked its own caption, then its partner's
    assert all((items.images[k] == items.images[k + 1]).all() for k in range(0, len(items.images), 2))
    assert items.prompts[0] == items.prompts[3] and items.prompts[1] == items.prompts[2]
    assert list(items.labels) == [int(check(im, p).correct) for im, p in zip(items.images, items.prompts)]
    report = calibrate(ExactJudge(), items)
    assert report.agreement == 1.0 and report.accuracy == 1.0


def test_cli_report_on_a_policys_samples():
    result = CliRunner().invoke(app, ["judge", "report", "--backend", "exact", "--pairs-per-category", "1",
                                      "--policy", "shapes-base"])
    assert result.exit_code == 0, result.output
    assert "shapes-base's samples (CFG 2)" in " ".join(result.output.split())  # rich wraps the title
    assert "100.0%" in result.output
    both = CliRunner().invoke(app, ["judge", "report", "--policy", "shapes-base", "--data", "data/pairs"])
    assert isinstance(both.exception, ConfigError) and "--policy and --data are exclusive" in str(both.exception)
