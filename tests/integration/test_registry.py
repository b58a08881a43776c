"""The registry end to end on a real MLflow store: register a policy (pyfunc, lineage tags,
model card, alias challenger), attach evaluations, promote through the gate, load the
champion and generate. One test runs against a real `mlflow server` with S3 artifacts."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from transformers import JanusForConditionalGeneration

from focusdiff.config import TrackingConfig
from focusdiff.model.configs import VQTrainConfig
from focusdiff.model.shapes_model import build_config, build_tokenizer
from focusdiff.model.vq import vq_config
from focusdiff.model.sampling import SamplingConfig
from focusdiff.registry.gate import GateConfig
from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.registry.store import RegistryError, champion, promote, record_evaluation, record_failure, register_policy
from focusdiff.tracking import StageRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCHMARKS = ("paircomp", "geneval", "t2i_compbench", "dpg_bench")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "policy"
    torch.manual_seed(0)
    tok = build_tokenizer()
    JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=2)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


EXACT_SHAPES = EvaluationProtocol(backend="exact", suite="shapes", split="test", sampling=SamplingConfig(), seed=0)


def _register(policy_dir, gate, tracking, **tags):
    with StageRun(tracking, "train") as run:
        return register_policy(policy_dir, gate, tracking, run.run_id,
                               {"algorithm": "pair-grpo", "base_model": "shapes-base", "data.version": "abc123",
                                "git.commit": "0123456789abcdef", **tags})


def _evaluate(reg, tracking, tmp_path, g: float, fail: str | None = None, geneval: float = 0.5):
    pairs = tmp_path / f"pairs-{reg.version}.jsonl"
    pairs.write_text("\n".join(json.dumps({"pair": i, "category": "color" if i % 2 else "text", "caption1": f"a{i}",
                                           "caption2": f"b{i}", "g": g + 0.01 * (i % 3)}) for i in range(30)) + "\n")
    target = tmp_path / "pairs.jsonl"
    target.write_bytes(pairs.read_bytes())
    record_evaluation(reg, tracking, "paircomp", {"paircomp.s_g": 100 * (g + 0.01)}, [target], protocol=EXACT_SHAPES)
    for b, metrics in (("geneval", {"geneval.overall": geneval}), ("t2i_compbench", {"t2i_compbench.mean_of_categories": 0.4}),
                       ("dpg_bench", {"dpg.overall": 50.0})):
        if b == fail:
            record_failure(reg, tracking, b, "judge unavailable")
        else:
            record_evaluation(reg, tracking, b, metrics, [])


def test_register_evaluate_promote_and_generate(policy_dir, tmp_path):
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts"))
    gate = GateConfig(model_name="focusdiff-test", margin=1.0, floor=20.0, bootstrap=300)
    assert champion(gate, tracking) is None  # no registered model yet
    first = _register(policy_dir, gate, tracking, **{"prefect.flow_run_id": "flow-1"})
    assert champion(gate, tracking) is None  # a model, but no champion alias yet
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    v1 = client.get_model_version_by_alias("focusdiff-test", "challenger")
    assert str(v1.version) == first.version == "1"
    assert v1.tags["algorithm"] == "pair-grpo" and v1.tags["prefect.flow_run_id"] == "flow-1"
    assert "trained with pair-grpo from shapes-base on dataset version abc123" in v1.description

    # no evidence yet: the gate refuses, and says why
    decision = promote(gate, tracking, dry_run=True)
    assert not decision.promote and "paircomp evaluation is missing" in decision.reasons

    _evaluate(first, tracking, tmp_path, g=0.40)
    decision = promote(gate, tracking)
    assert decision.promote and str(client.get_model_version_by_alias("focusdiff-test", "champion").version) == "1"
    assert str(champion(gate, tracking).version) == "1"
    assert client.get_model_version("focusdiff-test", "1").tags["gate.decision"] == "promoted"
    again = promote(gate, tracking)  # idempotent
    assert not again.promote and again.reasons == ["version 1 is already the champion"]

    # a better challenger whose DPG evaluation failed: never promoted
    second = _register(policy_dir, gate, tracking)
    _evaluate(second, tracking, tmp_path, g=0.60, fail="dpg_bench")
    before = dict(client.get_model_version("focusdiff-test", "2").tags)
    dry = promote(gate, tracking, dry_run=True)
    assert not dry.promote and client.get_model_version("focusdiff-test", "2").tags == before  # dry run writes nothing
    decision = promote(gate, tracking)
    assert not decision.promote and "dpg_bench evaluation is failed: judge unavailable" in decision.reasons
    v2 = client.get_model_version("focusdiff-test", "2")
    assert v2.tags["gate.decision"] == "rejected" and "dpg_bench evaluation is failed" in v2.tags["gate.reason"]
    assert "Promotion gate: KEEP CHAMPION" in v2.description
    assert str(client.get_model_version_by_alias("focusdiff-test", "champion").version) == "1"

    # evaluated completely: a clear per-pair win promotes; a GenEval regression would not
    third = _register(policy_dir, gate, tracking)
    _evaluate(third, tracking, tmp_path, g=0.60)
    assert promote(gate, tracking).promote
    assert str(client.get_model_version_by_alias("focusdiff-test", "champion").version) == "3"

    mlflow.set_tracking_uri(tracking_uri := f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/focusdiff-test@champion")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle", "two blue squares"], "seed": [0, 1]}))
    assert list(out["prompt"]) == ["a red circle", "two blue squares"]
    image = Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"][0])))
    assert image.size == (32, 32)
    # the sampling settings are the signature's params; an invalid one is an error naming it
    from focusdiff.model.loading import load_policy

    own = load_policy(policy_dir).guidance_scale
    same = model.predict(pd.DataFrame({"prompt": ["a red circle", "two blue squares"], "seed": [0, 1]}),
                         params={"cfg_weight": own})
    assert list(same["image_png_base64"]) == list(out["image_png_base64"])  # no cfg_weight: the policy's own
    with pytest.raises(Exception, match=r"temperature must be > 0.*got 0"):
        model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"temperature": 0.0})
    with pytest.raises(RegistryError, match="registered model 'focusdiff-test' has no version '9'"):
        promote(gate, tracking, challenger="9")


def test_an_unreachable_registry_is_an_error_never_no_champion(monkeypatch):
    """'No champion yet' lets any challenger through the gate, so only the registry's own
    answer (no such model, no such alias) means that; a registry that cannot answer is an error."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tracking = TrackingConfig(uri=f"http://127.0.0.1:{port}")
    gate = GateConfig(model_name="focusdiff-test")
    with pytest.raises(RegistryError, match="registered model 'focusdiff-test': cannot read its 'champion' alias"):
        champion(gate, tracking)


def test_registration_on_a_tracking_server_with_s3_artifacts(policy_dir, mlflow_tracking, tmp_path):
    tracking = TrackingConfig(uri=mlflow_tracking.tracking_uri)
    gate = GateConfig(model_name="focusdiff-server-test", floor=0.0, bootstrap=200)
    reg = _register(policy_dir, gate, tracking)
    _evaluate(reg, tracking, tmp_path, g=0.3)
    assert promote(gate, tracking).promote
    client = MlflowClient(mlflow_tracking.tracking_uri)
    version = client.get_model_version_by_alias("focusdiff-server-test", "champion")
    assert version.tags["eval.paircomp.status"] == "complete"
    local = client.download_artifacts(version.run_id, "evaluation/paircomp/pairs.jsonl", str(tmp_path / "dl"))
    assert len(Path(local).read_text().splitlines()) == 30

    # what the registry UI shows and serving tools validate: the signature, and an example that runs
    mlflow.set_tracking_uri(mlflow_tracking.tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking.tracking_uri)
    uri = "models:/focusdiff-server-test@champion"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["prompt", "seed"]
    assert [c.name for c in info.signature.outputs.inputs] == ["prompt", "seed", "image_png_base64"]
    assert [p.name for p in info.signature.params] == ["cfg_weight", "temperature", "top_k", "top_p"]
    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example
    assert list(example.columns) == ["prompt", "seed"] and len(example) == 2
    out = model.predict(example, params={"temperature": 0.8, "top_k": 20})
    assert list(out["prompt"]) == list(example["prompt"])
    assert Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"][1]))).size == (32, 32)
    with pytest.raises(Exception, match="prompt"):
        model.predict(pd.DataFrame({"caption": ["a red circle"]}))  # the signature names the missing column


def test_a_protocol_change_is_resolved_by_re_evaluating_the_champion(tmp_path):
    """The gate refuses to compare versions scored under different PairComp protocols and says
    how to fix it; `evaluation_target(..., version="champion")` (what `focusdiff evaluate
    --version champion` runs) re-scores the champion under the new one, and the gate decides."""
    from focusdiff.config import load_params, updated
    from focusdiff.stages.evaluate import evaluation_target, run_benchmark

    from tests.project import REPO_ROOT
    from tests.tiny_models import save_tiny_world

    world = save_tiny_world(tmp_path / "world", {"train": 1, "val": 1, "test": 2}, {"train": 1, "val": 1, "test": 1})
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts"))
    gate = GateConfig(model_name="focusdiff-reeval", floor=0.0, margin=0.0, bootstrap=200)
    params = load_params(REPO_ROOT / "params.yaml")
    params = updated(params, tracking=tracking, promote=gate)

    def evaluate(reg, seed: int, version: str | None = None):
        cfg = params.evaluate.model_validate({
            "policy": str(world / "policy"), "data": str(world / "data"), "out": str(tmp_path / f"out-{seed}"),
            "metrics_dir": str(tmp_path / f"metrics-{seed}"), "bootstrap": 50, "seed": seed})
        if version is not None:  # a registered version, downloaded and evaluated under `cfg`'s protocol
            reg, cfg_v, tags = evaluation_target(updated(params, evaluate=cfg), tmp_path, version)
            assert reg.version == "1" and cfg_v.seed == seed and tags == {"model_version": "1"}
            cfg = cfg_v
        run_benchmark("paircomp", cfg, tracking, registration=reg, tags={"model_version": reg.version})
        for b, metrics in (("geneval", {"geneval.overall": 0.5}), ("t2i_compbench", {"t2i_compbench.mean_of_categories": 0.4}),
                           ("dpg_bench", {"dpg.overall": 50.0})):
            record_evaluation(reg, tracking, b, metrics, [])

    first = _register(world / "policy", gate, tracking)
    evaluate(first, seed=0)
    assert promote(gate, tracking).promote  # the first champion (floor 0)
    second = _register(world / "policy", gate, tracking)
    evaluate(second, seed=1)  # another evaluation seed: another protocol
    refused = promote(gate, tracking, dry_run=True)
    assert not refused.promote and any("evaluated differently from the champion" in r for r in refused.reasons)
    assert any("`focusdiff evaluate --version champion -b paircomp`" in r for r in refused.reasons)

    evaluate(None, seed=1, version="champion")
    decided = promote(gate, tracking, dry_run=True)
    assert not any("evaluated differently" in r for r in decided.reasons), decided.reasons
    assert "improvement" in decided.numbers  # compared pair by pair, under one protocol


def test_the_base_becomes_the_first_champion_and_the_first_challenger_meets_it(tmp_path):
    """`focusdiff baseline` on a fresh registry registers the starting policy, evaluates it on the
    four benchmarks and crowns it; an evaluation that fails crowns nothing, and the rerun reuses the
    version it registered. With a champion the stage changes nothing. The first trained challenger
    is then gated pair by pair against the base, with its interval."""
    from focusdiff.config import load_params, updated
    from focusdiff.eval.errors import IncompleteEvaluation
    from focusdiff.stages.baseline import run_baseline_stage
    from focusdiff.stages.evaluate import run_benchmark

    from tests.project import REPO_ROOT
    from tests.servers import free_port
    from tests.tiny_models import save_tiny_world

    world = save_tiny_world(tmp_path / "world", {"train": 1, "val": 1, "test": 2}, {"train": 1, "val": 1, "test": 1})
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts"))
    name = "focusdiff-baseline"
    params = load_params(REPO_ROOT / "params.yaml")
    evaluate = params.evaluate.model_validate({
        "policy": str(world / "policy"), "data": str(world / "data"), "out": str(tmp_path / "out"),
        "metrics_dir": str(tmp_path / "metrics"), "bootstrap": 0, "batch_size": 64, "report_pairs": 1,
        "geneval": {"prompts_per_task": 1}, "t2i_compbench": {"prompts_per_category": 2, "images_per_prompt": 2},
        "dpg_bench": {"prompts": 1}})
    nobody = {"answerer": "judge", "judge": {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                             "model": "nobody", "max_retries": 0}}
    params = updated(params, tracking=tracking, evaluate=evaluate,
                     train=updated(params.train, policy=str(world / "policy")),
                     promote=GateConfig(model_name=name, margin=0.0, bootstrap=200))
    # the registry named: a client's default is MLflow's process-wide registry URI, another test's
    client = MlflowClient(tracking.uri, registry_uri=tracking.uri)

    # DPG-Bench's answerer is down: the base is registered and evaluated, but not crowned
    broken = updated(params, evaluate=evaluate.model_validate({**evaluate.model_dump(), "dpg_bench": nobody}))
    with pytest.raises(IncompleteEvaluation, match=r"dpg_bench: incomplete evaluation.*ConnectError.*127\.0\.0\.1"):
        run_baseline_stage(broken, tmp_path)
    assert champion(params.promote, tracking) is None
    assert client.get_model_version(name, "1").tags["eval.dpg_bench.status"].startswith("failed:")

    record = tmp_path / "baseline.json"
    outcome = run_baseline_stage(params, tmp_path, record)
    assert outcome.action == "crowned" and outcome.champion == "1", outcome  # the same version, reused
    assert json.loads(record.read_text())["champion"] == "1"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    base = client.get_model_version_by_alias(name, "champion")
    assert base.tags["focusdiff.role"] == "base" and base.tags["base_model"] == str(world / "policy")
    assert base.tags["gate.decision"] == "first champion"
    assert all(base.tags[f"eval.{b}.status"] == "complete" for b in BENCHMARKS)
    assert "the starting policy" in base.description
    assert not any(a.aliases and "challenger" in a.aliases for a in client.search_model_versions(f"name = '{name}'"))

    again = run_baseline_stage(params, tmp_path)
    assert again.action == "kept" and again.champion == "1", again
    off = run_baseline_stage(updated(params, promote=updated(params.promote, first_champion="none")), tmp_path)
    assert off.action == "off"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # the first trained challenger (here the same weights), evaluated under the same protocol
    trained = _register(world / "policy", params.promote, tracking)
    assert trained.version == "2"
    for benchmark in BENCHMARKS:
        run_benchmark(benchmark, evaluate, tracking, registration=trained)
    decision = promote(params.promote, tracking)
    assert decision.numbers["champion"] == "1" and decision.numbers["pairs"] > 0, decision
    assert any("paired bootstrap 95% interval" in r for r in decision.reasons), decision.reasons
    assert not decision.promote  # the same policy: no gain over the base
