"""The memory planner (focusdiff/train/plan.py) against hand-computed bytes, its exact parameter
counts at Janus-Pro's real shape, and `focusdiff plan` on the shipped recipes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from focusdiff.cli import app
from focusdiff.errors import ConfigError
from focusdiff.model.real_shapes import SPECIAL_IDS, VOCAB_SIZE, real_shape_config, real_shape_tokenizer
from focusdiff.stages.plan import policy_config
from focusdiff.train.configs import GRPOConfig, LoRAConfig
from focusdiff.train.plan import Hardware, ModelShape, plan

from tests.project import REPO_ROOT

runner = CliRunner()


def _words(output: str) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(output.split())

# a toy shape whose bytes are easy to count by hand
TOY = ModelShape(total_params=1000, trainable_params=800, layers=2, hidden=4, intermediate=8, kv_width=4,
                 image_tokens=3, codes=5, lora_params={"q_proj": 16, "v_proj": 10})


def _cfg(**fields) -> GRPOConfig:
    """G = 2 keeps the hand counts small (injection needs G >= 3: off here; it does not change memory)."""
    return GRPOConfig(group_size=2, inject_ground_truth=False, **fields)


def test_full_fine_tuning_fp32_on_one_gpu_by_hand():
    cfg = _cfg(items_per_micro_batch=1, beta=0.04)
    p = plan(TOY, cfg, Hardware(gpus=1, gpu_mem_gib=1, zero=0, prompt_tokens=2), items_per_micro_batch=1)
    # fp32 weights 4 x 1000; AdamW 8 x 800; the reference a second fp32 copy
    assert p.parts["weights"] == 4000
    assert p.parts["gradients"] == 3200
    assert p.parts["optimizer"] == 6400
    assert p.parts["reference"] == 4000
    # one item = 2 prompts x G=2 = 4 images; CFG doubles the rows (8); 2 + 3 = 5 tokens
    # kv: 2 (k, v) x 2 layers x 8 rows x 5 tokens x 4 wide x 4 bytes
    assert p.parts["kv cache"] == 2 * 2 * 8 * 5 * 4 * 4 == 2560
    # activations: 2 layers x 8 rows x 5 tokens x 4 bytes x (11 x 4 + 4 x 8) = 24320, no checkpointing;
    # the head's logits: 3 copies x 8 rows x 3 image tokens x 5 codes x 4 bytes = 1440
    assert p.parts["activations"] == 24320 + 1440
    # checkpointing: each layer's input (2 x 8 x 5 x 4 x 4 = 1280) + one layer's full set (12160)
    assert p.activations_other == 1280 + 12160 + 1440
    assert p.images_per_micro_batch == 4
    assert p.rollout_peak == 4000 + 3200 + 6400 + 4000 + 2560
    assert p.loss_peak == 4000 + 3200 + 6400 + 4000 + 24320 + 1440
    assert p.usable == pytest.approx(0.9 * 2**30)
    assert p.fits


def test_zero2_bf16_shards_gradients_and_optimizer_by_hand():
    cfg = _cfg(mixed_precision="bf16", gradient_checkpointing=True)
    p = plan(TOY, cfg, Hardware(gpus=4, gpu_mem_gib=1, zero=2, prompt_tokens=2), items_per_micro_batch=1)
    assert p.parts["weights"] == 2 * 1000  # DeepSpeed's bf16 weights, whole on every GPU under ZeRO-2
    assert p.parts["gradients"] == (2 + 4) * 800 / 4  # bf16 grads + this GPU's fp32 shard
    assert p.parts["optimizer"] == (8 + 4) * 800 / 4  # moments + fp32 master weights, sharded
    assert p.parts["reference"] == 2 * 1000
    assert p.parts["kv cache"] == 2 * 2 * 8 * 5 * 4 * 2
    # checkpointed activations in bf16, logits still fp32
    assert p.parts["activations"] == 2 * 8 * 5 * 4 * 2 + 8 * 5 * 2 * 76 + 1440


def test_zero3_shards_the_weights_too():
    cfg = _cfg(mixed_precision="bf16")
    p = plan(TOY, cfg, Hardware(gpus=4, zero=3, prompt_tokens=2), items_per_micro_batch=1)
    assert p.parts["weights"] == 2 * 200 + 2 * 800 / 4


def test_lora_trains_adapters_only_and_keeps_no_reference_copy():
    cfg = _cfg(mixed_precision="bf16", lora=LoRAConfig(rank=2, target_modules=("q_proj",)))
    p = plan(TOY, cfg, Hardware(prompt_tokens=2), items_per_micro_batch=1)
    adapters = 2 * 16  # rank x (in + out) of every q_proj
    assert p.parts["weights"] == 2 * 1000 + 4 * adapters  # bf16 frozen base, fp32 adapters
    assert p.parts["gradients"] == 4 * adapters
    assert p.parts["optimizer"] == 8 * adapters
    assert p.parts["reference"] == 0


def test_beta_zero_needs_no_reference():
    p = plan(TOY, _cfg(beta=0.0), Hardware(prompt_tokens=2), items_per_micro_batch=1)
    assert p.parts["reference"] == 0


def test_largest_micro_batch_is_the_one_that_just_fits():
    cfg = _cfg()
    hw = Hardware(gpu_mem_gib=(17600 + 3 * 25760 + 100) / 0.9 / 2**30, prompt_tokens=2)  # room for 3 items' activations
    p = plan(TOY, cfg, hw)
    assert p.max_items_per_micro_batch == 3
    assert plan(TOY, cfg, hw, items_per_micro_batch=3).fits
    assert not plan(TOY, cfg, hw, items_per_micro_batch=4).fits


def test_unknown_lora_target_is_an_error_naming_the_modules():
    cfg = GRPOConfig(lora=LoRAConfig(target_modules=("q_proj", "qkv")))
    with pytest.raises(ValueError, match=r"lora.target_modules: qkv not among the language model's linear layers \(q_proj, v_proj\)"):
        plan(TOY, cfg, Hardware())


def test_real_shape_counts_are_exact():
    one_b = ModelShape.from_config(real_shape_config("janus-pro-1b"))
    assert one_b.total_params == 2_076_636_811  # deepseek-community/Janus-Pro-1B's safetensors index
    assert (one_b.layers, one_b.hidden, one_b.image_tokens, one_b.codes) == (24, 2048, 576, 16384)
    seven_b = ModelShape.from_config(real_shape_config("janus-pro-7b"))
    assert (seven_b.layers, seven_b.hidden, seven_b.intermediate) == (30, 4096, 11008)
    assert 7.3e9 < seven_b.total_params < 7.5e9
    # two of 24 layers: the same width, a twelfth of the layers' weights
    two = ModelShape.from_config(real_shape_config("janus-pro-1b", layers=2))
    per_layer = (one_b.total_params - two.total_params) / 22
    assert per_layer == 4 * 2048 * 2048 + 3 * 2048 * 5632 + 2 * 2048  # attention, MLP, two RMSNorms


def test_real_shape_layers_out_of_range_is_an_error():
    with pytest.raises(ConfigError, match=r"janus-pro-1b has 24 language-model layers: layers must be 1..24, got 25"):
        real_shape_config("janus-pro-1b", layers=25)
    with pytest.raises(ConfigError, match=r"unknown real shape 'janus-pro-3b'"):
        real_shape_config("janus-pro-3b")


def test_real_shape_tokenizer_has_janus_pro_ids():
    tok = real_shape_tokenizer("janus-pro-7b")
    assert len(tok) == VOCAB_SIZE
    for token, expected in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == expected
    assert tok.convert_tokens_to_ids(tok.image_token) == 100594
    ids = tok("a red circle above a blue square.")["input_ids"]
    assert tok.unk_token_id not in ids


def test_policy_config_names_what_it_cannot_plan(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot plan for policy 'someone/Unknown-7B': not a released Janus-Pro hub "
                                          r"id and not a local directory; give its shape with --shape"):
        policy_config("someone/Unknown-7B")
    assert policy_config("someone/Unknown-7B", shape="janus-pro-1b").text_config.hidden_size == 2048
    assert policy_config("shapes-base").text_config.hidden_size == 256


@pytest.mark.parametrize(("recipe", "gpus", "expect"), [
    ("janus-pro-7b-pair-grpo.yaml", 8, "fits: peak"),
    ("janus-pro-1b-pair-grpo.yaml", 8, "fits: peak"),
])
def test_plan_command_prints_parts_and_verdict(recipe, gpus, expect):
    result = runner.invoke(app, ["plan", "-c", str(REPO_ROOT / "recipes" / recipe), "--gpus", str(gpus), "--gpu-mem", "80"])
    assert result.exit_code == 0, result.output
    output = _words(result.output)
    for part in ("weights", "gradients", "optimizer", "reference", "kv cache", "activations (gradient checkpointing)",
                 "activations without checkpointing", "ZeRO-2 on 8 x 80 GiB"):
        assert part in output
    assert expect in output
    assert "the largest items_per_micro_batch that fits is" in output


def test_plan_command_with_lora_on_one_gpu():
    result = runner.invoke(app, ["plan", "-c", str(REPO_ROOT / "recipes" / "janus-pro-7b-pair-grpo.yaml"),
                                 "-S", "train.lora.rank=16", "--gpu-mem", "80"])
    assert result.exit_code == 0, result.output
    output = _words(result.output)
    assert "LoRA r=16" in output and "ZeRO-0 on 1 x 80 GiB" in output
    assert "fits: peak" in output


def test_plan_command_rejects_zero_1():
    result = runner.invoke(app, ["plan", "--zero", "1"])
    assert result.exit_code != 0
    assert "--zero must be 0, 2 or 3, got 1" in result.output
