"""Evaluation speed, end to end, as users run it (issue "Evaluation and registry", item 5):

  1. `focusdiff evaluate -b paircomp --policy shapes-base`              goal <= 25 s
  2. one policy's ablation evaluation (exact checker and reward judge,
     `focusdiff.stages.ablate.score_policy`, in a fresh process)           goal <= 45 s
  3. `focusdiff evaluate` with the four benchmarks                        goal <= 90 s

Each is a fresh process in a project directory, timed on the wall clock from start to exit;
the time split is the stage's own (`seconds` in metrics/eval/<benchmark>.json: load, prepare,
generate, score, aggregate, track) and "start-up and other" is the rest (imports, the
parameter file, MLflow's store). Not a test: run it on an idle machine, read the ratios.

  ./uvw run python bench/eval_speed.py --project /tmp/evalproj   # a project with data/pairs built
                                                                  # (and models/shapes-judge for 2)

Without --project it builds a fresh one in a temporary directory (data only: measurement 2
needs the reward judge, `focusdiff judge train`, minutes, and is reported as not measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCHMARKS = ("paircomp", "geneval", "t2i_compbench", "dpg_bench")
ABLATION_EVAL = """
import json, sys, time
from pathlib import Path
from focusdiff.config import load_params
from focusdiff.judge.spec import JudgeSpec
from focusdiff.stages.ablate import score_policy
params = load_params(Path("params.yaml"))
out = Path(sys.argv[1])
scores = score_policy(params, "shapes-base", out, {"reward": params.train.judge, "exact": JudgeSpec(backend="exact")})
print(json.dumps({k: v["paircomp.s_g"] for k, v in scores.items()}))
"""


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, done.stdout


SPLIT = ("load_s", "prepare_s", "generate_s", "score_s", "aggregate_s", "track_s")  # in the order they happen


def split(project: Path, benchmark: str) -> dict[str, float]:
    seconds = json.loads((project / "metrics" / "eval" / f"{benchmark}.json").read_text())["seconds"]
    return {k: seconds[k] for k in SPLIT}


def report(name: str, wall: float, goal: float, splits: dict[str, dict[str, float]]) -> None:
    inside = sum(sum(s.values()) for s in splits.values())
    print(f"{name}: {wall:.1f} s end to end (goal <= {goal:.0f} s: {wall / goal:.2f} of it)")
    for benchmark, seconds in splits.items():
        print(f"  {benchmark:14s} " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in seconds.items()))
    print(f"  start-up and other {wall - inside:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, help="project directory with params.yaml and data/pairs built")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.project
        if project is None:
            project = Path(tmp) / "project"
            project.mkdir()
            shutil.copy(REPO / "params.yaml", project / "params.yaml")
            timed([str(BIN / "focusdiff"), "data", "build", "--params", "params.yaml"], project)
        focusdiff = [str(BIN / "focusdiff"), "evaluate", "--policy", "shapes-base"]

        shutil.rmtree(project / "outputs" / "eval", ignore_errors=True)  # nothing reused: every image drawn
        wall, _ = timed([*focusdiff, "-b", "paircomp"], project)
        report("1. PairComp-shapes, shapes-base", wall, 25, {"paircomp": split(project, "paircomp")})

        judge = project / "models" / "shapes-judge"
        if (judge / "config.json").is_file() or any(judge.glob("*.safetensors")):
            out = Path(tmp) / "ablation-eval"
            wall, printed = timed([str(BIN / "python"), "-c", ABLATION_EVAL, str(out)], project)
            print(f"2. ablation evaluation of one policy (exact + reward judge): {wall:.1f} s end to end "
                  f"(goal <= 45 s: {wall / 45:.2f} of it); s_g {printed.strip()}")
        else:
            print(f"2. ablation evaluation: not measured: no reward judge at {judge} (`focusdiff judge train` there)")

        shutil.rmtree(project / "outputs" / "eval", ignore_errors=True)
        wall, _ = timed([*focusdiff, *(a for b in BENCHMARKS for a in ("-b", b))], project)
        report("3. the four embedded benchmarks, shapes-base", wall, 90, {b: split(project, b) for b in BENCHMARKS})


if __name__ == "__main__":
    main()
