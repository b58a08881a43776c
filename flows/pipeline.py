"""The `focusdiff-pipeline` flow: data -> bootstrap -> (judge -> train -> register ->
evaluate x4 -> gate, as those stages land).

The flow opens one MLflow run for the pipeline; every stage's run is its child
and carries the Prefect flow-run id, and the pipeline run links back to the flow
run. Stages that produce versioned outputs run through `dvc repro <stage>`, so
`dvc repro`, the flow and the CLI share one lock file, one cache and one result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from focusdiff.config import load_params
from focusdiff.data.stage import log_dataset_summary
from focusdiff.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, StageRun, prefect_flow_run_id
from focusdiff.versioning import default_remote, output_version, push, repro

# Transient failures only: a DVC remote (object store) hiccup is worth retrying,
# a deterministic stage failure is not.
_PUSH_RETRIES = 3


def _repro_as_child(stage: str, project_dir: str, pipeline_run_id: str) -> None:
    """`dvc repro <stage>`; the stage's MLflow run nests under the pipeline run and
    carries the flow-run id."""
    env = {PARENT_RUN_ENV: pipeline_run_id, FLOW_RUN_ENV: str(prefect_flow_run_id() or "")}
    out = repro(stage, cwd=project_dir, env=env).strip()
    get_run_logger().info(out.splitlines()[-1] if out else f"dvc repro {stage}: done")


@task(name="data: version with DVC")
def version_data(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro data` (builds or imports the dataset, tracked as a child run), then read its version."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child("data", project_dir, pipeline_run_id)
    version = output_version(params.data.out, cwd=project_dir)
    get_run_logger().info("dataset %s version %s", params.data.out, version)
    return {"out": str(params.data.out), "version": version}


@task(name="data: push to DVC remote", retries=_PUSH_RETRIES, retry_delay_seconds=[2, 10, 30])
def push_data(project_dir: str) -> str | None:
    remote = default_remote(project_dir)
    if remote is None:
        get_run_logger().warning("no DVC remote configured: the dataset is versioned locally only")
        return None
    push(["data"], cwd=project_dir)
    return remote


BOOTSTRAP_STAGES = ("bootstrap_vq",)


@task(name="bootstrap: base policy")
def bootstrap(project_dir: str, pipeline_run_id: str) -> dict[str, str]:
    """`dvc repro` the bootstrap stages: up to date (the shipped weights) unless their code
    or parameters changed, in which case they retrain here (minutes on a GPU, hours on CPU)."""
    params = load_params(Path(project_dir) / "params.yaml")
    for stage in BOOTSTRAP_STAGES:
        _repro_as_child(stage, project_dir, pipeline_run_id)
    vq_record = json.loads((Path(project_dir) / params.bootstrap.vq.out / "record.json").read_text("utf-8"))
    return {"bootstrap.vq.path": str(params.bootstrap.vq.out),
            "bootstrap.vq.sha256": vq_record["files"]["model.safetensors"]}


@flow(name="focusdiff-pipeline", log_prints=True)
def focusdiff_pipeline(project_dir: str = ".", push: bool = True) -> dict[str, Any]:
    project = Path(project_dir).resolve()
    params = load_params(project / "params.yaml")
    cwd = os.getcwd()
    os.chdir(project)  # relative paths in params.yaml (sqlite, artifacts, data) are project-relative
    try:
        with StageRun(params.tracking, "pipeline", params=params.model_dump(mode="json", by_alias=True)) as run:
            data = version_data(str(project), run.run_id)
            remote = push_data(str(project)) if push else None
            log_dataset_summary(run, Path(data["out"]), version=data["version"])
            base = bootstrap(str(project), run.run_id)
            run.set_tags(base)
            _tag_children(run, data["version"])
            summary = {
                "mlflow_run_id": run.run_id,
                "tracking_uri": run.client.tracking_uri,
                "data_version": data["version"],
                **base,
                "dvc_remote": remote,
            }
    finally:
        os.chdir(cwd)
    print(f"pipeline finished: {summary}")
    return summary


def _tag_children(run: StageRun, version: str) -> None:
    """Stamp the data version on the child runs this pipeline started."""
    children = run.client.search_runs(
        [run.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'"
    )
    for child in children:
        run.client.set_tag(child.info.run_id, "data.version", version)
