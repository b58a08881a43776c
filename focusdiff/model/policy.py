"""A loaded text-to-image policy: a transformers Janus model plus its tokenizer.

Every stage that samples, trains or evaluates takes a `Policy`. It is loaded by
`focusdiff.model.loading.load_policy` from a transformers-format directory or hub
id, a DeepSeek-format checkpoint (converted on the way), or the shipped
ShapesWorld base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import JanusForConditionalGeneration, PreTrainedTokenizerBase


# What Pair-GRPO never trains: the understanding tower and its aligner, the VQ, the text head.
# The trainer (trainable_parameters) and the memory planner (focusdiff/train/plan.py) read it.
FROZEN_FOR_IMAGE_GENERATION = ("model.vision_model", "model.aligner", "model.vqmodel", "lm_head")


@dataclass
class Policy:
    model: JanusForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    source: str  # where it was loaded from (a path or hub id), for lineage

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_image_tokens(self) -> int:
        return self.model.config.vision_config.num_image_tokens

    @property
    def image_size(self) -> int:
        return self.model.config.vq_config.num_patches * 2 ** (len(self.model.config.vq_config.channel_multiplier) - 1)

    @property
    def guidance_scale(self) -> float:
        """The CFG weight this policy is meant to be sampled at: its generation_config's
        guidance_scale (the ShapesWorld base: bootstrap.lm.cfg_weight), else Janus-Pro's 5."""
        return float(getattr(self.model.generation_config, "guidance_scale", None) or 5.0)

    @property
    def boi_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.boi_token)
