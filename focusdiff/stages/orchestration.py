"""What the Prefect flows do besides calling stages: run a stage through `dvc repro` as a child
of the pipeline's MLflow run, read what it wrote, version and push outputs.

Stages that produce versioned outputs run through `dvc repro <stage>`, so `dvc repro`, the flow
and the CLI share one lock file, one cache and one result. Each stage's MLflow run nests under
the pipeline run (PARENT_RUN_ENV) and carries the Prefect flow-run id (FLOW_RUN_ENV).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from focusdiff.config import Params, load_params
from focusdiff.registry.registration import REGISTRATION_FILE, Registration
from focusdiff.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, StageRun, prefect_flow_run_id
from focusdiff.versioning import default_remote, output_version, push, repro

PipelineRun = StageRun  # the pipeline's own MLflow run, parent of every stage's run


def pipeline_run(params: Params) -> PipelineRun:
    """The pipeline's MLflow run (a context manager), logging the whole parameter file."""
    return StageRun(params.tracking, "pipeline", params=params.model_dump(mode="json", by_alias=True))


def project_params(project_dir: str | Path) -> Params:
    return load_params(Path(project_dir) / "params.yaml")


def repro_as_child(stage: str, project_dir: str, pipeline_run_id: str, log: Callable[[str], None]) -> None:
    """`dvc repro <stage>`; the stage's MLflow run nests under the pipeline run and carries the
    flow-run id. Its output is logged line by line as it runs: a long stage's progress lines
    (focusdiff/progress.py) show in the task's log and the Prefect UI."""
    env = {PARENT_RUN_ENV: pipeline_run_id, FLOW_RUN_ENV: str(prefect_flow_run_id() or "")}
    out = repro(stage, cwd=project_dir, env=env, on_line=lambda line: log(line) if line.strip() else None)
    if not out.strip():
        log(f"dvc repro {stage}: done")


def read_json(project_dir: str, path: Path) -> dict[str, Any]:
    return json.loads((Path(project_dir) / path).read_text("utf-8"))


def repro_and_read(stage: str, project_dir: str, pipeline_run_id: str, log: Callable[[str], None],
                   written: Callable[[Params], Path]) -> dict[str, Any]:
    """`dvc repro <stage>` as a child run, then the JSON file it wrote (`written(params)`, project-relative)."""
    params = project_params(project_dir)
    repro_as_child(stage, project_dir, pipeline_run_id, log)
    return read_json(project_dir, written(params))


def registration_written(project_dir: str, params: Params) -> Registration | None:
    """The version the train stage registered, per its registration file (None: nothing registered)."""
    return Registration.load(Path(project_dir) / params.train.metrics_dir / REGISTRATION_FILE)


def dvc_version(project_dir: str, out: Path) -> str:
    """The DVC version (dvc.lock's content hash) of output `out`."""
    return output_version(out, cwd=project_dir)


def dvc_remote(project_dir: str) -> str | None:
    """The default DVC remote's name, or None when none is configured."""
    return default_remote(project_dir)


def push_outputs(project_dir: str, targets: list[str]) -> None:
    push(targets, cwd=project_dir)


def flow_run_id() -> str | None:
    """The Prefect flow run this runs in, or None outside one."""
    return prefect_flow_run_id()
