"""The promotion gate: should the challenger replace the champion? Pure logic, no MLflow.

PairComp's geometric mean s_g from the configured evaluator decides, pair by pair on the
same prompts, and a noisy win must not displace a good champion. The challenger is
promoted only when ALL of:
  * every benchmark it was evaluated on is complete (a failed or partial evaluation never
    promotes);
  * it was scored under the same PairComp protocol (evaluator, suite, sampling, seed: the
    `eval.paircomp.evaluator` tag, see protocol.py), on the same pairs, as the champion;
  * its s_g beats the champion's by at least `margin` points;
  * the paired bootstrap's 95% lower bound of that improvement is above 0 (pairs are
    resampled within each category, both models' scores of a pair kept together);
  * no other benchmark regresses by more than its tolerance;
  * its s_g reaches `floor` (0 by default: an absolute bar for users who want one).
With no champion yet it is promoted when its s_g reaches `floor`. By default there is always
a champion when a trained policy reaches the gate: the `baseline` stage makes the starting
policy, evaluated under the same protocol, the first champion (`first_champion: base`), so
even the first trained challenger is judged pair by pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from focusdiff.eval.protocol import EvaluationProtocol
from focusdiff.records import RecordError


class GateConfig(BaseModel):
    """The `promote:` block of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("focusdiff-shapes", min_length=1, description="registered model in MLflow")
    register_trained: bool = Field(True, description="register every trained policy as a new version (alias challenger)")
    metric: str = Field("paircomp.s_g", description="the deciding metric (x100)")
    margin: float = Field(1.0, ge=0, description="minimum improvement in points")
    floor: float = Field(0.0, ge=0, le=100, description="s_g every promoted challenger must reach (an absolute bar)")
    first_champion: Literal["base", "none"] = Field(
        "base", description="with no champion yet: 'base' registers the starting policy (train.policy), evaluates it "
                            "on the required benchmarks and makes it the champion (the baseline stage); 'none' "
                            "promotes the first challenger that reaches `floor`")
    bootstrap: int = Field(2000, ge=100)
    seed: int = 0
    required: tuple[str, ...] = Field(("paircomp", "geneval", "t2i_compbench", "dpg_bench"),
                                      description="benchmarks that must be complete")
    tolerances: dict[str, float] = Field(
        default_factory=lambda: {"geneval.overall": 0.02, "t2i_compbench.mean_of_categories": 0.02, "dpg.overall": 1.0},
        description="largest allowed drop per metric (in the metric's own units)")
    registry_timeout_s: int = Field(5, ge=1, le=300,
                                    description="seconds the gate waits for one answer from the MLflow registry")
    registry_retries: int = Field(2, ge=0, le=10,
                                  description="retries of a registry request the server did not answer (at once, "
                                              "then 2 s, 4 s... apart); then the gate stops with an 'unreachable' error")

    def metrics_read(self) -> tuple[str, ...]:
        """The `eval.<metric>` tags the gate decides on: the deciding metric and every metric
        with a regression tolerance. Any other eval tag (a reviewer's note) is not its business."""
        return (self.metric, *self.tolerances)


@dataclass
class Evidence:
    """What a model version carries: headline metrics, benchmark statuses, per-pair g_i."""

    version: str
    metrics: dict[str, float]
    status: dict[str, str]  # benchmark -> complete | failed: <reason> | missing
    pairs: dict[str, tuple[str, float]]  # pair key -> (category, g_i)
    evaluator: str  # the PairComp protocol's tag (EvaluationProtocol.as_tag), compared as recorded


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    numbers: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        return f"{verdict}: " + "; ".join(self.reasons)


def protocol_differences(challenger_tag: str, champion_tag: str) -> list[str]:
    """Which fields of the PairComp protocol differ, as one reason, when both tags are protocol
    records (focusdiff/eval/protocol.py). A tag that is not one (recorded before the protocol
    included sampling and seed) gets no detail: the versions are refused all the same, on the
    tags' inequality."""
    try:
        challenger, champion = EvaluationProtocol.from_tag(challenger_tag), EvaluationProtocol.from_tag(champion_tag)
    except RecordError:
        return []
    return [f"the PairComp protocols differ in {'; '.join(challenger.differences(champion))} (challenger vs champion)"]


def category_mean(pairs: dict[str, tuple[str, float]], keys: list[str]) -> float:
    """s_g x100: mean over categories of the mean g_i of the category's pairs."""
    by_cat: dict[str, list[float]] = {}
    for k in keys:
        cat, g = pairs[k]
        by_cat.setdefault(cat, []).append(g)
    return 100 * float(np.mean([np.mean(v) for v in by_cat.values()]))


def paired_bootstrap(challenger: dict[str, tuple[str, float]], champion: dict[str, tuple[str, float]], keys: list[str],
                     resamples: int, seed: int) -> tuple[float, float, float]:
    """(observed difference, 2.5% and 97.5% quantiles) of s_g(challenger) - s_g(champion) when
    pairs are resampled within their category (both models' scores of a pair move together)."""
    cats: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        cats.setdefault(challenger[k][0], []).append(i)
    a = np.array([challenger[k][1] for k in keys])
    b = np.array([champion[k][1] for k in keys])
    diff = a - b
    observed = 100 * float(np.mean([diff[idx].mean() for idx in cats.values()]))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    groups = [np.array(idx) for idx in cats.values()]
    for r in range(resamples):
        draws[r] = np.mean([diff[g[rng.integers(0, len(g), len(g))]].mean() for g in groups])
    low, high = np.percentile(100 * draws, [2.5, 97.5])
    return observed, float(low), float(high)


def decide(challenger: Evidence, champion: Evidence | None, cfg: GateConfig) -> Decision:
    reasons: list[str] = []
    numbers: dict[str, Any] = {"challenger": challenger.version, "champion": champion.version if champion else None}
    incomplete = {b: challenger.status.get(b, "missing") for b in cfg.required if challenger.status.get(b) != "complete"}
    if incomplete:
        return Decision(False, [f"{b} evaluation is {s}" for b, s in incomplete.items()] +
                        ["a failed or incomplete evaluation never promotes"], numbers)
    if cfg.metric not in challenger.metrics:
        return Decision(False, [f"challenger has no {cfg.metric}"], numbers)
    score = challenger.metrics[cfg.metric]
    numbers[f"challenger.{cfg.metric}"] = score
    if champion is None:
        promote = score >= cfg.floor
        reasons.append(f"no champion yet; {cfg.metric} {score:.2f} {'>=' if promote else '<'} floor {cfg.floor:.2f}")
        if cfg.first_champion == "base":
            reasons.append("the starting policy is not the champion: `focusdiff baseline` (dvc repro baseline) "
                           "registers and evaluates it so that challengers are compared with it pair by pair")
        return Decision(promote, reasons, numbers)
    if challenger.evaluator != champion.evaluator:
        return Decision(False, [f"evaluated differently from the champion ({challenger.evaluator!r} vs "
                                f"{champion.evaluator!r}): scores are not comparable",
                                *protocol_differences(challenger.evaluator, champion.evaluator),
                                "to compare them, re-score the champion under the challenger's protocol: "
                                "`focusdiff evaluate --version champion -b paircomp` with the challenger's "
                                "evaluate settings (or the focusdiff-evaluate deployment, version=champion)"], numbers)
    keys = sorted(set(challenger.pairs) & set(champion.pairs))
    if not keys or len(keys) != len(challenger.pairs) or len(keys) != len(champion.pairs):
        return Decision(False, [f"the champion and challenger were scored on different pairs "
                                f"({len(challenger.pairs)} vs {len(champion.pairs)}, {len(keys)} shared)"], numbers)
    observed, low, high = paired_bootstrap(challenger.pairs, champion.pairs, keys, cfg.bootstrap, cfg.seed)
    numbers.update({f"champion.{cfg.metric}": champion.metrics.get(cfg.metric), "improvement": observed,
                    "improvement.ci95": [low, high], "pairs": len(keys)})
    promote = True
    if observed < cfg.margin:
        promote = False
        reasons.append(f"{cfg.metric} improves by {observed:+.2f} points, below the margin {cfg.margin:.2f}")
    else:
        reasons.append(f"{cfg.metric} improves by {observed:+.2f} points (margin {cfg.margin:.2f})")
    if low <= 0:
        promote = False
        reasons.append(f"paired bootstrap 95% interval [{low:+.2f}, {high:+.2f}] includes no gain (lower bound <= 0)")
    else:
        reasons.append(f"paired bootstrap 95% interval [{low:+.2f}, {high:+.2f}] is above 0")
    if cfg.floor > 0 and score < cfg.floor:
        promote = False
        reasons.append(f"{cfg.metric} {score:.2f} is below the floor {cfg.floor:.2f}")
    for metric, tolerance in cfg.tolerances.items():
        if metric not in champion.metrics:
            continue
        if metric not in challenger.metrics:
            promote = False
            reasons.append(f"challenger has no {metric} to compare with the champion's")
            continue
        drop = champion.metrics[metric] - challenger.metrics[metric]
        numbers[f"drop.{metric}"] = drop
        if drop > tolerance:
            promote = False
            reasons.append(f"{metric} regresses by {drop:.3g} (> tolerance {tolerance:g})")
    return Decision(promote, reasons, numbers)
