"""Configs of the model stages (bootstrap SFT here; the VQ's in vq_config.py, its own file
so that the `bootstrap_vq` DVC stage does not depend on the LM's), kept free of torch
imports so that loading params.yaml stays fast; each documents the trainer beside it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from focusdiff.model.vq_config import VQTrainConfig

__all__ = ["LMTrainConfig", "VQTrainConfig"]


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
    tokenizer: Path = Field(Path("focusdiff/model/weights/shapes-vq-local"), description="the trained VQ whose tokens the "
                            "LM draws (bootstrap.vq.out or bootstrap.vq_local.out)")
    out: Path = Field(Path("focusdiff/model/weights/shapes-base"), description="the shipped base policy")
