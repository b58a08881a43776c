"""The `focusdiff-promote` flow: the promotion gate on a registered challenger (see
focusdiff/registry/gate.py). The decision, numbers and reasons are written on the version;
`dry_run` only reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from focusdiff.config import load_params
from focusdiff.registry.store import promote


@flow(name="focusdiff-promote", log_prints=True)
def promote_flow(project_dir: str = ".", version: str = "challenger", dry_run: bool = False) -> dict[str, Any]:
    params = load_params(Path(project_dir) / "params.yaml")
    decision = promote(params.promote, params.tracking, challenger=version, dry_run=dry_run)
    print(("[dry run] " if dry_run else "") + decision.summary())
    return {"promote": decision.promote, "reasons": decision.reasons, "numbers": decision.numbers}
