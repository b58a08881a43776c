"""Evaluation failures. An evaluation that is missing images or scores is reported as failed
(with what is missing), never summarised as if it were complete."""

from __future__ import annotations

from focusdiff.errors import FocusdiffError


class IncompleteEvaluation(FocusdiffError):
    def __init__(self, benchmark: str, detail: str):
        self.benchmark = benchmark
        super().__init__(f"{benchmark}: incomplete evaluation, no score reported: {detail}")
