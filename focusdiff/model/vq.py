"""Train the ShapesWorld image tokenizer: a `JanusVQVAE` (the bootstrap's first half).

Janus-Pro's VQ tokenizer turns a 384 px image into 24x24 codes; ShapesWorld's turns a
32 px canvas into 8x8 codes (4x downsampling), so an image is 64 tokens.

Why the training is set up this way (measured on 2 CPU cores):
- transformers' `decode` looks codes up L2-normalised while `encode` takes the nearest
  raw code. We train a cosine codebook (rows renormalised after every step), so the
  nearest code is the most similar one and `decode(encode(x))` is what we trained.
- objects cover ~10% of the canvas: the reconstruction loss weights foreground pixels
  up, or colors and corners (the shape cues) are the first thing lost;
- the codebook starts from encoder outputs and unused codes are restarted from recent
  encoder outputs, so capacity is not wasted on dead codes;
- warm-up, cosine decay and an exponential moving average of the weights stop the
  last steps from wobbling.
Quality is measured the way it matters: the exact checker's clause accuracy on
reconstructions of held-out scenes (gate >= 97%).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from transformers import JanusVQVAE, JanusVQVAEConfig

from focusdiff.errors import TrainingPaused
from focusdiff.model.checkpoints import load_state, save_state
from focusdiff.model.vq_config import VQTrainConfig
from focusdiff.schedule import warmup_cosine
from focusdiff.shapes.accuracy import ConditionAccuracy, clause_accuracy, sample_pairs
from focusdiff.shapes.generate import CATEGORY_ORDER, ShapesSampler
from focusdiff.shapes.render import render


def vq_config(cfg: VQTrainConfig) -> JanusVQVAEConfig:
    """The VQ's own config; the LM-facing sizes (projection dims) are set when the
    full Janus model is assembled, since the aligner and head live outside the VQ."""
    return JanusVQVAEConfig(
        embed_dim=cfg.embed_dim,
        num_embeddings=cfg.codebook_size,
        latent_channels=cfg.latent_channels,
        base_channels=cfg.base_channels,
        channel_multiplier=[1, 2, 2],
        num_res_blocks=cfg.num_res_blocks,
        num_patches=cfg.canvas // 4,
    )


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1] (Janus's normalisation)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_images(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return pixels.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def reconstruct(vq: JanusVQVAE, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The real round trip: `encode` -> image tokens -> `decode`."""
    out = []
    for i in range(0, len(images), batch):
        x = to_pixels(images[i : i + batch])
        tokens = vq.encode(x).image_tokens.view(len(x), -1)
        out.append(to_images(vq.decode(tokens)))
    return np.concatenate(out)


class SceneStream:
    """An endless stream of ShapesWorld renders from every category (and the unpaired mix)."""

    def __init__(self, canvas: int, seed: int):
        self.sampler = ShapesSampler(canvas, np.random.default_rng(seed))

    def batch(self, n: int) -> np.ndarray:
        images = []
        while len(images) < n:
            p = self.sampler.pair(self.sampler.choice(CATEGORY_ORDER))
            images += [render(p.scene1), render(p.scene2)]
        return np.stack(images[:n])


# The edits that change one object in place (its color, look or letter): the ones locality is judged on.
LOCAL_EDITS = ("color", "overall_appearance", "text")


class LocalityReport(BaseModel):
    """What one-detail edits do to the tokens: per category, the mean over pairs of the tokens
    that differ between a pair's two images and of the token grid's pixel blocks the edit touches."""

    tokens: int  # image tokens per image (a square grid)
    tokens_changed: dict[str, float]
    blocks_changed: dict[str, float]

    def ratio(self, categories: tuple[str, ...] = LOCAL_EDITS) -> float:
        """Tokens changed per pixel block touched, over `categories` (a local tokenizer: about 1)."""
        return sum(self.tokens_changed[c] for c in categories) / max(sum(self.blocks_changed[c] for c in categories), 1e-9)


def block_any(mask: np.ndarray, side: int) -> np.ndarray:
    """(..., size, size) pixel booleans -> (..., side*side): whether any pixel of each block of a
    side x side token grid is set, in the tokens' raster order (one block per image token)."""
    size = mask.shape[-1]
    if mask.shape[-2] != size or size % side:
        raise ValueError(f"a {side}x{side} token grid does not tile a {mask.shape[-2]}x{size} image")
    lead = mask.shape[:-2]
    return mask.reshape(*lead, side, size // side, side, size // side).any(axis=(-3, -1)).reshape(*lead, side * side)


def touched_blocks(a: np.ndarray, b: np.ndarray, side: int) -> np.ndarray:
    """The token-grid blocks an edit touches: (..., size, size, channels) images a and b ->
    (..., side*side) booleans, True where any pixel of the block differs."""
    return block_any((a != b).any(-1), side)


def tokenizer_locality(vq: JanusVQVAE, pairs) -> LocalityReport:
    """Render both scenes of each pair, encode them, and count (a) the tokens that differ and
    (b) the pixel blocks (one per token of the grid) with any changed pixel. A local tokenizer
    changes about as many tokens as blocks: Pair-GRPO's hard negative (the partner's ground
    truth) and its per-token loss assume that a small edit is a small change in tokens."""
    tokens: dict[str, list[int]] = defaultdict(list)
    blocks: dict[str, list[int]] = defaultdict(list)
    n = None
    dtype = next(vq.parameters()).dtype
    with torch.no_grad():
        for pair in pairs:
            a, b = render(pair.scene1), render(pair.scene2)
            t = vq.encode(to_pixels(np.stack([a, b])).to(dtype)).image_tokens.view(2, -1)
            n = t.shape[1]
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f"{n} image tokens do not form a square grid")
            touched = touched_blocks(a, b, side)
            tokens[pair.category].append(int((t[0] != t[1]).sum()))
            blocks[pair.category].append(int(touched.sum()))
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    return LocalityReport(tokens=n or 0, tokens_changed={k: mean(v) for k, v in sorted(tokens.items())},
                          blocks_changed={k: mean(v) for k, v in sorted(blocks.items())})


def untouched_latent_change(zn: torch.Tensor, images: np.ndarray) -> torch.Tensor:
    """The edit-consistency loss: rows 2k and 2k+1 of a batch are a pair's two scenes (SceneStream
    draws pairs); the mean squared change of their normalized latents over the grid blocks the
    edit leaves untouched. A local encoder changes only what the edit touches."""
    pairs = len(images) // 2
    side = int(round((zn.shape[0] // len(images)) ** 0.5))
    z = zn.view(len(images), side * side, -1)[: 2 * pairs]
    touched = touched_blocks(images[0 : 2 * pairs : 2], images[1 : 2 * pairs : 2], side)  # (pairs, blocks)
    keep = torch.from_numpy(~touched).float()
    change = ((z[0::2] - z[1::2]) ** 2).sum(-1)  # (pairs, blocks)
    return (change * keep).sum() / keep.sum().clamp(min=1.0)


def untouched_code_instability(zn: torch.Tensor, codebook: torch.Tensor, images: np.ndarray,
                               temperature: float) -> torch.Tensor:
    """The code-stability loss: rows 2k and 2k+1 of a batch are a pair's two scenes; in the grid
    blocks the edit leaves untouched, the symmetric cross-entropy between the two latents' soft
    code assignments (softmax of cosine similarity / temperature). Why not the latent change
    alone (`untouched_latent_change`): the shipped VQ's untouched background latents move by a
    median 0.05 between a pair's scenes while their nearest and second-nearest codes are 0.0006
    apart, so two thirds of them flip code. Cross-entropy rewards agreeing *and* confident
    assignments: it pulls unchanged content into the same code, away from the code boundaries."""
    pairs = len(images) // 2
    side = int(round((zn.shape[0] // len(images)) ** 0.5))
    touched = touched_blocks(images[0 : 2 * pairs : 2], images[1 : 2 * pairs : 2], side).reshape(-1)
    keep = torch.from_numpy(~touched)
    if not keep.any():
        return zn.sum() * 0.0
    logits = (zn @ codebook.T / temperature).view(len(images), side * side, -1)[: 2 * pairs]
    la = logits[0::2].reshape(pairs * side * side, -1)[keep]
    lb = logits[1::2].reshape(pairs * side * side, -1)[keep]
    cross = lambda p, q: -(p.softmax(-1) * q.log_softmax(-1)).sum(-1).mean()  # noqa: E731
    return 0.5 * (cross(la, lb) + cross(lb, la))


def quality_pairs(cfg: VQTrainConfig):
    """The held-out pairs a VQ's reconstruction accuracy and locality are measured on."""
    return sample_pairs(cfg.eval_pairs_per_category, cfg.canvas, seed=10_000 + cfg.seed)


def _encode_normalized(vq: JanusVQVAE, x: torch.Tensor) -> torch.Tensor:
    z = vq.quant_conv(vq.encoder(x))  # (B, D, h, w)
    return F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)


def _lr(step: int, cfg) -> float:
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


# Fields that do not change the training trajectory: a checkpoint survives changes to them.
NOT_TRAJECTORY = {"threads", "eval_every", "eval_pairs_per_category", "checkpoint_every", "min_accuracy", "out"}


def run_fingerprint(cfg: VQTrainConfig) -> str:
    """What a checkpoint must match to be resumed: the trajectory's parameters (and, for a
    fine-tune, the starting weights themselves)."""
    what = {"vq": cfg.model_dump(mode="json", exclude=NOT_TRAJECTORY)}
    if cfg.init is not None:
        what["init.sha256"] = hashlib.sha256((cfg.init / "model.safetensors").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# The architecture fields a fine-tune's starting VQ must share with its config.
ARCHITECTURE = ("embed_dim", "num_embeddings", "latent_channels", "base_channels", "channel_multiplier",
                "num_res_blocks", "num_patches")


def initial_vq(cfg: VQTrainConfig) -> JanusVQVAE:
    """The VQ a run starts from: random (the codebook is seeded from encoder outputs by the
    caller), or the trained VQ `cfg.init`, whose architecture must be the config's."""
    if cfg.init is None:
        return JanusVQVAE(vq_config(cfg)).train()  # JanusVQVAE starts in eval mode
    if not (cfg.init / "config.json").is_file() or not (cfg.init / "model.safetensors").is_file():
        raise FileNotFoundError(f"init {cfg.init}: no trained VQ there (config.json and model.safetensors)")
    vq = JanusVQVAE.from_pretrained(cfg.init)
    wanted = vq_config(cfg)
    differs = {k: (getattr(vq.config, k), getattr(wanted, k)) for k in ARCHITECTURE if getattr(vq.config, k) != getattr(wanted, k)}
    if differs:
        raise ValueError(f"init {cfg.init}: its architecture differs from the config's: "
                         + ", ".join(f"{k} is {have}, config says {want}" for k, (have, want) in differs.items()))
    return vq.train()


def train_vq(
    cfg: VQTrainConfig,
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
    checkpoint_dir: Path | None = None,
    stop_after_s: float | None = None,
) -> tuple[JanusVQVAE, ConditionAccuracy]:
    """Train a VQ tokenizer; returns the EMA weights and their held-out reconstruction accuracy.
    With `checkpoint_dir`, resumable: every `checkpoint_every` steps the whole state (weights,
    EMA, optimizer, code usage, random generators) is saved there, and a run with the same
    trajectory parameters continues from it with an uninterrupted run's result. With
    `stop_after_s`, the run stops at the first checkpoint past that many seconds
    (TrainingPaused: run it again to continue)."""
    if stop_after_s is not None and checkpoint_dir is None:
        raise ValueError("stop_after_s needs checkpoint_dir: a bounded run continues from its checkpoint")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    stream = SceneStream(cfg.canvas, cfg.seed)
    eval_pairs = quality_pairs(cfg)
    vq = initial_vq(cfg)
    codebook = vq.quantize.embedding.weight
    if cfg.init is None:
        with torch.no_grad():  # start the codebook on encoder outputs
            z = _encode_normalized(vq, to_pixels(stream.batch(max(64, cfg.codebook_size // 16))))
            codebook.copy_(z[torch.randint(len(z), (cfg.codebook_size,))] + 0.01 * torch.randn_like(codebook))
            codebook.copy_(F.normalize(codebook, dim=-1))
    ema = copy.deepcopy(vq).eval()
    opt = torch.optim.AdamW(vq.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    usage = torch.zeros(cfg.codebook_size)
    fingerprint = run_fingerprint(cfg)
    start = 0
    if checkpoint_dir is not None and (restored := load_state(checkpoint_dir, fingerprint, {"model": vq, "ema": ema},
                                                                opt)) is not None:
        # every random state the loop draws from, so the rest of the run is the uninterrupted one
        start, tensors, state = restored
        usage.copy_(tensors["usage"])
        torch.set_rng_state(tensors["torch_rng"])
        stream.sampler.rng.bit_generator.state = state["stream_rng"]
        log({"vq/resumed_from_step": start}, start)
    t0 = time.perf_counter()
    accuracy = None
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        images = stream.batch(cfg.batch_size)
        x = to_pixels(images)
        foreground = torch.from_numpy((images != images[:, :1, :1]).any(-1)).float().unsqueeze(1)
        zn = _encode_normalized(vq, x)
        idx = (zn @ codebook.T).argmax(-1)
        q = codebook[idx]
        vq_loss = ((q - zn.detach()) ** 2).sum(-1).mean() + cfg.beta * ((zn - q.detach()) ** 2).sum(-1).mean()
        q = zn + (q - zn).detach()  # straight-through
        h = w = cfg.canvas // 4
        decoded = vq.decoder(vq.post_quant_conv(q.view(len(x), h, w, -1).permute(0, 3, 1, 2)))
        weight = 1.0 + cfg.foreground_weight * foreground
        err = decoded - x
        rec_loss = (weight * (err.abs() + err**2)).mean()
        loss = rec_loss + vq_loss
        if cfg.edit_weight > 0:  # (off: the loop is the one the shipped VQ was trained with)
            edit_loss = untouched_latent_change(zn, images)
            loss = loss + cfg.edit_weight * edit_loss
        if cfg.stability_weight > 0:
            stability_loss = untouched_code_instability(zn, codebook, images, cfg.stability_temperature)
            loss = loss + cfg.stability_weight * stability_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            codebook.copy_(F.normalize(codebook, dim=-1))
            usage += torch.bincount(idx, minlength=cfg.codebook_size).float()
            for pe, p in zip(ema.parameters(), vq.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)
            if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
                dead = (usage == 0).nonzero().squeeze(-1)
                if len(dead):
                    codebook[dead] = F.normalize(zn[torch.randint(len(zn), (len(dead),))] + 0.01 * torch.randn(len(dead), zn.shape[1]), dim=-1)
                log({"vq/dead_codes": float(len(dead)), "vq/codes_used": float((usage > 0).sum())}, step)
                usage.zero_()
        if step % 50 == 0:
            log({"vq/loss": loss.item(), "vq/rec_loss": rec_loss.item(), "vq/vq_loss": vq_loss.item(),
                 **({"vq/edit_loss": edit_loss.item()} if cfg.edit_weight > 0 else {}),
                 **({"vq/stability_loss": stability_loss.item()} if cfg.stability_weight > 0 else {}),
                 "vq/lr": _lr(step, cfg),
                 "vq/images_per_s": (step + 1 - start) * cfg.batch_size / (time.perf_counter() - t0)}, step)
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_state(checkpoint_dir, step + 1, fingerprint, {"model": vq, "ema": ema}, opt,
                       {"usage": usage, "torch_rng": torch.get_rng_state()},
                       {"stream_rng": stream.sampler.rng.bit_generator.state})
            if stop_after_s is not None and time.perf_counter() - t0 >= stop_after_s:
                raise TrainingPaused(f"stopped after {(time.perf_counter() - t0) / 60:.0f} min at step {step + 1} of "
                                     f"{cfg.steps} (checkpoint in {checkpoint_dir}); run the same command again to continue")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            accuracy = clause_accuracy("vq_reconstruction", eval_pairs, lambda b: reconstruct(ema, b))
            locality = tokenizer_locality(ema, eval_pairs)
            log({"vq/locality.tokens_per_block": locality.ratio(),
                 **{f"vq/locality.{k}.tokens_changed": v for k, v in locality.tokens_changed.items()},
                 **{f"vq/locality.{k}.blocks_changed": v for k, v in locality.blocks_changed.items()},
                 "vq/reconstruction_clause_accuracy": accuracy.accuracy,
                 **{f"vq/accuracy.{k}": ok / n for k, (ok, n) in accuracy.by_category.items()},
                 **{f"vq/accuracy.clause.{k}": ok / n for k, (ok, n) in accuracy.by_kind.items()}}, step)
    return ema, accuracy
