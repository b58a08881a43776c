"""The infrastructure files parse, carry their required fields, and point at things that exist:
compose services, the training image, the Kubernetes work pool template and PyTorchJob, and
the Prefect deployments (entrypoints, parameters, work pools, job variables)."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import yaml

from tests.project import REPO_ROOT

REPO = REPO_ROOT
INFRA = REPO / "infra"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose" / "compose.yaml").read_text())


def test_compose_has_the_stack_with_credentials_from_the_environment_and_loopback_ports():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    mlflow = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in mlflow and "--artifacts-destination s3://" in mlflow
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["prefect-worker"]["command"].startswith("prefect worker start --pool focusdiff-process")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (INFRA / "compose" / "compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "S3_ACCESS_KEY"):
        assert f"${{{secret}:?" in text, f"{secret} must come from .env and fail loudly when unset"
    worker_build = services["prefect-worker"]["build"]
    assert (INFRA / "compose" / worker_build["context"] / worker_build["dockerfile"]).is_file()
    assert (INFRA / "compose" / "init-prefect-db.sql").is_file()


def test_example_env_holds_placeholders_only_and_real_env_is_ignored():
    values = dict(line.split("=", 1) for line in (INFRA / "compose" / "example.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert all(v.startswith("change-me") for k, v in values.items() if "PASSWORD" in k or "KEY" in k)
    assert "infra/compose/.env" in (REPO / ".gitignore").read_text()


def test_dockerfile_installs_from_the_lock_and_runs_unprivileged():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    assert "uv sync --locked" in text and re.search(r"^USER focusdiff", text, re.M)
    assert not re.search(r"^ENV .*(KEY|SECRET|PASSWORD|TOKEN)=", text, re.M)


def test_gpu_work_pool_template_requests_the_gpu_count_variable():
    template = json.loads((INFRA / "k8s" / "work-pool-gpu.json").read_text())
    variables = template["variables"]["properties"]
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(variables), f"template uses undefined variables {used - set(variables)}"
    assert variables["gpu_count"]["type"] == "integer" and variables["backoff_limit"]["default"] >= 1
    assert container["envFrom"][0]["secretRef"]["name"] == "{{ credentials_secret }}"


def test_pytorchjob_runs_the_recipe_with_deepspeed_on_gpus():
    job = yaml.safe_load((INFRA / "k8s" / "pytorchjob-janus-pro-7b.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    container = specs["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    recipe = re.search(r"-c (\S+\.yaml)", container["args"][0]).group(1)
    assert (REPO / recipe).is_file()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (REPO / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).is_file()
    claim = specs["Master"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert yaml.safe_load((INFRA / "k8s" / "checkpoints-pvc.yaml").read_text())["metadata"]["name"] == claim
    recipe_cfg = yaml.safe_load((REPO / recipe).read_text())
    assert str(recipe_cfg["checkpoint_dir"]).startswith("/checkpoints/")  # on the shared volume


def test_prefect_deployments_point_at_flows_with_those_parameters():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    template_vars = set(json.loads((INFRA / "k8s" / "work-pool-gpu.json").read_text())["variables"]["properties"])
    names = {d["name"] for d in config["deployments"]}
    assert {"embedded", "janus-pro-7b", "evaluate", "promote"} <= names
    for d in config["deployments"]:
        path, func = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "fn"), f"{d['entrypoint']} is not a Prefect flow"
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d.get("parameters", {})) <= accepted, f"{d['name']}: unknown parameters"
        if d["work_pool"]["name"] == "focusdiff-gpu":
            assert set(d["work_pool"]["job_variables"]) <= template_vars
            assert d["work_pool"]["job_variables"]["gpu_count"] == 8


def test_flow_service_account_may_submit_and_watch_pytorchjobs():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "flow-rbac.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    pool = json.loads((INFRA / "k8s" / "work-pool-gpu.json").read_text())["variables"]["properties"]
    job = yaml.safe_load((INFRA / "k8s" / "pytorchjob-janus-pro-7b.yaml").read_text())
    account = by_kind["ServiceAccount"]["metadata"]
    assert account["name"] == pool["service_account_name"]["default"]
    assert account["namespace"] == pool["namespace"]["default"] == job["metadata"]["namespace"]
    (rule,) = by_kind["Role"]["rules"]
    assert rule["apiGroups"] == ["kubeflow.org"] and rule["resources"] == ["pytorchjobs"]
    assert {"create", "get"} <= set(rule["verbs"])  # what focusdiff/train/pytorchjob.py calls
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == account["name"]
    from focusdiff.config import load_params

    assert load_params(REPO / "params.yaml").cluster.pytorchjob.manifest == Path("infra/k8s/pytorchjob-janus-pro-7b.yaml")
