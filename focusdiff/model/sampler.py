"""Batched CFG sampling of image tokens with a static KV cache, returning log-probs.

Rollouts dominate Pair-GRPO's time, and the loss needs the log-probability of every
sampled token under the distribution that produced it. So one pass here gives:
tokens, their log-probs under the *sampling* distribution (CFG, temperature and the
same top-k/top-p truncation), and decoded images. `token_logprobs` recomputes the
same quantities teacher-forced, with gradients, for the loss.

Per-row seeds: each row draws from its own torch.Generator, so a row's sample does
not depend on which other rows share its batch (or their padding), and a batch of
one with seed s reproduces `generate(generation_mode="image")` after
`torch.manual_seed(s)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import StaticCache

from focusdiff.model.policy import Policy
from focusdiff.model.prompting import PromptBatch, build_prompt_batch


@dataclass(frozen=True)
class SamplingConfig:
    """How image tokens are drawn (Janus-Pro / FocusDiff defaults: w=5, T=1, no truncation)."""

    cfg_weight: float = 5.0  # l = l_uncond + w * (l_cond - l_uncond)
    temperature: float = 1.0
    top_k: int = 0  # 0: off (transformers' generate defaults to 50 unless told otherwise)
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {self.top_k}, {self.top_p}")


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, s: SamplingConfig, form: str = "sampling") -> torch.Tensor:
    """CFG-combined logits, divided by the temperature.

    form="sampling" is the distribution rollouts are drawn from. form="reference"
    is the FocusDiff reference loss's `l_cond - ((w-1)/w) * l_uncond` (the sampling
    logits divided by w, i.e. temperature w): kept only to reproduce published runs.
    """
    if form == "sampling":
        logits = uncond + (cond - uncond) * s.cfg_weight  # same operation order as transformers' CFG processor
    elif form == "reference":
        logits = cond - ((s.cfg_weight - 1) / s.cfg_weight) * uncond
    else:
        raise ValueError(f"unknown log-prob form {form!r}")
    return logits / s.temperature


def truncate(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """top-k then top-p, exactly as transformers' TopK/TopP logits warpers do it."""
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - s.top_p)
        remove[..., -1:] = False  # keep at least one token
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return logits


@dataclass
class Rollout:
    tokens: torch.Tensor  # (B, N) image token ids
    logprobs: torch.Tensor  # (B, N) log p(token) under the sampling distribution (fp32)
    images: np.ndarray | None  # (B, H, W, 3) uint8


@torch.no_grad()
def decode_tokens(policy: Policy, tokens: torch.Tensor) -> np.ndarray:
    pixels = policy.model.model.vqmodel.decode(tokens)
    return pixels.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample(policy: Policy, prompts: list[str], seeds: list[int], s: SamplingConfig = SamplingConfig(), decode: bool = True) -> Rollout:
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    model, device = policy.model, policy.device
    lm = model.model.language_model
    batch = build_prompt_batch(policy.tokenizer, prompts, device)
    B, L, N = len(prompts), batch.input_ids.shape[1], policy.num_image_tokens
    cache = StaticCache(config=model.config.text_config, max_cache_len=L + N)
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    mask = batch.attention_mask
    position = batch.position_ids[:, -1:]
    out = lm(
        inputs_embeds=model.get_input_embeddings()(batch.input_ids),
        attention_mask=mask,
        position_ids=batch.position_ids,
        past_key_values=cache,
        use_cache=True,
        cache_position=torch.arange(L, device=device),
    )
    tokens = torch.empty(B, N, dtype=torch.long, device=device)
    logprobs = torch.empty(B, N, dtype=torch.float32, device=device)
    for i in range(N):
        scores = model.model.generation_head(out.last_hidden_state[:, -1]).float()
        logits = truncate(guided_logits(scores[:B], scores[B:], s), s)
        probs = torch.softmax(logits, dim=-1)
        for r in range(B):
            tokens[r, i] = torch.multinomial(probs[r : r + 1], 1, generator=generators[r])[0, 0]
        logprobs[:, i] = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, i : i + 1])[:, 0]
        if i + 1 == N:
            break
        mask = torch.cat([mask, mask.new_ones(2 * B, 1)], dim=1)
        position = position + 1
        out = lm(
            inputs_embeds=model.prepare_embeddings_for_image_generation(tokens[:, i].repeat(2)[:, None]),
            attention_mask=mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.tensor([L + i], device=device),
        )
    return Rollout(tokens, logprobs, decode_tokens(policy, tokens) if decode else None)


def image_token_scores(policy: Policy, batch: PromptBatch, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced generation-head logits for every image token, (rows, N, V).

    `batch` holds any rows (conditional and/or unconditional, left-padded) and
    `tokens` one image-token row per batch row; position L-1+j predicts token j.
    Shared by the loss (`token_logprobs`) and supervised fine-tuning.
    """
    model, device = policy.model, policy.device
    rows, L = batch.input_ids.shape
    N = tokens.shape[1]
    image_embeds = model.prepare_embeddings_for_image_generation(tokens[:, :-1])
    embeds = torch.cat([model.get_input_embeddings()(batch.input_ids), image_embeds], dim=1)
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones(rows, N - 1)], dim=1)
    steps = torch.arange(1, N, device=device)
    positions = torch.cat([batch.position_ids, batch.position_ids[:, -1:] + steps], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    return model.model.generation_head(hidden[:, L - 1 :]).float()


def token_logprobs(
    policy: Policy, prompts: list[str], tokens: torch.Tensor, s: SamplingConfig = SamplingConfig(), form: str = "sampling"
) -> torch.Tensor:
    """Teacher-forced log p(tokens | prompt) per token, (B, N), with gradients through
    both the conditional and the unconditional pass (as the Pair-GRPO loss needs)."""
    batch = build_prompt_batch(policy.tokenizer, prompts, policy.device)
    B = len(prompts)
    scores = image_token_scores(policy, batch, tokens.repeat(2, 1))
    logits = truncate(guided_logits(scores[:B], scores[B:], s, form), s)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
