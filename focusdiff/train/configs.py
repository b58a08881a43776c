"""The Pair-GRPO trainer's configuration (focusdiff/train/trainer.py), with every constant of
the reference run as a documented field. Torch-free, so params.yaml validates fast.

The same class reads the `train:` block of params.yaml (the embedded default) and the
recipe files in `recipes/` (Janus-Pro on GPU clusters). Vanilla GRPO is this trainer
with `expand_pair_groups` and `inject_ground_truth` off. The curriculum and LR sections
are what the objective (objective.py) computes with; the rollouts' sampling section is the
sampler's own `SamplingConfig`, the same class the evaluation reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from focusdiff.judge.spec import JudgeSpec, WeightedJudgeSpec
from focusdiff.model.sampling import SamplingConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurriculumConfig(_Section):
    """p(step) of injecting ground-truth images: 1 up to s1, down to `prob` at s2, to 0 at s3."""

    s1: int = Field(50, ge=0)
    s2: int = Field(450, ge=1)
    s3: int = Field(1200, ge=2)
    prob: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> "CurriculumConfig":
        if not self.s1 < self.s2 < self.s3:
            raise ValueError(f"curriculum needs 0 <= s1 < s2 < s3, got {self.s1}, {self.s2}, {self.s3}")
        return self


class LRConfig(_Section):
    """`reference`: warm-up to `peak`, linear to `mid` at `mid_step`, linear to `final` at the
    last step (FocusDiff's run). `cosine`: warm-up, then cosine to `peak * min_ratio`."""

    schedule: Literal["reference", "cosine"] = "reference"
    peak: float = Field(1e-5, gt=0)
    warmup: int = Field(100, ge=0)
    mid: float = Field(2e-6, ge=0)
    mid_step: int = Field(300, ge=0)
    final: float = Field(2e-7, ge=0)
    min_ratio: float = Field(0.1, ge=0, le=1, description="cosine only")

    @model_validator(mode="after")
    def _phases_in_order(self) -> "LRConfig":
        if self.schedule == "reference" and self.warmup > self.mid_step:
            raise ValueError(f"lr.warmup ({self.warmup}) must not exceed lr.mid_step ({self.mid_step}): the "
                             "reference schedule needs warmup <= mid_step")
        return self


class LoRAConfig(_Section):
    """Low-rank adapters (peft) on the language model instead of full fine-tuning: what most
    single-GPU runs of the field do (Flow-GRPO, UniRL). The KL reference is then the same model
    with its adapters disabled (no second copy in memory), and the frozen base can stay in
    bf16. Only modules of the language model (`model.language_model`) are adapted."""

    rank: int = Field(16, ge=1, description="r: the adapters' rank")
    alpha: float = Field(32.0, gt=0, description="scale alpha / r of the adapters' update")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1, description="names of the language model's linear layers that get adapters")


# Training fields added after runs were checkpointed and ablation cells recorded, with the value
# that keeps the behaviour from before them: at that value a field is left out of a run's identity
# (its checkpoints still resume) and of a cell's key (committed records still name their
# configuration; keys.without_neutral_additions). Any other value is another configuration.
NEUTRAL_WHEN_ADDED: dict[str, Any] = {"judges": None, "advantage_scale": "group", "std_floor": 0.0, "min_group_std": None,
                                      "filter_resamples": 0, "ema_decay": None, "overlap_judging": False}


class GRPOConfig(_Section):
    """Pair-GRPO (and vanilla GRPO). Defaults are the reference FocusDiff run's constants
    (../shared/specs/pair-grpo.md); the embedded default overrides a few in params.yaml."""

    policy: str = Field("shapes-base", description="policy to train: shapes-base, a directory or a hub id")
    reference: str | None = Field(None, description="frozen KL reference policy (default: the starting policy)")
    data: Path = Field(Path("data/pairs"), description="canonical paired dataset (train split is used)")
    judge: JudgeSpec = JudgeSpec()
    judges: list[WeightedJudgeSpec] | None = Field(
        None, min_length=2, description="several reward judges instead of `judge`: each one's rewards normalised over "
        "the group, summed by weight, and the sums normalised over the step's images (GDPO: the advantages' size does "
        "not grow with the number or weights of the judges). null: `judge` alone")

    # the method
    expand_pair_groups: bool = Field(True, description="normalise rewards over both prompts' 2G images (Pair-GRPO)")
    inject_ground_truth: bool = Field(True, description="replace 2 samples per prompt by ground truths on the curriculum")
    unpaired_prompts: bool = Field(True, description="also train on the unpaired prompts, two at a time")
    pairs_per_category: int | None = Field(
        None, ge=1, description="train on only the first N pairs of each category: an overfitting check that the "
        "reward rises on prompts the run revisits (with unpaired_prompts off). null: every pair")
    group_size: int = Field(7, ge=2, description="G: images per prompt in the loss")
    advantage_scale: Literal["group", "batch", "none"] = Field(
        "group", description="what divides a group's centred rewards: the group's std (the reference), the std of "
        "every reward of the step over all processes (Flow-GRPO), or nothing (TRL's scale_rewards='none')")
    std_floor: float = Field(
        0.0, ge=0, description="the divisor is max(std, std_floor) + 1e-4, so that a group whose rewards barely "
        "vary gets small advantages, not full-size ones (0: the reference's std + 1e-4)")
    min_group_std: float | None = Field(
        None, gt=0, description="group filtering (DAPO's dynamic sampling, verl's filter_groups): a group whose "
        "rewards' std is below this leaves the loss (its images are scored and counted, not trained on). null: every "
        "group trains, as in the reference")
    filter_resamples: int = Field(
        0, ge=0, description="with min_group_std: draw an item with a low-spread group again, with fresh seeds, up to "
        "this many times before filtering it")
    rollouts_per_prompt: int | None = Field(
        None, ge=2, description="images sampled per prompt (>= G); the loss takes the G per prompt (2G per expanded "
        "pair group) whose rewards vary most: max-variance down-sampling, for when sampling is cheap next to the "
        "backward pass. null: G, as in the reference")
    items_per_micro_batch: int = Field(1, ge=1, description="pair items per process per micro-batch")
    grad_accum: int = Field(4, ge=1, description="micro-batches per optimizer update")
    steps: int = Field(800, ge=1, description="rollout batches (one per optimizer step when updates_per_batch=1)")
    updates_per_batch: int = Field(1, ge=1, description="policy updates per rollout batch (>1 activates clipping)")
    epsilon: float = Field(0.2, gt=0, lt=1, description="ratio clip")
    dual_clip: float | None = Field(
        3.0, gt=1, description="dual-clip PPO: a negative-advantage token's ratio counts at most this much (verl: 3); "
        "null: unbounded, as in the reference (whose single update per batch never needs it)")
    beta: float = Field(0.04, ge=0, description="weight of the k3 KL to the reference policy")
    kl_clamp: float | None = Field(
        10.0, gt=0, description="cap on a token's k3 KL estimate (verl's low_var_kl: 10); a capped token pulls no "
        "gradient, so one unlikely token cannot blow up the step. null: uncapped, as in the reference")
    logprob_form: Literal["sampling", "reference"] = Field(
        "sampling", description="sampling: the distribution rollouts came from; reference: FocusDiff's l_c-((w-1)/w)l_u")
    sampling: SamplingConfig = SamplingConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    lr: LRConfig = LRConfig()
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    on_judge_failure: Literal["fail", "drop"] = Field(
        "fail", description="fail the step, or drop the items a judge could not score (counted and logged)")
    max_dropped_fraction: float = Field(
        0.1, ge=0, le=1, description="with on_judge_failure=drop: the run fails as soon as the items dropped exceed "
        "this share of all the items the run trains on (steps x items per step), so a run whose judge is down "
        "fails instead of finishing untrained. A step whose items were all dropped makes no update either way")

    lora: LoRAConfig | None = Field(None, description="train low-rank adapters instead of every weight (null: full)")

    # running it
    seed: int = Field(42, ge=0)
    overlap_judging: bool = Field(
        False, description="score a micro-batch on a second thread while the next one is sampled (Flow-Factory, "
        "verl-omni): a served judge is otherwise idle during sampling and the sampler idle during judging. The "
        "rewards and the run are the same; MLflow's time/judge_overlap_s is the judge time hidden")
    ema_decay: float | None = Field(
        None, ge=0, lt=1, description="keep an exponential moving average of the trained weights (Flow-GRPO: 0.9) "
        "and save it as the run's output, the weights registered and evaluated; checkpointed and resumed exactly. "
        "null: the last step's weights")
    mixed_precision: Literal["no", "bf16"] = Field("no", description="bf16 on GPUs; fp32 on CPU")
    gradient_checkpointing: bool = False
    threads: int = Field(0, ge=0, description="torch CPU threads per process (0: torch's default)")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_dir: Path | None = Field(None, description="default: .<out name>.checkpoints beside out")
    restart: bool = Field(
        False, description="when checkpoint_dir holds another run's checkpoints (other trajectory parameters, "
        "weights or data): move them aside to <checkpoint_dir>.old-<UTC time> and start over, instead of refusing. "
        "Checkpoints of this same run are always resumed; none is ever deleted (`focusdiff train --restart`)")
    log_every: int = Field(1, ge=1)
    grid_every: int = Field(50, ge=1, description="steps between MLflow grids of both prompts of a pair")
    out: Path = Field(Path("models/grpo"), description="the trained policy, a transformers checkpoint directory")
    metrics_dir: Path = Field(Path("metrics"), description="train.json (DVC metrics) and train_curve.csv (DVC plots)")

    @model_validator(mode="after")
    def _consistent(self) -> "GRPOConfig":
        if self.inject_ground_truth and self.group_size < 3:
            raise ValueError("inject_ground_truth replaces 2 of each prompt's G images: group_size must be >= 3")
        if self.rollouts_per_prompt is not None and self.rollouts_per_prompt < self.group_size:
            raise ValueError(f"rollouts_per_prompt ({self.rollouts_per_prompt}) must be at least group_size "
                             f"({self.group_size}): the loss takes G of them")
        if self.filter_resamples and self.min_group_std is None:
            raise ValueError(f"filter_resamples ({self.filter_resamples}) redraws the groups min_group_std finds: "
                             "set min_group_std too, or filter_resamples to 0")
        if self.std_floor and self.advantage_scale == "none":
            raise ValueError(f"std_floor ({self.std_floor}) floors the divisor, and advantage_scale 'none' divides "
                             "by nothing: set one of them")
        if self.judges is not None:
            if "judge" in self.model_fields_set:
                raise ValueError("give train.judge (one reward judge) or train.judges (several), not both")
            names = [j.name for j in self.judges]
            if len(set(names)) != len(names):
                raise ValueError(f"train.judges: names must differ, got {names}")
        return self

    @property
    def reward_judges(self) -> list[WeightedJudgeSpec]:
        """Every reward judge with its weight: `judges`, or `judge` alone (named by its backend)."""
        if self.judges is not None:
            return list(self.judges)
        return [WeightedJudgeSpec(**self.judge.model_dump(), name=self.judge.backend, weight=1.0)]

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.out.parent / f".{self.out.name}.checkpoints"

    @property
    def algorithm(self) -> str:
        if not self.expand_pair_groups:  # per-prompt groups; injection may still add the pair's two ground truths
            return "grpo+injection" if self.inject_ground_truth else "grpo"
        return "pair-grpo" if self.inject_ground_truth else "pair-grpo-no-injection"
