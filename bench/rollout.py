"""Rollout speed: this project's CFG sampler vs transformers' generate(generation_mode="image")
vs the naive loop of the reference FocusDiff code (re-feeding embeddings through a dynamic
cache step by step). Same model, same batch, same seeds; each warmed up, then timed in
turns (naive, generate, ours, naive, ...) so that a change in the machine's load hits all
three alike; prints images/s (median per sampler) and the ratios, then this sampler's
decode step time against the floor set by reading the weights once per step from memory
(decode of one token per row is memory-bound on a GPU). Not a test: run it, read the ratios.

  ./uvw run python bench/rollout.py                    # CPU, ShapesWorld base architecture
  ./uvw run python bench/rollout.py --distinct         # 16 different prompts instead of one prompt 16 times
  ./uvw run python bench/rollout.py --janus-pro-1b     # GPU: random Janus-Pro-1B-sized config, CFG batch 2x16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, GenerationConfig, JanusForConditionalGeneration

from focusdiff.model.policy import Policy
from focusdiff.model.prompting import build_prompt_batch
from focusdiff.model.sampler import SamplingConfig, sample

PROMPT = "a photo of a small red circle to the left of a large blue square"


def distinct_prompts(n: int) -> list[str]:
    """n different ShapesWorld prompts of three lengths (so the batch is padded)."""
    colors, shapes = ("red", "blue", "green", "yellow", "purple", "orange"), ("circle", "square", "triangle")
    templates = ("a {c} {s}", "a photo of a small {c} {s}", "a photo of a small {c} {s} to the left of a large {c2} square")
    return [templates[i % 3].format(c=colors[i % 6], s=shapes[i // 6 % 3], c2=colors[(i + 1) % 6]) for i in range(n)]


@torch.no_grad()
def naive_loop(policy: Policy, prompts: list[str], seed: int, s: SamplingConfig) -> torch.Tensor:
    """The reference code's sampler: no static cache, one global multinomial per step."""
    model = policy.model
    batch = build_prompt_batch(policy.tokenizer, prompts, policy.device)
    B, N = len(prompts), policy.num_image_tokens
    torch.manual_seed(seed)
    embeds = model.get_input_embeddings()(batch.input_ids)
    cache = DynamicCache()
    tokens = []
    for _ in range(N):
        out = model.model.language_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        logits = model.model.generation_head(out.last_hidden_state[:, -1])
        guided = logits[B:] + s.cfg_weight * (logits[:B] - logits[B:])
        probs = torch.softmax(guided / s.temperature, dim=-1)
        token = torch.multinomial(probs, num_samples=1)
        tokens.append(token)
        embeds = model.prepare_embeddings_for_image_generation(torch.cat([token, token]))
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def hf_generate(policy: Policy, prompts: list[str], seed: int, s: SamplingConfig) -> torch.Tensor:
    tok = policy.tokenizer
    gen = GenerationConfig(do_sample=True, top_k=0, temperature=s.temperature, guidance_scale=s.cfg_weight,
                           bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                           generation_kwargs={"boi_token_id": policy.boi_token_id}, max_new_tokens=policy.num_image_tokens)
    b = build_prompt_batch(tok, prompts, policy.device)
    torch.manual_seed(seed)
    return policy.model.generate(input_ids=b.input_ids[: len(prompts)], attention_mask=b.attention_mask[: len(prompts)],
                                 generation_config=gen, generation_mode="image")


def ours(policy: Policy, prompts: list[str], seed: int, s: SamplingConfig) -> torch.Tensor:
    return sample(policy, prompts, [seed + i for i in range(len(prompts))], s, decode=False).tokens


# Peak memory bandwidth (GB/s) by device name, from the vendors' data sheets; --bandwidth-gbs overrides.
BANDWIDTH_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
                 "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "A10G": 600.0}


def device_bandwidth_gbs(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in BANDWIDTH_GBS.items() if key in name), None)


def decode_weight_bytes(policy: Policy) -> int:
    """Bytes a decode step must read at least once: the language model's layers, its final
    norm, the generation head and the image-token aligner (one embedding row per token is
    negligible; the KV cache comes on top and grows with the position)."""
    model = policy.model.model
    parts = [model.language_model.layers, model.language_model.norm, model.generation_head, model.generation_aligner]
    return sum(p.numel() * p.element_size() for part in parts for p in part.parameters())


@torch.no_grad()
def prefill_seconds(policy: Policy, prompts: list[str], repeats: int) -> float:
    """One forward of the distinct prompt rows (conditional and unconditional), as the sampler's
    first step (it prefills a repeated prompt once)."""
    b = build_prompt_batch(policy.tokenizer, list(dict.fromkeys(prompts)), policy.device)
    run = lambda: policy.model.model.language_model(input_ids=b.input_ids, attention_mask=b.attention_mask,  # noqa: E731
                                                    position_ids=b.position_ids, use_cache=True)
    run()
    return statistics.median(timed(run) for _ in range(repeats))


def timed(fn, *args) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def shapes_policy() -> Policy:
    from focusdiff.model.configs import VQTrainConfig
    from focusdiff.model.loading import SHAPES_BASE_DIR, load_policy
    from focusdiff.model.shapes_model import build_config, build_tokenizer
    from focusdiff.model.vq import vq_config

    if SHAPES_BASE_DIR.is_dir():
        return load_policy("shapes-base")
    tok = build_tokenizer()  # same architecture, random weights: speed does not depend on them
    return Policy(JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()))).eval(), tok, "random")


def janus_pro_1b_policy(device: str) -> Policy:
    """Janus-Pro-1B's real shape with random weights (no download needed for speed)."""
    from focusdiff.model.real_shapes import build_real_shape_model, real_shape_tokenizer

    model = build_real_shape_model("janus-pro-1b", dtype=torch.bfloat16, device=device)
    return Policy(model, real_shape_tokenizer("janus-pro-1b"), "random-janus-pro-1b")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--janus-pro-1b", action="store_true", help="GPU: random Janus-Pro-1B-sized model")
    ap.add_argument("--batch", type=int, default=16, help="prompts per batch (CFG doubles the rows)")
    ap.add_argument("--distinct", action="store_true",
                    help="different prompts (default: one prompt batch times, as a GRPO group samples it)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per sampler (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None,
                    help="memory bandwidth for the decode floor (default: known GPUs' data-sheet peak)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = janus_pro_1b_policy(device) if args.janus_pro_1b else shapes_policy()
    prompts = distinct_prompts(args.batch) if args.distinct else [PROMPT] * args.batch
    s = SamplingConfig()
    samplers = {"naive loop (reference)": naive_loop, "transformers generate": hf_generate, "focusdiff sampler": ours}
    for fn in samplers.values():
        fn(policy, prompts, 0, s)  # warm-up at the measured size (allocator, caches)
    times = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for name, fn in samplers.items():
            times[name].append(timed(fn, policy, prompts, 0, s))
    results = {name: statistics.median(t) for name, t in times.items()}
    print(f"device {device}, policy {policy.source}, batch {args.batch} ({'distinct prompts' if args.distinct else 'one prompt'}, "
          f"CFG rows {2 * args.batch}), {policy.num_image_tokens} tokens per image, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} (in turns)")
    for name, seconds in results.items():
        print(f"  {name:24s} {args.batch / seconds:8.2f} images/s  ({seconds:.2f} s)")
    base = results["naive loop (reference)"]
    print(f"ratio focusdiff/naive: {base / results['focusdiff sampler']:.2f}x; "
          f"focusdiff/generate: {results['transformers generate'] / results['focusdiff sampler']:.2f}x")
    # The sampler's time less one prompt pass, over its decode steps (the first token comes from the prefill).
    step = (results["focusdiff sampler"] - prefill_seconds(policy, prompts, args.repeats)) / (policy.num_image_tokens - 1)
    weights = decode_weight_bytes(policy)
    line = f"decode step {step * 1e3:.2f} ms per token for {2 * args.batch} CFG rows; weights read per step {weights / 1e6:.1f} MB"
    bandwidth = args.bandwidth_gbs or device_bandwidth_gbs(device)
    if bandwidth:
        floor = weights / (bandwidth * 1e9)
        line += f"; floor at {bandwidth:.0f} GB/s {floor * 1e3:.3f} ms: step / floor {step / floor:.1f}x"
    print(line)


if __name__ == "__main__":
    main()
