"""The Pair-GRPO trainer (vanilla GRPO with its pairing options off), through accelerate.

One step:
  1. rollouts: for each micro-batch, every item's two prompts get G images each (with
     ground-truth injection on the curriculum), sampled with CFG (rollout.py);
  2. rewards: the judge scores every image; a failure fails the step or drops the item;
  3. advantages over the expanded group (both prompts) for pairs;
  4. reference log-probs (frozen policy, for the k3 KL) and, with more than one update per
     batch, the rollout policy's log-probs;
  5. `updates_per_batch` optimizer updates, each accumulating the micro-batches' clipped
     surrogate + beta * KL, with gradient clipping and the configured LR schedule.

The policy's teacher-forced forward is wrapped as a module (`ImageTokenScorer`) so DDP and
DeepSpeed see the parameters they synchronise. Runs on one process, DDP (torchrun or
`accelerate launch`, gloo on CPU) or DeepSpeed from infra/ configs. The model stays in
eval mode: rollouts and the loss must use the same distribution, so no dropout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from PIL import Image

from focusdiff.data.schema import load_dataset
from focusdiff.errors import ConfigError, FocusdiffError
from focusdiff.io import atomic_directory, atomic_write_json
from focusdiff.judge.base import Judge
from focusdiff.model.loading import checkpoint_files, load_policy
from focusdiff.model.policy import FROZEN_FOR_IMAGE_GENERATION, Policy
from focusdiff.model.prompting import PromptBatch, build_prompt_batch
from focusdiff.keys import without_neutral_additions
from focusdiff.records import file_hashes
from focusdiff.model.sampler import SamplingConfig, logprobs_from_scores, token_logprobs
from focusdiff.model.scoring import image_token_scores
from focusdiff.train import checkpoint
from focusdiff.train.configs import NEUTRAL_WHEN_ADDED, GRPOConfig
from focusdiff.train.items import ItemOrder, TrainItem, global_item_index, train_items
from focusdiff.train.ema import ParameterEMA
from focusdiff.train.lora import adapters_disabled, add_adapters, merge_adapters
from focusdiff.train.objective import batch_normalised, injection_probability, learning_rate, policy_loss, pooled_std
from focusdiff.train.rollout import (ItemExperience, RewardJudges, advantages, collect, downsample, filter_groups, low_spread_groups,
                                    reward, reward_groups)
from focusdiff.viz import labeled_grid

# Config fields that do not change the trajectory: a checkpoint survives changes to them. The
# policy, reference and data enter the run's identity by content (run_identity), not by path;
# the judge by what scores (backend, model), not by how it is reached.
_NOT_TRAJECTORY = {
    "policy": True, "reference": True, "data": True,
    "judge": {"base_url", "api_key_env", "max_concurrency", "max_retries"},
    "judges": {"__all__": {"base_url", "api_key_env", "max_concurrency", "max_retries"}},
    "threads": True, "checkpoint_every": True, "keep_checkpoints": True, "checkpoint_dir": True, "restart": True,
    "log_every": True, "grid_every": True, "out": True, "metrics_dir": True,
    "gradient_checkpointing": True,  # recomputes activations: the same numbers, in less memory
    # how a judge failure is handled: the steps already taken are the same under either setting
    "on_judge_failure": True, "max_dropped_fraction": True,
    "overlap_judging": True,  # the same rewards, scored while the next micro-batch is sampled
}
ZERO_STD = 1e-6  # a group whose rewards' std is below this carries no signal (train/zero_std_fraction)


class TrainingFailed(FocusdiffError):
    """A run that cannot produce a trained policy: its judge dropped more items than the budget
    allows, or no step made an update. Nothing is written to `out`, nothing is registered."""


class TrainingDiverged(FocusdiffError):
    """A non-finite gradient norm: stepping on would write NaN into the weights and go on
    "training" a broken policy (how an injection run once turned to blank images unnoticed)."""


def check_gradient_norm(step: int, norm: float) -> None:
    """Raise TrainingDiverged, saying where and what to change, unless `norm` is finite. The
    norm is global (all-reduced), so every process raises at the same point."""
    if not math.isfinite(norm):
        raise TrainingDiverged(
            f"step {step}: the gradient norm is {norm} (the loss or the KL overflowed); stopped before writing a "
            "checkpoint, so the newest one on disk is intact. Lower train.lr, raise train.beta or turn off "
            "train.inject_ground_truth, then rerun to resume from it")


class ImageTokenScorer(torch.nn.Module):
    """The policy's teacher-forced image-token logits as a module, for DDP/DeepSpeed."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.model = policy.model
        self._policy = policy

    def forward(self, input_ids, attention_mask, position_ids, tokens):
        return image_token_scores(self._policy, PromptBatch(input_ids, attention_mask, position_ids), tokens)


def _zero3(accelerator: Accelerator) -> bool:
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def full_parameters(accelerator: Accelerator, model: torch.nn.Module):
    """ZeRO-3 partitions parameters across processes, and rollouts run outside the engine's
    forward: gather them for the duration (as TRL does for generation). A no-op otherwise."""
    if not _zero3(accelerator):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        yield


def _model_state(accelerator: Accelerator, scorer) -> dict[str, torch.Tensor]:
    """The policy's full state dict (gathered under ZeRO-3), keys as in the Janus model."""
    state = accelerator.get_state_dict(scorer)
    return {k.removeprefix("model."): v for k, v in state.items()}


def trainable_state(accelerator: Accelerator, scorer, trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _model_state(accelerator, scorer).items() if k in trainable}


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN_FOR_IMAGE_GENERATION))
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def run_identity(cfg: GRPOConfig, policy_dir: Path | None, reference_dir: Path | None, data_manifest: bytes,
                 known_files: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the run's trajectory depends on: the config fields that change it, the content of the
    starting policy's files (and of a separate KL reference's), the dataset's manifest. Paths
    are not part of it: the same weights or data elsewhere are the same run. Returns it with the
    stats of the files hashed (`checkpoint.file_digests`; `known_files` are a checkpoint's)."""
    stats: dict[str, Any] = {}

    def content(source: str, directory: Path | None) -> dict[str, Any]:
        if directory is None or not directory.is_dir():
            return {"source": source}  # not a local directory: its name is all there is
        digests = checkpoint.file_digests(checkpoint_files(directory), {**known_files, **stats})
        stats.update(digests)
        return {Path(path).name: d["sha256"] for path, d in digests.items()}

    identity = {"config": without_neutral_additions(cfg.model_dump(mode="json", exclude=_NOT_TRAJECTORY), NEUTRAL_WHEN_ADDED),
                "policy": content(cfg.policy, policy_dir),
                "data": hashlib.sha256(data_manifest).hexdigest()}
    if cfg.beta > 0 and cfg.reference is not None:
        identity["reference"] = content(cfg.reference, reference_dir)
    return identity, stats


def fingerprint_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainResult:
    out: Path | None  # the trained policy (main process only)
    steps: int
    resumed_from: int
    history: list[dict[str, float]]  # per-step metrics (main process), including steps before a resume
    mlflow_run_id: str | None = None


@dataclass
class Start:
    """Where a run starts: step 0, or the newest checkpoint of the same run."""

    step: int = 0
    totals: dict[str, int] = field(default_factory=lambda: {"injected_items": 0, "dropped_items": 0, "items": 0,
                                                            "images": 0, "updated_steps": 0})
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_run_id: str | None = None  # the tracking run the resumed checkpoints were logged to
    # a tracking run that died: its checkpoints were moved aside (restart), or it was killed before writing one
    abandoned_run_id: str | None = None
    moved_to: Path | None = None  # where restart moved another run's checkpoints


Logger = Callable[[dict[str, float], int], None]
GridLogger = Callable[[Image.Image, int], None]
# (steps done, that step's metrics), after every step on the main process (focusdiff/progress.py shows it)
ProgressCallback = Callable[[int, Mapping[str, float]], None]


def train(
    cfg: GRPOConfig,
    judge: Judge | Mapping[str, Judge],
    log: Logger = lambda metrics, step: None,
    log_grid: GridLogger = lambda image, step: None,
    on_progress: ProgressCallback = lambda done, metrics: None,
    record: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `cfg.policy` with Pair-GRPO; resumes from `cfg.checkpoints` when it holds this
    run's checkpoint. Returns when `cfg.out` holds the trained policy (written atomically)."""
    return Trainer(cfg, judge).train(log, log_grid, on_progress, record)


class Trainer:
    """A Pair-GRPO run, set up: models and optimizer built, the run's identity computed and its
    start decided, before anything is tracked (the stage continues the tracking run of the
    checkpoints it resumes). Both steps are collective: every process does them.

    The checkpoint directory decides the start: this run's checkpoints are resumed; another
    run's (other identity) are refused with what differs, or with cfg.restart moved aside.
    Nothing is ever deleted for belonging to another run."""

    def __init__(self, cfg: GRPOConfig, judge: Judge | Mapping[str, Judge]):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.judges = cfg, reward_judges(cfg, judge)
        self.accelerator = accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                                                     gradient_accumulation_steps=cfg.grad_accum)
        device = accelerator.device
        if cfg.lora is not None and _zero3(accelerator):
            raise ConfigError("train.lora with DeepSpeed ZeRO-3: not supported (the adapters' reference pass needs the "
                              "whole base on each process); use ZeRO-2 (infra/accelerate/zero2-8gpu.yaml) or DDP")
        if cfg.lora is not None and cfg.reference is not None:
            raise ConfigError("train.lora: the KL reference is the policy with its adapters disabled; "
                              f"train.reference ({cfg.reference}) would be ignored: leave it null")
        # a LoRA run's frozen base may stay in bf16 (its adapters are fp32); a full run's weights are fp32
        # (mixed precision autocasts them)
        base_dtype = torch.bfloat16 if cfg.lora is not None and cfg.mixed_precision == "bf16" else torch.float32
        self.policy = policy = load_policy(cfg.policy, device=device, dtype=base_dtype)
        policy.model.eval()
        if cfg.gradient_checkpointing:
            # non-reentrant: with LoRA the layers' inputs need no gradient (frozen embeddings), which the
            # reentrant variant would take for "no gradient through this layer"
            policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = None
        if cfg.beta > 0 and cfg.lora is None:
            self.reference = load_policy(cfg.reference or cfg.policy, device=device,
                                         dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32)
            self.reference.model.eval().requires_grad_(False)
        if cfg.lora is not None:
            self.trainable = add_adapters(policy.model, cfg.lora, cfg.seed)
        else:
            self.trainable = trainable_parameters(policy.model)
        # overlap_judging: one thread scores a micro-batch while the main thread samples the next
        self._judge_pool = ThreadPoolExecutor(1, thread_name_prefix="judge") if cfg.overlap_judging else None
        self.ema = None
        if cfg.ema_decay is not None:
            if _zero3(accelerator):
                raise ConfigError("train.ema_decay with DeepSpeed ZeRO-3: not supported (the parameters are sharded); "
                                  "use ZeRO-2 (infra/accelerate/zero2-8gpu.yaml) or DDP")
            self.ema = ParameterEMA(self.trainable, cfg.ema_decay)
        optimizer = torch.optim.AdamW(self.trainable.values(), lr=cfg.lr.peak, betas=cfg.adam_betas,
                                      weight_decay=cfg.weight_decay)
        self.scorer, self.optimizer = accelerator.prepare(ImageTokenScorer(policy), optimizer)
        self.items = train_items(load_dataset(cfg.data), cfg.unpaired_prompts, cfg.pairs_per_category)
        self.order = ItemOrder(len(self.items), cfg.seed)

        newest = checkpoint.newest(cfg.checkpoints)
        known = newest[1].get("file_stats", {}) if newest else {}
        self.identity, self.file_stats = run_identity(
            cfg, _directory_of(policy), _directory_of(self.reference) if self.reference else None,
            (cfg.data / "manifest.json").read_bytes(), known if isinstance(known, dict) else {})
        self.fingerprint = fingerprint_of(self.identity)
        self.start = self._find_start(newest)

    def _find_start(self, newest: tuple[Path, dict[str, Any]] | None) -> Start:
        cfg, accelerator = self.cfg, self.accelerator
        previous_run = checkpoint.recorded_run(cfg.checkpoints)
        if newest is None:
            return Start(abandoned_run_id=previous_run)  # a run killed before its first checkpoint, if any
        path, state = newest
        if state.get("fingerprint") == self.fingerprint:
            checkpoint.verify(path, state)
            checkpoint.load(path, state, accelerator, accelerator.unwrap_model(self.scorer).model, self.trainable,
                            self.optimizer)
            if self.ema is not None:
                checkpoint.load_ema(path, self.ema)
            if accelerator.is_main_process:
                print(f"resuming from {path} (step {state['step']})")
            return Start(step=state["step"], totals={**Start().totals, **state["totals"]},
                         history=state.get("history", []), resumed_run_id=state.get("mlflow_run_id") or previous_run)
        differing = checkpoint.differences(state.get("identity"), self.identity)
        if not cfg.restart:
            raise checkpoint.CheckpointMismatch(
                f"{cfg.checkpoints} holds checkpoints (newest {path.name}) of a run with other parameters; "
                f"differences: {differing}. Nothing was resumed or deleted. To keep them, train this configuration "
                f"into another out (or train.checkpoint_dir); to start over, rerun with --restart "
                f"(train.restart=true), which moves them to {cfg.checkpoints.name}.old-<UTC time> beside them")
        accelerator.wait_for_everyone()  # every process has read them before they move
        moved = checkpoint.move_aside(cfg.checkpoints) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            print(f"restart: moved the checkpoints of a run with other parameters ({differing}) to {moved}; "
                  "starting from step 0")
        return Start(abandoned_run_id=state.get("mlflow_run_id") or previous_run, moved_to=moved)

    def _filter_groups(self, batch: list[ItemExperience], tally: StepTally, p_inject: float) -> None:
        """Group filtering, in place: items with a low-spread group are drawn again (up to
        `filter_resamples` times), then low-spread groups leave the loss. Items the judge could not
        score on a redraw count as dropped, as on the first draw. The processes redraw in lockstep
        (while any has an item to redraw): under ZeRO-3 gathering the parameters is collective."""
        cfg, accelerator = self.cfg, self.accelerator
        for attempt in range(1, cfg.filter_resamples + 1):
            again = [i for i, e in enumerate(batch)
                     if e.dropped is None and low_spread_groups(e, cfg.expand_pair_groups, cfg.min_group_std)]
            if not summed_over_processes(accelerator, len(again)):
                break
            t = time.perf_counter()
            with full_parameters(accelerator, self.policy.model):
                redrawn = collect(self.policy, [(batch[i].index, batch[i].item) for i in again],
                                  cfg.rollouts_per_prompt or cfg.group_size, cfg.seed, p_inject, cfg.inject_ground_truth,
                                  cfg.sampling, attempt=attempt) if again else []
            tally.seconds["rollout"] += time.perf_counter() - t
            t = time.perf_counter()
            if redrawn:
                tally.dropped += reward(redrawn, self.judges, cfg.on_judge_failure)
            tally.seconds["judge"] += time.perf_counter() - t
            for i, e in zip(again, redrawn):
                if e.dropped is None:
                    downsample(e, cfg.group_size, cfg.expand_pair_groups)
                batch[i] = e
            tally.groups["resampled_items"] += len(again)
            # sampled and then thrown away: the rollout budget filter_resamples adds (in images_per_s too)
            tally.groups["redrawn_images"] += sum(int((~e.is_real).sum()) for e in redrawn)
        for e in batch:
            if e.dropped is None:
                tally.groups["filtered_groups"] += filter_groups(e, cfg.expand_pair_groups, cfg.min_group_std)

    def _prepare(self, batch: list[ItemExperience], tally: StepTally, p_inject: float) -> None:
        """A scored micro-batch, ready for the loss: down-sampled, its groups counted (and filtered),
        its reference (and old) log-probs computed; items dropped on a redraw are tallied."""
        cfg, policy, sampling = self.cfg, self.policy, self.cfg.sampling
        for e in batch:
            if e.dropped is None:
                downsample(e, cfg.group_size, cfg.expand_pair_groups)
                # the policy's own draw: how many of its groups carry no signal at all
                tally.groups["groups"] += len(reward_groups(e, cfg.expand_pair_groups))
                tally.groups["zero_std_groups"] += len(low_spread_groups(e, cfg.expand_pair_groups, ZERO_STD))
        if cfg.min_group_std is not None:
            self._filter_groups(batch, tally, p_inject)
        t = time.perf_counter()
        for e in batch:
            with torch.no_grad():  # a dropped item's too: see _micro_batch_loss
                if cfg.beta > 0:
                    e.ref_logp = self.reference_logprobs(e.prompts, e.tokens)
                if cfg.updates_per_batch > 1:
                    with full_parameters(self.accelerator, policy.model):
                        e.extra["old_logp"] = token_logprobs(policy, e.prompts, e.tokens, sampling, cfg.logprob_form)
        tally.seconds["logprobs"] += time.perf_counter() - t

    def reference_logprobs(self, prompts: list[str], tokens: torch.Tensor) -> torch.Tensor:
        """The KL reference's log-probs: the frozen reference copy, or under LoRA the policy with
        its adapters disabled (the base, with no second copy)."""
        if self.reference is not None:
            return token_logprobs(self.reference, prompts, tokens, self.cfg.sampling, self.cfg.logprob_form).float()
        with full_parameters(self.accelerator, self.policy.model), adapters_disabled(self.policy.model):
            return token_logprobs(self.policy, prompts, tokens, self.cfg.sampling, self.cfg.logprob_form).float()

    def train(
        self,
        log: Logger = lambda metrics, step: None,
        log_grid: GridLogger = lambda image, step: None,
        on_progress: ProgressCallback = lambda done, metrics: None,
        record: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> TrainResult:
        """Run the steps from `self.start` on; `run_id` (the tracking run the main process logs
        to) is recorded in the checkpoints, so a resumed run continues the same one."""
        cfg, accelerator, policy, scorer = self.cfg, self.accelerator, self.policy, self.scorer
        optimizer, trainable, items, order = self.optimizer, self.trainable, self.items, self.order
        sampling = cfg.sampling
        world, rank = accelerator.num_processes, accelerator.process_index
        start, totals, history = self.start.step, dict(self.start.totals), list(self.start.history)
        planned_items = cfg.steps * cfg.grad_accum * world * cfg.items_per_micro_batch
        if run_id is not None and accelerator.is_main_process:
            checkpoint.record_run(cfg.checkpoints, run_id)

        for step in range(start, cfg.steps):
            t_step = time.perf_counter()
            tally = StepTally()
            p_inject = injection_probability(step, cfg.curriculum) if cfg.inject_ground_truth else 0.0
            micro_batches: list[list[ItemExperience]] = []
            judging = None  # with overlap_judging: (micro-batch, its judge's future)
            for micro in range(cfg.grad_accum):
                slots = [global_item_index(step, micro, rank, j, cfg.grad_accum, world, cfg.items_per_micro_batch)
                         for j in range(cfg.items_per_micro_batch)]
                t = time.perf_counter()
                with full_parameters(accelerator, policy.model):
                    batch = collect(policy, [(k, items[order(k)]) for k in slots], cfg.rollouts_per_prompt or cfg.group_size,
                                    cfg.seed, p_inject, cfg.inject_ground_truth, sampling)
                tally.seconds["rollout"] += time.perf_counter() - t
                scored = None
                if judging is not None:  # the previous micro-batch, scored while this one was sampled
                    scored, future = judging
                    _await_judge(future, tally)
                if self._judge_pool is not None:  # this one is scored while the previous is prepared, the next sampled
                    judging = (batch, self._judge_pool.submit(_timed_reward, batch, self.judges, cfg.on_judge_failure))
                else:
                    t = time.perf_counter()
                    tally.dropped += reward(batch, self.judges, cfg.on_judge_failure)
                    tally.seconds["judge"] += time.perf_counter() - t
                    scored = batch
                if scored is not None:
                    self._prepare(scored, tally, p_inject)
                    micro_batches.append(scored)
            if self._judge_pool is not None:
                scored, future = judging
                _await_judge(future, tally)
                self._prepare(scored, tally, p_inject)
                micro_batches.append(scored)

            # Advantages once the whole step is scored: `batch` scaling and GDPO need all of it.
            assign_advantages(accelerator, micro_batches, cfg)

            # Every process must agree whether to step (the gradient all-reduce is collective):
            # the kept items are counted over all of them.
            kept_here = sum(e.trains for batch in micro_batches for e in batch)
            kept = summed_over_processes(accelerator, kept_here)
            lr = learning_rate(step, cfg.steps, cfg.lr)
            for update in range(cfg.updates_per_batch if kept else 0):  # every item dropped: no reward, no update
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for batch in micro_batches:
                    t = time.perf_counter()
                    with accelerator.accumulate(scorer):
                        parts, gap = _micro_batch_loss(scorer, policy, batch, cfg, sampling, first=update == 0)
                        accelerator.backward(parts.loss)
                        norm = None
                        if accelerator.sync_gradients:
                            norm = accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
                            if norm is not None:
                                check_gradient_norm(step, float(norm))  # before the optimizer steps on it
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if accelerator.sync_gradients:
                            if norm is None:
                                # DeepSpeed clips inside its engine (gradient_clipping in its config) and returns None
                                # above; its norm is known only after its step
                                norm = scorer.get_global_grad_norm()
                                check_gradient_norm(step, float(norm))
                            tally.losses["grad_norm"] += float(norm)
                            if self.ema is not None:
                                self.ema.update(trainable)
                    tally.seconds["backward"] += time.perf_counter() - t
                    tally.losses["loss"] += float(parts.loss.detach())
                    tally.losses["kl"] += float(parts.kl)
                    tally.losses["clip_fraction"] += float(parts.clip_fraction)
                    tally.losses["kl_capped_fraction"] += float(parts.kl_capped_fraction)
                    if gap is not None:
                        tally.losses["logprob_gap"] += gap
            metrics = _step_metrics(accelerator, cfg, micro_batches, tally, time.perf_counter() - t_step, updated=kept > 0)
            metrics.update({"train/lr": lr, "train/injection_probability": p_inject})
            totals["injected_items"] += int(metrics["train/injected_items"])
            totals["dropped_items"] += int(metrics["train/dropped_items"])
            totals["items"] += int(metrics["train/items"])
            totals["images"] += int(metrics["train/images"])
            totals["updated_steps"] += kept > 0
            metrics.update({f"train/total_{k}": float(v) for k, v in totals.items()})
            if accelerator.is_main_process:
                history.append({"step": step, **metrics})
                if step % cfg.log_every == 0 or step + 1 == cfg.steps:
                    log(metrics, step)
                if step % cfg.grid_every == 0 or step + 1 == cfg.steps:
                    log_grid(pair_grid(micro_batches[0]), step)
                on_progress(step + 1, metrics)
            check_dropped_items(step, totals["dropped_items"], planned_items, cfg)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                checkpoint.save(cfg.checkpoints, step + 1, accelerator, trainable_state(accelerator, scorer, trainable),
                                optimizer, {"fingerprint": self.fingerprint, "identity": self.identity,
                                            "file_stats": self.file_stats, "mlflow_run_id": run_id, "totals": totals,
                                            "history": history}, cfg.keep_checkpoints,
                                ema=self.ema.state_dict() if self.ema is not None else None)

        if not totals["updated_steps"]:
            why = (f"the judge ({judge_names(cfg)}) could not score {totals['dropped_items']}, and group filtering "
                   f"(min_group_std {cfg.min_group_std}) took the rest out: their rewards did not vary"
                   if cfg.min_group_std is not None else
                   f"the judge ({judge_names(cfg)}) scored none of them (all dropped)")
            raise TrainingFailed(f"none of the {cfg.steps} steps made an update: of {totals['items']} items, {why}; "
                                 f"nothing was written to {cfg.out}")
        out = None
        accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(trainable)  # the output (registered, evaluated) is the average, not the last step
        full_state = _model_state(accelerator, scorer) if _zero3(accelerator) else None  # a collective under ZeRO-3
        if cfg.lora is not None:
            merge_adapters(policy.model)  # the version is a plain Janus checkpoint (focusdiff/train/lora.py)
        if accelerator.is_main_process:
            out = save_policy(policy, cfg, full_state, {**(record or {}), "algorithm": cfg.algorithm, "steps": cfg.steps,
                                            "resumed_from": start, "totals": totals, "fingerprint": self.fingerprint,
                                            "weights": "ema" if self.ema is not None else "last step",
                                            "identity": self.identity, "base_policy": cfg.policy})
            shutil.rmtree(cfg.checkpoints, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self._judge_pool is not None:
            self._judge_pool.shutdown()
        return TrainResult(out=out, steps=cfg.steps, resumed_from=start, history=history)


def check_dropped_items(step: int, dropped: int, planned: int, cfg: GRPOConfig) -> None:
    """Raise TrainingFailed once the run's dropped items exceed cfg.max_dropped_fraction of all the
    items it trains on: past that, no rest of the run can bring it back under the budget."""
    if dropped > cfg.max_dropped_fraction * planned:
        raise TrainingFailed(
            f"step {step}: the judge ({judge_names(cfg)}) could not score {dropped} of the run's {planned} items "
            f"({dropped / planned:.1%}), over train.max_dropped_fraction ({cfg.max_dropped_fraction:.1%}); steps whose "
            "items were all dropped made no update. Check the judge, then rerun to resume from the newest checkpoint "
            "(raise train.max_dropped_fraction to let it go on with the items dropped so far)")


def _directory_of(policy: Policy) -> Path | None:
    """The local directory a policy was loaded from (a hub snapshot, a conversion), if any."""
    name = policy.model.name_or_path
    return Path(name) if name and Path(name).is_dir() else None


def _await_judge(future, tally: StepTally) -> None:
    """Tallies the items a micro-batch's judge dropped, once it is done (overlap_judging):
    `time/judge_s` is the wait, `time/judge_overlap_s` the judge's time hidden behind sampling
    and preparing."""
    t = time.perf_counter()
    dropped, judge_seconds = future.result()  # a judge failure raises here, as it would inline
    waited = time.perf_counter() - t
    tally.dropped += dropped
    tally.seconds["judge"] += waited
    tally.seconds["judge_overlap"] += max(judge_seconds - waited, 0.0)


def reward_judges(cfg: GRPOConfig, judge: Judge | Mapping[str, Judge]) -> dict[str, tuple[Judge, float]]:
    """The built reward judges by name, with their weights (`cfg.reward_judges`): one Judge for
    one judge, else one per name of `train.judges`."""
    specs = cfg.reward_judges
    if isinstance(judge, Judge):
        if len(specs) != 1:
            raise ConfigError(f"train.judges names {len(specs)} judges ({', '.join(s.name for s in specs)}): give "
                              "one built judge per name")
        return {specs[0].name: (judge, specs[0].weight)}
    missing, unknown = {s.name for s in specs} - set(judge), set(judge) - {s.name for s in specs}
    if missing or unknown:
        raise ConfigError(f"the built judges ({', '.join(sorted(judge))}) are not train.judges' "
                          f"({', '.join(s.name for s in specs)})")
    return {s.name: (judge[s.name], s.weight) for s in specs}


def judge_names(cfg: GRPOConfig) -> str:
    """The reward judges for messages: `shapes`, or `shapes, vlm` with several."""
    return cfg.judge.backend if cfg.judges is None else ", ".join(j.name for j in cfg.judges)


def _timed_reward(batch: list[ItemExperience], judge: RewardJudges, on_failure: str) -> tuple[int, float]:
    """`reward`, and how long it took (run on the judge thread under overlap_judging)."""
    t = time.perf_counter()
    dropped = reward(batch, judge, on_failure)
    return dropped, time.perf_counter() - t


def summed_over_processes(accelerator, count: int) -> int:
    """`count` summed over every process (collective: every process calls it)."""
    return int(accelerator.reduce(torch.tensor(count, device=accelerator.device), reduction="sum"))


def assign_advantages(accelerator, micro_batches: list[list[ItemExperience]], cfg: GRPOConfig) -> None:
    """Set every trained item's advantages (collective: every process calls it): each group's
    (rollout.advantages, `train.advantage_scale` with the step's std for `batch`); with several
    judges (`train.judges`), each judge's normalised on their own and summed by weight, then the
    sums normalised over the step (GDPO), so that two judges do not double the advantages, nor
    larger weights scale them."""
    judge_weights = {j.name: j.weight for j in cfg.judges} if cfg.judges else None
    batch_std = None
    if cfg.advantage_scale == "batch":
        batch_std = (step_reward_std(accelerator, micro_batches) if judge_weights is None else
                     {name: step_reward_std(accelerator, micro_batches, name) for name in judge_weights})
    training = [e for batch in micro_batches for e in batch if e.trains]
    for e in training:
        e.advantages = advantages(e, cfg.expand_pair_groups, cfg.advantage_scale, batch_std, cfg.std_floor,
                                  judge_weights)
    if judge_weights is not None:
        mean, std = pooled_mean_std(accelerator, [e.advantages for e in training])
        for e in training:
            e.advantages = batch_normalised(e.advantages, mean, std)


def pooled_mean_std(accelerator, values: list[torch.Tensor]) -> tuple[float, float]:
    """The mean and unbiased std of these values pooled with every process's (collective: every
    process calls it, with its own, possibly empty, list)."""
    flat = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
    sums = torch.tensor([float(flat.sum()), float((flat**2).sum()), float(len(flat))], dtype=torch.float64,
                        device=accelerator.device)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    total, total_sq, n = sums.tolist()
    return (total / n if n else 0.0), pooled_std(total, total_sq, n)


def step_reward_std(accelerator, micro_batches: list[list[ItemExperience]], judge: str | None = None) -> float:
    """The unbiased std of every reward the step's loss takes (of one judge's, when named), over all
    processes (collective)."""
    rewards = [e.rewards if judge is None else e.reward_parts[judge]
               for batch in micro_batches for e in batch if e.trains]
    return pooled_mean_std(accelerator, rewards)[1]


def _micro_batch_loss(scorer, policy: Policy, batch: list[ItemExperience], cfg: GRPOConfig, sampling: SamplingConfig,
                      first: bool):
    """The clipped surrogate + beta * KL over the micro-batch's scored images. A micro-batch
    whose items were all dropped still runs forward and backward (weight 0), so every
    process takes part in the gradient all-reduce."""
    kept = [e for e in batch if e.trains]
    use = kept or batch
    prompts = [p for e in use for p in e.prompts]
    tokens = torch.cat([e.tokens for e in use])
    rows = build_prompt_batch(policy.tokenizer, prompts, policy.device)
    scores = scorer(rows.input_ids, rows.attention_mask, rows.position_ids, tokens.repeat(2, 1))
    logp = logprobs_from_scores(scores.float(), tokens, sampling, cfg.logprob_form)
    if cfg.updates_per_batch > 1:
        old = torch.cat([e.extra["old_logp"] for e in use])
    else:
        old = logp.detach()  # one update per batch: ratio 1, as in the reference
    ref = torch.cat([e.ref_logp for e in use]) if cfg.beta > 0 else None
    adv = torch.cat([e.advantages for e in kept]) if kept else torch.zeros(len(tokens))
    parts = policy_loss(logp, old, ref, adv.to(logp.device), cfg.epsilon, cfg.beta, kl_clamp=cfg.kl_clamp,
                        dual_clip=cfg.dual_clip)
    if not kept:
        parts = replace(parts, loss=parts.loss * 0.0)
    gap = None
    if first:
        sampled = ~torch.cat([e.is_real for e in use]).to(logp.device)
        if sampled.any():  # sampler vs teacher-forced log-probs: ~0 when sampling-consistent
            sampler = torch.cat([e.sampler_logp for e in use]).to(logp.device)
            gap = float((sampler[sampled] - logp.detach()[sampled]).abs().mean())
    return parts, gap


@dataclass
class StepTally:
    """What one step counted on this process, for its metrics."""

    dropped: int = 0  # items the judge could not score (on_judge_failure: drop) or filtering took out
    groups: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # groups, zero_std_groups, filtered_groups, ...
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # rollout, judge, logprobs, backward, ...
    losses: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # summed over updates: loss, kl, grad_norm, ...


def _step_metrics(accelerator, cfg: GRPOConfig, micro_batches: list[list[ItemExperience]], tally: StepTally,
                  wall: float, updated: bool) -> dict[str, float]:
    """Per-step metrics, summed over processes: rewards of sampled images (overall and per
    category), of injected ground truths, KL, clipping, counts, time split, throughput. A step
    that made no update (every item dropped) has no rewards, KL, clipping or gradient norm:
    it logs its counts and times only, never a 0 standing for "nothing"."""
    sums: dict[str, float] = defaultdict(float, tally.groups)
    for batch in micro_batches:
        for e in batch:
            sums["items"] += 1
            sums["injected_items"] += e.injected
            if e.dropped is not None:
                continue
            for name, r in e.sampled_reward_parts.items():
                sums[f"judge_sum.{name}"] += float(r.sum())
                sums[f"judge_n.{name}"] += len(r)
            sampled = e.sampled_rewards  # all of them, not only those down-sampling kept
            sums["reward_sum"] += float(sampled.sum())
            sums["reward_sq"] += float((sampled**2).sum())
            sums["reward_n"] += len(sampled)
            sums[f"cat_sum.{e.item.category}"] += float(sampled.sum())
            sums[f"cat_n.{e.item.category}"] += len(sampled)
            if e.injected:
                sums["real_sum"] += float(e.real_rewards.sum())
                sums["real_n"] += len(e.real_rewards)
    sums["dropped"] = tally.dropped
    sums["images"] = sum(len(e.tokens) for b in micro_batches for e in b)
    sums["sampled_images"] = sum(int((~e.is_real).sum()) if e.sampled_rewards is None else len(e.sampled_rewards)
                                 for b in micro_batches for e in b)
    per_update = cfg.updates_per_batch * cfg.grad_accum
    for k in ("loss", "kl", "clip_fraction", "kl_capped_fraction", "logprob_gap"):
        sums[k] = tally.losses.get(k, 0.0) / (per_update if k != "logprob_gap" else cfg.grad_accum)
    sums["grad_norm"] = tally.losses.get("grad_norm", 0.0) / cfg.updates_per_batch
    sums.update({f"time_{k}": v for k, v in tally.seconds.items()})
    sums["wall"] = wall
    if accelerator.num_processes > 1:  # processes may have seen different categories
        keys = sorted({k for ks in gather_object([sorted(sums)]) for k in ks})
        values = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=accelerator.device)
        sums = defaultdict(float, zip(keys, accelerator.reduce(values, reduction="sum").tolist()))
    keys = sorted(sums)
    world = accelerator.num_processes
    n = max(sums["reward_n"], 1)
    mean = sums["reward_sum"] / n
    metrics = {
        "train/items": sums["items"],
        "train/injected_items": sums["injected_items"],
        "train/dropped_items": sums["dropped"],
        "train/images": sums["images"],
        "train/images_per_s": (sums["sampled_images"] + sums["redrawn_images"]) / max(sums["wall"] / world, 1e-9),
        "time/step_s": sums["wall"] / world,
    }
    if updated:
        metrics.update({
            "train/reward_mean": mean,
            "train/reward_std": float(np.sqrt(max(sums["reward_sq"] / n - mean**2, 0.0))),
            "train/loss": sums["loss"] / world,
            "train/zero_std_fraction": sums["zero_std_groups"] / max(sums["groups"], 1),
            "train/kl": sums["kl"] / world,
            "train/clip_fraction": sums["clip_fraction"] / world,
            "train/kl_capped_fraction": sums["kl_capped_fraction"] / world,
            "train/logprob_gap": sums["logprob_gap"] / world,
            "train/grad_norm": sums["grad_norm"] / world,
        })
    if cfg.min_group_std is not None:
        metrics["train/filtered_groups"] = sums["filtered_groups"]
        metrics["train/resampled_items"] = sums["resampled_items"]
        metrics["train/redrawn_images"] = sums["redrawn_images"]
    if sums.get("real_n"):
        metrics["train/reward_ground_truth_mean"] = sums["real_sum"] / sums["real_n"]
    for key in keys:
        if key.startswith("judge_sum.") and len(cfg.reward_judges) > 1:
            name = key.removeprefix("judge_sum.")
            metrics[f"train/reward_mean.judge.{name}"] = sums[key] / max(sums[f"judge_n.{name}"], 1)
        if key.startswith("cat_sum."):
            cat = key.removeprefix("cat_sum.")
            metrics[f"train/reward_mean.{cat}"] = sums[key] / max(sums[f"cat_n.{cat}"], 1)
        if key.startswith("time_"):
            metrics[f"time/{key.removeprefix('time_')}_s"] = sums[key] / world
    return metrics


def pair_grid(batch: list[ItemExperience]) -> Image.Image:
    """Both prompts of each item side by side: one row per prompt with the images the loss took
    (after any down-sampling, so a row may be short), each image's reward in the label."""
    rows = []
    for e in batch:
        for p in range(2):
            idx = [i for i in range(len(e.prompts)) if bool(e.second[i]) == (p == 1)]
            rewards = "dropped" if e.rewards is None else " ".join(
                f"{float(e.rewards[i]):.2f}{'*' if e.is_real[i] else ''}" for i in idx)
            rows.append(([e.images[i] for i in idx], f"[{e.item.category}] {e.item.prompts[p]}\nrewards: {rewards}"
                         + ("\n(* injected ground truth)" if e.injected else "")))
    return labeled_grid(rows)


def save_policy(policy: Policy, cfg: GRPOConfig, state_dict: dict[str, torch.Tensor] | None, record: dict[str, Any]) -> Path:
    """`state_dict` only under ZeRO-3 (the gathered weights); otherwise the live model saves itself
    (transformers then handles tied weights, which an explicit state dict would drop)."""
    with atomic_directory(cfg.out) as tmp:
        policy.model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        policy.tokenizer.save_pretrained(tmp)
        checkpoint.give_umask_mode(tmp.glob("*.safetensors"))
        atomic_write_json(tmp / "record.json", {**record, "config": cfg.model_dump(mode="json"), "files": file_hashes(tmp)})
    return cfg.out

