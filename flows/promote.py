"""The `focusdiff-promote` flow: the promotion gate on a registered challenger (see
focusdiff/registry/gate.py). The decision, numbers and reasons are written on the version
and published as the flow run's artifact; `dry_run` only reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.artifacts import publish, result_markdown, version_link
from focusdiff.config import load_params
from focusdiff.stages.promote import registry_uri, run_promote_stage


@flow(name="focusdiff-promote", log_prints=True)
def promote_flow(project_dir: str = ".", version: str = "challenger", dry_run: bool = False) -> dict[str, Any]:
    params = load_params(Path(project_dir) / "params.yaml")
    decision = run_promote_stage(params, version, dry_run)
    print(("[dry run] " if dry_run else "") + decision.summary())
    result = {"promote": decision.promote, "reasons": decision.reasons, "numbers": decision.numbers}
    numbers = {k: v for k, v in decision.numbers.items() if isinstance(v, float)}
    facts = {k: v for k, v in decision.numbers.items() if not isinstance(v, float)} | {"dry run": dry_run}
    links = []
    if decision.numbers.get("challenger") is not None:
        links.append(version_link(registry_uri(params), params.promote.model_name,
                                  str(decision.numbers["challenger"])))
    markdown = result_markdown(f"promotion gate: {params.promote.model_name} {version}", numbers, {}, result, links, facts)
    publish("focusdiff-promote", markdown, numbers, {}, "the gate's decision, reasons and numbers")
    return result
