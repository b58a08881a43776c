"""What the bootstrap stages share: the quality-gate error and the file hashes their
records hold (a file of its own, so neither stage depends on the other's code)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from focusdiff.errors import FocusdiffError


class QualityGateError(FocusdiffError):
    """A bootstrap product did not reach its quality gate; nothing was written."""


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "record.json"
    }
