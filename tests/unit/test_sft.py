"""Bootstrap SFT: the unconditional rows are the sampler's, the VQ is carried over, gates hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import JanusVQVAE

from focusdiff.config import load_params
from focusdiff.io import atomic_write_json
from focusdiff.stages.bootstrap import QualityGateError, file_hashes, run_lm_stage
from focusdiff.model.configs import LMTrainConfig, VQTrainConfig
from focusdiff.model.prompting import build_prompt_batch
from focusdiff.model.scoring import image_token_scores
from focusdiff.model.sft import new_policy, sft_loss
from focusdiff.model.vq import vq_config

from tests.project import REPO_ROOT

ROOT = REPO_ROOT
TINY_LM = LMTrainConfig(hidden=32, layers=1, steps=2, batch_size=4, warmup_steps=1, eval_every=2,
                        eval_pairs_per_category=1, threads=1)


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vq")
    torch.manual_seed(0)
    JanusVQVAE(vq_config(VQTrainConfig(codebook_size=32))).save_pretrained(out)
    atomic_write_json(out / "record.json", {"files": file_hashes(out)})
    return out


def test_new_policy_carries_the_vq_over(vq_dir):
    policy = new_policy(TINY_LM, vq_dir)
    trained = JanusVQVAE.from_pretrained(vq_dir).state_dict()
    for name, tensor in policy.model.model.vqmodel.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert policy.num_image_tokens == 64 and policy.image_size == 32
    gen = policy.model.generation_config
    assert gen.top_k == 0 and gen.guidance_scale == TINY_LM.cfg_weight  # no hidden top-50 truncation


def test_dropped_rows_train_on_the_unconditional_prompt(vq_dir):
    policy = new_policy(TINY_LM, vq_dir)
    captions = ["a red circle", "two blue squares"]
    tokens = torch.randint(0, 32, (2, 64))
    drop = torch.tensor([False, True])
    batch = build_prompt_batch(policy.tokenizer, captions)
    with torch.no_grad():
        scores = image_token_scores(policy, batch, tokens.repeat(2, 1))  # rows: cond0, cond1, uncond0, uncond1
        expected = torch.nn.functional.cross_entropy(
            torch.cat([scores[0], scores[3]]), torch.cat([tokens[0], tokens[1]]))
        assert torch.allclose(sft_loss(policy, captions, tokens, drop), expected, atol=1e-5)


def _params(tmp_path: Path, vq_dir: Path, **lm):
    overrides = {"tracking.uri": f"sqlite:///{tmp_path}/m.db", "tracking.artifact_location": str(tmp_path / "a"),
                 "bootstrap.lm.tokenizer": str(vq_dir), "bootstrap.lm.out": str(tmp_path / "base")}
    overrides.update({f"bootstrap.lm.{k}": v for k, v in {**TINY_LM.model_dump(exclude={"out", "tokenizer"}), **lm}.items()})
    return load_params(ROOT / "params.yaml", overrides=overrides)


def test_gate_failure_writes_nothing(tmp_path, vq_dir):
    with pytest.raises(QualityGateError, match=r"single-object prompts right, below the gate .*min_single_object_accuracy=100%"):
        run_lm_stage(_params(tmp_path, vq_dir, min_single_object_accuracy=1.0))
    assert not (tmp_path / "base").exists()


def test_missing_vq_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match=r"bootstrap\.lm\.tokenizer: .*nowhere holds no trained VQ tokenizer .*run `focusdiff bootstrap vq`"):
        run_lm_stage(_params(tmp_path, tmp_path / "nowhere"))


def test_stage_writes_a_loadable_base_with_a_true_record(tmp_path, vq_dir):
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    result = run_lm_stage(_params(tmp_path, vq_dir, min_single_object_accuracy=0.0))
    out = tmp_path / "base"
    record = json.loads((out / "record.json").read_text())
    assert record["files"] == file_hashes(out) and "model.safetensors" in record["files"]
    assert set(record["quality"]) >= {"single_object_accuracy", "pair_accuracy", "by_category"}
    assert result.quality == record["quality"]
    model = JanusForConditionalGeneration.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.boi_token == "<begin_of_image>" and model.config.vision_config.num_image_tokens == 64


def test_killed_and_resumed_training_equals_an_uninterrupted_run(tmp_path, vq_dir):
    from focusdiff.model.checkpoints import CheckpointError
    from focusdiff.model.sft import train_lm

    cfg = TINY_LM.model_copy(update={"steps": 4, "checkpoint_every": 2, "eval_every": 100})
    straight, _ = train_lm(cfg, vq_dir, frozenset())

    # A run that leaves its step-2 checkpoint behind: what a run killed at step 3 leaves.
    ckpt = tmp_path / "ckpt"
    train_lm(cfg, vq_dir, frozenset(), checkpoint_dir=ckpt)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    resumed_from = []
    resumed, _ = train_lm(cfg, vq_dir, frozenset(), checkpoint_dir=ckpt,
                          log=lambda m, s: resumed_from.append(m["lm/resumed_from_step"]) if "lm/resumed_from_step" in m else None)
    assert resumed_from == [2]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name

    # Other parameters: the checkpoint is not theirs, training starts fresh.
    other = cfg.model_copy(update={"lr": 2e-3})
    seen = []
    train_lm(other, vq_dir, frozenset(), checkpoint_dir=ckpt, log=lambda m, s: seen.append(m))
    assert not any("lm/resumed_from_step" in m for m in seen)

    # A corrupt checkpoint is reported, never loaded.
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2
    (ckpt / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"optimizer.pt: sha256 differs from .*state.json \(corrupt\); delete .* to start over"):
        train_lm(other, vq_dir, frozenset(), checkpoint_dir=ckpt)
