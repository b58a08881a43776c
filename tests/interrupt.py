"""Stopping a training run in-process at a chosen step (to test resume), through its log callback."""

from __future__ import annotations


class StopTraining(Exception):
    """Raised by `stop_at`'s callback: the run stops where a kill would."""


def stop_at(step: int):
    """A `log` callback for `train` that stops the run when step index `step` is logged."""
    def log(metrics, s):
        if s == step:
            raise StopTraining
    return log
