"""How user data is imported: the `data.import` block of params.yaml (FocusDiff-Data format)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ImportConfig(BaseModel):
    """User data in the FocusDiff-Data format (JSON list, JSONL or parquet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pairs_file: Path
    unpaired_file: Path | None = None
    format: Literal["auto", "json", "jsonl", "parquet"] = "auto"
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    drop_duplicates: bool = False
