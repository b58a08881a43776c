"""`focusdiff ablate`: does pairing help? base vs vanilla GRPO vs Pair-GRPO without injection
vs Pair-GRPO, at an equal rollout budget, over several seeds.

Every variant starts from the same base with the same parameters, steps and images per
step (so the same number of rollouts); only the method's switches differ:

    grpo                     per-prompt groups, no injection
    pair-grpo-no-injection   expanded groups over both prompts of a pair
    pair-grpo                expanded groups + ground-truth injection on the curriculum
    pair-grpo-lora           pair-grpo training LoRA adapters (train.lora's defaults) instead of
                             the whole policy, every learning rate x10 (LORA_LR_SCALE)
    <method>+<option>        grpo or pair-grpo with one of the field's RL options on (batch-std, no-scale,
                             std-floor, filter, filter-resample, ema, judges; see TRAINING_OPTIONS)
    pair-grpo+long-injection pair-grpo injecting ground truths over the whole run (attempt to close the gap)
    grpo+injection           per-prompt groups with the pair's ground-truth injection (attempt to close the gap)
    grpo+second-judge        grpo against the `judges` ensemble's second judge alone (its control)

Without --variant, the first three run (DEFAULT_VARIANTS); the others are asked for by name.

Each trained policy (and the base) is scored on PairComp's held-out test pairs twice: by
the reward judge it was trained against and by the exact checker (the held-out
evaluator, which training never sees). The table reports mean +- std over seeds of s_a
and s_g, overall and per category; all numbers also go to MLflow and a JSON file.

One draw of PairComp's images is noisy: on 180 test pairs the base's s_g is 23.9, 18.9 or
26.1 depending on the evaluation seed alone. So every policy is scored `eval_repeats` times,
repeat r drawing its images with seed `evaluate.seed + r * REPEAT_SEED_STRIDE`, and a cell
holds the mean over repeats (the PairComp score of all repeats' images pooled).

The whole ablation is hours on a CPU, so it runs (and survives) cell by cell: a cell is the
base, or one (variant, seed), and `focusdiff ablate --variant grpo --seed 0` runs just that one
(one training, about 9 minutes, and its evaluations: well under the 40 minutes a command may
take). Each finished cell writes one small record under the results folder (committed to git,
default results/ablation/<variant>-seed<seed>.json, base.json): its scores by evaluation, the
configuration's hash (training and evaluation keys), the git commit and the wall time. A rerun
skips a cell whose record holds every score the current configuration asks for, scores only
what is missing when the trained policy is still on this machine (<out>/<variant>-seed<seed>/),
and refuses to overwrite a record of another configuration (a committed result is never
lost: give another --results folder). `focusdiff ablate --report` rebuilds the tables
(results/ablation/table.md, the README's) from the records alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from focusdiff.config import Params, load_params, parse_overrides
from focusdiff.data.schema import CATEGORIES
from focusdiff.errors import ConfigError, DataError
from focusdiff.eval.orchestrate import run_paircomp
from focusdiff.io import atomic_write_json, atomic_write_text
from focusdiff.judge.spec import JudgeSpec, WeightedJudgeSpec
from focusdiff.model.loading import load_policy
from focusdiff.progress import Reporter
from focusdiff.registry.gate import paired_bootstrap
from focusdiff.keys import without_neutral_additions
from focusdiff.records import RecordError, validation_error
from focusdiff.stages.train import build_reward_judges, step_summary
from focusdiff.tracking import StageRun, git_commit
from focusdiff.train.configs import NEUTRAL_WHEN_ADDED, CurriculumConfig, LoRAConfig
from focusdiff.train.trainer import train

RESULTS = Path("results/ablation")  # the committed cell records (and table.md)
JUDGE_COPY = "reward-judge"  # in the results folder: the reward judge its cells were trained against (committed)
# a second learned judge, params.yaml's judge block trained with seed 1 (committed beside the first's copy):
# the `judges` option's ensemble (T2I-R1's, Flow-GRPO's weighted rewards), from committed weights only
SECOND_JUDGE = "reward-judge-seed1"

VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"expand_pair_groups": False, "inject_ground_truth": False},
    "pair-grpo-no-injection": {"expand_pair_groups": True, "inject_ground_truth": False},
    "pair-grpo": {"expand_pair_groups": True, "inject_ground_truth": True},
    "pair-grpo-lora": {"expand_pair_groups": True, "inject_ground_truth": True, "lora": LoRAConfig()},
    # attempts to close the gap to GRPO (issue 27, docs/experiments.md): injection over the whole run, in
    # the reference's proportions (50:450:1200) scaled to 300 steps, against the default's end at step 120
    "pair-grpo+long-injection": {"expand_pair_groups": True, "inject_ground_truth": True,
                                 "curriculum": CurriculumConfig(s1=12, s2=112, s3=300, prob=0.25)},
    # per-prompt groups (GRPO's normalisation) with the pair's injection (own ground truth, partner's as
    # the hard negative): is the expanded group's cross-prompt comparison what costs?
    "grpo+injection": {"expand_pair_groups": False, "inject_ground_truth": True},
    # the control of the `judges` option (issue 29): GRPO against the ensemble's second judge alone; is
    # a gain the mixture's, or that judge's?
    "grpo+second-judge": {"expand_pair_groups": False, "inject_ground_truth": False,
                          "judge": JudgeSpec(backend="shapes", model=str(RESULTS / SECOND_JUDGE))},
}
# The field's RL options (issue 29): each is a variant on top of vanilla GRPO (the embedded default)
# and of Pair-GRPO, `<method>+<option>`, compared with its method pair by pair.
TRAINING_OPTIONS: dict[str, dict[str, Any]] = {
    "batch-std": {"advantage_scale": "batch"},
    "no-scale": {"advantage_scale": "none"},  # TRL's scale_rewards="none": reward minus the group's mean
    "std-floor": {"std_floor": 0.1},
    "filter": {"min_group_std": 0.05},
    "filter-resample": {"min_group_std": 0.05, "filter_resamples": 2},
    "ema": {"ema_decay": 0.9},
    # two learned judges of equal weight, each normalised over the group, summed, the sums normalised over the step (GDPO)
    "judges": {"judges": [WeightedJudgeSpec(backend="shapes", model=str(RESULTS / JUDGE_COPY), name="seed0"),
                          WeightedJudgeSpec(backend="shapes", model=str(RESULTS / SECOND_JUDGE), name="seed1")]},
}
VARIANTS.update({f"{method}+{option}": {**VARIANTS[method], **fields}
                 for method in ("grpo", "pair-grpo") for option, fields in TRAINING_OPTIONS.items()})
# what `focusdiff ablate` runs without --variant: the method's comparison (the others by name)
DEFAULT_VARIANTS = ("grpo", "pair-grpo-no-injection", "pair-grpo")
# Adapters learn at a higher rate than the whole model (Flow-GRPO: 3e-4 for LoRA on SD3); the
# LoRA variant keeps the steps, rollouts and schedule of the others with every rate x10.
LORA_LR_SCALE = 10.0
TABLE_FILE = "table.md"
TRAIN_KEY_FILE = "train_key"  # beside a cell's trained policy (in <out>): the configuration it was trained with
# evaluation fields added after cells were recorded, with the value that reproduces the earlier protocol:
# left out of the evaluation key at that value (train/configs.py's NEUTRAL_WHEN_ADDED does it for training)
EVAL_FIELDS_ADDED: dict[str, Any] = {"t2i_compbench.images_per_prompt": 10}
REPEAT_SEED_STRIDE = 100_000  # repeat r draws image k with seed evaluate.seed + r * stride + k: no overlap


@dataclass
class Cell:
    variant: str
    seed: int
    judge: str  # "reward" or "exact"
    metrics: dict[str, float]


class Score(BaseModel):
    """One PairComp evaluation of a cell's policy: its metrics and each test pair's g_i (in the
    suite's order, named by the suite's hash), so that variants can be compared pair by pair."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: dict[str, float]
    pairs_sha256: str  # of the suite's (category, caption1, caption2) list
    categories: list[str]  # each pair's category, in order
    g: list[float]  # each pair's geometric mean of its 4 images' scores
    # each pair's arithmetic mean of its 4 images' scores (s_a's, pair by pair); None in records
    # written before 2026-12-07, which kept g only (`focusdiff ablate --add-pair-means` fills it in)
    a: list[float] | None = None


class CellRecord(BaseModel):
    """One finished cell, as committed under the results folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str  # "base" or one of VARIANTS
    seed: int | None  # the training seed (None for the base: it is not trained)
    train_key: str  # hash of the training configuration (the base: of its policy)
    evaluations: dict[str, list[str]]  # judge ("reward", "exact") -> its evaluation keys, one per repeat
    scores: dict[str, Score]  # evaluation key -> one PairComp evaluation
    git: dict[str, str]  # commit (and dirty) of the code that produced it
    wall_s: dict[str, float]  # train_s (0 for the base), eval_s
    finished_at: str
    # params.yaml's reward judge's weights (sha256 of its files), where it is a local directory: a judge
    # re-trained on another machine differs (CPU training is not bit-reproducible across CPUs), and the table
    # says so. It scores the reward-judge columns of every cell and trains every cell but those whose variant
    # names its own judges (grpo+judges, grpo+second-judge: committed weights, named in the train key)
    reward_judge_sha256: str | None = None

    def cells(self) -> list[Cell]:
        """The table's cells: per judge, the mean over its repeats."""
        return [Cell(self.variant, -1 if self.seed is None else self.seed, judge,
                     _mean([self.scores[k].metrics for k in keys])) for judge, keys in self.evaluations.items()]

    @property
    def label(self) -> str:
        """The cell as the tables' notes name it: "base", "grpo seed 1"."""
        return self.variant if self.seed is None else f"{self.variant} seed {self.seed}"

    def pair_scores(self, judge: str) -> Score:
        """The judge's per-pair g_i and a_i, averaged over its repeats (one suite: the repeats draw
        other images); a is None unless every repeat kept it."""
        scores = [self.scores[k] for k in self.evaluations[judge]]
        if len({s.pairs_sha256 for s in scores}) != 1:
            raise DataError(f"{self.variant} seed {self.seed}: its {judge} repeats were scored on different pair suites")
        a = None if any(s.a is None for s in scores) else [float(v) for v in np.mean([s.a for s in scores], axis=0)]
        return scores[0].model_copy(update={"g": [float(v) for v in np.mean([s.g for s in scores], axis=0)], "a": a})


def judge_fingerprint(spec: JudgeSpec) -> str | None:
    """sha256 over a local judge directory's weight and config files (not its record, which names its
    MLflow run); None for a judge that is not a local directory (the checker, a hub id, a server)."""
    folder = Path(spec.model) if spec.model else None
    if folder is None or not folder.is_dir():
        return None
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "record.json")
    return _hash({str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})


def _check_reward_judge(spec: JudgeSpec, results: Path, mine: str | None) -> None:
    """New cells are trained against the reward judge the folder's cells were (`mine`: its
    fingerprint): a judge re-trained elsewhere has other weights (not bit-reproducible across CPUs)."""
    recorded = set()
    for path in sorted(results.glob("*.json")):
        try:
            recorded.add(load_record(path).reward_judge_sha256)
        except RecordError:  # a damaged record is its own cell's error, reported when that cell is reached
            continue
    recorded.discard(None)
    if mine is not None and recorded and mine not in recorded:
        raise DataError(f"{spec.model}: this reward judge (weights {mine[:12]}) is not the one the cells in {results} were "
                        f"trained against ({', '.join(sorted(k[:12] for k in recorded))}); restore that judge (a copy is "
                        f"kept in {results / JUDGE_COPY}) or give another --results folder")


def record_path(results: Path, variant: str, seed: int | None) -> Path:
    return results / ("base.json" if variant == "base" else f"{variant}-seed{seed}.json")


def load_record(path: Path) -> CellRecord:
    """The record at `path`; a RecordError naming the file and field when it is not one."""
    try:
        return CellRecord.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise validation_error(exc, path, " (not a finished ablation cell's record; move it away to rerun the cell)") from None


def _record_for(path: Path, train_key: str) -> CellRecord | None:
    """The record of this cell trained with this configuration; None when there is none yet.
    A record of another configuration is an error: overwriting it would lose a committed result."""
    if not path.is_file():
        return None
    record = load_record(path)
    if record.train_key != train_key:
        raise DataError(f"{path}: this cell was run with another training configuration (train key "
                        f"{record.train_key[:12]}, now {train_key[:12]}); a committed result is not overwritten: "
                        "give another --results folder for this configuration, or move the file")
    return record


def _paircomp(params: Params, policy, policy_dir: str, out: Path, evaluator, repeat: int) -> Score:
    cfg = _eval_config(params, out, evaluator, repeat).model_copy(update={"policy": policy_dir})
    result = run_paircomp(cfg, policy, lambda n: None)
    rows = [json.loads(line) for line in (result.folder / "pairs.jsonl").read_text("utf-8").splitlines()]
    return Score(metrics=result.metrics, pairs_sha256=_suite_hash(rows), categories=[r["category"] for r in rows],
                 g=[round(float(r["g"]), 6) for r in rows], a=[round(float(r["a"]), 6) for r in rows])


def _suite_hash(rows: list[dict[str, Any]]) -> str:
    return _hash([[r["category"], r["caption1"], r["caption2"]] for r in rows])


def score_policy(params: Params, policy_dir: str, out: Path, evaluators: dict[str, JudgeSpec],
                 repeat: int = 0) -> dict[str, dict[str, float]]:
    """One policy's PairComp by each evaluator, as the ablation measures it: the policy is loaded
    once and its images drawn once (the later evaluators find them valid and reuse them)."""
    policy = load_policy(policy_dir)
    return {name: _paircomp(params, policy, policy_dir, out, spec, repeat).metrics for name, spec in evaluators.items()}


def _eval_config(params: Params, out: Path, evaluator, repeat: int):
    return params.evaluate.model_copy(update={
        "out": out, "metrics_dir": out / "metrics", "bootstrap": 0,
        "seed": params.evaluate.seed + repeat * REPEAT_SEED_STRIDE,
        "paircomp": params.evaluate.paircomp.model_copy(update={"evaluator": evaluator})})


def _repeat_dir(folder: Path, repeat: int) -> Path:
    """Where repeat r's images go: <folder> for the first, <folder>-r<r> for the others."""
    return folder if repeat == 0 else folder.with_name(f"{folder.name}-r{repeat}")


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([m[k] for m in scores])) for k in scores[0]}


def run_ablation(params: Params, seeds: list[int], out: Path, variants: list[str] | None = None,
                 eval_repeats: int = 1, log=lambda metrics, step: None, results: Path = RESULTS) -> list[Cell]:
    """Every cell asked for (the base, then each variant x seed), each skipped when its record
    holds every score, else trained (if its policy is not here) and scored, its record written."""
    if eval_repeats < 1:
        raise ValueError(f"eval_repeats must be >= 1, got {eval_repeats}")
    judge_sha256 = judge_fingerprint(params.train.judge)  # once: a real judge's folder is gigabytes
    _check_reward_judge(params.train.judge, results, judge_sha256)
    judges = {"reward": params.train.judge, "exact": JudgeSpec(backend="exact")}
    if params.train.judges is not None:  # a mixture has no one reward judge to score by: the checker alone
        del judges["reward"]
    wanted = {(name, r): _eval_key(params, spec, r) for name, spec in judges.items() for r in range(eval_repeats)}
    cells = _run_cell(params, judges, wanted, results, out / "base", "base", None,
                      _hash({"base": params.train.policy}), params.train.policy, None, judge_sha256)
    cells = [Cell("base", s, c.judge, c.metrics) for s in seeds for c in cells]  # the base is one measurement
    for variant in variants or list(DEFAULT_VARIANTS):
        for seed in seeds:
            run_dir = out / f"{variant}-seed{seed}"
            cfg = params.train.model_copy(update={**variant_fields(params.train, variant), "seed": seed, "out": run_dir / "policy",
                                                  "checkpoint_dir": run_dir / "checkpoints",
                                                  "metrics_dir": run_dir / "metrics"})
            cell = _run_cell(params, judges, wanted, results, run_dir, variant, seed, _train_key(cfg), str(cfg.out), cfg,
                             judge_sha256)
            cells += cell
            log({f"ablate.{metric_name(variant)}.seed{seed}.{k}": v for c in cell for k, v in c.metrics.items()
                 if k in ("paircomp.s_g", "paircomp.s_a")}, seed)
    return cells


def metric_name(variant: str) -> str:
    """The variant as MLflow metric names allow it (no "+": pair-grpo+ema -> pair-grpo_ema)."""
    return variant.replace("+", "_")


def variant_fields(train_cfg, variant: str) -> dict[str, Any]:
    """The training fields a variant sets (the LoRA variant also scales the learning rates)."""
    fields = dict(VARIANTS[variant])
    if "lora" in fields:
        lr = train_cfg.lr
        fields["lr"] = lr.model_copy(update={"peak": lr.peak * LORA_LR_SCALE, "mid": lr.mid * LORA_LR_SCALE,
                                             "final": lr.final * LORA_LR_SCALE})
    return fields


def _run_cell(params: Params, judges: dict[str, JudgeSpec], wanted: dict[tuple[str, int], str], results: Path,
              run_dir: Path, variant: str, seed: int | None, train_key: str, policy_dir: str, cfg,
              judge_sha256: str | None) -> list[Cell]:
    """One cell: reuse its record, or train (`cfg`; None for the base) and score what is missing."""
    path = record_path(results, variant, seed)
    saved = _record_for(path, train_key)
    evaluations = {name: [wanted[n, r] for n, r in sorted(wanted) if n == name] for name in judges}
    missing = [w for w in wanted if saved is None or wanted[w] not in saved.scores]
    if not missing:
        print(f"{path}: every score of this configuration is there; skipping the cell")
        record = saved.model_copy(update={"evaluations": evaluations})
    else:
        scores = dict(saved.scores) if saved else {}
        wall = dict(saved.wall_s) if saved else {"train_s": 0.0, "eval_s": 0.0}
        trained_key = run_dir / TRAIN_KEY_FILE  # which configuration the policy in run_dir was trained with
        if cfg is not None and not (trained_key.is_file() and trained_key.read_text("utf-8") == train_key
                                    and (cfg.out / "model.safetensors").is_file()):
            started = time.perf_counter()
            with Reporter(f"train {variant} seed {seed}", cfg.steps, describe=step_summary) as progress:
                train(cfg, build_reward_judges(cfg), on_progress=progress.update)
            atomic_write_text(trained_key, train_key)
            scores, missing = {}, list(wanted)
            wall = {"train_s": time.perf_counter() - started, "eval_s": 0.0}
        elif cfg is not None:
            print(f"{run_dir}: reusing the policy trained with this configuration; scoring {len(missing)} evaluation(s)")
        todo: dict[str, tuple[str, int]] = {}  # by key: with the exact checker as reward judge, one serves both
        for w in missing:
            todo.setdefault(wanted[w], w)
        policy = load_policy(policy_dir)
        for eval_key, (name, r) in todo.items():
            started = time.perf_counter()
            scores[eval_key] = _paircomp(params, policy, policy_dir, _repeat_dir(run_dir / "eval", r), judges[name], r)
            wall["eval_s"] += time.perf_counter() - started
        record = CellRecord(variant=variant, seed=seed, train_key=train_key, evaluations=evaluations, scores=scores,
                            git=git_commit(), wall_s=wall, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            reward_judge_sha256=judge_sha256)
    if record != saved:
        results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record.model_dump(mode="json"))
    return record.cells()


def report(results: Path = RESULTS) -> str:
    """The tables from the committed records alone (no training, no evaluation): the base and
    every variant's cells, mean +- std over seeds; written to <results>/table.md."""
    records = [load_record(p) for p in sorted(results.glob("*.json"))]
    if not records:
        raise DataError(f"{results}: no ablation cell records (run `focusdiff ablate` first)")
    order = {v: i for i, v in enumerate(["base", *VARIANTS])}
    records.sort(key=lambda r: (order.get(r.variant, len(order)), r.variant, r.seed if r.seed is not None else -1))
    cells = [c for r in records for c in r.cells()]
    text = (markdown(cells) + "\n" + differences_markdown(paired_differences(records)) + "\n"
            + differences_markdown(paired_differences(records, "a"), "a") + pair_means_note(records) + judges_note(records))
    atomic_write_text(results / TABLE_FILE, text + "\n")
    return text


def pair_means_note(records: list[CellRecord]) -> str:
    """A line under the s_a differences naming the cells they leave out (no per-pair a kept)."""
    missing = missing_pair_means(records)
    if not missing:
        return ""
    return ("\n**s_a differences leave out** the cells recorded before per-pair a was kept (their policies are gone): "
            + ", ".join(missing) + "\n")


def judges_note(records: list[CellRecord]) -> str:
    """A line under the tables when the cells' reward judges were not all the same weights."""
    by_judge: dict[str, list[str]] = {}
    for r in records:
        by_judge.setdefault(r.reward_judge_sha256[:12] if r.reward_judge_sha256 else "not recorded", []).append(r.label)
    if len(by_judge) < 2:
        return ""
    return ("\n**The cells' reward judges differ** (training reward and the reward-judge columns; the exact checker is "
            "the same): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in by_judge.items()) + "\n")


REFERENCES = ("base", "grpo", "pair-grpo")  # what each variant is compared with, pair by pair
DIFFERENCE_RESAMPLES = 2000


def paired_differences(records: list[CellRecord], measure: str = "g") -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """(judge, variant, reference) -> s_g(variant) - s_g(reference) (measure "g"; "a": s_a) with its
    95% interval, pair by pair on the same test pairs: each pair's g_i (a_i) averaged over a
    variant's seeds and repeats, then the gate's paired bootstrap (pairs resampled within their
    category; registry/gate.py). The spread over training seeds is the tables' ± std; this
    interval is the evaluation's. For "a", a variant's records without per-pair a (written before
    it was kept) are left out, and a variant with none is not compared (`missing_pair_means`)."""
    if measure not in ("g", "a"):
        raise ValueError(f"measure must be 'g' or 'a', got {measure!r}")
    by_variant: dict[str, list[CellRecord]] = {}
    for record in records:
        by_variant.setdefault(record.variant, []).append(record)
    out: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    for judge in ("exact", "reward"):
        pairs: dict[str, dict[str, tuple[str, float]]] = {}
        suites = set()
        for variant, mine in by_variant.items():
            scores = [r.pair_scores(judge) for r in mine if judge in r.evaluations]
            suites |= {sc.pairs_sha256 for sc in scores}
            values = [getattr(sc, measure) for sc in scores if getattr(sc, measure) is not None]
            if not values:
                continue
            mean = np.mean(values, axis=0)
            pairs[variant] = {str(i): (cat, float(v)) for i, (cat, v) in enumerate(zip(scores[0].categories, mean))}
        if len(suites) > 1:
            raise DataError(f"the {judge} scores of these records were measured on {len(suites)} different pair suites; "
                            "only cells measured on one suite can be compared pair by pair")
        for reference in REFERENCES:
            for variant in pairs:
                if variant == reference or reference not in pairs or variant == "base":
                    continue
                keys = sorted(pairs[variant], key=int)
                out[judge, variant, reference] = paired_bootstrap(pairs[variant], pairs[reference], keys,
                                                                  DIFFERENCE_RESAMPLES, seed=0)
    return out


def missing_pair_means(records: list[CellRecord]) -> list[str]:
    """The cells whose exact-checker scores have no per-pair a (left out of the s_a differences)."""
    return [r.label for r in records if "exact" in r.evaluations and r.pair_scores("exact").a is None]


def differences_markdown(diffs: dict[tuple[str, str, str], tuple[float, float, float]], measure: str = "g") -> str:
    """The paired differences as one table: a row per variant, a column per judge and reference."""
    columns = [(j, r) for j in ("exact", "reward") for r in REFERENCES if any(k[0] == j and k[2] == r for k in diffs)]
    if not columns:
        return ""
    label = {"exact": "exact checker", "reward": "reward judge"}
    lines = [f"**s_{measure} difference, pair by pair (95% interval of the paired bootstrap)**", "",
             "| variant | " + " | ".join(f"vs {r} ({label[j]})" for j, r in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for variant in dict.fromkeys(k[1] for k in diffs):
        cells = [diffs.get((j, variant, r)) for j, r in columns]
        lines.append(f"| {variant} | " + " | ".join(f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]" if d else "" for d in cells)
                     + " |")
    return "\n".join(lines) + "\n"


def add_pair_means(results: Path, out: Path) -> list[str]:
    """Fills in the per-pair a of records written before it was kept, from the exact checker's
    first-repeat evaluation still under `out` (<out>/<cell>/eval/paircomp/pairs.jsonl), when that
    file is the one the record scored: the same suite and every pair's g equal to 1e-6. Returns
    the cells filled in; a cell whose files are gone or differ is left as it is and named."""
    filled = []
    for path in sorted(results.glob("*.json")):
        record = load_record(path)
        keys = record.evaluations.get("exact", [])
        if not keys or record.scores[keys[0]].a is not None:
            continue
        name = record.variant if record.seed is None else f"{record.variant}-seed{record.seed}"
        pairs_file = out / name / "eval" / "paircomp" / "pairs.jsonl"
        score = record.scores[keys[0]]
        if not pairs_file.is_file():
            print(f"{path}: no {pairs_file}; its per-pair a stays unknown")
            continue
        rows = [json.loads(line) for line in pairs_file.read_text("utf-8").splitlines()]
        same = (_suite_hash(rows) == score.pairs_sha256
                and np.allclose([float(r["g"]) for r in rows], score.g, rtol=0, atol=1e-6))
        if not same:
            print(f"{path}: {pairs_file} is not the evaluation it recorded (another suite or other g); left as it is")
            continue
        scores = dict(record.scores)
        scores[keys[0]] = score.model_copy(update={"a": [round(float(r["a"]), 6) for r in rows]})
        atomic_write_json(path, record.model_copy(update={"scores": scores}).model_dump(mode="json"))
        filled.append(name)
    return filled


def run_ablate_stage(params_file: Path, seeds: list[int], out: Path, variants: list[str] | None = None,
                     eval_repeats: int = 3, overrides: list[str] | None = None, results: Path = RESULTS) -> str:
    """`focusdiff ablate`: the cells asked for in an MLflow run `ablate`, which keeps their records
    and the table; returns the markdown table of every record in `results` (`report`)."""
    unknown = sorted(set(variants or []) - set(VARIANTS))
    if unknown:  # before loading anything: a typo should not wait for the parameter file
        raise ConfigError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    params = load_params(params_file, overrides=parse_overrides(overrides))
    with StageRun(params.tracking, "ablate", params={"train": params.train.model_dump(mode="json"), "seeds": seeds,
                                                       "eval_repeats": eval_repeats, "results": str(results)}) as run:
        run_ablation(params, seeds, out, variants, eval_repeats, log=lambda m, step: run.log_metrics(m, step),
                     results=results)
        text = report(results)
        for path in sorted(results.glob("*")):
            if path.is_file():  # the records and the table (not the reward judge's copy)
                run.log_artifact(path, "ablate")
    return text


def _hash(what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _train_key(cfg) -> str:
    """What a trained policy depends on: its training config (not the code: after changing the
    trainer, delete <out> to measure anew)."""
    return _hash({"train": without_neutral_additions(cfg.model_dump(mode="json"), NEUTRAL_WHEN_ADDED)})


def _eval_key(params: Params, spec, repeat: int) -> str:
    """What one score of a trained policy depends on: the evaluation config with this repeat's
    seed, and the judge that scored it."""
    cfg = _eval_config(params, Path("."), spec, repeat).model_dump(mode="json", exclude={"out", "metrics_dir", "policy"})
    return _hash(without_neutral_additions(cfg, EVAL_FIELDS_ADDED))


def table(cells: list[Cell], judge: str) -> list[dict[str, Any]]:
    """One row per variant: mean and std over seeds of every PairComp metric."""
    rows = []
    for variant in dict.fromkeys(c.variant for c in cells):
        mine = [c for c in cells if c.variant == variant and c.judge == judge]
        keys = list(mine[0].metrics)
        rows.append({"variant": variant, "seeds": len(mine),
                     **{k: (float(np.mean([c.metrics[k] for c in mine])), float(np.std([c.metrics[k] for c in mine])))
                        for k in keys}})
    return rows


def markdown(cells: list[Cell]) -> str:
    """The README table: s_a and s_g (mean +- std over seeds) per judge, overall and per category."""
    lines = []
    for judge in ("exact", "reward"):
        rows = table(cells, judge)
        found = {k.split(".")[1] for k in rows[0] if k.startswith("paircomp.") and k.endswith(".s_g") and k.count(".") == 2}
        cats = [c for c in CATEGORIES if c in found]  # PairComp's order, however the scores were stored
        head = ["variant", "s_a", "s_g", *[f"{c} s_g" for c in cats]]
        # grpo+judges and grpo+second-judge trained against (also) another judge: the reward judge is not theirs
        heading = ("**Scored by the exact checker (held out)**" if judge == "exact" else "**Scored by the reward "
                   "judge** (params.yaml's train.judge; the variants naming their own judges trained against others)")
        lines += [heading, "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cell = lambda k: f"{r[k][0]:.1f} ± {r[k][1]:.1f}"  # noqa: E731
            lines.append("| " + " | ".join([r["variant"], cell("paircomp.s_a"), cell("paircomp.s_g"),
                                            *[cell(f"paircomp.{c}.s_g") for c in cats]]) + " |")
        lines.append("")
    return "\n".join(lines)
