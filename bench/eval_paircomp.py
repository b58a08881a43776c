"""PairComp-shapes speed: generate and score >= 120 pairs (4 images each) with the shipped
base and the exact checker, as `focusdiff evaluate -b paircomp` does. Goal (issue
"Evaluation"): <= 60 s on 2 CPU cores. Not a test: run it, read the seconds.

  ./uvw run python bench/eval_paircomp.py                 # 180 test pairs of a fresh ShapesWorld build
  ./uvw run python bench/eval_paircomp.py --pairs-per-category 20 --policy models/grpo
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from focusdiff.config import ShapesDataConfig
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.orchestrate import run_paircomp
from focusdiff.model.loading import load_policy
from focusdiff.shapes.build import build_shapes_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="shapes-base")
    ap.add_argument("--pairs-per-category", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_shapes_dataset(ShapesDataConfig(pairs_per_category={"train": 1, "val": 1, "test": args.pairs_per_category},
                                              prompts={"train": 1, "val": 1, "test": 1}), root / "data")
        policy = load_policy(args.policy)
        cfg = EvalConfig(policy=args.policy, data=root / "data", out=root / "out", metrics_dir=root / "metrics",
                         batch_size=args.batch_size, bootstrap=1000)
        t0 = time.perf_counter()
        result = run_paircomp(cfg, policy, lambda n: None)
        total = time.perf_counter() - t0
    pairs = 6 * args.pairs_per_category
    print(f"PairComp-shapes: {pairs} pairs, {4 * pairs} images, policy {args.policy}, {args.threads} threads")
    print(f"  generate {result.seconds['generate_s']:.1f} s, score {result.seconds['score_s']:.1f} s, "
          f"total with aggregation and report {total:.1f} s (goal <= 60 s)")
    print(f"  paircomp.s_g = {result.metrics['paircomp.s_g']:.1f}, paircomp.s_a = {result.metrics['paircomp.s_a']:.1f}")


if __name__ == "__main__":
    main()
