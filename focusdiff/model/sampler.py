"""Batched CFG sampling of image tokens with a preallocated KV cache, returning log-probs.

Rollouts dominate Pair-GRPO's time, and the loss needs the log-probability of every
sampled token under the distribution that produced it. The cache is preallocated
(like a static cache) but attention reads only its filled prefix, repeated prompt rows
are prefilled once, and decode steps of Llama decoders run straight on the layers'
weights (`_LlamaDecodeStep`; other decoders run their own layers). So one pass here gives:
tokens, their log-probs under the *sampling* distribution (CFG, temperature and the
same top-k/top-p truncation), and decoded images. `token_logprobs` recomputes the
same quantities teacher-forced, with gradients, for the loss.

Per-row seeds: each row draws from its own torch.Generator, so a row's sample does
not depend on which other rows share its batch (or their padding), and a batch of
one with seed s reproduces `generate(generation_mode="image")` after
`torch.manual_seed(s)` (on CPU in fp32 up to float-rounding ties: the projections run
through oneDNN there, see `_projection`; ONEDNN_CPU_PROJECTIONS = False makes it exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation

from focusdiff.model.policy import Policy
from focusdiff.model.prompting import PositionLimit, build_prompt_batch
from focusdiff.model.sampling import SamplingConfig
from focusdiff.model.scoring import image_token_scores
from focusdiff.model.vq import to_pixels


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
def encode_images(policy: Policy, images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> (B, N) image token ids (the VQ's encoding, decode_tokens' inverse)."""
    vq = policy.model.model.vqmodel
    pixels = to_pixels(images).to(policy.device, dtype=next(vq.parameters()).dtype)
    return vq.encode(pixels).image_tokens.view(len(images), -1)


class _PrefixKV:
    """Keys/values per layer in preallocated tensors; attention reads only the filled
    prefix (a static cache would attend over its whole length every step). Stored
    (rows, position, kv heads, head_dim), so a step's keys are one contiguous block per
    row; attention gets (rows, kv heads, positions, head_dim) views."""

    def __init__(self, lm, rows: int, max_len: int, dtype: torch.dtype, device: torch.device):
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (rows, max_len, cfg.num_key_value_heads, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in lm.layers]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in lm.layers]
        self.length = 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        end = self.length + key.shape[2]
        self.keys[layer_idx][:, self.length : end] = key.transpose(1, 2)
        self.values[layer_idx][:, self.length : end] = value.transpose(1, 2)
        return self.prefix(layer_idx, end)

    def prefix(self, layer_idx: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer_idx][:, :end].transpose(1, 2), self.values[layer_idx][:, :end].transpose(1, 2)


def _decoder_pass(lm, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv: _PrefixKV) -> torch.Tensor:
    """The language model's own layers, without its generic forward's per-call overhead
    (mask construction, cache bookkeeping): for tiny CPU models that overhead is a third
    of a decode step."""
    position_embeddings = lm.rotary_emb(embeds, positions)
    hidden = embeds
    for layer in lm.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, past_key_values=kv,
                       position_embeddings=position_embeddings)
    kv.length += embeds.shape[1]
    return lm.norm(hidden[:, -1])


def _additive_mask(keep: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, queries, keys) additive mask: causal over the last `queries` keys, padding
    masked. A padded query still sees itself, so no attention row is empty (NaN-free)."""
    rows, keys = keep.shape
    q_pos = torch.arange(keys - queries, keys, device=keep.device)[:, None]
    k_pos = torch.arange(keys, device=keep.device)[None, :]
    allowed = (k_pos <= q_pos) & keep[:, None, :].bool()
    allowed |= k_pos == q_pos
    return torch.zeros(rows, 1, queries, keys, dtype=dtype, device=keep.device).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)


_STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position alone


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic, op for op (F.rms_norm rounds differently in bf16)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _hooked(module: torch.nn.Module) -> bool:
    """Hooks or a patched forward: the module's forward does more than its weights say."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__)


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and bool(
            torch.ops.mkldnn._linear_pointwise and torch.ops.mkldnn._reorder_linear_weight)
    except (AttributeError, RuntimeError):
        return False


ONEDNN_CPU_PROJECTIONS = True  # False: F.linear everywhere (bit-identical to the modules' forward)


def _use_onednn(device: torch.device, dtype: torch.dtype) -> bool:
    return ONEDNN_CPU_PROJECTIONS and device.type == "cpu" and dtype == torch.float32 and _onednn_available()


def _projection(linears: list[torch.nn.Linear], rows: int, onednn: bool):
    """x -> the outputs of `linears` (q, k, v or gate, up or one).

    With `onednn` (CPU, fp32): one matmul on the concatenated weights, prepacked once, run
    by oneDNN, where F.linear would run MKL's fp32 GEMM, which is about half as fast at
    these sizes on the AMD CPUs this project runs on. Same sums, accumulated in another
    order: results differ by float rounding (~1e-7 relative), so a sampled token can differ
    from F.linear's only where two candidates tie to that precision. Otherwise each output
    is F.linear's, a tensor of its own as in the layer (SiLU of a strided slice can round
    differently)."""
    if not onednn:
        return lambda x: [F.linear(x, m.weight, m.bias) for m in linears]
    weight = torch.cat([m.weight for m in linears])
    bias = None if all(m.bias is None for m in linears) else torch.cat(
        [m.bias if m.bias is not None else weight.new_zeros(m.out_features) for m in linears])
    packed, sizes = torch.ops.mkldnn._reorder_linear_weight(weight, rows), [m.out_features for m in linears]
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "").split(sizes, dim=-1)


class _LlamaDecodeStep:
    """One decode step (one new token per row) of a transformers Llama decoder, computed
    straight from its layers' weights.

    Why: on small models a decode step is mostly per-op overhead, and the Llama layer's
    forward spends many ops and Python calls on generality (kwargs plumbing, the attention
    interface, rotary cos/sin recomputed from the positions, rank-3 views and transposes).
    Here a layer is the bare op sequence on (rows, features) tensors: RMSNorm, the q|k|v
    projection, rotary on q and k at once from cos/sin tables that the model's own rotary
    module computes once per `sample` call, the new key/value written into the
    preallocated cache, `scaled_dot_product_attention` on the filled prefix, output
    projection, RMSNorm, the gate|up projection, SiLU gating, down projection.

    Exactness: the ops are the HF layer's own, in its order (the norm's fp32 upcast,
    transformers' GQA packing of a single query). With F.linear projections (GPU, bf16,
    or ONEDNN_CPU_PROJECTIONS off) hidden states are bit-identical to the layers' forward;
    on CPU in fp32 the projections run through oneDNN (`_projection`), equal up to float
    rounding.

    `build` returns None for what it does not recognise (other classes, non-SDPA
    attention, dynamic rope, hooks, attention dropout in training, ...): `sample` then
    runs the layers' own forward.
    """

    def __init__(self, lm, kv: _PrefixKV, cos: torch.Tensor, sin: torch.Tensor, onednn: bool):
        self.kv, self.cos, self.sin = kv, cos, sin
        rows = kv.keys[0].shape[0]
        self.head_dim = lm.layers[0].self_attn.head_dim
        self.layers = []
        for layer in lm.layers[: lm.config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                _projection([attn.q_proj, attn.k_proj, attn.v_proj], rows, onednn),
                attn.q_proj.out_features // self.head_dim, attn.num_key_value_groups, attn.scaling,
                _projection([attn.o_proj], rows, onednn),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                _projection([mlp.gate_proj, mlp.up_proj], rows, onednn), _projection([mlp.down_proj], rows, onednn),
            ))
        self.norm = (lm.norm.weight, lm.norm.variance_epsilon)

    @classmethod
    def build(cls, lm, kv: _PrefixKV, max_position: int, dtype: torch.dtype) -> _LlamaDecodeStep | None:
        from transformers.models.llama import modeling_llama as llama

        cfg = lm.config
        if not (type(lm) is llama.LlamaModel and cfg._attn_implementation == "sdpa"
                and getattr(lm.rotary_emb, "rope_type", None) in _STATIC_ROPE
                and not (lm.training and cfg.attention_dropout)
                and type(lm.norm) is llama.LlamaRMSNorm and not _hooked(lm.norm)):
            return None
        for layer in lm.layers[: cfg.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if (type(layer) is not llama.LlamaDecoderLayer or type(attn) is not llama.LlamaAttention
                    or type(mlp) is not llama.LlamaMLP or type(mlp.act_fn) not in (SiLUActivation, torch.nn.SiLU)
                    or any(type(m) is not llama.LlamaRMSNorm for m in norms)
                    or any(type(m) is not torch.nn.Linear for m in linears)
                    or any(_hooked(m) for m in (layer, attn, mlp, mlp.act_fn, *norms, *linears))):
                return None
        device = kv.keys[0].device
        # The model's own rotary module over all positions: cos/sin are elementwise in the
        # position, so looking them up equals recomputing them each step.
        positions = torch.arange(max_position + 1, device=device)[None]
        cos, sin = lm.rotary_emb(torch.empty(0, dtype=dtype, device=device), positions)
        # rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin2): the sign moves exactly onto sin
        half = cos.shape[-1] // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        return cls(lm, kv, cos[0], sin, _use_onednn(device, dtype))

    def __call__(self, hidden: torch.Tensor, position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (rows, H): embeddings of the new tokens, at `position` (rows,); returns the
        final-norm hidden state (rows, H) and advances the cache by one position."""
        rows, d = hidden.shape[0], self.head_dim
        cos, sin = self.cos[position][:, None], self.sin[position][:, None]  # (rows, 1, head_dim)
        kv, t = self.kv, self.kv.length
        for i, (w_in, eps_in, qkv, n_q, groups, scaling, o_proj, w_post, eps_post, gate_up,
                down) in enumerate(self.layers):
            q, k, v = qkv(_rms_norm(hidden, w_in, eps_in))
            qk = torch.cat([q, k], dim=-1).view(rows, -1, d)  # (rows, q heads + kv heads, d): one rotary
            qk = qk * cos + torch.cat([qk[..., d // 2 :], qk[..., : d // 2]], dim=-1) * sin
            kv.keys[i][:, t] = qk[:, n_q:]
            kv.values[i][:, t] = v.view(rows, -1, d)
            # a single query with a mask: transformers' SDPA path packs GQA groups as queries
            q = qk[:, :n_q].view(rows, -1, groups, d) if groups > 1 else qk[:, :n_q, None]
            a = F.scaled_dot_product_attention(q, *kv.prefix(i, t + 1), attn_mask=mask, scale=scaling)
            hidden = hidden + o_proj(a.reshape(rows, -1))[0]
            gate, up = gate_up(_rms_norm(hidden, w_post, eps_post))
            hidden = hidden + down(F.silu(gate) * up)[0]
        kv.length = t + 1
        return _rms_norm(hidden, *self.norm)


def _image_token_io(model, rows: int, dtype: torch.dtype):
    """(generation head: hidden -> image-token logits, embedding: image tokens -> the next
    step's inputs), computed as Janus's modules compute them, with oneDNN projections on
    CPU in fp32 (see `_projection`); elsewhere, or for modules it does not know, the
    modules themselves."""
    from transformers.models.janus import modeling_janus as janus

    m = model.model
    head, aligner = m.generation_head, m.generation_aligner
    linears = (head.proj_out, head.vision_head, aligner.fc1, *aligner.hidden_layers)
    if not (_use_onednn(head.proj_out.weight.device, dtype) and type(head) is janus.JanusVQVAEHead
            and type(aligner) is janus.JanusVQVAEAlignerMLP and type(m.generation_embeddings) is torch.nn.Embedding
            and all(type(x) is torch.nn.Linear for x in linears)
            and not any(_hooked(x) for x in (head, aligner, m.generation_embeddings, *linears))):
        return m.generation_head, model.prepare_embeddings_for_image_generation
    proj_out, vision_head, *aligner_fcs = (_projection([x], rows, True) for x in linears)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return vision_head(head.activation_fn(proj_out(hidden)[0]))[0]

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        hidden = aligner_fcs[0](m.generation_embeddings(tokens))[0]
        for fc in aligner_fcs[1:]:
            hidden = fc(aligner.activation_fn(hidden))[0]
        return hidden

    return logits, embed


def _generic_decode_step(lm, kv: _PrefixKV):
    """The layers' own forward, one new token per row (for decoders without a fast path)."""

    def step(hidden: torch.Tensor, position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _decoder_pass(lm, hidden[:, None], position[:, None], mask, kv)

    return step


def _prefill(model, batch, kv: _PrefixKV) -> torch.Tensor:
    """The prompt pass into `kv`; returns the last position's final-norm hidden state.

    Identical rows (same ids and mask) are computed once and copied: a GRPO rollout
    samples each prompt group-size times, and the unconditional twins of equal-length
    prompts are all alike. Every op is row-wise, so a copy equals computing the row."""
    lm = model.model.language_model
    rows = torch.cat([batch.input_ids, batch.attention_mask], dim=1)
    n, L = rows.shape[0], batch.input_ids.shape[1]
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if int(inverse.max()) + 1 == n:
        embeds = model.get_input_embeddings()(batch.input_ids)
        mask = _additive_mask(batch.attention_mask, L, embeds.dtype)
        return _decoder_pass(lm, embeds, batch.position_ids, mask, kv)
    first = torch.full((int(inverse.max()) + 1,), n, device=rows.device).scatter_reduce_(
        0, inverse, torch.arange(n, device=rows.device), "amin")  # a representative of each distinct row
    embeds = model.get_input_embeddings()(batch.input_ids[first])
    distinct = _PrefixKV(lm, len(first), L, embeds.dtype, embeds.device)
    mask = _additive_mask(batch.attention_mask[first], L, embeds.dtype)
    hidden = _decoder_pass(lm, embeds, batch.position_ids[first], mask, distinct)
    for full, part in zip(kv.keys + kv.values, distinct.keys + distinct.values):
        full[:, :L] = part[inverse]
    kv.length = L
    return hidden[inverse]


def position_limit(policy: Policy) -> PositionLimit:
    """The positions a prompt and its image may use in this policy's language model."""
    return PositionLimit(policy.model.config.text_config.max_position_embeddings, policy.num_image_tokens)


_NOISE_BLOCK = 64  # steps of sampling noise drawn per row at a time


@torch.no_grad()
def sample(policy: Policy, prompts: list[str], seeds: list[int], s: SamplingConfig = SamplingConfig(), decode: bool = True) -> Rollout:
    """Sample one image per prompt. Row r draws from torch.Generator(seed r) exactly as
    `torch.multinomial` would (its exponential race: argmax of p / Exp(1) noise), batched."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    model, device = policy.model, policy.device
    lm = model.model.language_model
    if lm.config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"the sampler needs sdpa or eager attention, not {lm.config._attn_implementation!r}; "
                         "load the policy with attn_implementation='sdpa'")
    batch = build_prompt_batch(policy.tokenizer, prompts, device, position_limit(policy))
    B, L, N = len(prompts), batch.input_ids.shape[1], policy.num_image_tokens
    dtype = model.get_input_embeddings().weight.dtype
    kv = _PrefixKV(lm, 2 * B, L + N, dtype, device)
    hidden = _prefill(model, batch, kv)
    # A decode step's query is the newest position: its mask is the key-padding row, sliced.
    keep = torch.cat([batch.attention_mask, batch.attention_mask.new_ones(2 * B, N)], dim=1)
    step_mask = torch.zeros(2 * B, 1, 1, L + N, dtype=dtype, device=device).masked_fill(
        ~keep[:, None, None, :].bool(), torch.finfo(dtype).min)
    position = batch.position_ids[:, -1]
    step = _LlamaDecodeStep.build(lm, kv, int(position.max()) + N, dtype) or _generic_decode_step(lm, kv)
    head, embed = _image_token_io(model, 2 * B, dtype)
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    tokens = torch.empty(B, N, dtype=torch.long, device=device)
    logprobs = torch.empty(B, N, dtype=torch.float32, device=device)
    for i in range(N):
        scores = head(hidden).float()
        logits = truncate(guided_logits(scores[:B], scores[B:], s), s)
        if i % _NOISE_BLOCK == 0:
            steps = min(_NOISE_BLOCK, N - i)
            noise = torch.stack([torch.empty(steps, logits.shape[-1], device=device).exponential_(generator=g) for g in generators])
        tokens[:, i] = (torch.softmax(logits, dim=-1) / noise[:, i % _NOISE_BLOCK]).argmax(dim=-1)
        logprobs[:, i] = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, i : i + 1])[:, 0]
        if i + 1 == N:
            break
        position = position + 1
        hidden = step(embed(tokens[:, i].repeat(2)), position, step_mask[..., : L + i + 1])
    return Rollout(tokens, logprobs, decode_tokens(policy, tokens) if decode else None)


def token_logprobs(
    policy: Policy, prompts: list[str], tokens: torch.Tensor, s: SamplingConfig = SamplingConfig(), form: str = "sampling"
) -> torch.Tensor:
    """Teacher-forced log p(tokens | prompt) per token, (B, N), with gradients through
    both the conditional and the unconditional pass (as the Pair-GRPO loss needs)."""
    batch = build_prompt_batch(policy.tokenizer, prompts, policy.device, position_limit(policy))
    return logprobs_from_scores(image_token_scores(policy, batch, tokens.repeat(2, 1)), tokens, s, form)


def logprobs_from_scores(scores: torch.Tensor, tokens: torch.Tensor, s: SamplingConfig, form: str = "sampling") -> torch.Tensor:
    """(B, N) log-probs of `tokens` from (2B, N, V) teacher-forced logits (B conditional rows,
    then their unconditional twins), combined and truncated exactly as the sampler does."""
    B = tokens.shape[0]
    logits = truncate(guided_logits(scores[:B], scores[B:], s, form), s)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
