"""Supervised fine-tuning of the ShapesWorld policy (the bootstrap's second half).

The tiny Janus LM learns caption -> image tokens of the trained ShapesWorld VQ, on an
endless stream of train-distribution scenes (held-out color/shape combinations never
appear). A share of rows is trained with the caption replaced by pad tokens — the
exact unconditional row the sampler uses — so classifier-free guidance works.
Quality is measured by sampling and the exact checker (focusdiff/model/quality.py).
A long CPU run is resumable: the loop checkpoints its whole state every
`checkpoint_every` steps, and a rerun with the same trajectory parameters continues
from the last checkpoint with the same result as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, JanusForConditionalGeneration, JanusVQVAE

from focusdiff.errors import TrainingPaused
from focusdiff.model.checkpoints import load_state, save_state
from focusdiff.model.configs import LMTrainConfig
from focusdiff.schedule import warmup_cosine
from focusdiff.model.policy import Policy
from focusdiff.model.prompting import build_prompt_batch
from focusdiff.model.quality import QualityReport, policy_quality
from focusdiff.model.sampler import SamplingConfig
from focusdiff.model.scoring import image_token_scores
from focusdiff.model.shapes_model import build_config, build_tokenizer
from focusdiff.model.vq import to_pixels
from focusdiff.shapes.generate import CATEGORY_ORDER, ShapesSampler
from focusdiff.shapes.render import render


def new_policy(cfg: LMTrainConfig, vq_dir: Path) -> Policy:
    """A randomly initialised tiny Janus whose VQ is the trained ShapesWorld tokenizer."""
    torch.manual_seed(cfg.seed)
    vq = JanusVQVAE.from_pretrained(vq_dir)
    tokenizer = build_tokenizer()
    model = JanusForConditionalGeneration(build_config(tokenizer, vq.config, cfg.hidden, cfg.layers))
    model.model.vqmodel.load_state_dict(vq.state_dict())
    model.generation_config = GenerationConfig(
        do_sample=True,
        guidance_scale=cfg.cfg_weight,
        temperature=1.0,
        top_k=0,  # generate() would otherwise truncate to 50 tokens
        top_p=1.0,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(tokenizer.boi_token)},
    )
    return Policy(model, tokenizer, f"bootstrap:{vq_dir}")


class CaptionStream:
    """(captions, images) from the train distribution, both prompts of random pairs."""

    def __init__(self, canvas: int, seed: int, holdout: frozenset[tuple[str, str]]):
        self.sampler = ShapesSampler(canvas, np.random.default_rng(seed), holdout)

    def batch(self, n: int) -> tuple[list[str], np.ndarray]:
        captions, images = [], []
        while len(captions) < n:
            p = self.sampler.pair(self.sampler.choice(CATEGORY_ORDER))
            captions += [p.prompt1, p.prompt2]
            images += [render(p.scene1), render(p.scene2)]
        return captions[:n], np.stack(images[:n])


def _lr(step: int, cfg) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def sft_loss(policy: Policy, captions: list[str], tokens: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the image tokens; rows where `drop` is set see the unconditional prompt."""
    batch = build_prompt_batch(policy.tokenizer, captions, policy.device)
    B = len(captions)
    keep = torch.cat([~drop, drop])  # take the conditional or the unconditional twin of each row
    batch.input_ids, batch.attention_mask, batch.position_ids = (
        batch.input_ids[keep], batch.attention_mask[keep], batch.position_ids[keep])
    order = torch.cat([torch.nonzero(~drop).squeeze(-1), torch.nonzero(drop).squeeze(-1)])
    scores = image_token_scores(policy, batch, tokens[order])
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), tokens[order].reshape(-1))


# Fields that do not change the training trajectory: a checkpoint survives changes to them.
_NOT_TRAJECTORY = {"threads", "eval_every", "eval_pairs_per_category", "cfg_weight", "min_single_object_accuracy",
                   "checkpoint_every", "out"}


def run_fingerprint(cfg: LMTrainConfig, vq_dir: Path, holdout: frozenset[tuple[str, str]]) -> str:
    """What a checkpoint must match to be resumed: the trajectory's parameters, the VQ, the holdout."""
    what = {"lm": cfg.model_dump(mode="json", exclude=_NOT_TRAJECTORY), "holdout": sorted(holdout),
            "vq": hashlib.sha256((vq_dir / "model.safetensors").read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def save_checkpoint(directory: Path, step: int, fingerprint: str, model, opt, stream: "CaptionStream", gen: torch.Generator) -> None:
    """Everything the loop needs to continue bit for bit (focusdiff/model/checkpoints.py)."""
    save_state(directory, step, fingerprint, {"model": model}, opt, {"generator": gen.get_state()},
               {"stream_rng": stream.sampler.rng.bit_generator.state})


def load_checkpoint(directory: Path, fingerprint: str, model, opt, stream: "CaptionStream", gen: torch.Generator) -> int | None:
    """Restore a checkpoint of this run; returns the step to continue from, or None when there is
    none (or it belongs to other parameters). A damaged one raises CheckpointError."""
    restored = load_state(directory, fingerprint, {"model": model}, opt)
    if restored is None:
        return None
    step, tensors, state = restored
    gen.set_state(tensors["generator"])
    stream.sampler.rng.bit_generator.state = state["stream_rng"]
    return step


def train_lm(
    cfg: LMTrainConfig,
    vq_dir: Path,
    holdout: frozenset[tuple[str, str]],
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
    checkpoint_dir: Path | None = None,
    stop_after_s: float | None = None,
) -> tuple[Policy, QualityReport]:
    """SFT of a fresh tiny Janus; with `checkpoint_dir`, resumable: every `checkpoint_every` steps
    the full training state is saved there, and a run with the same parameters continues from it
    (the result equals an uninterrupted run's). With `stop_after_s`, the run stops at the first
    checkpoint past that many seconds (TrainingPaused: run it again to continue)."""
    if stop_after_s is not None and checkpoint_dir is None:
        raise ValueError("stop_after_s needs checkpoint_dir: a bounded run continues from its checkpoint")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policy = new_policy(cfg, vq_dir)
    model = policy.model
    model.model.vqmodel.requires_grad_(False).eval()
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("model.vqmodel")]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    stream = CaptionStream(policy.image_size, cfg.seed, holdout)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampling = SamplingConfig(cfg_weight=cfg.cfg_weight)
    fingerprint = run_fingerprint(cfg, vq_dir, holdout)
    start = 0
    if checkpoint_dir is not None:
        start = load_checkpoint(checkpoint_dir, fingerprint, model, opt, stream, gen) or 0
        if start:
            log({"lm/resumed_from_step": start}, start)
    report = None
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        captions, images = stream.batch(cfg.batch_size)
        with torch.no_grad():
            tokens = model.model.vqmodel.encode(to_pixels(images)).image_tokens.view(len(images), -1)
        drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
        loss = sft_loss(policy, captions, tokens, drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if step % 50 == 0:
            log({"lm/loss": loss.item(), "lm/lr": _lr(step, cfg), "lm/grad_norm": float(grad_norm),
                 "lm/captions_per_s": (step + 1 - start) * cfg.batch_size / (time.perf_counter() - t0)}, step)
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(checkpoint_dir, step + 1, fingerprint, model, opt, stream, gen)
            if stop_after_s is not None and time.perf_counter() - t0 >= stop_after_s:
                raise TrainingPaused(f"stopped after {(time.perf_counter() - t0) / 60:.0f} min at step {step + 1} of "
                                     f"{cfg.steps} (checkpoint in {checkpoint_dir}); run the same command again to continue")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            report = policy_quality(policy, cfg.eval_pairs_per_category, seed=4321, s=sampling)
            log({"lm/image_accuracy": report.image_accuracy, "lm/single_object_accuracy": report.single_object_accuracy,
                 "lm/pair_accuracy": report.pair_accuracy, "lm/clause_accuracy": report.clause_accuracy,
                 **{f"lm/accuracy.{k}": v for k, v in report.by_category.items()}}, step)
    model.eval()
    return policy, report
