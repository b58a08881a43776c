"""The `focusdiff-evaluate` flow: evaluate an existing registered model version on the four
benchmarks (in parallel tasks) and write the outcome on the version, then optionally gate it.

The version's policy is downloaded from the registry (its pyfunc model's `policy` artifact)
and evaluated exactly as the pipeline's evaluation stage does (`run_benchmark`); every
benchmark's status, metrics and files land on the version, so `focusdiff-promote` (or the
MLflow UI) can decide without re-running anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import publish, result_markdown, rounded_summary, run_link, version_link
from focusdiff.config import load_params
from focusdiff.progress import Reporter
from focusdiff.stages.evaluate import BENCHMARKS, Registration, download_registered_version, run_benchmark, version_config
from focusdiff.stages.promote import registry_uri

# Transient failures only: downloading a model from the object store can hiccup; a benchmark
# that fails deterministically must not be re-run (its judge client retries on its own).
_DOWNLOAD_RETRIES = 3


@task(name="registry: download model version", retries=_DOWNLOAD_RETRIES, retry_delay_seconds=[2, 10, 30])
def download_version(project_dir: str, model_name: str, version: str) -> Registration:
    """The version's policy, downloaded from the registry (focusdiff/stages/evaluate.py)."""
    return download_registered_version(load_params(Path(project_dir) / "params.yaml"), project_dir, model_name, version)


@task(name="evaluate: benchmark")
def evaluate_benchmark(project_dir: str, benchmark: str, registration: Registration) -> dict[str, Any]:
    """Its metrics, their 95% intervals and its MLflow run id; progress is logged while it generates."""
    params = load_params(Path(project_dir) / "params.yaml")
    cfg = version_config(params, project_dir, registration)
    with Reporter(f"{benchmark}: generating", None, unit="images") as progress:
        result = run_benchmark(benchmark, cfg, params.tracking, registration=registration, progress=progress.advance,
                               tags={"model_version": registration.version})
    headline = {k: v for k, v in result.metrics.items() if k.count(".") == 1}
    get_run_logger().info("%s: %s", benchmark, rounded_summary(headline, result.intervals))
    return {"metrics": result.metrics, "intervals": result.intervals, "mlflow_run_id": result.mlflow_run_id}


@flow(name="focusdiff-evaluate", log_prints=True)
def evaluate_version(project_dir: str = ".", model_name: str | None = None, version: str = "challenger",
                     benchmarks: list[str] | None = None) -> dict[str, Any]:
    project = str(Path(project_dir).resolve())
    params = load_params(Path(project) / "params.yaml")
    name = model_name or params.promote.model_name
    cwd = os.getcwd()
    os.chdir(project)
    try:
        registration = download_version(project, name, version)
        futures = {b: evaluate_benchmark.submit(project, b, registration) for b in (benchmarks or BENCHMARKS)}
        evaluated, failed = {}, {}
        for b, future in futures.items():
            try:
                evaluated[b] = future.result()
            except Exception as exc:  # recorded on the version by run_benchmark; reported here
                failed[b] = f"{type(exc).__name__}: {exc}"
        results = {b: e["metrics"] for b, e in evaluated.items()}
        intervals = {k: v for e in evaluated.values() for k, v in e["intervals"].items()}
        headline = {k: v for m in results.values() for k, v in m.items() if k.count(".") == 1}
        _publish_result(params, registration, evaluated, headline, intervals, failed)  # a relative sqlite URI: here
    finally:
        os.chdir(cwd)
    summary = {"model": name, "version": registration.version, "metrics": results, "intervals": intervals,
               "failed": failed}
    print(f"evaluation of {name} v{registration.version}: {rounded_summary(headline, intervals) or 'no metrics'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark(s) failed for {name} v{registration.version}: {failed}")
    return summary


def _publish_result(params, registration: Registration, evaluated: dict[str, dict[str, Any]],
                    headline: dict[str, float], intervals: dict[str, list[float]], failed: dict[str, str]) -> None:
    """The flow run's artifacts (flows/artifacts.py): each benchmark's headline metrics with their
    intervals, what failed, links to the benchmarks' MLflow runs and to the version."""
    from mlflow import MlflowClient

    uri = registry_uri(params)
    client = MlflowClient(uri)
    links = [run_link(uri, client.get_run(e["mlflow_run_id"]).info.experiment_id, e["mlflow_run_id"], f"MLflow run {b}")
             for b, e in evaluated.items()]
    links.append(version_link(uri, registration.model_name, registration.version))
    shown = {k: v for k, v in intervals.items() if k in headline}
    markdown = result_markdown(f"evaluation of {registration.model_name} v{registration.version}", headline, shown,
                               links=links, failed=failed)
    publish("focusdiff-evaluate", markdown, headline, shown, "headline metrics of each benchmark, MLflow links")
