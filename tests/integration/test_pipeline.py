"""The Prefect flow `focusdiff-pipeline`, end to end, in throwaway project copies.

The flow runs for real: under Prefect's test harness (a temporary Prefect API
server, shared by the whole session), `dvc repro data` in a subprocess, MLflow on
the embedded sqlite store or on a real `mlflow server` whose artifacts go to a moto
S3 bucket, and `dvc push` to the copy's default remote.
"""

from __future__ import annotations

import io
import json
import re
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.project import VENV_BIN, ProjectCopy, make_project, patched_environ

# every test here runs a flow under prefect_test_harness, which starts a Prefect server
pytestmark = pytest.mark.servers

DATA = "data/pairs"
BENCHMARKS = ("paircomp", "geneval", "t2i_compbench", "dpg_bench")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API server (sqlite) for every flow run of the session.

    PREFECT_HOME points into the session's temp dir, so nothing is written to ~/.prefect.
    """
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    # The default 30 s start-up timeout is tight on a loaded 2-core box.
    with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def run_flow(prefect_harness: None) -> Iterator[Any]:
    """Run the pipeline flow on a project copy, with os.environ = the copy's environment.

    Returns the flow's final Prefect state (never raises), so tests can inspect failures.
    Afterwards the global MLflow tracking URI (which the flow sets) is reset.
    """
    import mlflow

    from flows.pipeline import focusdiff_pipeline

    def _run(proj: ProjectCopy, extra_env: dict[str, str] | None = None, **kwargs: Any):
        env = {**proj.env, **(extra_env or {})}
        with patched_environ(env):
            state = focusdiff_pipeline(project_dir=str(proj.root), return_state=True, **kwargs)
            # The flow must not leave its tracking URI in the environment: it would
            # override the next project's params.yaml in this process.
            left = os.environ.get("MLFLOW_TRACKING_URI")  # (not os.environ itself: no env dump on failure)
        assert left == env.get("MLFLOW_TRACKING_URI"), f"MLFLOW_TRACKING_URI left set to {left!r}"
        return state

    try:
        yield _run
    finally:
        mlflow.set_tracking_uri(None)


def _runs(client: Any, experiment: str = "focusdiff") -> dict[str, list[Any]]:
    """{run name: [runs]} in `experiment`."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} was not created"
    out: dict[str, list[Any]] = {}
    for run in client.search_runs([exp.experiment_id]):
        out.setdefault(run.info.run_name, []).append(run)
    return out


# One MLflow run per stage that ran (the shipped bootstrap stages are up to date and do not);
# the benchmarks run twice: on the base (the baseline stage) and on the trained policy.
STAGE_RUNS = {"baseline": 1, "data": 1, "evaluate_dpg_bench": 2, "evaluate_geneval": 2, "evaluate_paircomp": 2,
              "evaluate_t2i_compbench": 2, "judge": 1, "pipeline": 1, "train": 1}


def _assert_stage_runs(runs: dict[str, list[Any]], pipeline: Any) -> None:
    """Every stage ran (the benchmarks once per evaluated version), finished, nested under the
    pipeline run with the same flow-run id."""
    assert {name: len(r) for name, r in runs.items()} == STAGE_RUNS, sorted(runs)
    for name, stage_runs in runs.items():
        for run in stage_runs:
            assert run.info.status == "FINISHED", (name, run.data.tags.get("error"))
            if name != "pipeline":
                assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id, name
                assert run.data.tags["prefect.flow_run_id"] == pipeline.data.tags["prefect.flow_run_id"], name
                assert run.data.tags["data.version"] == pipeline.data.tags["data.version"], name
    base_evaluations = [r for n, rs in runs.items() if n.startswith("evaluate_") for r in rs
                        if r.data.tags.get("model_version") == "1"]
    assert len(base_evaluations) == 4  # the baseline stage's, on version 1 (the base)


def _assert_registered(client: Any, model_name: str, summary: dict[str, Any], version_number: str) -> Any:
    """The trained policy is version `version_number` of the registered model, carries its lineage
    and four evaluations under one PairComp protocol; returns the version."""
    assert summary["registered_model"] == model_name and summary["registered_version"] == version_number
    version = client.get_model_version(model_name, version_number)
    assert str(client.get_model_version_by_alias(model_name, "challenger").version) == version_number
    assert version.tags["data.version"] == summary["data_version"]  # lineage: the DVC version trained on
    for benchmark in ("paircomp", "geneval", "t2i_compbench", "dpg_bench"):
        assert version.tags[f"eval.{benchmark}.status"] == "complete", benchmark
    # the gate compares versions only under one protocol: evaluator, suite, sampling, seed
    assert re.fullmatch(r"exact:\|suite=shapes:test\|sampling=cfg_weight=[\d.]+,temperature=[\d.]+,top_k=\d+,top_p=[\d.]+"
                        r"\|seed=\d+", version.tags["eval.paircomp.evaluator"]), version.tags["eval.paircomp.evaluator"]
    assert 0.0 <= summary["paircomp.s_g"] <= 100.0
    return version


def _assert_gated_against_the_base(client: Any, model_name: str, summary: dict[str, Any], runs: dict[str, list[Any]]) -> None:
    """A fresh registry: the base is version 1, evaluated under the same protocol and the first
    champion; the trained policy (version 2) was gated against it pair by pair, with its interval."""
    trained = _assert_registered(client, model_name, summary, "2")
    assert trained.run_id == runs["train"][0].info.run_id
    base = client.get_model_version(model_name, "1")
    assert base.tags["focusdiff.role"] == "base" and base.tags["gate.decision"] == "first champion"
    assert base.run_id == runs["baseline"][0].info.run_id
    assert base.tags["eval.paircomp.evaluator"] == trained.tags["eval.paircomp.evaluator"]
    assert trained.tags["gate.compared_with"] == "1" and summary["gate.compared_with"] == "1", summary
    assert re.fullmatch(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", summary["gate.improvement.ci95"]), summary
    assert "paired bootstrap 95% interval" in summary["gate"], summary["gate"]
    expected = "2" if summary["promoted"] else "1"
    assert summary["champion"] == expected
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == expected
    assert trained.tags["gate.decision"] == ("promoted" if summary["promoted"] else "rejected")


def _assert_first_promoted(client: Any, model_name: str, summary: dict[str, Any], runs: dict[str, list[Any]]) -> None:
    """No baseline (a cluster pipeline): the trained policy is version 1 and, the first one,
    gated against no champion, met the floor (0 here) and became champion."""
    version = _assert_registered(client, model_name, summary, "1")
    assert version.run_id == runs["train"][0].info.run_id
    assert summary["promoted"] is True and summary["champion"] == "1", summary["gate"]
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "1"
    assert version.tags["gate.decision"] == "promoted"


def _assert_pipeline_and_data_runs(client: Any, proj: ProjectCopy, summary: dict[str, Any]) -> tuple[Any, Any]:
    """The checks shared by the local and the server-backed flow run; returns (pipeline, data) runs."""
    runs = _runs(client)
    (pipeline,), (data,) = runs["pipeline"], runs["data"]
    assert pipeline.info.run_id == summary["mlflow_run_id"]
    _assert_stage_runs(runs, pipeline)

    version = proj.lock_md5(DATA)
    assert version.endswith(".dir")
    assert summary["data_version"] == version
    assert pipeline.data.tags["data.version"] == version
    assert data.data.tags["data.version"] == version

    flow_run_id = pipeline.data.tags.get("prefect.flow_run_id")
    uuid.UUID(flow_run_id)  # a real Prefect flow-run id, not a placeholder
    assert data.data.tags.get("prefect.flow_run_id") == flow_run_id

    manifest = json.loads((proj.root / DATA / "manifest.json").read_text())
    by_category = manifest["counts"]["by_category"]
    assert len(by_category) == 6
    for run in (pipeline, data):
        for category, by_split in by_category.items():
            for split, n in by_split.items():
                assert run.data.metrics[f"data.pairs.{category}.{split}"] == n, (run.info.run_name, category, split)

    # Git provenance of the copy (a clean checkout: the lock and data are not tracked as modified).
    head = proj.git("rev-parse", "HEAD").stdout.strip()
    assert pipeline.data.tags["git.commit"] == head
    return pipeline, data


def _assert_artifacts(client: Any, run_id: str, dst: Path, manifest: dict[str, Any]) -> bytes:
    names = {a.path for a in client.list_artifacts(run_id, "data")}
    assert {"data/sample_pairs.png", "data/manifest.json"} <= names, names
    local = Path(client.download_artifacts(run_id, "data", str(dst)))
    png = (local / "sample_pairs.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(png)) as img:
        img.verify()
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
    assert json.loads((local / "manifest.json").read_text()) == manifest
    return png


# --------------------------------------------------------------------------- #
# Embedded default: sqlite tracking, local DVC remote
# --------------------------------------------------------------------------- #


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang detector, not a speed bound: ~4 min on 2 cores beside another test worker
def test_flow_embedded_default(run_flow: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    # margin 99: the two-step policy never displaces the base, so the protocol change at the end
    # is judged against the base (the gate's decision is the same either way)
    proj = make_project(tmp_path / "project", params={"promote": {"margin": 99.0}})
    state = run_flow(proj)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["dvc_remote"] == "local"

    client = MlflowClient(proj.tracking_uri)
    assert summary["tracking_uri"] == proj.tracking_uri  # the default sqlite file, in the project
    pipeline, _ = _assert_pipeline_and_data_runs(client, proj, summary)
    assert pipeline.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    manifest = json.loads((proj.root / DATA / "manifest.json").read_text())
    _assert_artifacts(client, pipeline.info.run_id, tmp_path / "dl", manifest)
    # Artifacts live in the copy's own artifact root, not the real checkout's.
    assert Path(pipeline.info.artifact_uri.removeprefix("file://")).is_relative_to(proj.root / "mlartifacts")

    # The push reached the copy's default remote (.dvc-storage inside the copy).
    storage = proj.root / ".dvc-storage"
    assert storage.is_dir()
    md5 = proj.lock_md5(DATA)
    assert (storage / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    assert "Cache and remote 'local' are in sync." in proj.dvc("status", "--cloud").stdout
    assert "Data and pipelines are up to date." in proj.dvc("status").stdout
    _assert_gated_against_the_base(client, "focusdiff-shapes", summary, _runs(client))
    _assert_progress_and_artifacts(str(state.state_details.flow_run_id), summary)
    _assert_dvc_surfaces(proj, summary)
    _assert_a_protocol_change_is_resolved_by_re_scoring_the_champion(proj, client)


def _assert_a_protocol_change_is_resolved_by_re_scoring_the_champion(proj: ProjectCopy, client: Any) -> None:
    """The evaluation protocol changes (another seed): the challenger re-scored under it is
    refused by the gate, which will not compare with the champion's old scores and names the
    command that fixes it; after that command the gate compares pair by pair. (The stage-level
    variant is test_registry's; this one runs the commands a user types, on the pipeline's registry.)"""
    proj.update_params({"evaluate": {"seed": 1}})
    focusdiff = [str(VENV_BIN / "focusdiff")]
    proj.run([*focusdiff, "evaluate", "-b", "paircomp"])  # the challenger (models/grpo, version 2)
    assert client.get_model_version("focusdiff-shapes", "2").tags["eval.paircomp.evaluator"].endswith("|seed=1")
    refused = " ".join(proj.run([*focusdiff, "promote"]).stdout.split())  # the console wraps lines
    assert "KEEP CHAMPION" in refused and "evaluated differently from the champion" in refused, refused
    assert "seed: 1 vs 0" in refused and "`focusdiff evaluate --version champion -b paircomp`" in refused, refused

    proj.run([*focusdiff, "evaluate", "--version", "champion", "-b", "paircomp"])
    champion = client.get_model_version("focusdiff-shapes", "1")
    assert champion.tags["eval.paircomp.evaluator"].endswith("|seed=1")  # re-scored under the new protocol
    gate = " ".join(proj.run([*focusdiff, "promote"]).stdout.split())
    assert "KEEP CHAMPION" in gate and "below the margin" in gate and "paired bootstrap 95% interval" in gate, gate
    assert "evaluated differently" not in gate
    assert client.get_model_version("focusdiff-shapes", "2").tags["gate.compared_with"] == "1"


def _assert_progress_and_artifacts(flow_run_id: str, summary: dict[str, Any]) -> None:
    """Read back from Prefect: the judge, train and evaluate tasks logged the stages' progress
    lines while they ran, and the flow run published its result (rounded) as artifacts."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, LogFilter,
                                                LogFilterFlowRunId)

    with get_client(sync_client=True) as prefect:
        for _ in range(30):  # logs reach the API in batches
            messages = [log.message for log in prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
            if any(" train: 2/2 steps " in m for m in messages):
                break
            time.sleep(1)
        for line in ("judge: 1/4 steps", "judge: 4/4 steps", "train: 1/2 steps", "train: 2/2 steps",
                     "paircomp: generating: "):
            assert any(line in m for m in messages), (line, messages[-40:])
        artifacts = {a.key: a for a in prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}
    assert {"focusdiff-pipeline", "focusdiff-pipeline-metrics"} <= set(artifacts), sorted(artifacts)
    page = artifacts["focusdiff-pipeline"].data
    assert re.search(r"^\| paircomp\.s_g \| [\d.]+ \| ", page, re.MULTILINE), page
    assert f"## Gate: {'promoted' if summary['promoted'] else 'not promoted'}" in page
    assert summary["mlflow_run_id"] in page
    assert f"focusdiff-shapes v{summary['registered_version']}" in page and "mlflow ui --backend-store-uri" in page
    assert not re.search(r"\d\.\d{5,}", page), page  # rounded for reading: no 16-digit floats
    table = json.loads(artifacts["focusdiff-pipeline-metrics"].data)
    assert {row["metric"] for row in table} >= {"paircomp.s_g", "paircomp.s_a"}


def _assert_dvc_surfaces(proj: ProjectCopy, summary: dict[str, Any]) -> None:
    """What a user reads through DVC after the pipeline: metrics, plots, and an experiment
    that varies a parameter (`dvc exp run -S`) compared with `dvc metrics diff`."""
    shown = json.loads(proj.dvc("metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    paircomp = metrics["metrics/eval/paircomp.json"]["data"]["metrics"]
    assert paircomp["paircomp.s_g"] == pytest.approx(summary["paircomp.s_g"])
    assert {"metrics/judge.json", "metrics/train.json", "metrics/eval/promotion.json"} <= set(metrics)
    plots = proj.root / "plots-out"
    proj.dvc("plots", "show", "-o", str(plots))
    assert "train_curve.csv" in (plots / "index.html").read_text()

    baseline = metrics["metrics/eval/baseline.json"]["data"]
    assert baseline["champion"] == "1" and "paircomp.s_g" in baseline["metrics"], baseline

    proj.commit("pipeline results")  # dvc.lock and the metrics files, as a user would
    proj.dvc("exp", "run", "promote", "-S", "promote.margin=50")  # only the gate re-runs
    diff = json.loads(proj.dvc("metrics", "diff", "--json").stdout)
    promotion = json.loads((proj.root / "metrics/eval/promotion.json").read_text())
    assert promotion["promote"] is False, promotion
    if summary["promoted"]:  # already the champion: the gate says so
        assert promotion["reasons"] == ["version 2 is already the champion"], promotion
    else:
        assert any("below the margin 50.00" in r for r in promotion["reasons"]), promotion
    # neither the benchmarks nor the baseline re-ran
    assert "metrics/eval/paircomp.json" not in diff and "metrics/eval/baseline.json" not in diff


# --------------------------------------------------------------------------- #
# Failures
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_flow_failing_stage_fails_pipeline_run(run_flow: Any, tmp_path: Path) -> None:
    """A stage that fails inside `dvc repro` fails the flow, and both MLflow runs end FAILED."""
    from mlflow import MlflowClient

    from focusdiff.versioning import DvcError

    missing = tmp_path / "nowhere" / "pairs.json"
    proj = make_project(tmp_path / "project", params={"data": {"source": "import", "import": {"pairs_file": str(missing)}}})
    lock_before = (proj.root / "dvc.lock").read_bytes()
    state = run_flow(proj)
    assert state.is_failed(), state
    with pytest.raises(DvcError) as info:
        state.result()
    message = str(info.value)
    assert "dvc repro data" in message
    assert str(missing) in message and "file not found" in message, message

    client = MlflowClient(proj.tracking_uri)
    runs = _runs(client)
    (pipeline,) = runs["pipeline"]
    assert pipeline.info.status == "FAILED"
    error = pipeline.data.tags["error"]
    assert error.startswith("DvcError:") and str(missing) in error, error
    assert "data.version" not in pipeline.data.tags
    (data,) = runs["data"]  # the stage's own run, nested, also FAILED with its own error
    assert data.info.status == "FAILED"
    assert data.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert str(missing) in data.data.tags["error"] and "file not found" in data.data.tags["error"]
    assert not (proj.root / DATA).exists()
    assert (proj.root / "dvc.lock").read_bytes() == lock_before  # nothing was versioned
    assert not (proj.root / ".dvc-storage").exists()  # nothing was pushed


@pytest.mark.slow
def test_flow_malformed_params_fail_before_any_run(run_flow: Any, tmp_path: Path) -> None:
    """A bad parameter value is reported with its dotted key; no MLflow run is left behind."""
    from mlflow import MlflowClient

    from focusdiff.errors import ConfigError

    proj = make_project(tmp_path / "project", params={"data": {"shapes": {"canvas": 8}}})
    state = run_flow(proj)
    assert state.is_failed(), state
    with pytest.raises(ConfigError, match=r"params\.yaml: data\.shapes\.canvas: .*32"):
        state.result()
    if (proj.root / "mlflow.db").exists():
        client = MlflowClient(proj.tracking_uri)
        exp = client.get_experiment_by_name("focusdiff")
        assert exp is None or client.search_runs([exp.experiment_id]) == []
    assert not (proj.root / DATA).exists()


# --------------------------------------------------------------------------- #
# On a cluster: training as a two-node PyTorchJob
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, loopback_bypasses_proxy: None) -> Iterator[tuple[Path, str]]:
    """The loopback Kubernetes API whose operator runs pods as local processes (tests/fake_kubernetes.py)."""
    from tests.fake_kubernetes import serve

    with serve(tmp_path_factory.mktemp("kube")) as (kubeconfig, url):
        yield kubeconfig, url


@pytest.mark.slow
def test_flow_on_cluster_trains_as_a_two_node_pytorchjob(run_flow: Any, kube: tuple[Path, str], tmp_path: Path) -> None:
    """cluster.launcher pytorchjob: the flow versions and pushes the data, submits training as a
    PyTorchJob whose two pods run torchrun (gloo, one process each), finds the version the job
    registered by its flow-run tag, evaluates it (the evaluate subflow) and gates it."""
    import sys
    import urllib.request

    import yaml
    from mlflow import MlflowClient

    from focusdiff.train.pytorchjob import FLOW_RUN_LABEL, job_name

    kubeconfig, url = kube
    proj = make_project(tmp_path / "project")
    torchrun = (f'{sys.executable} -m torch.distributed.run --nnodes "$PET_NNODES" --node_rank "$RANK" --nproc_per_node 1 '
                '--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m focusdiff.cli train --params params.yaml')
    pod = {"spec": {"containers": [{"name": "pytorch", "image": "focusdiff:test", "workingDir": str(proj.root),
                                    "command": ["sh", "-c"], "args": [torchrun],
                                    "env": [{"name": "OMP_NUM_THREADS", "value": "1"}]}]}}
    (proj.root / "job.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "t", "namespace": "ml"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": pod}, "Worker": {"replicas": 1, "template": pod}}},
    }))
    # The reward judge is served, as on a cluster (the exact judge behind the OpenAI-compatible API).
    from tests.servers import LOOPBACK, ManagedProcess, free_port, http_ok, loopback_no_proxy_env

    port = free_port()
    judge_server = ManagedProcess([sys.executable, "-m", "focusdiff.cli", "judge", "serve", "--backend", "exact",
                                   "--host", LOOPBACK, "--port", str(port)], name="judge-exact", cwd=proj.root,
                                  env={"OMP_NUM_THREADS": "1", **loopback_no_proxy_env()}, log_path=tmp_path / "judge.log",
                                  ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/health"), startup_timeout=60)
    proj.update_params({
        "train": {"judge": {"backend": "openai", "base_url": f"http://{LOOPBACK}:{port}/v1", "model": "focusdiff-exact"}},
        "cluster": {"launcher": "pytorchjob", "pytorchjob": {
            "manifest": "job.yaml", "kubeconfig": str(kubeconfig), "nodes": 2, "poll_seconds": 0.5, "timeout_hours": 0.25}}})

    with judge_server:
        state = run_flow(proj)
    assert state.is_completed(), state
    summary = state.result()
    flow_run_id = str(state.state_details.flow_run_id)
    assert summary["dvc_remote"] == "local" and "bootstrap.lm.path" not in summary  # the recipe's base, not ShapesWorld's

    client = MlflowClient(proj.tracking_uri)
    runs = _runs(client)
    assert "judge" not in runs and "bootstrap_lm" not in runs
    (pipeline,), (train,) = runs["pipeline"], runs["train"]
    assert train.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == pipeline.info.run_id  # the job's rank 0 nests under the flow's run
    assert train.data.tags["prefect.flow_run_id"] == flow_run_id
    assert train.data.tags["world_size"] == "2"  # both pods joined one process group
    _assert_first_promoted(client, "focusdiff-shapes", summary, runs)
    assert client.get_model_version("focusdiff-shapes", "1").tags["prefect.flow_run_id"] == flow_run_id

    name = job_name("focusdiff-train", flow_run_id)
    with urllib.request.urlopen(f"{url}/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/{name}") as response:
        job = json.loads(response.read())
    assert job["metadata"]["labels"][FLOW_RUN_LABEL] == flow_run_id
    assert [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"][-1] == "Succeeded"
