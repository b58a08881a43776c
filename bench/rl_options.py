"""The training options' step-time effect (issue 29): seconds per step of each `<method>+<option>`
ablation variant against its method alone (vanilla GRPO, the embedded default, or --method
pair-grpo). Each variant is the ablation's own (its fields from
`focusdiff.stages.ablate.VARIANTS`, on params.yaml's training, the reward judge params.yaml names),
trained for a short run from the base; the variants are run in turns (grpo, grpo+batch-std, ...,
grpo, grpo+batch-std, ...) so that a change in the machine's load hits all alike; prints the
median seconds per step (the first step, which warms up, left out) and the ratio to the method.

Group filtering's cost depends on how many groups carry no spread, which changes as the policy
learns: a short run from the base measures the start of training (the zero-spread share and
redrawn-items columns say how much there was to filter and redraw).

  ./uvw run python bench/rl_options.py                  # needs data/pairs and models/shapes-judge
  ./uvw run python bench/rl_options.py --method pair-grpo --steps 4 --repeats 1
  ./uvw run python bench/rl_options.py --options judges       # one option against its method
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(variant: str, steps: int, work: Path) -> dict[str, float]:
    """One short run of `variant`: median seconds per step (first left out) and the mean counts."""
    from focusdiff.config import load_params
    from focusdiff.stages.ablate import variant_fields
    from focusdiff.stages.train import build_reward_judges
    from focusdiff.train.trainer import train

    params = load_params(ROOT / "params.yaml")
    run = work / f"{variant}-{time.monotonic_ns()}"
    cfg = params.train.model_copy(update={
        **variant_fields(params.train, variant), "steps": steps, "data": ROOT / params.train.data,
        "out": run / "out", "metrics_dir": run / "metrics", "checkpoint_dir": run / "checkpoints",
        "checkpoint_every": steps, "grid_every": steps})
    # the judge folders the run uses (params.yaml's or the variant's own), wherever the bench is started from
    def rooted(spec):
        return spec.model_copy(update={"model": str(ROOT / spec.model)})

    cfg = cfg.model_copy(update={"judge": rooted(cfg.judge),
                                 "judges": [rooted(j) for j in cfg.judges] if cfg.judges else None})
    history = train(cfg, build_reward_judges(cfg)).history[1:]
    return {"step_s": statistics.median(h["time/step_s"] for h in history),
            "zero_std_fraction": statistics.fmean(h["train/zero_std_fraction"] for h in history),
            "resampled_items": statistics.fmean(h.get("train/resampled_items", 0.0) for h in history)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="steps per run (the first is left out)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, in turns")
    ap.add_argument("--method", default="grpo", choices=("grpo", "pair-grpo"), help="the method the options go on")
    ap.add_argument("--options", nargs="+", metavar="OPTION",
                    help="only these options (TRAINING_OPTIONS' names, e.g. judges ema); default: every one")
    args = ap.parse_args()
    from focusdiff.stages.ablate import TRAINING_OPTIONS

    unknown = sorted(set(args.options or []) - set(TRAINING_OPTIONS))
    if unknown:
        ap.error(f"--options: unknown {', '.join(unknown)}; the options are {', '.join(TRAINING_OPTIONS)}")
    variants = [args.method, *(f"{args.method}+{option}" for option in args.options or TRAINING_OPTIONS)]
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step warms up and is left out)")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        run_once(args.method, 2, Path(tmp))  # warm-up, not counted: the process's first run is slower throughout
        for _ in range(args.repeats):
            for variant in variants:
                runs[variant].append(run_once(variant, args.steps, Path(tmp)))
    step = {v: statistics.median(r["step_s"] for r in rs) for v, rs in runs.items()}
    print(f"{args.steps} steps x {args.repeats} runs per variant (in turns), median s/step, first step left out")
    print(f"{'variant':28} {'s/step':>7} {'vs ' + args.method:>13} {'zero-spread share':>18} {'redrawn items':>14}")
    for v, rs in runs.items():
        print(f"{v:28} {step[v]:7.2f} {step[v] / step[args.method]:12.2f}x "
              f"{statistics.fmean(r['zero_std_fraction'] for r in rs):18.2f} "
              f"{statistics.fmean(r['resampled_items'] for r in rs):14.1f}")


if __name__ == "__main__":
    main()
