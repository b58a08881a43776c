"""The exact checker as a judge: the held-out evaluator of the embedded default.

It answers with certainty: P(yes) = 1 when every clause of the caption holds in
the image, else P(no) = 1. A prompt outside the ShapesWorld grammar cannot be
judged and is reported as a failure (never scored 0).
"""

from __future__ import annotations

from focusdiff.judge.base import ImageLike, Judge, Verdict
from focusdiff.shapes.checker import check


class ExactJudge(Judge):
    name = "exact"

    async def _judge_one(self, image: ImageLike, prompt: str) -> Verdict:
        correct = check(image, prompt).correct
        return Verdict(p_yes=1.0 if correct else 0.0, p_no=0.0 if correct else 1.0)
