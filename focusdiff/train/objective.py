"""Pair-GRPO's arithmetic, in small functions each checked against hand-computed numbers.

* `injection_probability`: the ground-truth injection curriculum p(step).
* `group_advantages`: rewards centred over one group and scaled by its std, the step's
  std or nothing; for a pair, the group is expanded to the 2G images of BOTH prompts.
* `batch_normalised`: with several judges, their summed advantages rescaled over the step (GDPO).
* `max_variance_subset`: which m of n rollouts to train on when more are sampled than
  the loss takes (max-variance down-sampling).
* `learning_rate`: the `train.lr` schedule (the reference run's three phases, or cosine).
* `k3_kl`, `clipped_surrogate`, `policy_loss`: the per-token objective (PPO-style
  clipped ratio, plus beta times the k3 KL estimate to a frozen reference policy),
  averaged over an image's tokens, then over images.

Constants and their sources are in ../shared/specs/pair-grpo.md (the reference
FocusDiff code); every one is a parameter here. The curriculum and the schedule take
the config sections themselves (`train.curriculum`, `train.lr`), validated there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusdiff.schedule import three_phase, warmup_cosine
from focusdiff.train.configs import CurriculumConfig, LRConfig


def injection_probability(step: int, c: CurriculumConfig = CurriculumConfig()) -> float:
    """1 up to s1, linear down to `prob` at s2, linear down to 0 at s3, then 0."""
    if step <= c.s1:
        return 1.0
    if step <= c.s2:
        return c.prob + (1 - c.prob) * (c.s2 - step) / (c.s2 - c.s1)
    if step <= c.s3:
        return c.prob - c.prob * (step - c.s2) / (c.s3 - c.s2)
    return 0.0


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, *, scale: str = "group",
                     batch_std: float | None = None, std_floor: float = 0.0) -> torch.Tensor:
    """Rewards centred on their group's mean (the last dimension: one group per row), divided by
    a spread (`train.advantage_scale`):

      group  the group's own unbiased std (GRPO, Pair-GRPO: the reference)
      batch  `batch_std`, one std over every reward of the step (Flow-GRPO's global std)
      none   nothing: centred rewards (TRL's scale_rewards="none")

    The divisor is max(std, std_floor) + eps: with the default floor 0 that is the reference's
    std + 1e-4, which blows a near-zero spread up into full-size advantages; a floor keeps
    them small. For a paired item, pass the 2G rewards of both prompts as one row (the
    expanded group); for an unpaired prompt, its G rewards. A group of one has no spread: its
    advantage is 0 (torch's unbiased std of one value is NaN, which must not leak).
    """
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = rewards.std(-1, keepdim=True, unbiased=True)
    elif scale == "batch":
        if batch_std is None:
            raise ValueError("advantage_scale 'batch' needs the step's reward std (batch_std)")
        std = torch.tensor(batch_std, dtype=rewards.dtype)
    else:
        raise ValueError(f"unknown advantage scale {scale!r}: group, batch or none")
    return centred / (std.clamp_min(std_floor) + eps)


def batch_normalised(advantages: torch.Tensor, mean: float, std: float, eps: float = 1e-4) -> torch.Tensor:
    """GDPO's last step with several judges: the weighted sum of the per-judge group advantages,
    centred on `mean` and divided by `std + eps`, both over every advantage of the step (all
    processes), so that the advantages' size does not grow with the number or the weights of
    the judges (Liu et al. 2026, "GDPO", batch-wise advantage normalisation)."""
    return (advantages - mean) / (std + eps)


def pooled_std(total: float, total_sq: float, n: float) -> float:
    """The unbiased std of n values from their sum and sum of squares (summed over processes)."""
    if n < 2:
        return 0.0
    return max(total_sq - total * total / n, 0.0) ** 0.5 / (n - 1) ** 0.5


def max_variance_subset(rewards: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (ascending) of the m rewards with the largest variance, from n >= m.

    Max-variance down-sampling (PODS: Xu et al. 2025, "Not All Rollouts are Useful"):
    sampling is cheap next to the backward pass, so sample more images than the loss
    takes and keep the ones that carry the most contrast. The optimum is always the i
    highest rewards plus the m - i lowest for some i, so trying each i is exact. Ties are
    broken by a stable sort, so the choice is deterministic.
    """
    n = rewards.shape[0]
    if m >= n:
        return torch.arange(n)
    order = torch.sort(rewards, stable=True).indices
    best, best_var = None, -1.0
    for top in range(m + 1):
        pick = torch.cat([order[: m - top], order[n - top:]])
        var = float(rewards[pick].var(unbiased=False))
        if var > best_var + 1e-12:
            best, best_var = pick, var
    return torch.sort(best).values


def learning_rate(step: int, total_steps: int, lr: LRConfig = LRConfig()) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`, by `lr.schedule`
    (both schedules are implemented once, in focusdiff/schedule.py)."""
    if lr.schedule == "cosine":
        return warmup_cosine(step, lr.peak, lr.warmup, total_steps, lr.min_ratio)
    return three_phase(step, total_steps, lr.peak, lr.warmup, lr.mid, lr.mid_step, lr.final)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1 (>= 0).

    With `clamp`, a token's estimate is capped there (verl's "low_var_kl" caps it at 10) and a
    capped token pulls no gradient. Why: k3's gradient is 1 - exp(ref - logp). Under CFG the
    sampling distribution is sharp, so a token the policy finds unlikely (an injected ground
    truth's, often logp < -50) moves its logp by several nats per step, and exp() of that one
    token's gap can outweigh the whole batch (gradient norms of 1e13, then inf, measured on
    ShapesWorld). The log-ratio is also clamped at 20 first so exp() cannot overflow.
    """
    d = ref_logp - logp
    if clamp is None:
        return torch.exp(d) - d - 1
    d = d.clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1).clamp(max=clamp)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon: float = 0.2,
                      dual_clip: float | None = None):
    """Per-token PPO objective to MINIMISE: -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A).

    `advantages` is per image, broadcast over its tokens. With `dual_clip` = c (> 1), a token
    with A < 0 loses at most -c * A (dual-clip PPO, Ye et al. 2020; verl's clip_ratio_c = 3):
    for A < 0 the ratio is otherwise unbounded above, and a CFG-sharpened token the policy
    found unlikely can gain several nats in one update (ratio e^10, measured). Returns (loss
    per token, whether each token was clipped).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1) if advantages.dim() == logp.dim() - 1 else advantages
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon) * adv
    objective = torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if dual_clip is not None:
        floor = dual_clip * adv
        dual = (adv < 0) & (objective < floor)
        objective = torch.where(dual, floor.expand_as(objective), objective)
        was_clipped = was_clipped | dual
    return -objective, was_clipped


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor  # scalar: mean over tokens of an image, then over images
    kl: torch.Tensor  # scalar, same averaging (of the capped estimate when kl_clamp is set)
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped
    kl_capped_fraction: torch.Tensor  # share of tokens whose k3 estimate hit kl_clamp (0 without it)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    beta: float = 0.04,
    mask: torch.Tensor | None = None,
    kl_clamp: float | None = None,
    dual_clip: float | None = None,
) -> LossParts:
    """Pair-GRPO's loss for images x tokens log-probs; `mask` (same shape) marks real tokens;
    `kl_clamp` caps each token's k3 estimate (see k3_kl); `dual_clip` bounds the loss of
    negative-advantage tokens (see clipped_surrogate)."""
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantages, epsilon, dual_clip)
    kl = k3_kl(logp, ref_logp, kl_clamp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = per_token + beta * kl
    if mask is None:
        mask = torch.ones_like(logp, dtype=torch.bool)
    m = mask.to(logp.dtype)
    per_image = lambda x: (x * m).sum(-1) / m.sum(-1).clamp(min=1)  # noqa: E731
    # The capped mean understates drift; the share of capped tokens is what shows it.
    capped = kl >= kl_clamp if kl_clamp is not None else torch.zeros_like(mask)
    share = lambda flags: (flags & mask).to(logp.dtype).sum().detach() / m.sum().clamp(min=1)  # noqa: E731
    return LossParts(
        loss=per_image(per_token).mean(),
        kl=per_image(kl).mean().detach(),
        clip_fraction=share(was_clipped),
        kl_capped_fraction=share(capped),
    )
