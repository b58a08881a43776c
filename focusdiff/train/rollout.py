"""One micro-batch of Pair-GRPO experience: rollouts, ground-truth injection, rewards, advantages.

For each item (two prompts) the policy samples G images per prompt with CFG. With
probability p(step), decided once per pair, each prompt's group instead gets G-2 samples
plus two real images: its own ground truth and the other prompt's (a hard negative).
Real images are VQ-encoded into tokens and enter the loss like samples; every image,
real or sampled, is decoded from its tokens and scored by the same judge. Advantages
are normalised over the 2G images of both prompts (the expanded group) for a pair, over
each prompt's G images otherwise. With more rollouts than G per prompt, the images the
loss takes are chosen first (`downsample`: max-variance down-sampling).

All randomness is derived from (run seed, global item index), so a step's experience
does not depend on which process or micro-batch it lands in, nor on a resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focusdiff.errors import FocusdiffError
from focusdiff.judge.base import Judge, JudgeFailure
from focusdiff.model.policy import Policy
from focusdiff.model.sampler import SamplingConfig, decode_tokens, encode_images, sample
from focusdiff.train.items import TrainItem, derived_seed
from focusdiff.train.objective import group_advantages, max_variance_subset

_INJECT, _SAMPLE = 1, 2  # salts of derived seeds


@dataclass
class ItemExperience:
    """One item's images (prompt 1's group, then prompt 2's) and what the loss needs."""

    item: TrainItem
    index: int  # global item index in the run
    injected: bool
    prompts: list[str]  # per image
    tokens: torch.Tensor  # (n, N)
    # (n, N) log-probs from the sampler; NaN for real images, which no sampler drew (the loss re-scores
    # every row; these serve the sampler-vs-loss gap, measured on sampled rows only)
    sampler_logp: torch.Tensor
    is_real: torch.Tensor  # (n,) bool: injected ground truth
    second: torch.Tensor  # (n,) bool: the image is for the item's second prompt
    images: np.ndarray | None = None  # (n, H, W, 3) decoded from the tokens
    rewards: torch.Tensor | None = None  # (n,): the judges' rewards, weighted (one judge: its reward)
    reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # judge name -> (n,) its rewards
    # every sampled and every injected image's reward, kept through down-sampling (for the metrics)
    sampled_rewards: torch.Tensor | None = None
    real_rewards: torch.Tensor | None = None
    sampled_reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # judge name -> its sampled rewards
    advantages: torch.Tensor | None = None  # (n,)
    ref_logp: torch.Tensor | None = None  # (n, N)
    dropped: str | None = None  # why the judge could not score it
    filtered: bool = False  # every group's rewards barely vary (train.min_group_std): scored, not trained on
    extra: dict = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        """Whether the loss takes this item's images."""
        return self.dropped is None and not self.filtered


class RolloutError(FocusdiffError):
    """A rollout could not be built (e.g. an unreadable ground-truth image)."""


def load_ground_truth(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise RolloutError(f"{path}: cannot read ground-truth image ({exc})") from None
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def injects(item: TrainItem, index: int, seed: int, probability: float, enabled: bool) -> bool:
    """The once-per-pair coin flip of ground-truth injection."""
    if not (enabled and item.has_ground_truth) or probability <= 0:
        return False
    return bool(np.random.default_rng(derived_seed(seed, index, _INJECT)).random() < probability)


@torch.no_grad()
def collect(
    policy: Policy,
    items: list[tuple[int, TrainItem]],
    group_size: int,
    seed: int,
    injection_probability: float,
    inject: bool,
    sampling: SamplingConfig,
    attempt: int = 0,
) -> list[ItemExperience]:
    """Sample (and inject) every item's images in one batched sampler call. `attempt` > 0 draws
    the items again with other seeds (group filtering's resampling); injection stays as drawn."""
    plans = []
    prompts, seeds = [], []
    for index, item in items:
        injected = injects(item, index, seed, injection_probability, inject)
        n_sampled = group_size - 2 if injected else group_size
        plans.append((index, item, injected, n_sampled))
        for p, prompt in enumerate(item.prompts):
            prompts += [prompt] * n_sampled
            seeds += [derived_seed(seed, index, _SAMPLE, p, g, *([attempt] if attempt else [])) for g in range(n_sampled)]
    rollout = sample(policy, prompts, seeds, sampling, decode=False) if prompts else None
    out, row = [], 0
    for index, item, injected, n_sampled in plans:
        if injected:
            truth = np.stack([load_ground_truth(path, policy.image_size) for path in item.images])
            real_tokens = encode_images(policy, truth)
            real = torch.stack([real_tokens[0], real_tokens[1], real_tokens[1], real_tokens[0]])  # own, then the other's
            # no teacher-forced pass here: nothing reads a real image's sampler log-probs (a forward of 4 rows saved)
            real_logp = torch.full(real.shape, float("nan"))
        tokens, logps, reals, image_prompts, second = [], [], [], [], []
        for p, prompt in enumerate(item.prompts):
            tokens.append(rollout.tokens[row : row + n_sampled])
            logps.append(rollout.logprobs[row : row + n_sampled])
            reals += [False] * n_sampled
            image_prompts += [prompt] * n_sampled
            second += [p == 1] * n_sampled
            row += n_sampled
            if injected:
                tokens.append(real[2 * p : 2 * p + 2])
                logps.append(real_logp[2 * p : 2 * p + 2])
                reals += [True, True]
                image_prompts += [prompt, prompt]
                second += [p == 1] * 2
        out.append(ItemExperience(
            item=item, index=index, injected=injected, prompts=image_prompts, tokens=torch.cat(tokens),
            sampler_logp=torch.cat(logps), is_real=torch.tensor(reals), second=torch.tensor(second),
        ))
    # An injected pair's ground truths appear twice (under each prompt): each distinct token
    # sequence is decoded once (the VQ decode at 384 px is a large share of a rollout's time).
    distinct, where = torch.unique(torch.cat([e.tokens for e in out]), dim=0, return_inverse=True)
    images = decode_tokens(policy, distinct)[where.numpy()]
    start = 0
    for e in out:
        e.images = images[start : start + len(e.tokens)]
        start += len(e.tokens)
    return out


RewardJudges = Mapping[str, tuple[Judge, float]]  # judge name -> (judge, weight): train.judges, built


def reward(experiences: list[ItemExperience], judges: Judge | RewardJudges, on_failure: str) -> int:
    """Score every image with each judge (one Judge, or several with weights: `train.judges`). A
    failure either fails the step (JudgeFailure, with the items and reasons) or, with
    on_failure="drop", drops each item that has an image some judge could not score; returns
    how many were dropped. No image is ever given a made-up score. An item's `rewards` are the
    judges' weighted mean; each judge's own are in `reward_parts` (advantages normalise them
    one by one)."""
    if isinstance(judges, Judge):
        judges = {"judge": (judges, 1.0)}
    images = [im for e in experiences for im in e.images]
    prompts = [p for e in experiences for p in e.prompts]
    verdicts: dict[str, list] = {}
    for name, (judge, _) in judges.items():
        try:
            verdicts[name] = judge.judge(images, prompts)
        except JudgeFailure as exc:
            if on_failure != "drop":
                raise
            verdicts[name] = exc.verdicts
    total_weight = sum(weight for _, weight in judges.values())
    dropped, start = 0, 0
    for e in experiences:
        mine = {name: v[start : start + len(e.prompts)] for name, v in verdicts.items()}
        start += len(e.prompts)
        failed = {name: sum(x is None for x in v) for name, v in mine.items() if any(x is None for x in v)}
        if failed:
            who = "judge" if len(judges) == 1 else "judge " + ", ".join(failed)
            e.dropped = f"{who} could not score {max(failed.values())} of {len(e.prompts)} images"
            dropped += 1
            continue
        e.reward_parts = {name: torch.tensor([x.score for x in v], dtype=torch.float32) for name, v in mine.items()}
        e.rewards = sum(weight * e.reward_parts[name] for name, (_, weight) in judges.items()) / total_weight
        e.sampled_rewards, e.real_rewards = e.rewards[~e.is_real], e.rewards[e.is_real]
        e.sampled_reward_parts = {name: r[~e.is_real] for name, r in e.reward_parts.items()}
    return dropped


def downsample(e: ItemExperience, keep_per_prompt: int, expand_pair_groups: bool) -> None:
    """Keep the images the loss trains on, in place: the 2G whose rewards vary most over a
    pair's expanded group under Pair-GRPO (from either prompt), else each prompt's G (see
    objective.max_variance_subset). Injected ground truths compete like samples, as they
    are scored like samples. A no-op when an item has no more images than that."""
    if e.item.paired and expand_pair_groups:
        keep = max_variance_subset(e.rewards, 2 * keep_per_prompt)
    else:
        halves = [torch.nonzero(~e.second).flatten(), torch.nonzero(e.second).flatten()]
        keep = torch.cat([h[max_variance_subset(e.rewards[h], keep_per_prompt)] for h in halves])
    if len(keep) == len(e.rewards):
        return
    keep_images(e, torch.sort(keep).values)


def keep_images(e: ItemExperience, keep: torch.Tensor) -> None:
    """Keep only the images at the (ascending) indices `keep`, in place."""
    e.prompts = [e.prompts[i] for i in keep.tolist()]
    e.tokens, e.sampler_logp, e.is_real, e.second = e.tokens[keep], e.sampler_logp[keep], e.is_real[keep], e.second[keep]
    e.images, e.rewards = e.images[keep.numpy()], e.rewards[keep]
    e.reward_parts = {name: r[keep] for name, r in e.reward_parts.items()}


def reward_groups(e: ItemExperience, expand_pair_groups: bool) -> list[torch.Tensor]:
    """The indices of each group the rewards are normalised over: a pair's expanded group
    (both prompts' images) under Pair-GRPO, else one group per prompt."""
    if e.item.paired and expand_pair_groups:
        return [torch.arange(len(e.rewards))]
    groups = [torch.nonzero(~e.second).flatten(), torch.nonzero(e.second).flatten()]
    return [g for g in groups if len(g)]  # a prompt whose group was filtered out has none


def advantages(e: ItemExperience, expand_pair_groups: bool, scale: str = "group",
               batch_std: float | Mapping[str, float] | None = None, std_floor: float = 0.0,
               weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """Each group's advantages (objective.group_advantages) in the item's image order. With
    several judges (`weights` by name), each judge's rewards are normalised on their own
    (`batch_std` then holds one std per judge) and the advantages summed by weight; the trainer
    then normalises the sums over the whole step (objective.batch_normalised: GDPO)."""
    out = torch.zeros_like(e.rewards)
    if weights is None or len(weights) == 1:
        parts = {"": (1.0, e.rewards, batch_std)}
    else:
        parts = {name: (w, e.reward_parts[name], batch_std[name] if batch_std is not None else None)
                 for name, w in weights.items()}
    for group in reward_groups(e, expand_pair_groups):
        for weight, rewards, std in parts.values():
            out[group] += weight * group_advantages(rewards[group], scale=scale, batch_std=std, std_floor=std_floor)
    return out


def low_spread_groups(e: ItemExperience, expand_pair_groups: bool, min_std: float) -> list[torch.Tensor]:
    """The groups whose rewards' std is below `min_std`: they carry no signal (DAPO's dynamic
    sampling, verl's filter_groups), and the advantages would blow their noise up."""
    return [g for g in reward_groups(e, expand_pair_groups) if len(g) < 2 or float(e.rewards[g].std()) < min_std]


def filter_groups(e: ItemExperience, expand_pair_groups: bool, min_std: float) -> int:
    """Take e's low-spread groups out of the loss, in place (an item left with none is marked
    `filtered`: scored and counted, not trained on); returns how many groups were filtered."""
    low = low_spread_groups(e, expand_pair_groups, min_std)
    groups = reward_groups(e, expand_pair_groups)
    if len(low) == len(groups):
        e.filtered = True
    elif low:
        lows = {int(i) for g in low for i in g}
        keep_images(e, torch.tensor([i for i in range(len(e.rewards)) if i not in lows], dtype=torch.long))
    return len(low)
