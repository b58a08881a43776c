"""The GPU acceptance run: the first thing to run whenever a GPU is lent (issue 28), at most
8 minutes on one H100/H200. Writes JSON and Markdown (default bench/gpu_acceptance.{json,md};
paste the table into bench/README.md).

  1. Rollout throughput at the Janus-Pro-1B and -7B shapes in bf16, CFG batch 2 x 16, 576
     tokens: this project's sampler against transformers' `generate` and the reference code's
     naive loop, and its decode step against the weight-bandwidth floor (bench/real_shape.py).
  2. One Pair-GRPO update with ground-truth injection at the 1B shape (full fine-tuning) and at
     the 7B shape (LoRA, gradient checkpointing): step time, images/s, peak memory against the
     memory planner's estimate.
  3. The embedded default's training run on the GPU: the ShapesWorld dataset and judge built by
     their stages, then one Pair-GRPO cell of the ablation (params.yaml's training, scored on
     PairComp's test pairs by the exact checker): wall time per stage and s_g.

`--tiny` runs the same code on the CPU in minutes, for CI: the shipped ShapesWorld base
instead of the real shapes (batch 2), and a few training steps on a small dataset.

  ./uvw run python bench/gpu_acceptance.py                  # a GPU
  ./uvw run python bench/gpu_acceptance.py --tiny --out /tmp/acceptance
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOCUSDIFF = str(Path(sys.executable).parent / "focusdiff")
GiB = 2**30

# what each run measures: full on a GPU; tiny is the same code at the embedded scale on a CPU
FULL = {
    "rollout": [("janus-pro-1b", None), ("janus-pro-7b", None)],
    "step": [("janus-pro-1b", None, {}),
             ("janus-pro-7b", None, {"lora": {"rank": 16}, "gradient_checkpointing": True})],
    "batch": 16, "repeats": 2, "dtype": "bf16",
    "embedded": [],  # params.yaml as it is
}
TINY = {
    "rollout": [("shapes-base", None)],
    "step": [("shapes-base", None, {}), ("shapes-base", None, {"lora": {"rank": 4}, "gradient_checkpointing": True})],
    "batch": 2, "repeats": 1, "dtype": "fp32",
    "embedded": ["data.shapes.pairs_per_category.train=4", "data.shapes.pairs_per_category.val=1",
                 "data.shapes.pairs_per_category.test=1", "data.shapes.prompts.train=3", "data.shapes.prompts.val=1",
                 "data.shapes.prompts.test=1", "judge.steps=4", "judge.width=32", "judge.layers=1", "judge.heads=2",
                 "judge.min_accuracy=0", "train.steps=2"],
}


def real_shape(part: str, shape: str, layers: int | None, scale: dict, extra: list[str]) -> dict:
    """bench/real_shape.py's measurement (its own processes), as JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [sys.executable, str(HERE / "real_shape.py"), "--part", part, "--shape", shape, "--batch",
                str(scale["batch"]), "--repeats", str(scale["repeats"]), "--dtype", scale["dtype"], "--json", out.name, *extra]
        if layers:
            argv += ["--layers", str(layers)]
        subprocess.run(argv, check=True)
        return json.loads(Path(out.name).read_text())


def embedded_run(work: Path, overrides: list[str]) -> dict:
    """The embedded default on this machine: data, judge and one Pair-GRPO cell, timed by stage."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text("utf-8"))
    params["tracking"] = {**params["tracking"], "uri": f"sqlite:///{work}/mlflow.db", "artifact_location": str(work / "mlruns")}
    params["data"]["out"] = str(work / "pairs")
    params["judge"]["out"], params["judge"]["metrics"] = str(work / "judge"), str(work / "judge.json")
    params["train"]["data"] = params["evaluate"]["data"] = str(work / "pairs")
    params["train"]["judge"]["model"] = str(work / "judge")
    for override in overrides:  # dotted.key=value, written into the file (not every stage command takes -S)
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        block = params
        for name in parents:
            block = block[name]
        block[leaf] = yaml.safe_load(value)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    seconds = {}
    for name, argv in [("data", ["data", "build"]), ("judge", ["judge", "train"]),
                       ("pair-grpo cell", ["ablate", "--variant", "pair-grpo", "--seed", "0", "--eval-repeats", "1",
                                           "--out", str(work / "ablate"), "--results", str(work / "results")])]:
        t0 = time.perf_counter()
        subprocess.run([FOCUSDIFF, *argv, "--params", str(work / "params.yaml")], check=True, cwd=work)
        seconds[name] = time.perf_counter() - t0
    record = json.loads((work / "results" / "pair-grpo-seed0.json").read_text())
    base = json.loads((work / "results" / "base.json").read_text())
    exact = lambda r: r["scores"][r["evaluations"]["exact"][0]]["metrics"]["paircomp.s_g"]  # noqa: E731
    return {"seconds": seconds, "train_s": record["wall_s"]["train_s"], "s_g": exact(record), "base_s_g": exact(base)}


def markdown(results: dict) -> str:
    lines = [f"GPU acceptance run, {results['device']}, {results['date']} ({results['scale']}; "
             f"{results['seconds']:.0f} s in all)", "",
             "| rollout | layers | s/image: ours | generate | naive | ours vs generate | ours vs naive | decode step vs floor |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rollout"]:
        runs, ours = r["rollout"]["runs"], r["rollout"]["runs"]["ours"]
        floor = f"{ours['decode_step_s'] / ours['decode_floor_s']:.1f}x" if ours.get("decode_floor_s") else "n/a (CPU)"
        lines.append(f"| {r['shape']} {r['dtype']} x{r['batch']} | {r['layers'] or 'all'} | {ours['s_per_image']:.4f} | "
                     f"{runs['generate']['s_per_image']:.4f} | {runs['naive']['s_per_image']:.4f} | "
                     f"{r['rollout']['ours_vs_generate']:.2f}x | {r['rollout']['ours_vs_naive']:.2f}x | {floor} |")
    lines += ["", "| Pair-GRPO update | step s | images/s | peak GiB | planned GiB | measured / planned |", "|---|---|---|---|---|---|"]
    for r in results["step"]:
        s = r["step"]
        lines.append(f"| {r['shape']} {r['label']} | {s['seconds']:.1f} | {s['images'] / s['seconds']:.2f} | "
                     f"{s['peak_bytes'] / GiB:.2f} | {s['planned_peak_bytes'] / GiB:.2f} | {s['peak_vs_planned']:.2f} |")
    e = results["embedded"]
    lines += ["", f"Embedded default: {', '.join(f'{k} {v:.0f} s' for k, v in e['seconds'].items())}; training "
                  f"{e['train_s']:.0f} s; PairComp s_g by the exact checker {e['base_s_g']:.1f} (base) -> {e['s_g']:.1f}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the same code on the CPU at the embedded scale (CI)")
    ap.add_argument("--out", type=Path, default=HERE / "gpu_acceptance", help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no GPU here: bench/gpu_acceptance.py measures a GPU (--tiny runs the same code on the CPU)")
    scale = TINY if args.tiny else FULL
    started = time.perf_counter()
    results: dict = {"scale": "tiny, CPU" if args.tiny else "full", "date": time.strftime("%Y-%m-%d"),
                     "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores",
                     "rollout": [], "step": []}
    for shape, layers in scale["rollout"]:
        results["rollout"].append(real_shape("rollout", shape, layers, scale, []))
    for shape, layers, overrides in scale["step"]:
        r = real_shape("step", shape, layers, scale, ["--overrides", json.dumps(overrides)])
        r["label"] = "LoRA, gradient checkpointing" if "lora" in overrides else "full fine-tuning"
        results["step"].append(r)
    with tempfile.TemporaryDirectory() as work:
        results["embedded"] = embedded_run(Path(work), scale["embedded"])
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
