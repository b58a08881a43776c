"""Teacher-forced image-token logits: the one forward pass that training losses share.

Supervised fine-tuning (the bootstrap) and the Pair-GRPO loss both need the
generation head's logits for every image token of given rows; keeping this apart
from the sampler means a faster sampler does not count as a change to the
bootstrap's training code (DVC would retrain the shipped base).
"""

from __future__ import annotations

import torch

from focusdiff.model.policy import Policy
from focusdiff.model.prompting import PromptBatch


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
