"""The `promote` stage: the promotion gate on a registered challenger, as `focusdiff promote`,
`dvc repro promote` and the `focusdiff-promote` flow run it.

The gate itself (focusdiff/registry/gate.py) and the registry access that applies it
(focusdiff/registry/store.py, `promote`) know only their own config and the tracking server;
this stage picks their sections from the parameter file and writes the decision as the DVC
metrics file the `promote` stage declares.
"""

from __future__ import annotations

import json
from pathlib import Path

from focusdiff.config import Params
from focusdiff.io import atomic_write_json
from focusdiff.registry.gate import Decision
from focusdiff.registry.store import champion, promote
from focusdiff.tracking import tracking_uri


def run_promote_stage(params: Params, version: str = "challenger", dry_run: bool = False,
                      record: Path | None = None) -> Decision:
    """Gate `version` (a number or an alias) against the champion; with `record`, also write
    the decision there (JSON: promote, dry_run, reasons, numbers)."""
    decision = promote(params.promote, params.tracking, challenger=version, dry_run=dry_run)
    if record is not None:
        atomic_write_json(record, {"promote": decision.promote, "dry_run": dry_run, "reasons": decision.reasons,
                                   "numbers": json.loads(json.dumps(decision.numbers, default=str))})
    return decision


def champion_version(params: Params) -> str | None:
    """The version the `champion` alias points at now, or None when there is none yet."""
    current = champion(params.promote, params.tracking)
    return None if current is None else str(current.version)


def registry_uri(params: Params) -> str:
    """The tracking server's URI (it is also the registry's), for links to runs and versions."""
    return tracking_uri(params.tracking)
