"""Janus-Pro's image-generation prompt, with the unconditional row for CFG, batched.

Format (janus.md): `<BOS><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>`. The
unconditional row replaces every token between BOS and <begin_of_image> with the pad
token (and still attends to those positions, as Janus-Pro and transformers do).
Prompts of different lengths are left-padded; padded positions are masked out and
position ids count real tokens only, so a padded row computes what it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

USER_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


def generation_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    return f"{tokenizer.bos_token}{USER_TEMPLATE.format(prompt=prompt)}{tokenizer.boi_token}"


@dataclass
class PromptBatch:
    """2B rows: B conditional rows, then their B unconditional twins."""

    input_ids: torch.Tensor  # (2B, L)
    attention_mask: torch.Tensor  # (2B, L)
    position_ids: torch.Tensor  # (2B, L)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0] // 2


def build_prompt_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str = "cpu") -> PromptBatch:
    if not prompts:
        raise ValueError("no prompts given")
    texts = [generation_text(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    bos, boi, pad = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(tokenizer.boi_token), tokenizer.pad_token_id
    uncond = ids.clone()
    uncond[(ids != bos) & (ids != boi) & (mask == 1)] = pad
    input_ids = torch.cat([ids, uncond])
    attention_mask = torch.cat([mask, mask])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(input_ids.to(device), attention_mask.to(device), position_ids.to(device))
