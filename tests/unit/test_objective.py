"""Pair-GRPO's formulas against hand-computed numbers (focusdiff/train/objective.py)."""

from __future__ import annotations

import math

import pytest
import torch

from focusdiff.train.configs import CurriculumConfig, LRConfig
from focusdiff.train.objective import (
    batch_normalised, clipped_surrogate, group_advantages, injection_probability, k3_kl, learning_rate,
    max_variance_subset, policy_loss, pooled_std,
)


def test_injection_curriculum_reference_points():
    assert injection_probability(0) == 1.0 and injection_probability(50) == 1.0
    assert injection_probability(100) == pytest.approx(0.25 + 0.75 * 350 / 400)  # 0.90625
    assert injection_probability(450) == pytest.approx(0.25)
    assert injection_probability(600) == pytest.approx(0.20)  # 0.25 - 0.25 * 150 / 750
    assert injection_probability(1200) == pytest.approx(0.0) and injection_probability(5000) == 0.0
    assert injection_probability(10, CurriculumConfig(s1=0, s2=10, s3=20, prob=0.5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="0 <= s1 < s2 < s3"):
        CurriculumConfig(s1=100, s2=50)


def test_group_advantages_by_hand():
    a = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    std = math.sqrt(5 / 3)  # unbiased: squared deviations 2.25 + 0.25 + 0.25 + 2.25 over 3
    assert a[0].tolist() == pytest.approx([-1.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 1.5 / (std + 1e-4)])
    # The expanded group: prompt 1's two images scored 1, prompt 2's scored 0, normalised together.
    pair = group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert pair.tolist() == pytest.approx([0.5 / (math.sqrt(1 / 3) + 1e-4)] * 2 + [-0.5 / (math.sqrt(1 / 3) + 1e-4)] * 2)
    assert group_advantages(torch.tensor([0.7, 0.7, 0.7])).tolist() == [0.0, 0.0, 0.0]  # no spread, no signal
    assert group_advantages(torch.tensor([0.7])).tolist() == [0.0]  # not NaN


def test_advantage_scales_and_std_floor_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    centred = [-1.5, -0.5, 0.5, 1.5]
    std = math.sqrt(5 / 3)
    assert group_advantages(r, scale="none").tolist() == pytest.approx(centred)  # TRL's scale_rewards="none"
    # Flow-GRPO: centred on the group, divided by the std of the whole step
    assert group_advantages(r, scale="batch", batch_std=2.0).tolist() == pytest.approx([c / 2.0001 for c in centred])
    # a floor above the group's std replaces it; below it, nothing changes
    assert group_advantages(r, std_floor=2.0).tolist() == pytest.approx([c / 2.0001 for c in centred])
    assert group_advantages(r, std_floor=0.5).tolist() == pytest.approx([c / (std + 1e-4) for c in centred])
    # the reference blows a near-zero spread up to full size; a floor keeps it small
    tiny = torch.tensor([0.5, 0.501], dtype=torch.float64)  # two images the judge can barely tell apart
    spread = math.sqrt(0.001**2 / 2)  # unbiased std of the two values
    assert group_advantages(tiny).tolist() == pytest.approx([-0.0005 / (spread + 1e-4), 0.0005 / (spread + 1e-4)])
    assert abs(group_advantages(tiny)[0]) > 0.6  # as large as a clear win
    assert group_advantages(tiny, std_floor=0.1).tolist() == pytest.approx([-0.0005 / 0.1001, 0.0005 / 0.1001])
    with pytest.raises(ValueError, match="advantage_scale 'batch' needs the step's reward std"):
        group_advantages(r, scale="batch")
    with pytest.raises(ValueError, match="unknown advantage scale 'rank': group, batch or none"):
        group_advantages(r, scale="rank")


def test_gdpo_batch_normalisation_centres_and_scales_by_the_steps_moments():
    summed = torch.tensor([2.0, -2.0, 1.0, -1.0])  # two judges' group advantages summed
    # the step's moments over every process, e.g. these four and others: mean 0.5, std 2
    assert batch_normalised(summed, 0.5, 2.0).tolist() == pytest.approx(
        [1.5 / 2.0001, -2.5 / 2.0001, 0.5 / 2.0001, -1.5 / 2.0001])
    # no spread at all (every group's rewards equal): zeros, not a division by zero
    assert batch_normalised(torch.zeros(3), 0.0, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_pooled_std_is_the_unbiased_std_from_sums():
    values = [1.0, 2.0, 3.0, 4.0]
    assert pooled_std(sum(values), sum(v * v for v in values), len(values)) == pytest.approx(math.sqrt(5 / 3))
    # two processes' sums add up to the std of all their rewards
    a, b = [0.1, 0.9, 0.4], [0.7, 0.2]
    sums = [sum(a) + sum(b), sum(v * v for v in a + b), 5]
    assert pooled_std(*sums) == pytest.approx(float(torch.tensor(a + b).std()))
    assert pooled_std(0.7, 0.49, 1) == 0.0  # one value has no spread


def test_max_variance_subset_by_hand():
    r = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.2, 0.4])
    # 4 of 6: the two highest and the two lowest (0.1 0.2 0.7 0.9: variance 0.1119) beat 3 top + 1 bottom
    # (0.1 0.5 0.7 0.9: 0.0875) and 1 top + 3 bottom (0.1 0.2 0.4 0.9: 0.095)
    assert max_variance_subset(r, 4).tolist() == [1, 2, 3, 4]
    # 3 of 6: 0.1 0.2 | 0.9 (0.1267) beats 0.1 | 0.7 0.9 (0.1156)
    assert max_variance_subset(r, 3).tolist() == [1, 2, 4]
    # binary rewards: as many ones as zeros
    binary = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert binary[max_variance_subset(binary, 2)].tolist() == [0.0, 1.0]
    assert sorted(binary[max_variance_subset(binary, 4)].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert max_variance_subset(r, 6).tolist() == list(range(6)) == max_variance_subset(r, 9).tolist()


def test_reference_learning_rate_schedule():
    assert learning_rate(0, 1000) == pytest.approx(1e-7)
    assert learning_rate(99, 1000) == pytest.approx(1e-5)
    assert learning_rate(200, 1000) == pytest.approx(6e-6)  # halfway from 1e-5 to 2e-6
    assert learning_rate(300, 1000) == pytest.approx(2e-6)
    assert learning_rate(999, 1000) == pytest.approx(2e-7)
    assert learning_rate(649, 1000) == pytest.approx(2e-6 + (2e-7 - 2e-6) * 349 / 699)
    with pytest.raises(ValueError, match="warmup <= mid_step"):
        LRConfig(warmup=400, mid_step=300)


def test_k3_kl_by_hand():
    kl = k3_kl(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    assert kl.tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0])  # exp(d) - d - 1 with d = ln 0.5


def test_k3_kl_clamp_caps_the_estimate_and_its_gradient():
    ref = torch.zeros(3)
    logp = torch.tensor([-1.0, -5.0, -100.0], requires_grad=True)  # d = ref - logp = 1, 5, 100
    kl = k3_kl(logp, ref, clamp=10.0)
    assert kl.tolist() == pytest.approx([math.e - 2, 10.0, 10.0])  # exp(5) - 6 = 142.4 is capped; exp(100) too
    kl.sum().backward()
    # d/dlogp (exp(d) - d - 1) = 1 - exp(d) below the cap; a capped token pulls nothing
    assert logp.grad.tolist() == pytest.approx([1 - math.e, 0.0, 0.0])
    assert torch.isinf(k3_kl(torch.tensor([-100.0]), torch.zeros(1))).item()  # unclamped, as in the reference: overflow


def test_dual_clip_bounds_the_loss_of_negative_advantages_by_hand():
    old = torch.zeros(3)
    logp = torch.log(torch.tensor([5.0, 2.0, 5.0]))
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([-1.0, -1.0, 1.0]), epsilon=0.2, dual_clip=3.0)
    # ratio 5, A=-1: min(-5, -1.2) = -5, below 3 * A = -3, so -3; ratio 2, A=-1: -2 (within);
    # ratio 5, A=+1: min(5, 1.2) = 1.2 (the ordinary clip; dual-clip only touches A < 0)
    assert loss.tolist() == pytest.approx([3.0, 2.0, -1.2])
    assert clipped.tolist() == [True, False, True]
    loss_plain, _ = clipped_surrogate(logp, old, torch.tensor([-1.0, -1.0, 1.0]), epsilon=0.2)
    assert loss_plain.tolist() == pytest.approx([5.0, 2.0, -1.2])


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 1.0, 0.5]))
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0, 2.0, -1.0]), epsilon=0.2)
    # ratio 1.5, A=+1: min(1.5, 1.2) = 1.2 (clipped); A=-1: min(-1.5, -1.2) = -1.5 (not clipped);
    # ratio 1: -A; ratio 0.5, A=-1: min(-0.5, -0.8) = -0.8 (clipped).
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -2.0, 0.8])
    assert clipped.tolist() == [True, False, False, True]


def test_policy_loss_means_over_tokens_then_images():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    parts = policy_loss(logp, logp, logp, adv, beta=0.04)
    assert parts.loss.item() == pytest.approx((-1.0 + 2.0) / 2) and parts.kl.item() == 0.0
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ref = torch.log(torch.full((2, 3), 0.5))
    parts = policy_loss(logp, logp, ref, adv, beta=0.5, mask=mask)
    k3 = 0.5 + math.log(2) - 1  # per token, ref = ln 0.5 vs logp = 0
    assert parts.kl.item() == pytest.approx(k3)
    assert parts.loss.item() == pytest.approx(((-1.0 + 0.5 * k3) + (2.0 + 0.5 * k3)) / 2)
    assert parts.clip_fraction.item() == 0.0  # ratio 1: one update per batch never clips
    assert parts.kl_capped_fraction.item() == 0.0  # no cap set


def test_policy_loss_reports_the_share_of_capped_kl_tokens_by_hand():
    logp = torch.tensor([[-1.0, -5.0, -100.0], [0.0, 0.0, 0.0]])  # d = ref - logp = 1, 5, 100; 0, 0, 0
    mask = torch.tensor([[True, True, True], [True, True, False]])
    parts = policy_loss(logp, logp, torch.zeros(2, 3), torch.zeros(2), beta=0.1, mask=mask, kl_clamp=10.0)
    assert parts.kl_capped_fraction.item() == pytest.approx(2 / 5)  # d = 5 and d = 100 hit the cap; 5 real tokens
    assert parts.kl.item() == pytest.approx(((math.e - 2 + 10 + 10) / 3 + 0.0) / 2)  # the capped mean

