"""Training as a multi-node PyTorchJob on Kubernetes: submit it, watch it to the end, and find
the version it registered. `focusdiff submit-training` and the pipeline flow's cluster branch
both call `train_on_cluster`.

The job's pods run `focusdiff train` themselves (focusdiff/train/pytorchjob.py renders the
job); they register the policy tagged with the run id passed here, which is how the version
is found again. A run id that names a job already there re-attaches to it instead of
training twice.
"""

from __future__ import annotations

from collections.abc import Callable

from focusdiff.config import Params, updated
from focusdiff.registry.registration import Registration
from focusdiff.registry.store import registered_by_flow_run
from focusdiff.stages.train import DATA_VERSION_ENV
from focusdiff.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV
from focusdiff.train.pytorchjob import run_training_job


def train_on_cluster(params: Params, run_id: str, log: Callable[[str], None] = print, nodes: int | None = None,
                     pipeline_run_id: str | None = None, data_version: str | None = None) -> Registration:
    """Submit (or adopt) the job `run_id` names, wait for it, and return the version it registered.
    Inside the pipeline, its runs nest under `pipeline_run_id` and it must train on `data_version`."""
    job = updated(params.cluster.pytorchjob, nodes=nodes) if nodes else params.cluster.pytorchjob
    env = {FLOW_RUN_ENV: run_id}
    if pipeline_run_id is not None:
        env[PARENT_RUN_ENV] = pipeline_run_id
    if data_version is not None:
        env[DATA_VERSION_ENV] = data_version
    run_training_job(job, run_id, env=env, log=log)
    return registered_by_flow_run(params.promote, params.tracking, run_id)
