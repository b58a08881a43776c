"""The Pair-GRPO trainer: items and their order, group building with ground-truth injection,
judge failures, the loop on one and two processes, checkpoints and resume.

The policy is a tiny random-initialised Janus and the judge is the exact checker (a real
backend); the formulas themselves are checked in test_objective.py.
"""

from __future__ import annotations

import json
import math
import re
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from focusdiff.config import load_recipe
from focusdiff.data.schema import load_dataset
from focusdiff.errors import ConfigError, DataError
from focusdiff.judge.base import ImageLike, Judge, JudgeFailure, Verdict
from focusdiff.judge.exact import ExactJudge
from focusdiff.model.loading import load_policy
from focusdiff.model.sampler import SamplingConfig, decode_tokens, encode_images
from focusdiff.model.checkpoints import CheckpointError
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.items import ItemOrder, global_item_index, train_items
from focusdiff.train.rollout import advantages, collect, downsample, filter_groups, load_ground_truth, reward
from focusdiff.train.trainer import TrainingFailed, train

from tests.judges import JudgeGoneAfter
from tests.tiny_models import save_tiny_world
from tests.project import VENV_BIN, REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small ShapesWorld dataset and a tiny random Janus policy saved in transformers format."""
    root = tmp_path_factory.mktemp("grpo")
    return save_tiny_world(root, {"train": 3, "val": 1, "test": 1}, {"train": 3, "val": 1, "test": 1})


def _config(world: Path, run: Path, **over) -> dict:
    cfg = {
        "policy": str(world / "policy"), "data": str(world / "data"), "judge": {"backend": "exact"},
        "group_size": 4, "grad_accum": 2, "steps": 2, "checkpoint_every": 100, "threads": 1,
        "lr": {"peak": 1e-3, "warmup": 1, "mid_step": 2}, "curriculum": {"s1": 1, "s2": 2, "s3": 4},
        "out": str(run / "out"), "metrics_dir": str(run / "metrics"),
    }
    cfg.update(over)
    return cfg


# ----------------------------------------------------------------------------- items


def test_every_pair_and_every_unpaired_prompt_is_used(world):
    ds = load_dataset(world / "data")
    items = train_items(ds)
    train_pairs = [p for p in ds.pairs if p.split == "train"]
    train_prompts = [p for p in ds.prompts if p.split == "train"]
    paired = [i for i in items if i.paired]
    assert [i.id for i in paired] == [p.id for p in train_pairs]  # all of them, not the first half
    unpaired = [i for i in items if not i.paired]
    assert len(unpaired) == 2  # 3 prompts, two at a time: the odd one is paired with the first
    assert {p for i in unpaired for p in i.prompts} == {p.prompt for p in train_prompts}
    assert not any(i.has_ground_truth for i in unpaired) and all(i.has_ground_truth for i in paired)
    assert len(train_items(ds, unpaired=False)) == len(train_pairs)
    # the overfitting check's subset: the first pair of each category, in file order
    first = {}
    for p in train_pairs:
        first.setdefault(p.category, p.id)
    assert len(first) < len(train_pairs)  # so the subset is a real one
    assert [i.id for i in train_items(ds, unpaired=False, pairs_per_category=1)] == list(first.values())


def test_item_order_is_a_permutation_per_epoch_and_processes_tile_the_same_sequence():
    order = ItemOrder(5, seed=3)
    assert sorted(order(k) for k in range(5)) == list(range(5))
    assert sorted(order(k) for k in range(5, 10)) == list(range(5))
    assert [order(k) for k in range(10)] == [ItemOrder(5, seed=3)(k) for k in range(10)]
    # 2 processes x 1 micro-batch cover the slots of 1 process x 2 micro-batches
    two = sorted(global_item_index(s, 0, r, 0, grad_accum=1, world=2, per_micro=1) for s in range(3) for r in range(2))
    one = sorted(global_item_index(s, m, 0, 0, grad_accum=2, world=1, per_micro=1) for s in range(3) for m in range(2))
    assert two == one == list(range(6))


# ----------------------------------------------------------------------------- groups


@pytest.fixture(scope="module")
def policy(world):
    return load_policy(world / "policy")


def test_injected_group_holds_samples_then_own_and_other_ground_truth(world, policy):
    items = [i for i in train_items(load_dataset(world / "data")) if i.paired][:2]
    G = 4
    decoded_rows = []  # what the VQ decoder is given: each distinct token sequence once
    hook = policy.model.model.vqmodel.decoder.register_forward_hook(lambda m, args, out: decoded_rows.append(len(out)))
    try:
        batch = collect(policy, list(enumerate(items)), G, seed=0, injection_probability=1.0, inject=True,
                        sampling=SamplingConfig())
    finally:
        hook.remove()
    distinct = torch.unique(torch.cat([e.tokens for e in batch]), dim=0)
    assert sum(decoded_rows) == len(distinct) == 2 * (2 * (G - 2) + 2)  # the two ground truths of a pair once each
    for e in batch:
        assert e.injected and len(e.tokens) == 2 * G and e.prompts == [e.item.prompts[0]] * G + [e.item.prompts[1]] * G
        truth = encode_images(policy, np.stack([load_ground_truth(p, policy.image_size) for p in e.item.images]))
        assert e.is_real.tolist() == [False, False, True, True] * 2
        # prompt 1's group: its own ground truth, then prompt 2's; prompt 2's group: the reverse
        assert torch.equal(e.tokens[2], truth[0]) and torch.equal(e.tokens[3], truth[1])
        assert torch.equal(e.tokens[6], truth[1]) and torch.equal(e.tokens[7], truth[0])
        assert e.images.shape == (2 * G, policy.image_size, policy.image_size, 3)
        assert np.array_equal(e.images[2], e.images[7]) and np.array_equal(e.images[3], e.images[6])
        alone = decode_tokens(policy, e.tokens[:1]).astype(int)  # each row is its tokens' image (decoded in
        assert np.abs(e.images[:1] - alone).max() <= 1        # another batch: rounding may differ by one level)
    never = collect(policy, list(enumerate(items)), G, seed=0, injection_probability=0.0, inject=True,
                    sampling=SamplingConfig())
    assert not any(e.injected or e.is_real.any() for e in never)
    # the same item index draws the same samples whatever else shares the batch
    alone = collect(policy, [(1, items[1])], G, seed=0, injection_probability=0.0, inject=True, sampling=SamplingConfig())
    assert torch.equal(alone[0].tokens, never[1].tokens)


def test_injection_rate_follows_the_probability(world, policy):
    from focusdiff.train.rollout import injects

    item = next(i for i in train_items(load_dataset(world / "data")) if i.paired)
    rate = np.mean([injects(item, k, seed=1, probability=0.3, enabled=True) for k in range(2000)])
    assert abs(rate - 0.3) < 0.03
    assert not any(injects(item, k, 1, 0.3, enabled=False) for k in range(50))


def test_expanded_group_normalises_over_both_prompts(world, policy):
    item = next(i for i in train_items(load_dataset(world / "data")) if i.paired)
    [e] = collect(policy, [(0, item)], 2, seed=0, injection_probability=0.0, inject=False, sampling=SamplingConfig())
    e.rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # one group of 4: mean 0.5, unbiased std sqrt(1/3)
    expected = float(0.5 / (np.sqrt(1 / 3) + 1e-4))
    assert torch.allclose(advantages(e, expand_pair_groups=True), torch.tensor([expected, expected, -expected, -expected]))
    # per prompt (vanilla GRPO): each half has no spread, so no advantage
    assert torch.equal(advantages(e, expand_pair_groups=False), torch.zeros(4))


def test_downsampling_keeps_the_most_contrasting_images_of_a_group(world, policy):
    items = train_items(load_dataset(world / "data"))
    pair = next(i for i in items if i.paired)
    unpaired = next(i for i in items if not i.paired)
    [e, u] = collect(policy, [(0, pair), (1, unpaired)], 4, seed=0, injection_probability=0.0, inject=False,
                     sampling=SamplingConfig())
    # the expanded group: the 4 of 8 that vary most (two 1s, two 0s), from either prompt
    e.rewards = e.sampled_rewards = torch.tensor([0.6, 1.0, 0.5, 0.9, 0.0, 0.4, 0.1, 0.5])
    tokens = e.tokens.clone()
    downsample(e, keep_per_prompt=2, expand_pair_groups=True)
    assert e.rewards.tolist() == pytest.approx([1.0, 0.9, 0.0, 0.1]) and e.second.tolist() == [False, False, True, True]
    assert torch.equal(e.tokens, tokens[[1, 3, 4, 6]]) and e.prompts == [pair.prompts[0]] * 2 + [pair.prompts[1]] * 2
    assert len(e.images) == len(e.sampler_logp) == len(e.is_real) == 4
    assert len(e.sampled_rewards) == 8  # the step's reward metrics still see every sample
    # per prompt (vanilla GRPO, and any unpaired item): each prompt keeps its own 2 of 4
    u.rewards = torch.tensor([0.6, 1.0, 0.5, 0.9, 0.0, 0.4, 0.1, 0.5])
    downsample(u, keep_per_prompt=2, expand_pair_groups=True)
    assert u.rewards.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.5]) and u.second.tolist() == [False, False, True, True]
    adv = advantages(u, expand_pair_groups=True)  # normalised per prompt over what was kept
    assert adv[:2].tolist() == pytest.approx([0.7070, -0.7070], abs=1e-3)


def test_group_filtering_takes_low_spread_groups_out_of_the_loss(world, policy):
    items = train_items(load_dataset(world / "data"))
    pair = next(i for i in items if i.paired)
    [e, g] = collect(policy, [(0, pair), (1, pair)], 3, seed=0, injection_probability=0.0, inject=False,
                     sampling=SamplingConfig())
    # Pair-GRPO's expanded group: all six rewards within 0.01 -> the whole item is filtered (scored, not trained)
    e.rewards = torch.tensor([0.50, 0.50, 0.51, 0.50, 0.51, 0.50])
    assert filter_groups(e, expand_pair_groups=True, min_std=0.05) == 1 and e.filtered and not e.trains
    assert len(e.tokens) == 6  # its images stay: a filtered item still takes part in the forward pass (weight 0)
    # per-prompt groups (vanilla GRPO): prompt 1 varies, prompt 2 does not -> only prompt 2's images leave
    g.rewards = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.3, 0.3])
    tokens = g.tokens.clone()
    assert filter_groups(g, expand_pair_groups=False, min_std=0.05) == 1 and g.trains
    assert g.rewards.tolist() == [1.0, 0.0, 1.0] and g.second.tolist() == [False] * 3 and torch.equal(g.tokens, tokens[:3])
    assert advantages(g, expand_pair_groups=False).tolist() == pytest.approx([0.5774, -1.1547, 0.5774], abs=1e-3)
    # a spread at or above the threshold stays
    g.rewards = torch.tensor([1.0, 0.0, 1.0])
    assert filter_groups(g, expand_pair_groups=False, min_std=0.05) == 0 and len(g.rewards) == 3


def test_group_filtering_redraws_then_filters_and_counts(world, tmp_path):
    # without injection the random policy draws nothing right: every group is flat, however often redrawn
    cfg = GRPOConfig.model_validate(_config(world, tmp_path, steps=1, inject_ground_truth=False, min_group_std=0.01,
                                            filter_resamples=2))
    logged = []
    with pytest.raises(TrainingFailed, match=r"none of the 1 steps made an update: of 2 items, the judge \(exact\) "
                       r"could not score 0, and group filtering \(min_group_std 0.01\) took the rest out"):
        train(cfg, ExactJudge(), log=lambda m, s: logged.append(m))
    (metrics,) = logged
    assert metrics["train/resampled_items"] == 2 * 2  # both items, twice
    assert metrics["train/redrawn_images"] == 2 * 2 * 8  # each redraw samples 4 images for each of 2 prompts
    assert metrics["train/filtered_groups"] == 2  # one expanded group per pair item
    assert "train/reward_mean" not in metrics  # nothing trained: no update, and no made-up reward statistics


def test_several_judges_are_normalised_one_by_one_then_summed_by_weight(world, policy):
    item = next(i for i in train_items(load_dataset(world / "data")) if i.paired)
    [e] = collect(policy, [(0, item)], 2, seed=0, injection_probability=0.0, inject=False, sampling=SamplingConfig())
    e.reward_parts = {"a": torch.tensor([1.0, 0.0, 1.0, 0.0]), "b": torch.tensor([0.5, 0.5, 0.6, 0.4])}
    e.rewards = (e.reward_parts["a"] + 0.5 * e.reward_parts["b"]) / 1.5
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # judge a: mean 0.5, unbiased std sqrt(1/3)
    b = 0.1 / (math.sqrt(0.02 / 3) + 1e-4)  # judge b: mean 0.5, deviations 0, 0, 0.1, -0.1
    got = advantages(e, expand_pair_groups=True, weights={"a": 1.0, "b": 0.5})
    assert got.tolist() == pytest.approx([a, -a, a + 0.5 * b, -a - 0.5 * b], rel=1e-5)
    # GDPO's point: normalising the weighted sum instead would let judge a's larger spread drown judge b
    assert not torch.allclose(got, advantages(e, expand_pair_groups=True))


def test_several_judges_score_every_image_and_a_failure_of_any_drops_the_item(world, policy):
    items = train_items(load_dataset(world / "data"))
    batch = collect(policy, [(0, items[0]), (1, items[1])], 2, seed=0, injection_probability=0.0, inject=False,
                    sampling=SamplingConfig())
    judges = {"exact": (ExactJudge(), 1.0), "flaky": (JudgeGoneAfter(4), 0.5)}  # answers the first item only
    assert reward(batch, judges, "drop") == 1
    assert set(batch[0].reward_parts) == {"exact", "flaky"} and batch[0].rewards is not None
    assert torch.allclose(batch[0].rewards, (batch[0].reward_parts["exact"] + 0.5 * batch[0].reward_parts["flaky"]) / 1.5)
    assert batch[1].dropped == "judge flaky could not score 4 of 4 images" and batch[1].rewards is None


def test_a_run_with_two_judges_logs_each_judges_reward(world, tmp_path):
    judges = [{"name": "checker", "backend": "exact"}, {"name": "second", "backend": "exact", "weight": 0.5}]
    plain = {k: v for k, v in _config(world, tmp_path, steps=1).items() if k != "judge"}
    cfg = GRPOConfig.model_validate({**plain, "judges": judges})
    logged = []
    train(cfg, {"checker": ExactJudge(), "second": ExactJudge()}, log=lambda m, s: logged.append(m))
    (metrics,) = logged
    assert metrics["train/reward_mean.judge.checker"] == metrics["train/reward_mean.judge.second"] == \
        pytest.approx(metrics["train/reward_mean"])
    with pytest.raises(ConfigError, match=r"the built judges \(checker\) are not train.judges' \(checker, second\)"):
        train(cfg, {"checker": ExactJudge()})
    with pytest.raises(ConfigError, match=r"train.judges names 2 judges \(checker, second\): give one built judge per name"):
        train(cfg, ExactJudge())


def test_several_judges_advantages_are_normalised_over_the_step_gdpo(world, policy, tmp_path):
    """GDPO's last step: the judges' weighted sums are centred and scaled over every image of the
    step, so that two judges do not double the advantages and scaling every weight changes nothing."""
    from accelerate import Accelerator

    from focusdiff.train.trainer import assign_advantages

    item = next(i for i in train_items(load_dataset(world / "data")) if i.paired)
    plain = {k: v for k, v in _config(world, tmp_path).items() if k != "judge"}
    got = {}
    for scale in (1.0, 3.0):
        [e] = collect(policy, [(0, item)], 2, seed=0, injection_probability=0.0, inject=False, sampling=SamplingConfig())
        e.reward_parts = {"a": torch.tensor([1.0, 0.0, 1.0, 0.0]), "b": torch.tensor([0.5, 0.5, 0.6, 0.4])}
        e.rewards = (e.reward_parts["a"] + 0.5 * e.reward_parts["b"]) / 1.5
        judges = [{"name": "a", "backend": "exact", "weight": scale}, {"name": "b", "backend": "exact", "weight": 0.5 * scale}]
        cfg = GRPOConfig.model_validate({**plain, "judges": judges})
        assign_advantages(Accelerator(cpu=True), [[e]], cfg)
        got[scale] = e.advantages
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # each judge's group advantages, as in the test above
    b = 0.1 / (math.sqrt(0.02 / 3) + 1e-4)
    summed = [a, -a, a + 0.5 * b, -a - 0.5 * b]  # mean 0 over the step (this one item)
    std = math.sqrt(sum(x * x for x in summed) / 3)
    assert got[1.0].tolist() == pytest.approx([x / (std + 1e-4) for x in summed], rel=1e-5)
    assert float(got[1.0].std()) == pytest.approx(1.0, abs=1e-3)  # one judge's size, not two judges'
    assert got[3.0].tolist() == pytest.approx(got[1.0].tolist(), rel=1e-4)  # the weights are relative


def test_judges_config_errors_name_the_field():
    two = [{"name": "a", "backend": "exact"}, {"name": "b"}]
    with pytest.raises(ValueError, match=r"give train.judge \(one reward judge\) or train.judges \(several\), not both"):
        GRPOConfig.model_validate({"judge": {"backend": "exact"}, "judges": two})
    with pytest.raises(ValueError, match=r"train.judges: names must differ, got \['a', 'a'\]"):
        GRPOConfig.model_validate({"judges": [{"name": "a"}, {"name": "a", "backend": "exact"}]})
    with pytest.raises(ValueError, match=r"judges\n  List should have at least 2 items"):
        GRPOConfig.model_validate({"judges": [{"name": "a"}]})


def test_options_that_would_do_nothing_are_refused_naming_both_fields():
    with pytest.raises(ValueError, match=r"filter_resamples \(2\) redraws the groups min_group_std finds: set "
                                         r"min_group_std too, or filter_resamples to 0"):
        GRPOConfig.model_validate({"filter_resamples": 2})
    with pytest.raises(ValueError, match=r"std_floor \(0.1\) floors the divisor, and advantage_scale 'none' "
                                         r"divides by nothing: set one of them"):
        GRPOConfig.model_validate({"std_floor": 0.1, "advantage_scale": "none"})


def test_more_rollouts_than_the_group_takes_is_validated(world, tmp_path):
    with pytest.raises(ValueError, match=r"rollouts_per_prompt \(3\) must be at least group_size \(4\)"):
        GRPOConfig.model_validate(_config(world, tmp_path, rollouts_per_prompt=3))


class _RefusingJudge(Judge):
    """A judge that cannot answer about prompts with the word 'triangle' (as a server that errors would)."""

    name = "refusing"

    async def _judge_one(self, image: ImageLike, prompt: str) -> Verdict:
        if "triangle" in prompt:
            raise ConnectionError("judge unavailable")
        return await ExactJudge()._judge_one(image, prompt)


def test_judge_failure_fails_the_step_or_drops_the_item_never_a_score(world, policy):
    items = train_items(load_dataset(world / "data"))
    bad = [i for i in items if any("triangle" in p for p in i.prompts)][:1]
    good = [i for i in items if not any("triangle" in p for p in i.prompts)][:1]
    assert bad and good
    batch = collect(policy, list(enumerate(bad + good)), 2, 0, 0.0, False, SamplingConfig())
    with pytest.raises(JudgeFailure, match="refusing.*judge unavailable"):
        reward(batch, _RefusingJudge(), on_failure="fail")
    assert all(e.rewards is None for e in batch)
    assert reward(batch, _RefusingJudge(), on_failure="drop") == 1
    assert batch[0].rewards is None and "could not score" in batch[0].dropped
    assert batch[1].dropped is None and batch[1].rewards is not None


# ----------------------------------------------------------------------------- the loop


def test_training_moves_the_policy_and_tracks_what_it_did(world, tmp_path):
    # 6 rollouts per prompt (4 when 2 ground truths are injected), of which the loss takes G = 4
    cfg = GRPOConfig.model_validate(_config(world, tmp_path, steps=3, grid_every=1, updates_per_batch=2, beta=0.1,
                                            rollouts_per_prompt=6))
    logged, grids, progress = [], [], []
    result = train(cfg, ExactJudge(), log=lambda m, s: logged.append((s, m)), log_grid=lambda im, s: grids.append(s),
                   on_progress=lambda done, m: progress.append((done, m["train/reward_mean"])))
    assert result.out == cfg.out and [s for s, _ in logged] == [0, 1, 2] and grids == [0, 1, 2]
    assert progress == [(s + 1, m["train/reward_mean"]) for s, m in logged]  # after every step, with its metrics
    first = logged[0][1]
    for key in ("train/reward_mean", "train/reward_std", "train/kl", "train/kl_capped_fraction", "train/clip_fraction",
                "train/lr", "train/grad_norm",
                "train/injection_probability", "train/injected_items", "train/dropped_items", "train/images_per_s",
                "time/step_s", "time/rollout_s", "time/judge_s", "time/logprobs_s", "time/backward_s"):
        assert key in first, key
    assert first["train/injection_probability"] == 1.0 and first["train/injected_items"] == 2  # every pair injected
    assert any(k.startswith("train/reward_mean.") for k in first)  # per category
    assert first["train/logprob_gap"] < 1e-4  # the sampler's log-probs are the loss's distribution
    record = json.loads((cfg.out / "record.json").read_text())
    assert record["algorithm"] == "pair-grpo" and record["totals"]["images"] == 3 * 2 * 2 * 4  # the loss's images
    before, after = load_file(world / "policy" / "model.safetensors"), load_file(cfg.out / "model.safetensors")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 0
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.vqmodel"))  # the VQ is frozen
    assert not cfg.checkpoints.exists()  # removed once the output is written
    assert load_policy(cfg.out).num_image_tokens == 64  # a complete transformers checkpoint (tied weights too)


def test_batch_scaled_advantages_with_a_floor_train_and_log_the_zero_spread_share(world, tmp_path):
    from focusdiff.judge.select import build_judge
    from tests.tiny_models import save_tiny_llava

    # a tiny random VLM through the hf backend: yes-probabilities that differ from image to image
    judge = {"backend": "hf", "model": str(save_tiny_llava(tmp_path / "judge", head_std=0.3))}
    cfg = GRPOConfig.model_validate(_config(world, tmp_path / "a", steps=1, advantage_scale="batch", std_floor=0.05,
                                            judge=judge))
    logged = []
    train(cfg, build_judge(cfg.judge), log=lambda m, s: logged.append(m))
    assert logged[0]["train/zero_std_fraction"] == 0.0 and logged[0]["train/grad_norm"] > 0
    # the exact checker on a random policy: nothing drawn right, every group's rewards equal
    cfg = GRPOConfig.model_validate(_config(world, tmp_path / "b", steps=1, advantage_scale="batch",
                                            inject_ground_truth=False))
    logged = []
    train(cfg, ExactJudge(), log=lambda m, s: logged.append(m))
    assert logged[0]["train/zero_std_fraction"] == 1.0 and logged[0]["train/reward_std"] == 0.0


def test_overlapped_judging_gives_the_same_run_and_says_what_it_hid(world, tmp_path):
    """The judge scores a micro-batch on its own thread while the next is sampled: the same
    rewards, the same weights; time/judge_overlap_s is the judge time hidden."""
    over = {"steps": 2, "grad_accum": 3, "beta": 0.1, "min_group_std": 0.01, "filter_resamples": 1}
    inline = GRPOConfig.model_validate(_config(world, tmp_path / "inline", **over))
    overlapped = GRPOConfig.model_validate(_config(world, tmp_path / "overlap", overlap_judging=True, **over))
    logs: dict[str, list] = {"inline": [], "overlap": []}
    train(inline, ExactJudge(), log=lambda m, s: logs["inline"].append(m))
    train(overlapped, ExactJudge(), log=lambda m, s: logs["overlap"].append(m))
    a, b = load_file(inline.out / "model.safetensors"), load_file(overlapped.out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(logs["inline"], logs["overlap"]):
        assert {k: v for k, v in x.items() if k.startswith("train/") and k != "train/images_per_s"} == \
               {k: v for k, v in y.items() if k.startswith("train/") and k != "train/images_per_s"}
        assert "time/judge_overlap_s" not in x and y["time/judge_overlap_s"] >= 0
    # a judge that fails on its thread fails the step as it would inline
    with pytest.raises(JudgeFailure, match="judge went away"):
        train(GRPOConfig.model_validate(_config(world, tmp_path / "gone", overlap_judging=True, steps=2)),
              JudgeGoneAfter(20))


def test_vanilla_grpo_is_the_same_trainer_with_pairing_off(world, tmp_path):
    cfg = GRPOConfig.model_validate(_config(world, tmp_path, steps=1, expand_pair_groups=False, inject_ground_truth=False))
    logged = []
    train(cfg, ExactJudge(), log=lambda m, s: logged.append(m))
    assert cfg.algorithm == "grpo" and logged[0]["train/injected_items"] == 0


@pytest.mark.parametrize("norm", [float("inf"), float("nan")])
def test_a_non_finite_gradient_norm_stops_training_and_says_where(norm):
    """A diverged step (an overflowing KL gave an infinite norm, then NaN) never reaches the
    optimizer: the run stops, naming the step and what to change."""
    from focusdiff.train.trainer import TrainingDiverged, check_gradient_norm

    check_gradient_norm(17, 199.0)  # large but finite: clipping handles it
    with pytest.raises(TrainingDiverged, match=f"step 18: the gradient norm is {norm} .*newest one on disk is intact"):
        check_gradient_norm(18, norm)


def test_bad_recipe_names_the_key(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"group_size": 1, "judge": {"backend": "openai"}}))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "recipe.yaml: group_size: Input should be greater than or equal to 2" in str(err.value)
    assert "judge: the openai judge backend needs base_url and model" in str(err.value)
    with pytest.raises(ConfigError, match="recipe.yaml: recipe not found"):
        load_recipe(tmp_path / "missing" / "recipe.yaml")


# ----------------------------------------------------------------------------- processes, checkpoints


def _cli(*args: str) -> list[str]:
    return [str(VENV_BIN / "focusdiff"), *args]


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FOCUSDIFF_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return env


def test_two_processes_match_one_process_with_the_same_global_batch(world, tmp_path):
    """DDP over 2 gloo processes (1 micro-batch each) = 1 process accumulating 2 micro-batches."""
    one = _write(tmp_path / "one.yaml", _config(world, tmp_path / "one", grad_accum=2))
    two = _write(tmp_path / "two.yaml", _config(world, tmp_path / "two", grad_accum=1))
    env = _env(tmp_path)
    from focusdiff.stages.train import write_metrics

    write_metrics(load_recipe(one), train(load_recipe(one), ExactJudge()))  # in-process: no start-up
    launch = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
              str(29500 + os.getpid() % 1000), str(VENV_BIN / "focusdiff"), "train", "-c", str(two), "-p",
              str(tmp_path / "none.yaml")]
    proc = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "out"), _weights(tmp_path / "two" / "out")
    start = _weights(world / "policy")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-5  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    curve_one = (tmp_path / "one" / "metrics" / "train_curve.csv").read_text().splitlines()
    curve_two = (tmp_path / "two" / "metrics" / "train_curve.csv").read_text().splitlines()
    numbers = lambda rows: [float(x) for r in rows[1:] for x in r.split(",")[:-1]]  # noqa: E731 (all but images/s)
    assert numbers(curve_one) == pytest.approx(numbers(curve_two), abs=1e-6)
    assert proc.stdout.count("MLflow run:") == 1  # only the main process tracks


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(world, tmp_path):
    steps = {"steps": 6, "checkpoint_every": 2, "beta": 0.1}
    whole = _write(tmp_path / "whole.yaml", _config(world, tmp_path / "whole", **steps))
    killed = _write(tmp_path / "killed.yaml", _config(world, tmp_path / "killed", **steps))
    env, none = _env(tmp_path), str(tmp_path / "none.yaml")
    train(load_recipe(whole), ExactJudge())
    ckpts = tmp_path / "killed" / ".out.checkpoints"
    proc = subprocess.Popen(_cli("train", "-c", str(killed), "-p", none), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (ckpts / "step-00000002").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "out").exists()
    done = subprocess.run(_cli("train", "-c", str(killed), "-p", none), cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    record = json.loads((tmp_path / "killed" / "out" / "record.json").read_text())
    assert record["resumed_from"] >= 2
    a, b = _weights(tmp_path / "whole" / "out"), _weights(tmp_path / "killed" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = (tmp_path / "killed" / "metrics" / "train_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 6  # the steps before the kill are in the curve too




def test_corrupt_checkpoint_is_reported_not_loaded(world, tmp_path):
    cfg = GRPOConfig.model_validate(_config(world, tmp_path, steps=3, checkpoint_every=2))
    from focusdiff.train import checkpoint

    # a judge that stops answering during step 3 (after the step-2 checkpoint): the run fails there
    per_step = 2 * 1 * 2 * 4  # micro-batches x items x prompts x G
    with pytest.raises(JudgeFailure, match="judge went away"):
        train(cfg, JudgeGoneAfter(2 * per_step))
    [(step, path)] = checkpoint.step_dirs(cfg.checkpoints)
    assert step == 2
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 differs .*corrupt"):
        train(cfg, ExactJudge())
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json: missing \(partial checkpoint\)"):
        train(cfg, ExactJudge())


# ----------------------------------------------------------------------------- recipes and launch configs


REPO = REPO_ROOT


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_validate(recipe):
    cfg = load_recipe(recipe)
    assert cfg.algorithm == "pair-grpo" and cfg.mixed_precision == "bf16"
    assert cfg.judge.backend == "openai" and "api_key" not in recipe.read_text().replace("api_key_env", "")


def test_launch_configs_point_at_existing_deepspeed_files():
    for path in sorted((REPO / "infra" / "accelerate").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["distributed_type"] in {"DEEPSPEED", "MULTI_GPU", "MULTI_CPU"}, path
        if cfg["distributed_type"] == "DEEPSPEED":
            ds = json.loads((REPO / cfg["deepspeed_config"]["deepspeed_config_file"]).read_text())
            assert ds["zero_optimization"]["stage"] == (3 if "zero3" in path.name else 2)
            # no dataloader is prepared, so the micro-batch (in items) must be given
            assert ds["train_micro_batch_size_per_gpu"] == 1


def test_ablation_runs_cell_by_cell_and_its_records_rebuild_the_tables(world, tmp_path):
    from focusdiff.config import load_params
    from focusdiff.eval.configs import EvalConfig
    from focusdiff.records import RecordError
    from focusdiff.stages.ablate import REPEAT_SEED_STRIDE, load_record, markdown, report, run_ablation, table

    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={
        "train": GRPOConfig.model_validate(_config(world, tmp_path, steps=1)),
        "evaluate": EvalConfig.model_validate({"data": str(world / "data"), "bootstrap": 0}),
    })
    out, results = tmp_path / "ablate", tmp_path / "results"
    cells = run_ablation(params, seeds=[0, 1], out=out, variants=["grpo", "pair-grpo"], results=results)
    assert {(c.variant, c.judge) for c in cells} == {(v, j) for v in ("base", "grpo", "pair-grpo") for j in ("reward", "exact")}
    rows = table(cells, "exact")
    assert [r["variant"] for r in rows] == ["base", "grpo", "pair-grpo"] and all(r["seeds"] == 2 for r in rows)
    assert rows[0]["paircomp.s_g"][1] == 0.0  # the base is one measurement, repeated
    text = markdown(cells)
    assert "**Scored by the exact checker (held out)**" in text and "| pair-grpo | " in text
    # one small record per cell: scores, configuration hash, git commit, wall time
    assert sorted(p.name for p in results.iterdir()) == ["base.json", "grpo-seed0.json", "grpo-seed1.json",
                                                         "pair-grpo-seed0.json", "pair-grpo-seed1.json"]
    record = load_record(results / "grpo-seed0.json")
    assert record.variant == "grpo" and record.seed == 0 and len(record.train_key) == 64
    assert record.wall_s["train_s"] > 0 and record.wall_s["eval_s"] > 0 and record.git.get("git.commit") is not None
    assert load_record(results / "base.json").wall_s["train_s"] == 0.0
    # the tables come back from the records alone (the README's)
    shutil.rmtree(out)
    rebuilt = report(results)
    assert (results / "table.md").read_text() == rebuilt + "\n"
    assert rebuilt.startswith(text)
    # and each variant's paired difference to the base and to vanilla GRPO, with its interval
    assert "**s_g difference, pair by pair (95% interval of the paired bootstrap)**" in rebuilt
    assert "**s_a difference, pair by pair" in rebuilt and "s_a differences leave out" not in rebuilt  # new records keep a
    exact = record.scores[record.evaluations["exact"][0]]
    assert exact.a is not None and len(exact.a) == len(exact.g) and all(a >= g for a, g in zip(exact.a, exact.g))
    assert re.search(r"^\| pair-grpo \| [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\] \| ", rebuilt, re.MULTILINE), rebuilt
    assert "| vs base (exact checker) | vs grpo (exact checker) |" in rebuilt
    assert [r["variant"] for r in table([c for p in sorted(results.glob("*.json")) for c in load_record(p).cells()],
                                        "exact")] == ["base", "grpo", "pair-grpo"]

    # a rerun with the same configuration skips every finished cell: nothing trains (no policy is left to reuse)
    again = run_ablation(params, seeds=[0, 1], out=out, variants=["grpo", "pair-grpo"], results=results)
    assert [c.__dict__ for c in again if c.variant != "base"] == [c.__dict__ for c in cells if c.variant != "base"]
    assert not (out / "grpo-seed0" / "policy").exists()
    # a damaged record is an error naming it; a record of another configuration is never overwritten
    (results / "grpo-seed1.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"grpo-seed1\.json: Invalid JSON"):
        run_ablation(params, seeds=[1], out=out, variants=["grpo"], results=results)
    other = params.model_copy(update={"train": params.train.model_copy(update={"beta": 0.5})})
    with pytest.raises(DataError, match=r"grpo-seed0\.json: this cell was run with another training configuration"):
        run_ablation(other, seeds=[0], out=out, variants=["grpo"], results=results)
    elsewhere = tmp_path / "results-beta"
    run_ablation(other, seeds=[0], out=out, variants=["grpo"], results=elsewhere)
    trained = out / "grpo-seed0" / "policy" / "model.safetensors"
    assert trained.is_file()

    # more evaluation repeats score the trained policy again with other seeds, without training again
    before = trained.stat().st_mtime_ns
    first = run_ablation(other, seeds=[0], out=out, variants=["grpo"], results=elsewhere)
    two = run_ablation(other, seeds=[0], out=out, variants=["grpo"], eval_repeats=2, results=elsewhere)
    assert trained.stat().st_mtime_ns == before
    second = json.loads((out / "grpo-seed0" / "eval-r1" / "paircomp" / "generation.json").read_text())
    assert second["seed"] == params.evaluate.seed + REPEAT_SEED_STRIDE
    saved = load_record(elsewhere / "grpo-seed0.json").scores
    assert len(saved) == 2  # 2 repeats; this test's reward judge is the exact checker, so one score serves both
    once = next(c for c in first if c.variant == "grpo" and c.judge == "exact").metrics["paircomp.s_g"]
    repeats = [m.metrics["paircomp.s_g"] for m in saved.values()]
    mean = next(c for c in two if c.variant == "grpo" and c.judge == "exact").metrics["paircomp.s_g"]
    assert once in repeats and mean == pytest.approx(np.mean(repeats))
    with pytest.raises(ValueError, match="eval_repeats must be >= 1, got 0"):
        run_ablation(other, seeds=[0], out=out, variants=["grpo"], eval_repeats=0, results=elsewhere)


def test_paired_differences_of_ablation_records_by_hand():
    """Per pair, g_i averaged over a variant's seeds; the difference is a mean of category means."""
    from focusdiff.stages.ablate import CellRecord, Score, differences_markdown, missing_pair_means, paired_differences

    def record(variant, seed, g):
        score = Score(metrics={"paircomp.s_g": 100 * float(np.mean(g))}, pairs_sha256="suite",
                      categories=["color", "color", "text"], g=g)
        return CellRecord(variant=variant, seed=seed, train_key="k", evaluations={"exact": ["e"]}, scores={"e": score},
                          git={}, wall_s={"train_s": 0.0, "eval_s": 0.0}, finished_at="2026-12-06T00:00:00Z")

    records = [record("base", None, [0.2, 0.4, 0.5]),
               record("grpo", 0, [0.3, 0.5, 0.5]), record("grpo", 1, [0.3, 0.3, 0.5]),  # mean [0.3, 0.4, 0.5]
               record("pair-grpo", 0, [0.5, 0.4, 0.6])]
    diffs = paired_differences(records)
    # pair-grpo - grpo: color pairs +0.2, 0.0 -> +0.1; text +0.1 -> s_g difference 100 * (0.1 + 0.1) / 2 = 10
    observed, low, high = diffs["exact", "pair-grpo", "grpo"]
    assert observed == pytest.approx(10.0) and 5.0 - 1e-9 <= low <= high <= 15.0 + 1e-9  # text never moves; color 0..0.2
    assert diffs["exact", "grpo", "base"][0] == pytest.approx(100 * (0.05 + 0.0) / 2)
    assert ("exact", "base", "grpo") not in diffs and ("reward", "pair-grpo", "grpo") not in diffs
    assert "| pair-grpo | +12.5 [" in differences_markdown(diffs)  # vs base: color (0.3 + 0) / 2, text 0.1 -> 12.5
    other = records + [record("grpo", 2, [0.1, 0.1, 0.1]).model_copy(update={"scores": {"e": Score(
        metrics={}, pairs_sha256="another", categories=["color", "color", "text"], g=[0.1, 0.1, 0.1])}})]
    with pytest.raises(DataError, match="2 different pair suites"):
        paired_differences(other)
    # s_a pair by pair: only records that kept per-pair a; grpo seed 1 did not, so grpo is seed 0 alone
    with_a = [r.model_copy(update={"scores": {"e": r.scores["e"].model_copy(update={"a": a})}}) if a else r
              for r, a in zip(records, ([0.5, 0.5, 0.75], [0.5, 0.75, 0.75], None, [1.0, 0.5, 1.0]))]
    diffs_a = paired_differences(with_a, "a")
    # pair-grpo - grpo seed 0: color +0.5, -0.25 -> +0.125; text +0.25 -> 100 * (0.125 + 0.25) / 2 = 18.75
    assert diffs_a["exact", "pair-grpo", "grpo"][0] == pytest.approx(18.75)
    assert diffs_a["exact", "grpo", "base"][0] == pytest.approx(100 * (0.125 + 0.0) / 2)
    assert missing_pair_means(with_a) == ["grpo seed 1"]
    assert "**s_a difference" in differences_markdown(diffs_a, "a")
    assert paired_differences(records, "a") == {}  # no record kept a: nothing to compare
    with pytest.raises(ValueError, match="measure must be 'g' or 'a', got 's_g'"):
        paired_differences(records, "s_g")


def test_pair_means_are_filled_in_only_from_the_evaluation_a_record_scored(tmp_path, capsys):
    """`ablate --add-pair-means`: a record's per-pair a comes from its cell's pairs.jsonl when that
    file has the record's suite and g; another evaluation (other g) is named and left alone."""
    from focusdiff.stages.ablate import CellRecord, Score, _suite_hash, add_pair_means, load_record

    rows = [{"category": "color", "caption1": f"a{i}", "caption2": f"b{i}", "g": g, "a": a}
            for i, (g, a) in enumerate([(0.0, 0.5), (1.0, 1.0)])]
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    for variant, g in (("grpo", [0.0, 1.0]), ("pair-grpo", [0.0, 0.0])):
        score = Score(metrics={}, pairs_sha256=_suite_hash(rows), categories=["color", "color"], g=g)
        record = CellRecord(variant=variant, seed=0, train_key="k", evaluations={"exact": ["e"]}, scores={"e": score},
                            git={}, wall_s={"train_s": 0.0, "eval_s": 0.0}, finished_at="2026-12-06T00:00:00Z")
        (results / f"{variant}-seed0.json").write_text(record.model_dump_json())
        (out / f"{variant}-seed0" / "eval" / "paircomp").mkdir(parents=True)
        (out / f"{variant}-seed0" / "eval" / "paircomp" / "pairs.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    (results / "pair-grpo-lora-seed0.json").write_text(
        record.model_copy(update={"variant": "pair-grpo-lora"}).model_dump_json())  # its outputs are gone
    assert add_pair_means(results, out) == ["grpo-seed0"]
    assert load_record(results / "grpo-seed0.json").scores["e"].a == [0.5, 1.0]
    assert load_record(results / "pair-grpo-seed0.json").scores["e"].a is None  # other g: not its evaluation
    said = capsys.readouterr().out
    assert "pair-grpo-lora-seed0.json: no " in said and "its per-pair a stays unknown" in said
    assert "pair-grpo-seed0.json: " in said and "is not the evaluation it recorded (another suite or other g)" in said
    assert add_pair_means(results, out) == []  # nothing left that can be filled in


def test_evaluation_fields_added_later_keep_the_keys_of_cells_scored_before_them():
    from focusdiff.config import load_params
    from focusdiff.judge.spec import JudgeSpec
    from focusdiff.stages.ablate import EVAL_FIELDS_ADDED, _eval_config, _eval_key, _hash

    params = load_params(REPO / "params.yaml")
    spec = JudgeSpec(backend="exact")
    before = _eval_config(params, Path("."), spec, 0).model_dump(mode="json", exclude={"out", "metrics_dir", "policy"})
    for path in EVAL_FIELDS_ADDED:
        section, field = path.split(".")
        del before[section][field]  # the configuration as it was dumped before the field existed
    assert _eval_key(params, spec, 0) == _hash(before)
    fewer = params.evaluate.t2i_compbench.model_copy(update={"images_per_prompt": 2})
    changed = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"t2i_compbench": fewer})})
    assert _eval_key(changed, spec, 0) != _eval_key(params, spec, 0)  # another value is another protocol


def test_cells_scored_with_different_reward_judges_are_named_under_the_tables(tmp_path):
    from focusdiff.judge.spec import JudgeSpec
    from focusdiff.stages.ablate import CellRecord, judge_fingerprint, judges_note

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"weights")
    (judge / "record.json").write_text("{}")
    first = judge_fingerprint(JudgeSpec(backend="shapes", model=str(judge)))
    (judge / "record.json").write_text('{"mlflow_run_id": "another"}')  # the record is not the judge
    assert judge_fingerprint(JudgeSpec(backend="shapes", model=str(judge))) == first and len(first) == 64
    (judge / "model.safetensors").write_bytes(b"retrained")
    second = judge_fingerprint(JudgeSpec(backend="shapes", model=str(judge)))
    assert second != first and judge_fingerprint(JudgeSpec(backend="exact")) is None

    def record(variant, seed, fingerprint):
        return CellRecord(variant=variant, seed=seed, train_key="k", evaluations={}, scores={}, git={},
                          wall_s={"train_s": 0.0, "eval_s": 0.0}, finished_at="2026-12-06T00:00:00Z",
                          reward_judge_sha256=fingerprint)

    assert judges_note([record("base", None, first), record("grpo", 0, first)]) == ""
    note = judges_note([record("base", None, None), record("grpo", 0, first), record("grpo", 1, second)])
    assert "**The cells' reward judges differ**" in note and "not recorded: base" in note
    assert f"{first[:12]}: grpo seed 0" in note and f"{second[:12]}: grpo seed 1" in note

    # new cells are refused against a results folder whose cells had another reward judge
    from focusdiff.errors import DataError
    from focusdiff.stages.ablate import _check_reward_judge

    results = tmp_path / "results"
    results.mkdir()
    (results / "grpo-seed0.json").write_text(record("grpo", 0, first).model_dump_json())
    with pytest.raises(DataError, match=rf"judge: this reward judge \(weights {second[:12]}\) is not the one the cells in "
                                        rf".*results were trained against \({first[:12]}\); restore that judge"):
        _check_reward_judge(JudgeSpec(backend="shapes", model=str(judge)), results, second)
    (results / "grpo-seed1.json").write_text(record("grpo", 1, second).model_dump_json())
    _check_reward_judge(JudgeSpec(backend="shapes", model=str(judge)), results, second)  # one of the folder's judges


def test_new_training_options_at_their_reference_values_keep_keys_and_identities():
    """Cells recorded and runs checkpointed before these options existed keep naming their configuration."""
    import hashlib
    import json

    from focusdiff.stages.ablate import _train_key
    from focusdiff.judge.spec import WeightedJudgeSpec
    from focusdiff.train.configs import NEUTRAL_WHEN_ADDED
    from focusdiff.train.trainer import run_identity

    cfg = GRPOConfig()
    before = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NEUTRAL_WHEN_ADDED}
    assert set(NEUTRAL_WHEN_ADDED) == {"judges", "advantage_scale", "std_floor", "min_group_std", "filter_resamples",
                                       "ema_decay", "overlap_judging"}
    assert _train_key(cfg) == hashlib.sha256(json.dumps({"train": before}, sort_keys=True).encode()).hexdigest()
    identity, _ = run_identity(cfg, None, None, b"{}", {})
    assert not set(NEUTRAL_WHEN_ADDED) & set(identity["config"])
    for change in ({"advantage_scale": "batch"}, {"std_floor": 0.05}, {"min_group_std": 0.01}, {"filter_resamples": 2},
                   {"ema_decay": 0.9},
                   {"judges": [WeightedJudgeSpec(name="a", backend="exact"), WeightedJudgeSpec(name="b", weight=0.5)]}):
        assert _train_key(cfg.model_copy(update=change)) != _train_key(cfg)
        assert run_identity(cfg.model_copy(update=change), None, None, b"{}", {})[0] != identity
    # overlapped judging changes when rewards arrive, not what they are: a checkpoint resumes either way
    assert run_identity(cfg.model_copy(update={"overlap_judging": True}), None, None, b"{}", {})[0] == identity


def test_every_ablation_variant_is_a_valid_training_configuration():
    from focusdiff.config import load_params
    from focusdiff.stages.ablate import DEFAULT_VARIANTS, VARIANTS, _train_key, variant_fields

    train_cfg = load_params(REPO_ROOT / "params.yaml").train
    keys = set()
    for variant in VARIANTS:
        fields = variant_fields(train_cfg, variant)
        # a mixture replaces the one reward judge (params.yaml refuses both)
        base = train_cfg.model_dump(exclude={"judge"} if "judges" in fields else set())
        cfg = GRPOConfig.model_validate({**base, **fields})
        keys.add(_train_key(cfg))
        # the judges a variant names itself (a mixture, a control's other judge) are committed weights:
        # a clean clone runs the cell
        for spec in (cfg.judges or []) + ([cfg.judge] if "judge" in fields else []):
            assert (REPO_ROOT / spec.model / "model.safetensors").is_file(), spec.model
    assert len(keys) == len(VARIANTS)  # each one a different configuration
    assert DEFAULT_VARIANTS == ("grpo", "pair-grpo-no-injection", "pair-grpo")
    # each option variant is its method (vanilla GRPO, Pair-GRPO) with that one option, for every option
    from focusdiff.stages.ablate import TRAINING_OPTIONS
    for method in ("grpo", "pair-grpo"):
        for option, fields in TRAINING_OPTIONS.items():
            assert VARIANTS[f"{method}+{option}"] == {**VARIANTS[method], **fields}
    # every variant's metric names are ones MLflow accepts (a "+" is refused by the tracking store)
    from mlflow.utils.validation import _validate_metric_name

    from focusdiff.stages.ablate import metric_name
    for variant in VARIANTS:
        _validate_metric_name(f"ablate.{metric_name(variant)}.seed0.paircomp.s_g")
    # each variant names its algorithm as training logs it (tags, registry lineage)
    algorithms = {v: GRPOConfig.model_validate({**train_cfg.model_dump(), **variant_fields(train_cfg, v)}).algorithm
                  for v in ("grpo", "pair-grpo-no-injection", "pair-grpo", "grpo+injection")}
    assert algorithms == {v: v for v in algorithms}
