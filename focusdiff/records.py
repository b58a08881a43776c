"""What the gated training stages share (the bootstrap VQ and LM, the judge): the
quality-gate error and the file hashes their records hold. A top-level module, so that
neither stage, nor the judge package, depends on another package's code for them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from focusdiff.errors import FocusdiffError


class QualityGateError(FocusdiffError):
    """A gated product (a bootstrap model, the judge) did not reach its quality gate; nothing was written."""


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "record.json"
    }
