"""The promotion gate's decisions, with hand-computed numbers (no MLflow here)."""

from __future__ import annotations

import numpy as np
import pytest

from focusdiff.registry.gate import Evidence, GateConfig, decide, paired_bootstrap

COMPLETE = {"paircomp": "complete", "geneval": "complete", "t2i_compbench": "complete", "dpg_bench": "complete"}
GATE = GateConfig(margin=1.0, floor=30.0, bootstrap=500)


def _evidence(version, g_by_pair, metrics=None, status=None, evaluator="exact|shapes-test"):
    pairs = {k: v for k, v in g_by_pair.items()}
    cats = {}
    for cat, g in pairs.values():
        cats.setdefault(cat, []).append(g)
    s_g = 100 * float(np.mean([np.mean(v) for v in cats.values()]))
    return Evidence(version, {"paircomp.s_g": s_g, **(metrics or {})}, status or dict(COMPLETE), pairs, evaluator)


def test_observed_difference_is_a_mean_of_category_means():
    a = {"p1": ("color", 0.6), "p2": ("color", 0.8), "p3": ("text", 0.5)}
    b = {"p1": ("color", 0.5), "p2": ("color", 0.5), "p3": ("text", 0.5)}
    observed, low, high = paired_bootstrap(a, b, ["p1", "p2", "p3"], 200, 0)
    # color: diffs 0.1, 0.3 -> 0.2; text: 0 -> s_g difference = 100 * (0.2 + 0) / 2 = 10
    assert observed == pytest.approx(10.0)
    assert 5.0 - 1e-9 <= low <= high <= 15.0 + 1e-9  # text never moves; color resamples between 0.1 and 0.3


def test_first_champion_needs_the_floor():
    strong = _evidence("1", {"a": ("color", 0.5)})
    weak = _evidence("1", {"a": ("color", 0.2)})
    assert decide(strong, None, GATE).promote
    d = decide(weak, None, GATE)
    assert not d.promote and "no champion yet; paircomp.s_g 20.00 < floor 30.00" in d.reasons


def test_with_no_champion_the_reasons_name_the_baseline_stage():
    d = decide(_evidence("1", {"a": ("color", 0.5)}), None, GATE)
    assert any("`focusdiff baseline`" in r for r in d.reasons), d.reasons
    off = decide(_evidence("1", {"a": ("color", 0.5)}), None, GateConfig(floor=30.0, first_champion="none"))
    assert off.reasons == ["no champion yet; paircomp.s_g 50.00 >= floor 30.00"]


def test_the_floor_is_an_absolute_bar_also_against_a_champion():
    base = {f"p{i}": ("color", 0.1) for i in range(40)}
    d = decide(_evidence("2", {k: (c, g + 0.1) for k, (c, g) in base.items()}), _evidence("1", base), GATE)
    # +10 points, interval above 0, but s_g 20 < floor 30
    assert d.numbers["improvement"] == pytest.approx(10.0) and d.numbers["improvement.ci95"][0] > 0
    assert not d.promote and "paircomp.s_g 20.00 is below the floor 30.00" in d.reasons


def test_an_incomplete_or_failed_benchmark_never_promotes():
    status = {**COMPLETE, "geneval": "failed: judge unavailable", "dpg_bench": "missing"}
    d = decide(_evidence("2", {"a": ("color", 0.9)}, status=status), None, GATE)
    assert not d.promote
    assert "geneval evaluation is failed: judge unavailable" in d.reasons and "dpg_bench evaluation is missing" in d.reasons


def test_clear_win_promotes_and_noisy_win_does_not():
    rng = np.random.default_rng(0)
    base = {f"p{i}": ("color" if i % 2 else "position", float(rng.uniform(0.3, 0.7))) for i in range(60)}
    champion = _evidence("1", base)
    clear = _evidence("2", {k: (c, g + 0.05) for k, (c, g) in base.items()})
    d = decide(clear, champion, GATE)
    assert d.promote and d.numbers["improvement"] == pytest.approx(5.0)
    # the same average gain, but carried by a handful of pairs while most got worse: noise
    noisy = {k: (c, g - 0.2) for k, (c, g) in base.items()}
    for k in list(base)[:10]:
        noisy[k] = (base[k][0], min(1.0, base[k][1] + 0.98))
    d = decide(_evidence("3", noisy), champion, GATE)
    assert not d.promote and any("includes no gain" in r for r in d.reasons)


def test_small_win_below_the_margin_is_rejected():
    base = {f"p{i}": ("color", 0.5) for i in range(40)}
    d = decide(_evidence("2", {k: (c, g + 0.005) for k, (c, g) in base.items()}), _evidence("1", base), GATE)
    assert not d.promote and any("below the margin 1.00" in r for r in d.reasons)


def test_regression_on_another_benchmark_blocks_promotion():
    base = {f"p{i}": ("color", 0.5) for i in range(40)}
    champion = _evidence("1", base, {"geneval.overall": 0.80, "dpg.overall": 70.0})
    challenger = _evidence("2", {k: (c, g + 0.1) for k, (c, g) in base.items()}, {"geneval.overall": 0.70, "dpg.overall": 70.5})
    d = decide(challenger, champion, GATE)
    assert not d.promote and any("geneval.overall regresses by 0.1 (> tolerance 0.02)" in r for r in d.reasons)


def test_different_evaluators_or_pairs_are_not_compared():
    base = {f"p{i}": ("color", 0.5) for i in range(10)}
    better = {k: (c, g + 0.2) for k, (c, g) in base.items()}
    d = decide(_evidence("2", better, evaluator="hf:other"), _evidence("1", base), GATE)
    assert not d.promote and "scores are not comparable" in d.reasons[0]
    fewer = dict(list(better.items())[:5])
    d = decide(_evidence("2", fewer), _evidence("1", base), GATE)
    assert not d.promote and "scored on different pairs (5 vs 10, 5 shared)" in d.reasons[0]
