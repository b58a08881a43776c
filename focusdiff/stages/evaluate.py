"""The evaluate stages: one benchmark on a policy, tracked as an MLflow run, its numbers
written as DVC metrics and, for a registered version, on the version.

`focusdiff evaluate --benchmark paircomp`, the `evaluate@<benchmark>` DVC stages and the
Prefect flows' evaluation tasks all call `run_benchmark`; the evaluation itself (draw,
check, score, aggregate, intervals, files) is focusdiff/eval/orchestrate.py's `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from focusdiff.config import Params
from focusdiff.errors import ConfigError
from focusdiff.eval.orchestrate import BENCHMARKS, REGISTRY, EvalResult, evaluate  # BENCHMARKS: what the flows run
from focusdiff.io import atomic_write_json
from focusdiff.model.loading import load_policy
from focusdiff.registry.registration import REGISTRATION_FILE, Registration
from focusdiff.registry.store import find_version, record_evaluation, record_failure
from focusdiff.tracking import StageRun, tracking_uri
from focusdiff.tracking_config import TrackingConfig

ARTIFACTS = ("scores.jsonl", "pairs.jsonl", "results.jsonl", "report.html")  # logged to the MLflow run when written
REGISTERED_FILES = ("pairs.jsonl", "scores.jsonl", "results.jsonl")  # attached to a registered version besides the metrics


def registration_of_policy(params: Params) -> Registration | None:
    """The registered version that evaluate.policy is, per the train stage's registration file."""
    return Registration.for_policy(params.train.metrics_dir / REGISTRATION_FILE, params.evaluate.policy)


def download_registered_version(params: Params, project_dir: str | Path, model_name: str, version: str) -> Registration:
    """Download version `version` (a number or an alias) of `model_name` from the registry into
    <project_dir>/outputs/registry/<name>-v<n>; its policy directory is the pyfunc model's
    `policy` artifact, which is what gets evaluated."""
    uri = tracking_uri(params.tracking)
    client = MlflowClient(uri, registry_uri=uri)
    mv = find_version(params.promote.model_copy(update={"model_name": model_name}), params.tracking, version, client)
    target = Path(project_dir) / "outputs" / "registry" / f"{model_name}-v{mv.version}"
    mlflow.set_registry_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{mv.version}", dst_path=str(target),
                                                tracking_uri=uri)
    # The pyfunc model's MLmodel maps the artifact key to where MLflow put it (artifacts/<source dir name>).
    mlmodel = yaml.safe_load((Path(local) / "MLmodel").read_text("utf-8"))
    entry = ((mlmodel.get("flavors") or {}).get("python_function") or {}).get("artifacts", {}).get("policy")
    if not entry:
        raise FileNotFoundError(f"{model_name} v{mv.version}: its MLmodel has no `policy` artifact ({Path(local) / 'MLmodel'})")
    policy = Path(local) / entry["path"]
    if not (policy / "config.json").is_file():
        raise FileNotFoundError(f"{model_name} v{mv.version}: no policy checkpoint at {policy}")
    return Registration(model_name=model_name, version=str(mv.version), run_id=mv.run_id, policy=str(policy))


def version_config(params: Params, project_dir: str | Path, registration: Registration) -> EvalConfig:
    """The evaluation settings for a downloaded registered version: params.yaml's, on its policy,
    with outputs and metrics in outputs/eval/<name>-v<n>/ (apart from the pipeline's own)."""
    out = Path(project_dir) / "outputs" / "eval" / f"{registration.model_name}-v{registration.version}"
    return params.evaluate.model_copy(update={"policy": registration.policy, "out": out, "metrics_dir": out / "metrics"})


def evaluation_target(params: Params, project_dir: str | Path,
                      version: str | None = None) -> tuple[Registration | None, EvalConfig, dict[str, str] | None]:
    """What `focusdiff evaluate` evaluates: with `version` (a number or alias of promote.model_name),
    that registered version, downloaded, evaluated apart and written on; else evaluate.policy
    (and the version it is, if the train stage registered it). Returns (registration, settings, tags)."""
    if version is None:
        return registration_of_policy(params), params.evaluate, None
    registration = download_registered_version(params, project_dir, params.promote.model_name, version)
    return registration, version_config(params, project_dir, registration), {"model_version": registration.version}


def run_benchmark(benchmark: str, cfg: EvalConfig, tracking: TrackingConfig, tags: dict[str, str] | None = None,
                  progress: Callable[[int], None] = lambda n: None,
                  registration: Registration | None = None) -> EvalResult:
    """Evaluate `cfg.policy` on one benchmark, tracked as an MLflow run `evaluate_<benchmark>`.
    With `registration` (a registered version of that policy), the outcome is also written on
    the version: results and files when complete, the reason when it fails."""
    try:
        result = _run_benchmark(benchmark, cfg, tracking, tags, progress)
    except Exception as exc:
        if registration is not None:
            record_failure(registration, tracking, benchmark, f"{type(exc).__name__}: {exc}")
        raise
    if registration is not None:
        files = [result.metrics_file] + [result.folder / n for n in REGISTERED_FILES if (result.folder / n).is_file()]
        record_evaluation(registration, tracking, benchmark, result.metrics, files, REGISTRY[benchmark].protocol(cfg))
    return result


def _run_benchmark(benchmark: str, cfg: EvalConfig, tracking: TrackingConfig, tags: dict[str, str] | None,
                   progress: Callable[[int], None]) -> EvalResult:
    if benchmark not in REGISTRY:
        raise ConfigError(f"unknown benchmark {benchmark!r}; known: {', '.join(REGISTRY)}")
    logged = {"evaluate": cfg.model_dump(mode="json"), "benchmark": benchmark}
    with StageRun(tracking, f"evaluate_{benchmark}", params=logged,
                  tags={"benchmark": benchmark, "policy": cfg.policy, **(tags or {})}) as run:
        loading = time.perf_counter()
        policy = load_policy(cfg.policy)
        loaded = time.perf_counter() - loading
        result = evaluate(REGISTRY[benchmark], cfg, policy, progress)
        tracking_started = time.perf_counter()
        run.log_metrics(result.metrics)
        run.log_metrics({f"{k}.ci95_low": v[0] for k, v in result.intervals.items()}
                        | {f"{k}.ci95_high": v[1] for k, v in result.intervals.items()})
        run.set_tags({"deviations": " | ".join(result.deviations)[:5000]})
        for name in ARTIFACTS:
            if (result.folder / name).is_file():
                run.log_artifact(result.folder / name, f"evaluate/{benchmark}")
        # where the time went (the process's start-up, imports included, is outside: bench/eval_speed.py)
        result.seconds = {"load_s": loaded, **result.seconds, "track_s": time.perf_counter() - tracking_started}
        payload = {"benchmark": benchmark, "policy": cfg.policy, "metrics": result.metrics,
                   "intervals": result.intervals, "deviations": result.deviations, "seconds": result.seconds,
                   "mlflow_run_id": run.run_id}
        cfg.metrics_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result.metrics_file, payload)
        run.log_metrics({f"{benchmark}.{k}": v for k, v in result.seconds.items()})
        run.log_artifact(result.metrics_file, f"evaluate/{benchmark}")
        result.mlflow_run_id = run.run_id
        return result
