"""The `focusdiff-pipeline` flow: data -> bootstrap -> judge -> train (registers the policy)
-> evaluate x4 (results on the registered version) -> promote (the gate).

`cluster.launcher` picks where training runs. `local` (the embedded default): every stage
runs here through `dvc repro`. `pytorchjob` (Janus-Pro on Kubernetes): the dataset is
versioned and pushed to the DVC remote, training is a multi-node PyTorchJob this flow submits
and watches (focusdiff/train/pytorchjob.py; its pods pull the data and register the policy
tagged with this flow run), and the registered version goes through the `focusdiff-evaluate`
and `focusdiff-promote` flows as subflows. The base model and the reward judge are the
recipe's (Janus-Pro, a served VLM), so the ShapesWorld bootstrap and judge stages do not run.

The flow opens one MLflow run for the pipeline; every stage's run is its child
and carries the Prefect flow-run id, and the pipeline run links back to the flow
run. Stages that produce versioned outputs run through `dvc repro <stage>`, so
`dvc repro`, the flow and the CLI share one lock file, one cache and one result.
The four benchmarks run one after another: DVC holds one lock per repository, and on
the embedded default each takes a minute. (A cluster evaluates a registered version
with the `focusdiff-evaluate` flow, whose benchmarks run as parallel tasks.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import publish, result_markdown, rounded_summary, run_link, version_link
from focusdiff.config import load_params
from focusdiff.stages.data import log_dataset_summary
from focusdiff.eval.stage import BENCHMARKS
from focusdiff.errors import ConfigError
from focusdiff.redact import redact_urls
from focusdiff.registry.registration import REGISTRATION_FILE, Registration
from focusdiff.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, StageRun, prefect_flow_run_id
from focusdiff.versioning import default_remote, output_version, push, repro

# Transient failures only: a DVC remote (object store) hiccup is worth retrying,
# a deterministic stage failure is not.
_PUSH_RETRIES = 3


def _repro_as_child(stage: str, project_dir: str, pipeline_run_id: str) -> None:
    """`dvc repro <stage>`; the stage's MLflow run nests under the pipeline run and
    carries the flow-run id. Its output is logged line by line as it runs: a long stage's
    progress lines (focusdiff/progress.py) show in the task's log and the Prefect UI."""
    env = {PARENT_RUN_ENV: pipeline_run_id, FLOW_RUN_ENV: str(prefect_flow_run_id() or "")}
    log = get_run_logger()
    out = repro(stage, cwd=project_dir, env=env, on_line=lambda line: log.info(line) if line.strip() else None)
    if not out.strip():
        log.info(f"dvc repro {stage}: done")


@task(name="data: version with DVC")
def version_data(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro data` (builds or imports the dataset, tracked as a child run), then read its version."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child("data", project_dir, pipeline_run_id)
    version = output_version(params.data.out, cwd=project_dir)
    get_run_logger().info("dataset %s version %s", params.data.out, version)
    return {"out": str(params.data.out), "version": version}


@task(name="dvc: push to remote", retries=_PUSH_RETRIES, retry_delay_seconds=[2, 10, 30])
def push_data(project_dir: str, targets: list[str] | None = None) -> str | None:
    remote = default_remote(project_dir)
    if remote is None:
        get_run_logger().warning("no DVC remote configured: outputs are versioned locally only")
        return None
    push(targets or ["data"], cwd=project_dir)
    return remote


# The headline numbers the pipeline run and its summary show, per benchmark file.
HEADLINE = ("s_g", "s_a", "overall", "mean_of_categories")


def champion_version(params) -> str | None:
    """The version the `champion` alias points at now, or None when there is none yet."""
    from focusdiff.registry.store import champion

    current = champion(params.promote, params.tracking)
    return None if current is None else str(current.version)


BOOTSTRAP_STAGES = ("bootstrap_vq", "bootstrap_lm")


@task(name="bootstrap: base policy")
def bootstrap(project_dir: str, pipeline_run_id: str) -> dict[str, str]:
    """`dvc repro` the bootstrap stages: up to date (the shipped weights) unless their code
    or parameters changed, in which case they retrain here (minutes on a GPU, hours on CPU)."""
    params = load_params(Path(project_dir) / "params.yaml")
    for stage in BOOTSTRAP_STAGES:
        _repro_as_child(stage, project_dir, pipeline_run_id)
    vq_record = json.loads((Path(project_dir) / params.bootstrap.vq.out / "record.json").read_text("utf-8"))
    lm_record = json.loads((Path(project_dir) / params.bootstrap.lm.out / "record.json").read_text("utf-8"))
    return {"bootstrap.vq.path": str(params.bootstrap.vq.out),
            "bootstrap.vq.sha256": vq_record["files"]["model.safetensors"],
            "bootstrap.lm.path": str(params.bootstrap.lm.out),
            "bootstrap.lm.sha256": lm_record["files"]["model.safetensors"]}


def _read_json(project_dir: str, path: Path) -> dict[str, Any]:
    return json.loads((Path(project_dir) / path).read_text("utf-8"))


@task(name="judge: train the reward judge")
def judge(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro judge`: trains only when its code, parameters or the dataset changed."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child("judge", project_dir, pipeline_run_id)
    return _read_json(project_dir, params.judge.metrics)


@task(name="train: Pair-GRPO")
def train(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro train`: trains from the base and registers the policy (alias challenger)."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child("train", project_dir, pipeline_run_id)
    return {"train": _read_json(project_dir, params.train.metrics_dir / "train.json"),
            "registration": Registration.load(Path(project_dir) / params.train.metrics_dir / REGISTRATION_FILE)}


@task(name="evaluate: benchmark")
def evaluate(project_dir: str, pipeline_run_id: str, benchmark: str) -> dict[str, Any]:
    """`dvc repro evaluate@<benchmark>`: its status and numbers land on the registered version."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child(f"evaluate@{benchmark}", project_dir, pipeline_run_id)
    return _read_json(project_dir, params.evaluate.metrics_dir / f"{benchmark}.json")


@task(name="promote: the gate")
def promote(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro promote`: champion moves only on a PairComp s_g win with complete evidence."""
    params = load_params(Path(project_dir) / "params.yaml")
    _repro_as_child("promote", project_dir, pipeline_run_id)
    return _read_json(project_dir, params.evaluate.metrics_dir / "promotion.json")


@task(name="train: PyTorchJob on Kubernetes")
def train_on_cluster(project_dir: str, pipeline_run_id: str, data_version: str) -> Registration:
    """Submit (or, after a worker restart, adopt) this flow run's training job, wait for it, and
    return the version it registered. No task retries: a failed job is deterministic, and a
    retried flow run adopts its running job instead of training twice."""
    from focusdiff.registry.store import registered_by_flow_run
    from focusdiff.train.pytorchjob import run_training_job
    from focusdiff.train.stage import DATA_VERSION_ENV

    params = load_params(Path(project_dir) / "params.yaml")
    flow_run_id = prefect_flow_run_id()
    if not flow_run_id:
        raise RuntimeError("train_on_cluster runs inside a Prefect flow run: its id names and labels the job")
    log = get_run_logger()
    run_training_job(params.cluster.pytorchjob, str(flow_run_id),
                     env={FLOW_RUN_ENV: str(flow_run_id), PARENT_RUN_ENV: pipeline_run_id, DATA_VERSION_ENV: data_version},
                     log=log.info)
    registration = registered_by_flow_run(params.promote, params.tracking, str(flow_run_id))
    log.info("the job registered %s v%s", registration.model_name, registration.version)
    return registration


def _embedded(project: str, run: StageRun) -> dict[str, Any]:
    """bootstrap -> judge -> train -> evaluate x4 -> promote, each through `dvc repro`."""
    base = bootstrap(project, run.run_id)
    run.set_tags(base)
    judged = judge(project, run.run_id)
    trained = train(project, run.run_id)
    evaluated = {b: evaluate(project, run.run_id, b) for b in BENCHMARKS}
    decision = promote(project, run.run_id)
    registration = trained["registration"]
    run.log_metrics({"judge.test.agreement": judged["judge.test.agreement"]})
    return {"base": base, "judge.test.agreement": judged["judge.test.agreement"], "registration": registration,
            "scores": {b: e["metrics"] for b, e in evaluated.items()},
            "intervals": {k: v for e in evaluated.values() for k, v in e.get("intervals", {}).items()},
            "decision": decision}


def _on_cluster(project: str, run: StageRun, remote: str | None, data_version: str) -> dict[str, Any]:
    """train as a PyTorchJob -> evaluate the registered version -> promote it (subflows)."""
    from flows.evaluate import evaluate_version
    from flows.promote import promote_flow

    if remote is None:
        raise ConfigError("cluster.launcher pytorchjob needs a DVC remote and push=true: the job's pods pull the "
                          "dataset from it (`dvc remote add -d ...`)")
    registration = train_on_cluster(project, run.run_id, data_version)
    run.set_tags({"registered_model": registration.model_name, "registered_version": registration.version})
    evaluated = evaluate_version(project, registration.model_name, registration.version)
    decision = promote_flow(project, registration.version)
    return {"registration": registration, "scores": evaluated["metrics"], "intervals": evaluated["intervals"],
            "decision": decision}


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
            if params.cluster.launcher == "pytorchjob":
                outcome = _on_cluster(str(project), run, remote, data["version"])
            else:
                outcome = _embedded(str(project), run)
                if remote is not None:
                    push_data(str(project), targets=["judge", "train", *(f"evaluate@{b}" for b in BENCHMARKS)])
            _tag_children(run, data["version"])
            registration, decision = outcome["registration"], outcome["decision"]
            headline = {k: v for m in outcome["scores"].values() for k, v in m.items() if k.split(".", 1)[-1] in HEADLINE}
            run.log_metrics(headline)
            summary = {
                "mlflow_run_id": run.run_id,
                "tracking_uri": redact_urls(run.client.tracking_uri),  # printed and logged: no credentials
                "data_version": data["version"],
                **outcome.get("base", {}),
                **({"judge.test.agreement": outcome["judge.test.agreement"]} if "judge.test.agreement" in outcome else {}),
                "registered_model": registration.model_name if registration else None,
                "registered_version": registration.version if registration else None,
                **headline,
                "promoted": decision["promote"],
                "gate": "; ".join(decision["reasons"]),
                "champion": champion_version(params),
                "dvc_remote": remote,
            }
            intervals = {k: v for k, v in outcome["intervals"].items() if k in headline}
            _publish_result(run, summary, headline, intervals, decision)
    finally:
        os.chdir(cwd)
    print(f"pipeline finished: {rounded_summary(headline, intervals)}; "
          f"{'promoted' if decision['promote'] else 'not promoted'}: {summary['gate']}")
    return summary


def _publish_result(run: StageRun, summary: dict[str, Any], headline: dict[str, float],
                    intervals: dict[str, list[float]], decision: dict[str, Any]) -> None:
    """The flow run's artifacts: headline metrics with intervals, the gate, links (flows/artifacts.py)."""
    uri = run.client.tracking_uri
    links = [run_link(uri, run.experiment_id, run.run_id, "MLflow pipeline run")]
    if summary["registered_model"]:
        links.append(version_link(uri, summary["registered_model"], summary["registered_version"]))
    facts = {k: summary[k] for k in ("data_version", "judge.test.agreement", "registered_model", "registered_version",
                                     "champion", "dvc_remote") if summary.get(k) is not None}
    markdown = result_markdown("focusdiff pipeline", headline, intervals, decision, links, facts)
    publish("focusdiff-pipeline", markdown, headline, intervals, "headline metrics, the gate's decision, MLflow links")


def _tag_children(run: StageRun, version: str) -> None:
    """Stamp the data version on the child runs this pipeline started."""
    children = run.client.search_runs(
        [run.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'"
    )
    for child in children:
        run.client.set_tag(child.info.run_id, "data.version", version)
