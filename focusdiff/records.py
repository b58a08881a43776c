"""What the gated training stages share (the bootstrap VQ and LM, the judge): the
quality-gate error and the file hashes their records hold; and the error of a malformed
record (a registration file, an evaluation-protocol tag) that eval and registry share. A top-level module, so that
neither stage, nor the judge package, depends on another package's code for them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ValidationError

from focusdiff.errors import DataError, FocusdiffError


class QualityGateError(FocusdiffError):
    """A gated product (a bootstrap model, the judge) did not reach its quality gate; nothing was written."""


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "record.json"
    }


class RecordError(DataError):
    """A registration file or an evaluation-protocol tag is malformed; the message names the field."""


def validation_error(exc: ValidationError, what: str | Path, context: str = "") -> RecordError:
    """The first problem pydantic found, as a RecordError naming `what` and the field (then `context`)."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return RecordError(f"{first['msg']}{more}{context}", file=what, field=field)
