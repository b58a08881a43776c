"""`focusdiff ablate`: does pairing help? base vs vanilla GRPO vs Pair-GRPO without injection
vs Pair-GRPO, at an equal rollout budget, over several seeds.

Every variant starts from the same base with the same parameters, steps and images per
step (so the same number of rollouts); only the method's switches differ:

    grpo                     per-prompt groups, no injection
    pair-grpo-no-injection   expanded groups over both prompts of a pair
    pair-grpo                expanded groups + ground-truth injection on the curriculum

Each trained policy (and the base) is scored on PairComp's held-out test pairs twice: by
the reward judge it was trained against and by the exact checker (the held-out
evaluator, which training never sees). The table reports mean +- std over seeds of s_a
and s_g, overall and per category; all numbers also go to MLflow and a JSON file.

One draw of PairComp's images is noisy: on 180 test pairs the base's s_g is 23.9, 18.9 or
26.1 depending on the evaluation seed alone. So every policy is scored `eval_repeats` times,
repeat r drawing its images with seed `evaluate.seed + r * REPEAT_SEED_STRIDE`, and a cell
holds the mean over repeats (the PairComp score of all repeats' images pooled).

The whole ablation is hours on a CPU, so each (variant, seed) run keeps its scores in
<out>/<variant>-seed<seed>/cells.json, keyed by the training configuration and, per score,
by the evaluation configuration. A rerun reuses every score it finds (and says so), and
scores only what is missing, with the trained policy already there, so adding repeats
does not train again. The code is not part of these keys: after changing it, delete the
folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focusdiff.config import Params, load_params, parse_overrides
from focusdiff.errors import ConfigError, DataError
from focusdiff.eval.orchestrate import run_paircomp
from focusdiff.io import atomic_write_json, atomic_write_text
from focusdiff.judge.select import build_judge
from focusdiff.judge.spec import JudgeSpec
from focusdiff.model.loading import load_policy
from focusdiff.progress import Reporter
from focusdiff.stages.train import step_summary
from focusdiff.tracking import StageRun
from focusdiff.train.trainer import train

VARIANTS: dict[str, dict[str, bool]] = {
    "grpo": {"expand_pair_groups": False, "inject_ground_truth": False},
    "pair-grpo-no-injection": {"expand_pair_groups": True, "inject_ground_truth": False},
    "pair-grpo": {"expand_pair_groups": True, "inject_ground_truth": True},
}
CELLS_FILE = "cells.json"  # a run's scores, beside its policy
REPEAT_SEED_STRIDE = 100_000  # repeat r draws image k with seed evaluate.seed + r * stride + k: no overlap


@dataclass
class Cell:
    variant: str
    seed: int
    judge: str  # "reward" or "exact"
    metrics: dict[str, float]


def _paircomp(params: Params, policy, policy_dir: str, out: Path, evaluator, repeat: int) -> dict[str, float]:
    cfg = _eval_config(params, out, evaluator, repeat).model_copy(update={"policy": policy_dir})
    return run_paircomp(cfg, policy, lambda n: None).metrics


def score_policy(params: Params, policy_dir: str, out: Path, evaluators: dict[str, JudgeSpec],
                 repeat: int = 0) -> dict[str, dict[str, float]]:
    """One policy's PairComp by each evaluator, as the ablation measures it: the policy is loaded
    once and its images drawn once (the later evaluators find them valid and reuse them)."""
    policy = load_policy(policy_dir)
    return {name: _paircomp(params, policy, policy_dir, out, spec, repeat) for name, spec in evaluators.items()}


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
                 eval_repeats: int = 1, log=lambda metrics, step: None) -> list[Cell]:
    if eval_repeats < 1:
        raise ValueError(f"eval_repeats must be >= 1, got {eval_repeats}")
    judges = {"reward": params.train.judge, "exact": JudgeSpec(backend="exact")}
    repeats = range(eval_repeats)
    cells: list[Cell] = []
    base_policy = load_policy(params.train.policy)
    for name, spec in judges.items():
        base = [_paircomp(params, base_policy, params.train.policy, _repeat_dir(out / "base", r), spec, r) for r in repeats]
        cells += [Cell("base", s, name, _mean(base)) for s in seeds]  # the base is not trained: one measurement
    for variant in variants or list(VARIANTS):
        for seed in seeds:
            run_dir = out / f"{variant}-seed{seed}"
            cfg = params.train.model_copy(update={**VARIANTS[variant], "seed": seed, "out": run_dir / "policy",
                                                  "checkpoint_dir": run_dir / "checkpoints",
                                                  "metrics_dir": run_dir / "metrics"})
            key = _train_key(cfg)
            wanted = {(name, r): _eval_key(params, spec, r) for name, spec in judges.items() for r in repeats}
            saved = _saved_scores(run_dir / CELLS_FILE, key)
            scores = saved or {}
            missing = [w for w in wanted if wanted[w] not in scores]
            if not missing:
                print(f"{run_dir}: reusing the scores of a finished run with this configuration (delete it to retrain)")
            else:
                retrain = saved is None or not (cfg.out / "model.safetensors").is_file()
                if retrain:
                    with Reporter(f"train {variant} seed {seed}", cfg.steps, describe=step_summary) as progress:
                        train(cfg, build_judge(cfg.judge), on_progress=progress.update)
                    scores, missing = {}, list(wanted)
                todo: dict[str, tuple[str, int]] = {}  # by key: with the exact checker as reward judge, one serves both
                for w in missing:
                    todo.setdefault(wanted[w], w)
                if not retrain:
                    print(f"{run_dir}: reusing its trained policy; scoring {len(todo)} missing evaluation(s)")
                policy = load_policy(str(cfg.out))
                for eval_key, (name, r) in todo.items():
                    scores[eval_key] = _paircomp(params, policy, str(cfg.out), _repeat_dir(run_dir / "eval", r),
                                                 judges[name], r)
                    atomic_write_json(run_dir / CELLS_FILE, {"train_key": key, "scores": scores})
            cells += [Cell(variant, seed, name, _mean([scores[wanted[name, r]] for r in repeats])) for name in judges]
            log({f"ablate.{variant}.seed{seed}.{k}": v for c in cells[-2:] for k, v in c.metrics.items()
                 if k in ("paircomp.s_g", "paircomp.s_a")}, seed)
    atomic_write_json(out / "ablation.json", [c.__dict__ for c in cells])
    return cells


def run_ablate_stage(params_file: Path, seeds: list[int], out: Path, variants: list[str] | None = None,
                     eval_repeats: int = 3, overrides: list[str] | None = None) -> str:
    """`focusdiff ablate`: the ablation in an MLflow run `ablate`, which keeps <out>/table.md and
    <out>/ablation.json; returns the markdown table."""
    unknown = sorted(set(variants or []) - set(VARIANTS))
    if unknown:  # before loading anything: a typo should not wait for the parameter file
        raise ConfigError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    params = load_params(params_file, overrides=parse_overrides(overrides))
    with StageRun(params.tracking, "ablate", params={"train": params.train.model_dump(mode="json"), "seeds": seeds,
                                                       "eval_repeats": eval_repeats}) as run:
        cells = run_ablation(params, seeds, out, variants, eval_repeats, log=lambda m, step: run.log_metrics(m, step))
        text = markdown(cells)
        atomic_write_text(out / "table.md", text + "\n")
        run.log_artifact(out / "table.md", "ablate")
        run.log_artifact(out / "ablation.json", "ablate")
    return text


def _hash(what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _train_key(cfg) -> str:
    """What a trained policy depends on: its training config (not the code: after changing the
    trainer, delete <out> to measure anew)."""
    return _hash({"train": cfg.model_dump(mode="json")})


def _eval_key(params: Params, spec, repeat: int) -> str:
    """What one score of a trained policy depends on: the evaluation config with this repeat's
    seed, and the judge that scored it."""
    cfg = _eval_config(params, Path("."), spec, repeat)
    return _hash(cfg.model_dump(mode="json", exclude={"out", "metrics_dir", "policy"}))


def _saved_scores(path: Path, key: str) -> dict[str, dict] | None:
    """The scores saved for a run trained with this configuration, by evaluation key; None
    when there is no such run. A file that does not parse is an error naming it, not a silent
    retrain over it."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text("utf-8"))
        return dict(saved["scores"]) if saved["train_key"] == key else None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a finished ablation run's scores ({exc}); delete it to rerun that run") from exc


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
        cats = [k.split(".")[1] for k in rows[0] if k.startswith("paircomp.") and k.endswith(".s_g") and k.count(".") == 2]
        head = ["variant", "s_a", "s_g", *[f"{c} s_g" for c in cats]]
        lines += [f"**Scored by the {'exact checker (held out)' if judge == 'exact' else 'reward judge'}**", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cell = lambda k: f"{r[k][0]:.1f} ± {r[k][1]:.1f}"  # noqa: E731
            lines.append("| " + " | ".join([r["variant"], cell("paircomp.s_a"), cell("paircomp.s_g"),
                                            *[cell(f"paircomp.{c}.s_g") for c in cats]]) + " |")
        lines.append("")
    return "\n".join(lines)


def load_cells(path: Path) -> list[Cell]:
    return [Cell(**c) for c in json.loads(path.read_text("utf-8"))]
