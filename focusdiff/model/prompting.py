"""Janus-Pro's image-generation prompt, with the unconditional row for CFG, batched.

Format (janus.md): `<BOS><|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>`. The
unconditional row replaces every token between BOS and <begin_of_image> with the pad
token (and still attends to those positions, as Janus-Pro and transformers do).
Prompts of different lengths are left-padded; padded positions are masked out and
position ids count real tokens only, so a padded row computes what it would alone.

A prompt and the image drawn after it must fit the language model's positions
(`max_position_embeddings`): a rotary model runs past them without a word, on positions
it never saw in training. Given the limits, `build_prompt_batch` refuses such a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from focusdiff.errors import FocusdiffError

USER_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


class PromptTooLongError(FocusdiffError):
    """A prompt leaves no room for its image within the model's positions."""


@dataclass(frozen=True)
class PositionLimit:
    """The positions one generation may use: the prompt's tokens, then the image's."""

    max_positions: int  # the language model's max_position_embeddings
    image_tokens: int  # tokens of one image

    @property
    def prompt_tokens(self) -> int:
        return self.max_positions - self.image_tokens


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


def build_prompt_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str = "cpu",
                       limit: PositionLimit | None = None) -> PromptBatch:
    """Tokenize prompts for generation or scoring. With `limit` (what the sampler and the
    log-prob pass give, from the policy), a prompt whose tokens and image exceed the
    model's positions is a PromptTooLongError naming it; without, only the layout is built."""
    if not prompts:
        raise ValueError("no prompts given")
    texts = [generation_text(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    if limit is not None:
        _check_lengths(prompts, mask.sum(dim=1).tolist(), limit)
    bos, boi, pad = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(tokenizer.boi_token), tokenizer.pad_token_id
    uncond = ids.clone()
    uncond[(ids != bos) & (ids != boi) & (mask == 1)] = pad
    input_ids = torch.cat([ids, uncond])
    attention_mask = torch.cat([mask, mask])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(input_ids.to(device), attention_mask.to(device), position_ids.to(device))


def _check_lengths(prompts: list[str], lengths: list[int], limit: PositionLimit) -> None:
    for i, (prompt, length) in enumerate(zip(prompts, lengths)):
        if length > limit.prompt_tokens:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise PromptTooLongError(
                f"prompt {i + 1} of the batch ({shown!r}) is {length} tokens with the chat template; with the "
                f"{limit.image_tokens} image tokens that exceeds the model's {limit.max_positions} positions "
                f"(max_position_embeddings): at most {limit.prompt_tokens} prompt tokens fit")
