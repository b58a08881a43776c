"""LoRA (train.lora): adapters on the language model only, the KL reference as the base with
adapters disabled (no second copy), checkpoints of adapters + optimizer that resume exactly,
the trained policy saved as a plain Janus checkpoint (adapters merged), two processes.

The policy is a tiny random-initialised Janus; the judge the exact checker.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from focusdiff.config import load_recipe
from focusdiff.judge.exact import ExactJudge
from focusdiff.model.loading import load_policy
from focusdiff.model.sampler import SamplingConfig, token_logprobs
from focusdiff.train.configs import GRPOConfig, LoRAConfig
from focusdiff.train.lora import adapters_disabled, add_adapters, merge_adapters
from focusdiff.train.trainer import Trainer, train
from tests.project import VENV_BIN
from tests.interrupt import StopTraining, stop_at
from tests.tiny_models import save_tiny_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return save_tiny_world(tmp_path_factory.mktemp("lora"), {"train": 3, "val": 1, "test": 1}, {"train": 3, "val": 1, "test": 1})


def _config(world: Path, run: Path, **over) -> dict:
    cfg = {
        "policy": str(world / "policy"), "data": str(world / "data"), "judge": {"backend": "exact"},
        "group_size": 4, "grad_accum": 2, "steps": 2, "checkpoint_every": 100, "threads": 1, "beta": 0.1,
        "lr": {"peak": 1e-2, "warmup": 1, "mid_step": 2}, "curriculum": {"s1": 1, "s2": 2, "s3": 4},
        "lora": {"rank": 4, "alpha": 8.0}, "out": str(run / "out"), "metrics_dir": str(run / "metrics"),
    }
    cfg.update(over)
    return cfg


def _tokens(policy, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, policy.model.config.vq_config.num_embeddings, (n, policy.num_image_tokens), generator=g)


def test_adapters_off_is_the_base_and_on_is_not(world):
    base, adapted = load_policy(world / "policy"), load_policy(world / "policy")
    adapters = add_adapters(adapted.model, LoRAConfig(rank=4, target_modules=("q_proj", "down_proj")), seed=0)
    assert adapters and all(".lora_" in n and "language_model" in n for n in adapters)
    assert {n.split(".")[-4] for n in adapters} == {"q_proj", "down_proj"}  # ...q_proj.lora_A.default.weight
    assert all(not p.requires_grad for n, p in adapted.model.named_parameters() if ".lora_" not in n)
    tokens, s = _tokens(base), SamplingConfig(cfg_weight=2.0)
    with torch.no_grad():
        want = token_logprobs(base, PROMPTS, tokens, s)
        assert torch.equal(token_logprobs(adapted, PROMPTS, tokens, s), want)  # B = 0: adapters start as a no-op
        for n, p in adapters.items():
            if ".lora_B." in n:
                p.normal_(0, 0.5)
        with adapters_disabled(adapted.model):
            assert torch.equal(token_logprobs(adapted, PROMPTS, tokens, s), want)  # the reference: the base exactly
        assert (token_logprobs(adapted, PROMPTS, tokens, s) - want).abs().max() > 1e-3
        on = token_logprobs(adapted, PROMPTS, tokens, s)
        merge_adapters(adapted.model)
        assert not any(".lora_" in n or "base_layer" in n for n, _ in adapted.model.named_parameters())
        assert torch.allclose(token_logprobs(adapted, PROMPTS, tokens, s), on, atol=1e-4)  # merged = adapted


def test_unknown_target_modules_are_named():
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.language_model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"train.lora.target_modules: qkv not among the language model's linear layers \(0\)"):
        add_adapters(model, LoRAConfig(target_modules=("qkv",)), seed=0)


def test_lora_run_has_no_reference_copy_trains_adapters_and_saves_a_plain_janus_checkpoint(world, tmp_path):
    cfg = GRPOConfig.model_validate(_config(world, tmp_path, steps=3))  # step 0 has lr 0 (warm-up): KL from step 2
    trainer = Trainer(cfg, ExactJudge())
    assert trainer.reference is None and set(trainer.trainable) == {n for n in trainer.trainable if ".lora_" in n}
    logged = []
    trainer.train(log=lambda m, s: logged.append(m))
    assert all(m["train/kl"] >= 0 for m in logged) and logged[-1]["train/kl"] > 0  # KL to the base, computed
    before, after = load_file(world / "policy" / "model.safetensors"), load_file(cfg.out / "model.safetensors")
    assert set(after) == set(before)  # merged: the Janus model's own names, nothing of peft's
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.language_model.layers.") for k in moved)
    record = json.loads((cfg.out / "record.json").read_text())
    assert record["config"]["lora"]["rank"] == 4
    assert load_policy(cfg.out).num_image_tokens == 64

    # registered as any policy is, and served by the pyfunc (no peft at serving time)
    import mlflow
    import pandas as pd

    from focusdiff.registry.gate import GateConfig
    from focusdiff.registry.store import register_policy
    from focusdiff.tracking import StageRun
    from focusdiff.tracking_config import TrackingConfig

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts"))
    gate = GateConfig(model_name="focusdiff-lora")
    with StageRun(tracking, "train") as run:
        registration = register_policy(cfg.out, gate, tracking, run.run_id, {"algorithm": "pair-grpo"})
    mlflow.set_tracking_uri(tracking.uri)
    mlflow.set_registry_uri(tracking.uri)
    model = mlflow.pyfunc.load_model(f"models:/focusdiff-lora/{registration.version}")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [0]}))
    assert len(out["image_png_base64"][0]) > 0


def test_a_lora_run_refuses_a_separate_reference(world, tmp_path):
    from focusdiff.errors import ConfigError

    cfg = GRPOConfig.model_validate(_config(world, tmp_path, reference=str(world / "policy")))
    with pytest.raises(ConfigError, match=r"the KL reference is the policy with its adapters disabled"):
        Trainer(cfg, ExactJudge())


def test_an_interrupted_lora_run_resumes_to_the_same_weights(world, tmp_path):
    """Checkpoints hold the adapters and the optimizer: stopped after step 2's checkpoint and
    resumed, a run ends bit for bit where an uninterrupted one does."""
    over = {"steps": 4, "checkpoint_every": 2}
    whole = GRPOConfig.model_validate(_config(world, tmp_path / "whole", **over))
    cut = GRPOConfig.model_validate(_config(world, tmp_path / "cut", **over))
    train(whole, ExactJudge())
    with pytest.raises(StopTraining):
        train(cut, ExactJudge(), log=stop_at(2))  # step index 2 runs after the step-2 checkpoint
    saved = load_file(cut.checkpoints / "step-00000002" / "model.safetensors")
    assert saved and all(".lora_" in k for k in saved)  # the adapters, not the base
    result = train(cut, ExactJudge())
    assert result.resumed_from == 2
    a, b = load_file(whole.out / "model.safetensors"), load_file(cut.out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_lora_processes_match_one_process(world, tmp_path):
    """DDP over 2 gloo processes (1 micro-batch each) = 1 process accumulating 2, with adapters."""
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump(_config(world, tmp_path / "one", grad_accum=2)))
    two.write_text(yaml.safe_dump(_config(world, tmp_path / "two", grad_accum=1)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FOCUSDIFF_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train(load_recipe(one), ExactJudge())
    launch = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
              str(28500 + os.getpid() % 1000), str(VENV_BIN / "focusdiff"), "train", "-c", str(two), "-p",
              str(tmp_path / "none.yaml")]
    proc = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "out" / "model.safetensors"), load_file(tmp_path / "two" / "out" / "model.safetensors")
    start = load_file(world / "policy" / "model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-5
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_the_lora_ablation_variant_is_pair_grpo_with_adapters_and_ten_times_the_rates():
    from focusdiff.stages.ablate import variant_fields
    from focusdiff.train.configs import GRPOConfig, LoRAConfig

    base = GRPOConfig(lr={"schedule": "cosine", "peak": 5e-5, "mid": 1e-5, "final": 1e-6})
    fields = variant_fields(base, "pair-grpo-lora")
    assert fields["expand_pair_groups"] and fields["inject_ground_truth"] and fields["lora"] == LoRAConfig()
    assert (fields["lr"].peak, fields["lr"].mid, fields["lr"].final) == pytest.approx((5e-4, 1e-4, 1e-5))
    assert fields["lr"].schedule == "cosine" and fields["lr"].warmup == base.lr.warmup
    assert "lr" not in variant_fields(base, "pair-grpo")  # the full fine-tuning variants keep params.yaml's rates
