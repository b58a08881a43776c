"""Configs of the model stages (bootstrap VQ and SFT), kept free of torch imports so
that loading params.yaml stays fast; each documents the trainer beside it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class VQTrainConfig(BaseModel):
    """The ShapesWorld VQ tokenizer (focusdiff/model/vq.py) and how it is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canvas: int = Field(32, ge=32, description="image side in pixels (latents are canvas/4)")
    codebook_size: int = Field(1024, ge=16, description="number of image tokens")
    embed_dim: int = Field(8, ge=2, description="code vector size (cosine codebook)")
    base_channels: int = Field(32, ge=32, multiple_of=32, description="GroupNorm needs multiples of 32")
    latent_channels: int = Field(64, ge=32, multiple_of=32)
    num_res_blocks: int = Field(1, ge=1)
    steps: int = Field(6000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    beta: float = Field(0.25, ge=0, description="commitment weight")
    foreground_weight: float = Field(8.0, ge=0, description="extra loss weight on object pixels")
    restart_every: int = Field(100, ge=1, description="steps between dead-code restarts")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    eval_every: int = Field(1000, ge=1)
    eval_pairs_per_category: int = Field(50, ge=1)
    min_accuracy: float = Field(0.97, ge=0, le=1, description="gate: checker clause accuracy on reconstructions")
    out: Path = Field(Path("focusdiff/model/weights/shapes-vq"), description="where the trained VQ is written")


class LMTrainConfig(BaseModel):
    """Supervised fine-tuning of the tiny Janus LM on caption -> VQ image tokens
    (focusdiff/model/sft.py): the ShapesWorld stand-in for Janus-Pro's pretraining."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(256, ge=32, multiple_of=4, description="Llama hidden size")
    layers: int = Field(4, ge=1)
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="rows trained unconditionally, for CFG")
    seed: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    eval_every: int = Field(500, ge=1)
    eval_pairs_per_category: int = Field(20, ge=1)
    cfg_weight: float = Field(5.0, ge=1, description="guidance used when measuring quality")
    min_single_object_accuracy: float = Field(0.8, ge=0, le=1, description="gate on single-object prompts")
    checkpoint_every: int = Field(250, ge=1, description="steps between resumable training checkpoints")
    out: Path = Field(Path("focusdiff/model/weights/shapes-base"), description="the shipped base policy")
