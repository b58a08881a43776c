"""The `focusdiff-pipeline` flow: data -> bootstrap -> judge -> baseline (with no champion,
the base becomes the first one) -> train (registers the policy) -> evaluate x4 (results on
the registered version) -> promote (the gate).

`cluster.launcher` picks where training runs. `local` (the embedded default): every stage
runs here through `dvc repro`. `pytorchjob` (Janus-Pro on Kubernetes): the dataset is
versioned and pushed to the DVC remote, training is a multi-node PyTorchJob this flow submits
and watches (focusdiff/train/pytorchjob.py; its pods pull the data and register the policy
tagged with this flow run), and the registered version goes through the `focusdiff-evaluate`
and `focusdiff-promote` flows as subflows. The base model and the reward judge are the
recipe's (Janus-Pro, a served VLM), so the ShapesWorld bootstrap and judge stages do not run;
nor does the baseline stage: the starting policy is the job's recipe's, which this flow does not
read, so a first cluster challenger meets `promote.floor` (or a champion registered by hand).

The flow opens one MLflow run for the pipeline; every stage's run is its child
and carries the Prefect flow-run id, and the pipeline run links back to the flow
run. Stages that produce versioned outputs run through `dvc repro <stage>`, so
`dvc repro`, the flow and the CLI share one lock file, one cache and one result.
The four benchmarks run one after another: DVC holds one lock per repository, and on
the embedded default each takes a minute. (A cluster evaluates a registered version
with the `focusdiff-evaluate` flow, whose benchmarks run as parallel tasks.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import publish, result_markdown, rounded_summary, run_link, version_link
from focusdiff.errors import ConfigError
from focusdiff.redact import redact_urls
from focusdiff.stages.cluster import train_on_cluster as run_training_on_cluster
from focusdiff.stages.data import log_dataset_summary
from focusdiff.stages.evaluate import BENCHMARKS, Registration
from focusdiff.stages.orchestration import (PipelineRun, dvc_remote, dvc_version, flow_run_id, pipeline_run,
                                            project_params, push_outputs, read_json, registration_written,
                                            repro_and_read, repro_as_child)
from focusdiff.stages.promote import champion_version

# Transient failures only: a DVC remote (object store) hiccup is worth retrying,
# a deterministic stage failure is not.
_PUSH_RETRIES = 3


def _repro_as_child(stage: str, project_dir: str, pipeline_run_id: str) -> None:
    """`dvc repro <stage>` as a child of the pipeline run, its output in the task's log."""
    repro_as_child(stage, project_dir, pipeline_run_id, get_run_logger().info)


def _repro_and_read(stage: str, project_dir: str, pipeline_run_id: str, written) -> dict[str, Any]:
    return repro_and_read(stage, project_dir, pipeline_run_id, get_run_logger().info, written)


@task(name="data: version with DVC")
def version_data(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro data` (builds or imports the dataset, tracked as a child run), then read its version."""
    params = project_params(project_dir)
    _repro_as_child("data", project_dir, pipeline_run_id)
    version = dvc_version(project_dir, params.data.out)
    get_run_logger().info("dataset %s version %s", params.data.out, version)
    return {"out": str(params.data.out), "version": version}


@task(name="dvc: push to remote", retries=_PUSH_RETRIES, retry_delay_seconds=[2, 10, 30])
def push_data(project_dir: str, targets: list[str] | None = None) -> str | None:
    remote = dvc_remote(project_dir)
    if remote is None:
        get_run_logger().warning("no DVC remote configured: outputs are versioned locally only")
        return None
    push_outputs(project_dir, targets or ["data"])
    return remote


# The headline numbers the pipeline run and its summary show, per benchmark file.
HEADLINE = ("s_g", "s_a", "overall", "mean_of_categories")


BOOTSTRAP_STAGES = ("bootstrap_vq", "bootstrap_vq_local", "bootstrap_lm")


@task(name="bootstrap: base policy")
def bootstrap(project_dir: str, pipeline_run_id: str) -> dict[str, str]:
    """`dvc repro` the bootstrap stages: up to date (the shipped weights) unless their code
    or parameters changed, in which case they retrain here (minutes on a GPU, hours on CPU)."""
    params = project_params(project_dir)
    for stage in BOOTSTRAP_STAGES:
        _repro_as_child(stage, project_dir, pipeline_run_id)
    tokenizer = params.bootstrap.lm.tokenizer  # the VQ the base draws tokens of
    vq_record = read_json(project_dir, tokenizer / "record.json")
    lm_record = read_json(project_dir, params.bootstrap.lm.out / "record.json")
    return {"bootstrap.vq.path": str(tokenizer),
            "bootstrap.vq.sha256": vq_record["files"]["model.safetensors"],
            "bootstrap.lm.path": str(params.bootstrap.lm.out),
            "bootstrap.lm.sha256": lm_record["files"]["model.safetensors"]}


@task(name="judge: train the reward judge")
def judge(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro judge`: trains only when its code, parameters or the dataset changed."""
    return _repro_and_read("judge", project_dir, pipeline_run_id, lambda params: params.judge.metrics)


@task(name="baseline: the base as first champion")
def baseline(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro baseline`: with no champion yet, registers the starting policy, evaluates it
    on the gate's benchmarks and makes it the champion; otherwise says which version is."""
    return _repro_and_read("baseline", project_dir, pipeline_run_id,
                           lambda params: params.evaluate.metrics_dir / "baseline.json")


@task(name="train: GRPO or Pair-GRPO (params.yaml train)")
def train(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro train`: trains from the base and registers the policy (alias challenger)."""
    trained = _repro_and_read("train", project_dir, pipeline_run_id, lambda params: params.train.metrics_dir / "train.json")
    return {"train": trained, "registration": registration_written(project_dir, project_params(project_dir))}


@task(name="evaluate: benchmark")
def evaluate(project_dir: str, pipeline_run_id: str, benchmark: str) -> dict[str, Any]:
    """`dvc repro evaluate@<benchmark>`: its status and numbers land on the registered version."""
    return _repro_and_read(f"evaluate@{benchmark}", project_dir, pipeline_run_id,
                           lambda params: params.evaluate.metrics_dir / f"{benchmark}.json")


@task(name="promote: the gate")
def promote(project_dir: str, pipeline_run_id: str) -> dict[str, Any]:
    """`dvc repro promote`: champion moves only on a PairComp s_g win with complete evidence."""
    return _repro_and_read("promote", project_dir, pipeline_run_id,
                           lambda params: params.evaluate.metrics_dir / "promotion.json")


@task(name="train: PyTorchJob on Kubernetes")
def train_on_cluster(project_dir: str, pipeline_run_id: str, data_version: str) -> Registration:
    """Submit (or, after a worker restart, adopt) this flow run's training job, wait for it, and
    return the version it registered. No task retries: a failed job is deterministic, and a
    retried flow run adopts its running job instead of training twice."""
    params = project_params(project_dir)
    run_id = flow_run_id()
    if not run_id:
        raise RuntimeError("train_on_cluster runs inside a Prefect flow run: its id names and labels the job")
    log = get_run_logger()
    registration = run_training_on_cluster(params, str(run_id), log=log.info, pipeline_run_id=pipeline_run_id,
                                           data_version=data_version)
    log.info("the job registered %s v%s", registration.model_name, registration.version)
    return registration


def _embedded(project: str, run: PipelineRun) -> dict[str, Any]:
    """bootstrap -> judge -> baseline -> train -> evaluate x4 -> promote, each through `dvc repro`."""
    base = bootstrap(project, run.run_id)
    run.set_tags(base)
    judged = judge(project, run.run_id)
    first = baseline(project, run.run_id)
    get_run_logger().info("baseline: %s: %s", first["action"], first["reason"])
    trained = train(project, run.run_id)
    evaluated = {b: evaluate(project, run.run_id, b) for b in BENCHMARKS}
    decision = promote(project, run.run_id)
    registration = trained["registration"]
    run.log_metrics({"judge.test.agreement": judged["judge.test.agreement"]})
    return {"base": base, "judge.test.agreement": judged["judge.test.agreement"], "registration": registration,
            "scores": {b: e["metrics"] for b, e in evaluated.items()},
            "intervals": {k: v for e in evaluated.values() for k, v in e.get("intervals", {}).items()},
            "decision": decision}


def _on_cluster(project: str, run: PipelineRun, remote: str | None, data_version: str) -> dict[str, Any]:
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
    params = project_params(project)
    cwd = os.getcwd()
    os.chdir(project)  # relative paths in params.yaml (sqlite, artifacts, data) are project-relative
    try:
        with pipeline_run(params) as run:
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
                **_gate_comparison(decision),
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


def _gate_comparison(decision: dict[str, Any]) -> dict[str, Any]:
    """Which champion the gate compared with and the paired interval of the s_g difference
    (absent when it compared nothing: no champion, or evidence it refused)."""
    numbers = decision.get("numbers", {})
    out: dict[str, Any] = {}
    if numbers.get("champion") is not None:
        out["gate.compared_with"] = str(numbers["champion"])
    if "improvement" in numbers:
        low, high = numbers["improvement.ci95"]
        out["gate.improvement"] = numbers["improvement"]
        out["gate.improvement.ci95"] = f"[{low:+.2f}, {high:+.2f}]"
    return out


def _publish_result(run: PipelineRun, summary: dict[str, Any], headline: dict[str, float],
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


def _tag_children(run: PipelineRun, version: str) -> None:
    """Stamp the data version on the child runs this pipeline started."""
    children = run.client.search_runs(
        [run.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'"
    )
    for child in children:
        run.client.set_tag(child.info.run_id, "data.version", version)
