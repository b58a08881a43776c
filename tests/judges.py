"""Judges for tests: real judges that misbehave on cue."""

from __future__ import annotations

from focusdiff.judge.exact import ExactJudge


class JudgeGoneAfter(ExactJudge):
    """The exact checker that answers `answers` images, then the connection is gone (a judge
    server that went away)."""

    name = "gone-after"

    def __init__(self, answers: int):
        super().__init__(max_concurrency=1)
        self.left = answers

    async def _judge_one(self, image, prompt):
        self.left -= 1
        if self.left < 0:
            raise ConnectionError("judge went away")
        return await super()._judge_one(image, prompt)
