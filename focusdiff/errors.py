"""Errors that tell the user exactly what is wrong and where.

Every user-facing failure is a `FocusdiffError` whose message names the file,
row, field or key involved, so a bad input never becomes a silent default.
"""

from __future__ import annotations

from pathlib import Path


class FocusdiffError(Exception):
    """Base class of every error the CLI reports without a traceback."""


class TrainingPaused(FocusdiffError):
    """A bounded invocation (`--max-minutes`) reached its time budget and stopped at a checkpoint:
    running the same command again continues from it. Not a failure, and not a finished stage:
    the CLI exits 75 (EX_TEMPFAIL) and the stage's MLflow run ends KILLED, tagged `paused`."""


class ConfigError(FocusdiffError):
    """A parameter file or recipe is malformed (wrong key, type or range)."""


class DataError(FocusdiffError):
    """A dataset file is malformed. The message locates the problem.

    `location` reads like `pairs.json, row 3, field 'prompt2'`.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field '{field}'")
        self.location = ", ".join(parts)
        super().__init__(f"{self.location}: {message}" if parts else message)
