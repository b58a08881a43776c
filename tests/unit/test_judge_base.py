"""The judge interface: verdict arithmetic, failures reported and never scored, the exact judge."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from focusdiff.judge.base import QUESTION, Judge, JudgeFailure, Verdict, question
from focusdiff.judge.exact import ExactJudge
from focusdiff.shapes.generate import ShapesSampler
from focusdiff.shapes.render import render


def test_question_is_the_reference_wording():
    assert question("a red circle") == (
        'Does this image match the description "a red circle", please directly respond with yes or no.')
    assert QUESTION.count("{prompt}") == 1


def test_verdict_score_by_hand():
    assert Verdict(0.3, 0.1).score == pytest.approx(0.75)
    assert Verdict(1.0, 0.0).score == 1.0
    with pytest.raises(ValueError, match="answered neither yes nor no"):
        Verdict(0.0, 0.0)
    with pytest.raises(ValueError, match="p_yes must be a probability, got nan"):
        Verdict(float("nan"), 0.5)


class Flaky(Judge):
    """Fails on prompts containing 'boom'; tracks peak concurrency."""

    name = "flaky"

    def __init__(self, max_concurrency: int):
        super().__init__(max_concurrency)
        self.active = self.peak = 0

    async def _judge_one(self, image, prompt):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        if "boom" in prompt:
            raise TimeoutError("server did not answer in 30 s")
        return Verdict(0.9, 0.1)


def test_failures_name_items_and_reasons_and_are_never_scored():
    judge = Flaky(max_concurrency=3)
    prompts = ["ok", "boom one", "ok", "ok", "boom two"]
    with pytest.raises(JudgeFailure) as info:
        judge.judge([None] * 5, prompts)
    err = info.value
    assert [f.index for f in err.failures] == [1, 4]
    assert "could not score 2 of 5 items" in str(err)
    assert "item 1 ('boom one'): TimeoutError: server did not answer in 30 s" in str(err)
    assert err.verdicts[1] is None and err.verdicts[4] is None  # no made-up value in their place
    assert err.verdicts[0] == Verdict(0.9, 0.1)
    assert judge.peak <= 3


def test_sync_call_inside_a_running_loop():
    async def inside():
        return Flaky(2).judge([None], ["ok"])

    assert asyncio.run(inside()) == [Verdict(0.9, 0.1)]


def test_exact_judge_agrees_with_ground_truth_and_refuses_unknown_prompts():
    sampler = ShapesSampler(32, np.random.default_rng(0))
    pairs = [sampler.pair(c) for c in ("color", "counting", "position", "text")]
    images = [render(p.scene1) for p in pairs] * 2
    prompts = [p.prompt1 for p in pairs] + [p.prompt2 for p in pairs]
    assert ExactJudge().scores(images, prompts) == [1.0] * 4 + [0.0] * 4
    with pytest.raises(JudgeFailure, match=r"item 0 \('a photo of a cat'\): CaptionError: not a ShapesWorld caption"):
        ExactJudge().judge([images[0]], ["a photo of a cat"])
