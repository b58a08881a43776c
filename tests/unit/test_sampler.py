"""The CFG sampler: matches transformers' generate, log-probs match a teacher-forced
recomputation, padding does not change a row, truncation is applied consistently."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, JanusForConditionalGeneration

from focusdiff.model.configs import VQTrainConfig
from focusdiff.model.policy import Policy
from focusdiff.model.prompting import build_prompt_batch
from focusdiff.model import sampler as sampler_module
from focusdiff.model.sampler import SamplingConfig, guided_logits, sample, token_logprobs, truncate
from focusdiff.model.shapes_model import build_config, build_tokenizer
from focusdiff.model.vq import vq_config

PROMPTS = ["a red circle", "a photo of two blue squares on a white background", 'the letter "K"']


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def policy() -> Policy:
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=2)).eval()
    return Policy(model, tok, "tiny-random")


def test_prompt_batch_layout(policy):
    tok = policy.tokenizer
    b = build_prompt_batch(tok, ["a red circle", "a photo of a red circle"])
    cond, uncond = b.input_ids[:2], b.input_ids[2:]
    assert tok.convert_ids_to_tokens(cond[1].tolist()) == [
        "<｜begin▁of▁sentence｜>", "<|User|>", ":", "a", "photo", "of", "a", "red", "circle", "<|Assistant|>", ":", "<begin_of_image>"]
    assert (b.attention_mask[0, :3] == 0).all() and (cond[0, :3] == tok.pad_token_id).all()  # left padding
    assert b.position_ids[0, 3] == 0 and b.position_ids[0, -1] == b.position_ids[1, -1] - 3
    # unconditional twin: only BOS and <begin_of_image> survive, same attention mask
    kept = set(tok.convert_ids_to_tokens(uncond[1].tolist()))
    assert kept == {"<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>", "<begin_of_image>"}
    assert torch.equal(b.attention_mask[:2], b.attention_mask[2:])


def test_guidance_and_reference_form_by_hand():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    s = SamplingConfig(cfg_weight=5.0, temperature=2.0)
    assert torch.allclose(guided_logits(cond, uncond, s), torch.tensor([[3.0, -2.0]]))  # (1 + 5*1)/2, (1 - 5)/2
    # reference: cond - (4/5) uncond = [1.2, -0.8], then / T
    assert torch.allclose(guided_logits(cond, uncond, s, form="reference"), torch.tensor([[0.6, -0.4]]))


def test_truncation_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert truncate(logits, SamplingConfig(top_k=2))[0, 2:].eq(inf).all()
    kept = truncate(logits, SamplingConfig(top_p=0.8))[0]
    assert kept[:2].isfinite().all() and kept[2:].eq(inf).all()  # 0.5 + 0.3 reaches 0.8
    assert truncate(logits, SamplingConfig(top_p=0.1))[0].isfinite().sum() == 1  # at least one token survives


@pytest.mark.parametrize(
    "s", [SamplingConfig(), SamplingConfig(top_k=50, temperature=0.8), SamplingConfig(top_p=0.9, cfg_weight=3.0)]
)
def test_matches_transformers_generate(policy, s):
    tok = policy.tokenizer
    gen = GenerationConfig(
        do_sample=True, top_k=s.top_k, top_p=s.top_p, temperature=s.temperature, guidance_scale=s.cfg_weight,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        generation_kwargs={"boi_token_id": policy.boi_token_id}, max_new_tokens=policy.num_image_tokens,
    )
    for seed, prompt in enumerate(PROMPTS):
        b = build_prompt_batch(tok, [prompt])
        torch.manual_seed(seed)
        expected = policy.model.generate(
            input_ids=b.input_ids[:1], attention_mask=b.attention_mask[:1], generation_config=gen, generation_mode="image")
        assert torch.equal(sample(policy, [prompt], [seed], s, decode=False).tokens[0], expected[0]), prompt


@pytest.mark.parametrize("s", [SamplingConfig(), SamplingConfig(top_k=20, temperature=0.7)])
def test_logprobs_equal_teacher_forced_recomputation(policy, s):
    rollout = sample(policy, PROMPTS, [3, 4, 5], s, decode=False)
    recomputed = token_logprobs(policy, PROMPTS, rollout.tokens, s)
    assert recomputed.dtype == torch.float32 and recomputed.shape == rollout.logprobs.shape
    assert torch.allclose(recomputed, rollout.logprobs, atol=1e-4)
    assert torch.isfinite(rollout.logprobs).all()


def test_teacher_forced_logprobs_carry_gradients_through_both_passes(policy):
    rollout = sample(policy, PROMPTS[:2], [0, 1], decode=False)
    captured = []

    def keep(module, args, output):
        output.last_hidden_state.retain_grad()
        captured.append(output.last_hidden_state)

    handle = policy.model.model.language_model.register_forward_hook(keep)
    try:
        token_logprobs(policy, PROMPTS[:2], rollout.tokens).sum().backward()
    finally:
        handle.remove()
        policy.model.zero_grad()
    grad = captured[0].grad  # (2B, L + N - 1, H): conditional rows, then unconditional rows
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() > 0


def test_padded_batch_rows_equal_single_rows(policy):
    batched = sample(policy, PROMPTS, [7, 8, 9], decode=False)
    for i, prompt in enumerate(PROMPTS):
        alone = sample(policy, [prompt], [7 + i], decode=False)
        assert torch.equal(alone.tokens[0], batched.tokens[i])
        assert torch.allclose(alone.logprobs[0], batched.logprobs[i], atol=1e-4)


def test_seeds_reproduce_and_differ(policy):
    a = sample(policy, PROMPTS[:2], [1, 2])
    b = sample(policy, PROMPTS[:2], [1, 2])
    c = sample(policy, PROMPTS[:2], [1, 3], decode=False)
    assert torch.equal(a.tokens, b.tokens) and (a.images == b.images).all()
    assert torch.equal(a.tokens[0], c.tokens[0]) and not torch.equal(a.tokens[1], c.tokens[1])
    assert a.images.shape == (2, 32, 32, 3) and a.images.dtype.name == "uint8"


def test_bad_arguments(policy):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        sample(policy, PROMPTS[:2], [1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="unknown log-prob form 'x'"):
        guided_logits(torch.zeros(1, 2), torch.zeros(1, 2), SamplingConfig(), form="x")


def _tiny_policy(**text_config) -> Policy:
    torch.manual_seed(0)
    tok = build_tokenizer()
    config = build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=2)
    for key, value in text_config.items():
        setattr(config.text_config, key, value)
    return Policy(JanusForConditionalGeneration(config).eval(), tok, "tiny-random")


def _generic_only(monkeypatch):
    monkeypatch.setattr(sampler_module._LlamaDecodeStep, "build", classmethod(lambda cls, *args: None))


@pytest.mark.parametrize("text_config", [{}, {"num_key_value_heads": 2}, {"attention_bias": True, "mlp_bias": True}])
@pytest.mark.parametrize("dtype, onednn", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_llama_fast_path_equals_the_layers_own_forward(text_config, dtype, onednn, monkeypatch):
    """Bit for bit with F.linear projections: same tokens, same log-probs (padded rows and a
    repeated prompt included). With oneDNN projections (CPU fp32): same tokens, log-probs
    equal up to float rounding."""
    monkeypatch.setattr(sampler_module, "ONEDNN_CPU_PROJECTIONS", onednn)
    policy = _tiny_policy(**text_config)
    policy.model.to(dtype)
    prompts, seeds = [*PROMPTS, PROMPTS[0]], [3, 4, 5, 6]
    lm = policy.model.model.language_model
    step = sampler_module._LlamaDecodeStep.build(lm, sampler_module._PrefixKV(lm, 2, 4, dtype, "cpu"), 4, dtype)
    assert step is not None
    fast = sample(policy, prompts, seeds, SamplingConfig(top_k=50), decode=False)
    _generic_only(monkeypatch)
    generic = sample(policy, prompts, seeds, SamplingConfig(top_k=50), decode=False)
    assert torch.equal(fast.tokens, generic.tokens)
    if onednn:
        assert torch.allclose(fast.logprobs, generic.logprobs, rtol=0, atol=1e-5)
    else:
        assert torch.equal(fast.logprobs, generic.logprobs)


def test_llama_fast_path_declines_what_it_does_not_know(policy):
    lm = policy.model.model.language_model
    kv = sampler_module._PrefixKV(lm, 2, 4, torch.float32, "cpu")
    assert sampler_module._LlamaDecodeStep.build(lm, kv, 4, torch.float32) is not None
    handle = lm.layers[0].mlp.register_forward_hook(lambda *args: None)
    try:
        assert sampler_module._LlamaDecodeStep.build(lm, kv, 4, torch.float32) is None
    finally:
        handle.remove()
    eager = _tiny_policy()
    eager.model.model.language_model.config._attn_implementation = "eager"
    assert sampler_module._LlamaDecodeStep.build(eager.model.model.language_model, kv, 4, torch.float32) is None


def test_repeated_prompts_equal_single_rows(policy):
    """Repeated prompt rows are prefilled once and copied: each row still equals its row alone."""
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    batched = sample(policy, prompts, [1, 2, 3, 4], decode=False)
    for i, prompt in enumerate(prompts):
        alone = sample(policy, [prompt], [1 + i], decode=False)
        assert torch.equal(alone.tokens[0], batched.tokens[i])
        assert torch.allclose(alone.logprobs[0], batched.logprobs[i], atol=1e-4)
