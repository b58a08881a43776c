"""What a benchmark supplies to the one evaluation path (focusdiff/eval/orchestrate.py).

The orchestration owns everything the benchmarks share: the image folder and its reuse,
generation, the completeness check, judge failures, timing, the bootstrap interval, the
files and the MLflow run. A benchmark owns only what makes it itself: its suite and the
deviations of this run from the official protocol (`prepare`), how an image is scored
(`score`), how scores become headline numbers (`aggregate`), and what the interval
resamples (`resampling_units`, `statistic`). A new benchmark is one module with one
`Benchmark` object, plus one line in orchestrate.py's registry.

The data passed between the steps is the rows: one dict per image, in job order, which
is also what the benchmark's rows file (e.g. scores.jsonl) holds, so a score read back
from disk and a score just computed are aggregated the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.generation import ImageJob
from focusdiff.eval.protocol import EvaluationProtocol

Row = dict[str, Any]


@dataclass
class Suite:
    """One run's prompts as the orchestration sees them; a benchmark subclasses it to carry
    its own state (prompts, scorers) from `prepare` to the later steps."""

    jobs: list[ImageJob]  # every image to draw: file (relative to images/) and prompt
    deviations: list[str]  # how this run departs from the official protocol, in words


S = TypeVar("S", bound=Suite)


class Benchmark(ABC, Generic[S]):
    name: str  # the folder <out>/<name>, the metrics file <name>.json, the MLflow run evaluate_<name>
    rows_file: str = "scores.jsonl"  # the rows, one per image

    @abstractmethod
    def prepare(self, cfg: EvalConfig, folder: Path) -> S:
        """Write the suite's prompt files under `folder`, build the scorer, declare deviations."""

    def lay_out(self, suite: S, images: Path) -> None:
        """Files the official layout wants beside the complete images (none unless overridden)."""

    @abstractmethod
    def score(self, suite: S, images: Path) -> list[Row]:
        """One row per job, in job order. A judge that cannot score raises JudgeFailure."""

    @abstractmethod
    def aggregate(self, suite: S, rows: list[Row]) -> dict[str, float]:
        """The headline metrics; a missing score is an IncompleteEvaluation, never a zero."""

    @abstractmethod
    def resampling_units(self, suite: S, rows: list[Row]) -> dict[str, np.ndarray]:
        """The bootstrap's units (one array row each), per stratum resampled on its own."""

    @abstractmethod
    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        """The metrics that get an interval, computed on one resample of the units."""

    def files(self, suite: S, rows: list[Row], metrics: dict[str, float],
              intervals: dict[str, list[float]]) -> dict[str, Any]:
        """Further files for the benchmark's folder: name -> text (a str, written as is) or a
        JSON value (written as focusdiff.io.atomic_write_json writes it). None unless overridden."""
        return {}

    def protocol(self, cfg: EvalConfig) -> EvaluationProtocol | None:
        """The protocol written on a registered version, when versions may only be compared
        under the same one (None: not recorded)."""
        return None
