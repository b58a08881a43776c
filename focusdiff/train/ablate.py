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

The whole ablation is hours on a CPU, so each finished (variant, seed) run keeps its scores
in <out>/<variant>-seed<seed>/cells.json with the configuration that produced them; a rerun
with the same configuration reuses them (and says so) instead of training again. The code
is not part of that configuration: after changing it, delete the folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focusdiff.config import Params
from focusdiff.errors import DataError
from focusdiff.io import atomic_write_json

VARIANTS: dict[str, dict[str, bool]] = {
    "grpo": {"expand_pair_groups": False, "inject_ground_truth": False},
    "pair-grpo-no-injection": {"expand_pair_groups": True, "inject_ground_truth": False},
    "pair-grpo": {"expand_pair_groups": True, "inject_ground_truth": True},
}
CELLS_FILE = "cells.json"  # a finished run's scores, beside its policy


@dataclass
class Cell:
    variant: str
    seed: int
    judge: str  # "reward" or "exact"
    metrics: dict[str, float]


def _paircomp(params: Params, policy_dir: str, out: Path, evaluator) -> dict[str, float]:
    from focusdiff.eval.stage import run_paircomp
    from focusdiff.model.loading import load_policy

    cfg = params.evaluate.model_copy(update={
        "policy": policy_dir, "out": out, "metrics_dir": out / "metrics", "bootstrap": 0,
        "paircomp": params.evaluate.paircomp.model_copy(update={"evaluator": evaluator})})
    return run_paircomp(cfg, load_policy(policy_dir), lambda n: None).metrics


def run_ablation(params: Params, seeds: list[int], out: Path, variants: list[str] | None = None,
                 log=lambda metrics, step: None) -> list[Cell]:
    from focusdiff.judge.select import build_judge
    from focusdiff.judge.spec import JudgeSpec
    from focusdiff.train.trainer import train

    judges = {"reward": params.train.judge, "exact": JudgeSpec(backend="exact")}
    cells: list[Cell] = []
    for name, spec in judges.items():
        metrics = _paircomp(params, params.train.policy, out / "base", spec)
        cells += [Cell("base", s, name, metrics) for s in seeds]  # the base is not trained: one measurement
    for variant in variants or list(VARIANTS):
        for seed in seeds:
            run_dir = out / f"{variant}-seed{seed}"
            cfg = params.train.model_copy(update={**VARIANTS[variant], "seed": seed, "out": run_dir / "policy",
                                                  "checkpoint_dir": run_dir / "checkpoints",
                                                  "metrics_dir": run_dir / "metrics"})
            key = _run_key(cfg, params, judges)
            done = _finished(run_dir / CELLS_FILE, key)
            if done is not None:
                print(f"{run_dir}: reusing the scores of a finished run with this configuration (delete it to retrain)")
                cells += done
            else:
                train(cfg, build_judge(cfg.judge), progress=False)
                mine = [Cell(variant, seed, name, _paircomp(params, str(cfg.out), run_dir / "eval", spec))
                        for name, spec in judges.items()]
                atomic_write_json(run_dir / CELLS_FILE, {"key": key, "cells": [c.__dict__ for c in mine]})
                cells += mine
            log({f"ablate.{variant}.seed{seed}.{k}": v for c in cells[-2:] for k, v in c.metrics.items()
                 if k in ("paircomp.s_g", "paircomp.s_a")}, seed)
    atomic_write_json(out / "ablation.json", [c.__dict__ for c in cells])
    return cells


def _run_key(cfg, params: Params, judges: dict[str, Any]) -> str:
    """What a run's scores depend on: its training config, the evaluation config, the judges.
    Not the code: after changing the trainer or a benchmark, delete <out> to measure anew."""
    what = {"train": cfg.model_dump(mode="json"), "evaluate": params.evaluate.model_dump(mode="json"),
            "judges": {k: v.model_dump(mode="json") for k, v in judges.items()}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _finished(path: Path, key: str) -> list[Cell] | None:
    """The scores of a finished run with this key; None when there are none or they are another config's.
    A file that does not parse is an error naming it, not a silent retrain over it."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text("utf-8"))
        return [Cell(**c) for c in saved["cells"]] if saved["key"] == key else None
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
