"""Multi-node training as a PyTorchJob: rendering, and submit/watch/adopt through the official
Kubernetes client against a loopback API server whose operator runs the pods as local
processes (tests/fake_kubernetes.py; no cluster is reachable from CI)."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from focusdiff.train.pytorchjob import (
    FLOW_RUN_LABEL,
    PyTorchJobConfig,
    PyTorchJobs,
    TrainingJobError,
    job_name,
    job_state,
    render_job,
    run_training_job,
)
from tests.fake_kubernetes import serve
from tests.project import REPO_ROOT

REPO = REPO_ROOT
SHIPPED = REPO / "infra" / "k8s" / "pytorchjob-janus-pro-7b.yaml"


def _manifest(tmp_path: Path, script: str, worker_script: str | None = None, namespace: str = "focusdiff") -> Path:
    def pod(code: str) -> dict:
        return {"spec": {"containers": [{"name": "pytorch", "image": "focusdiff:test",
                                         "command": [sys.executable, "-c"], "args": [code],
                                         "env": [{"name": "KEEP", "value": "1"}]}]}}

    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": "template", "namespace": namespace},
           "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": pod(script)},
                                            "Worker": {"replicas": 1, "template": pod(worker_script or script)}}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# --- rendering ---------------------------------------------------------------------------------

def test_render_names_labels_and_sizes_the_shipped_manifest():
    cfg = PyTorchJobConfig(manifest=SHIPPED, nodes=4, image="registry.example/focusdiff:v7")
    job = render_job(cfg, "flow-1", env={"FOCUSDIFF_FLOW_RUN_ID": "flow-1"})
    assert job["metadata"]["name"] == job_name("focusdiff-train", "flow-1") == render_job(cfg, "flow-1")["metadata"]["name"]
    assert job["metadata"]["name"] != job_name("focusdiff-train", "flow-2")
    assert job["metadata"]["labels"][FLOW_RUN_LABEL] == "flow-1"
    assert job["metadata"]["namespace"] == "focusdiff"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    for role in ("Master", "Worker"):
        container = specs[role]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example/focusdiff:v7"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FOCUSDIFF_FLOW_RUN_ID"] == "flow-1"
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"  # the manifest's own env is kept
    single = render_job(PyTorchJobConfig(manifest=SHIPPED, nodes=1, namespace="team-a"), "flow-1")
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"] and single["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize(("content", "nodes", "message"), [
    (None, 2, "job.yaml: PyTorchJob manifest not found"),
    ("kind: [", 2, "job.yaml: not valid YAML"),
    ("apiVersion: batch/v1\nkind: Job\n", 2, "job.yaml: expected kind PyTorchJob, apiVersion kubeflow.org/v1"),
    ("apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nspec: {pytorchReplicaSpecs: {}}\n", 2,
     "job.yaml: spec.pytorchReplicaSpecs.Master is missing"),
    ("apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {namespace: x}\n"
     "spec: {pytorchReplicaSpecs: {Master: {template: {spec: {containers: [{name: a}]}}}}}\n", 2,
     "job.yaml: nodes=2 needs spec.pytorchReplicaSpecs.Worker"),
    ("apiVersion: kubeflow.org/v1\nkind: PyTorchJob\n"
     "spec: {pytorchReplicaSpecs: {Master: {template: {spec: {containers: [{name: a}]}}}}}\n", 1,
     "job.yaml: no metadata.namespace and cluster.pytorchjob.namespace is unset"),
    ("apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {namespace: x}\n"
     "spec: {pytorchReplicaSpecs: {Master: {template: {spec: {}}}}}\n", 1,
     "job.yaml: pytorchReplicaSpecs.Master has no containers"),
])
def test_render_rejects_bad_manifests_naming_file_and_field(tmp_path, content, nodes, message):
    path = tmp_path / "job.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrainingJobError) as err:
        render_job(PyTorchJobConfig(manifest=path, nodes=nodes), "flow-1")
    assert message in str(err.value)


def test_job_state_reads_the_operators_conditions():
    assert job_state({}) == ("Pending", {})
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}}
    assert job_state(running)[0] == "Running"
    done = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                      {"type": "Succeeded", "status": "True", "message": "ok"}]}}
    assert job_state(done) == ("Succeeded", {"type": "Succeeded", "status": "True", "message": "ok"})
    failed = {"status": {"conditions": [{"type": "Running", "status": "True"}, {"type": "Failed", "status": "True"}]}}
    assert job_state(failed)[0] == "Failed"


# --- against the loopback API --------------------------------------------------------------------

@pytest.fixture(scope="module")
def kube(tmp_path_factory, loopback_bypasses_proxy):
    """The fake API server; yields (kubeconfig path, base URL, pods' working directory)."""
    root = tmp_path_factory.mktemp("kube")
    workdir = root / "pods"
    workdir.mkdir()
    with serve(root, workdir) as (kubeconfig, url):
        yield kubeconfig, url, workdir


def _post(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b"")) as response:
        return json.loads(response.read())


def _stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats") as response:
        return json.loads(response.read())


RANK_SCRIPT = ("import os; open(f\"rank{os.environ['RANK']}-of-{os.environ['WORLD_SIZE']}.txt\", 'w')"
               ".write(os.environ['FOCUSDIFF_FLOW_RUN_ID'] + ' ' + os.environ['KEEP'])")


def test_job_runs_every_replica_with_the_torchrun_environment_and_succeeds(kube, tmp_path):
    kubeconfig, url, workdir = kube
    cfg = PyTorchJobConfig(manifest=_manifest(tmp_path, RANK_SCRIPT), nodes=3, kubeconfig=kubeconfig, poll_seconds=0.2,
                           timeout_hours=0.05)
    lines: list[str] = []
    job = run_training_job(cfg, "flow-ok", env={"FOCUSDIFF_FLOW_RUN_ID": "flow-ok"}, log=lines.append)
    assert job_state(job)[0] == "Succeeded"
    for rank in range(3):
        assert (workdir / f"rank{rank}-of-3.txt").read_text() == "flow-ok 1"
    assert "created, 3 node(s)" in lines[0] and "Succeeded" in lines[-1]


def test_a_failed_replica_fails_the_job_with_its_exit_code_and_last_words(kube, tmp_path):
    kubeconfig, url, _ = kube
    crash = "import sys; print('loading shard 3', file=sys.stderr); sys.exit('CUDA out of memory on worker')"
    cfg = PyTorchJobConfig(manifest=_manifest(tmp_path, "pass", worker_script=crash), nodes=2, kubeconfig=kubeconfig,
                           poll_seconds=0.2, timeout_hours=0.05)
    with pytest.raises(TrainingJobError) as err:
        run_training_job(cfg, "flow-crash", env={}, log=lambda _: None)
    name = job_name("focusdiff-train", "flow-crash")
    assert f"PyTorchJob focusdiff/{name} failed: PyTorchJobFailed: pod {name}-worker-0 exited with code 1: " \
           "CUDA out of memory on worker" in str(err.value)


def test_a_retried_flow_adopts_its_job_and_rides_out_api_restarts(kube, tmp_path):
    kubeconfig, url, workdir = kube
    script = "import time, os; time.sleep(1.5); open('adopt-' + os.environ['RANK'], 'a').write('ran\\n')"
    cfg = PyTorchJobConfig(manifest=_manifest(tmp_path, script), nodes=2, kubeconfig=kubeconfig, poll_seconds=0.2,
                           timeout_hours=0.05)
    jobs = PyTorchJobs(kubeconfig)
    first, adopted = jobs.submit(render_job(cfg, "flow-retry"))
    assert not adopted
    before = _stats(url)
    _post(f"{url}/faults?get_503=2")  # the API server restarts while the retried flow reattaches
    lines: list[str] = []
    job = run_training_job(cfg, "flow-retry", env={}, log=lines.append)
    assert "adopted (flow retried)" in lines[0]
    assert job_state(job)[0] == "Succeeded"
    after = _stats(url)
    assert after["create"] - before["create"] == 1  # the retry's create got 409, no second job
    assert after["get"] - before["get"] >= 4  # two 503s retried, then polled to the end
    assert (workdir / "adopt-0").read_text() == "ran\n" and (workdir / "adopt-1").read_text() == "ran\n"


def test_a_name_taken_by_another_flow_run_is_not_adopted(kube, tmp_path):
    kubeconfig, _, _ = kube
    cfg = PyTorchJobConfig(manifest=_manifest(tmp_path, "pass"), nodes=1, kubeconfig=kubeconfig)
    jobs = PyTorchJobs(kubeconfig)
    job = render_job(cfg, "flow-owner")
    jobs.submit(job)
    job["metadata"]["labels"][FLOW_RUN_LABEL] = "flow-intruder"
    with pytest.raises(TrainingJobError) as err:
        jobs.submit(job)
    assert f"PyTorchJob focusdiff/{job['metadata']['name']} already exists and belongs to flow run 'flow-owner', " \
           "not 'flow-intruder'" in str(err.value)


def test_a_job_that_outlives_its_timeout_is_an_error_and_left_running(kube, tmp_path):
    kubeconfig, _, _ = kube
    cfg = PyTorchJobConfig(manifest=_manifest(tmp_path, "import time; time.sleep(5)"), nodes=1, kubeconfig=kubeconfig,
                           poll_seconds=0.2, timeout_hours=0.5 / 3600)
    with pytest.raises(TrainingJobError) as err:
        run_training_job(cfg, "flow-slow", env={}, log=lambda _: None)
    assert "still Running after 0 s (cluster.pytorchjob.timeout_hours); it was left running" in str(err.value)


def test_a_missing_kubeconfig_is_named(tmp_path):
    with pytest.raises(TrainingJobError) as err:
        PyTorchJobs(tmp_path / "nope")
    assert f"{tmp_path / 'nope'}: kubeconfig not found" in str(err.value)


def test_a_job_refuses_a_dataset_other_than_the_one_the_flow_versioned(tmp_path, monkeypatch):
    """The pods pull the data with the image's dvc.lock; a stale image would train on another version."""
    from focusdiff.config import TrackingConfig
    from focusdiff.errors import DataError
    from focusdiff.train.configs import GRPOConfig
    from focusdiff.stages.train import DATA_VERSION_ENV, run_train_stage

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  data:\n    outs:\n    - path: data/pairs\n"
                                       "      md5: 1111aaaa.dir\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_VERSION_ENV, "2222bbbb.dir")
    with pytest.raises(DataError) as err:
        run_train_stage(GRPOConfig(data=Path("data/pairs")), TrackingConfig())
    assert ("data/pairs: dataset version 1111aaaa.dir is not the version 2222bbbb.dir this run was submitted with "
            "(FOCUSDIFF_DATA_VERSION); the image's dvc.lock is stale") in str(err.value)
