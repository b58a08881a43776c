"""Janus-Pro at its real shape (random weights, focusdiff/model/real_shapes.py): how fast it
samples 576-token images and how much memory a Pair-GRPO step takes, against the memory planner.

Two measurements, each a fresh process per run so that a peak is that run's alone:

  rollout  seconds per image at 576 tokens for this project's sampler, transformers'
           `generate(generation_mode="image")` and the reference code's naive loop (same model,
           batch and seeds; bench/rollout.py's three samplers), with each one's peak memory
           above the loaded model; prints the ratios.
  step     one Pair-GRPO step with ground-truth injection (ShapesWorld ground truths rendered
           at 384 px, a tiny random VLM judging through the `hf` backend), as
           tests/integration/test_real_shape.py runs it; its measured peak memory above the
           process's start against the planner's estimate for the same configuration.

Peak memory: on a GPU, torch's max_memory_allocated; on the CPU, the process's resident set
sampled every 2 ms by a thread (what the kernel holds, allocator caches included). The planner
estimates what the trainer keeps alive (focusdiff/train/plan.py); on the CPU it is run with
no headroom and fp32, as the step runs.

  ./uvw run python bench/real_shape.py                          # CPU: janus-pro-1b, 1 layer, both parts
  ./uvw run python bench/real_shape.py --part step --layers 2
  ./uvw run python bench/real_shape.py --shape janus-pro-7b --layers 30 --batch 16   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.tiny_models: the tiny VLM judge


class PeakMemory:
    """Peak memory of a block above its start: CUDA's allocator counter, else the RSS."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            process = psutil.Process()
            self.start = process.memory_info().rss
            self.peak = self.start

            def poll() -> None:
                while not self._stop.wait(0.002):
                    self.peak = max(self.peak, process.memory_info().rss)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)

    @property
    def above_start(self) -> int:
        return self.peak - self.start


def real_shape_policy(shape: str, layers: int | None, dtype: torch.dtype, device: str):
    """The random real-shape policy, or the shipped ShapesWorld base (`--shape shapes-base`: the
    same code at 64 tokens, for bench/gpu_acceptance.py --tiny)."""
    from focusdiff.model.loading import SHAPES_BASE, load_policy
    from focusdiff.model.policy import Policy
    from focusdiff.model.real_shapes import build_real_shape_model, real_shape_tokenizer

    if shape == SHAPES_BASE:
        return load_policy(SHAPES_BASE, dtype=dtype, device=device)
    model = build_real_shape_model(shape, layers, seed=0, dtype=dtype, device=device)
    return Policy(model, real_shape_tokenizer(shape), f"random {shape}, {layers or 'all'} layers")


def rollout_run(args) -> dict:
    """One sampler's seconds per image and peak memory (a fresh process: see main)."""
    from rollout import (decode_weight_bytes, device_bandwidth_gbs, distinct_prompts, hf_generate,  # bench/rollout.py
                         naive_loop, ours, prefill_seconds)

    from focusdiff.model.sampler import SamplingConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    policy = real_shape_policy(args.shape, args.layers, dtype, device)
    fn = {"ours": ours, "generate": hf_generate, "naive": naive_loop}[args.sampler]
    prompts, s = distinct_prompts(args.batch), SamplingConfig(cfg_weight=5.0)
    times = []
    with PeakMemory(device) as peak:
        for r in range(args.repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            fn(policy, prompts, r, s)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    result = {"sampler": args.sampler, "seconds": seconds, "s_per_image": seconds / args.batch,
              "peak_bytes": peak.above_start, "tokens": policy.num_image_tokens}
    if args.sampler == "ours":  # the decode step against reading the weights once per step
        step = (seconds - prefill_seconds(policy, prompts, args.repeats)) / (policy.num_image_tokens - 1)
        bandwidth = device_bandwidth_gbs(device)
        result.update(decode_step_s=step, decode_weight_bytes=decode_weight_bytes(policy), bandwidth_gbs=bandwidth,
                      decode_floor_s=decode_weight_bytes(policy) / (bandwidth * 1e9) if bandwidth else None)
    return result


def step_world(root: Path, shape: str, layers: int | None) -> Path:
    """The policy (a random real-shape one saved as users' checkpoints are; shapes-base as it
    ships), ShapesWorld pairs rendered at its image size, and the tiny VLM judge."""
    from focusdiff.model.loading import SHAPES_BASE, SHAPES_BASE_DIR
    from focusdiff.model.real_shapes import save_real_shape_policy
    from focusdiff.shapes.build import build_shapes_dataset
    from focusdiff.shapes.configs import ShapesDataConfig
    from tests.tiny_models import save_tiny_llava

    if shape == SHAPES_BASE:
        shutil.copytree(SHAPES_BASE_DIR, root / "policy")
    else:
        save_real_shape_policy(shape, root / "policy", layers=layers, seed=0)
    build_shapes_dataset(ShapesDataConfig(canvas=32 if shape == SHAPES_BASE else 384,
                                          pairs_per_category={"train": 1, "val": 1, "test": 1},
                                          prompts={"train": 1, "val": 1, "test": 1}), root / "data")
    save_tiny_llava(root / "judge", head_std=0.3)
    return root


def step_config(root: Path, run: Path, mixed_precision: str = "no", **over):
    from focusdiff.train.configs import GRPOConfig

    return GRPOConfig.model_validate({
        "policy": str(root / "policy"), "data": str(root / "data"),
        "judge": {"backend": "hf", "model": str(root / "judge"), "max_concurrency": 1},
        "group_size": 3, "grad_accum": 1, "steps": 1, "unpaired_prompts": False, "mixed_precision": mixed_precision,
        "curriculum": {"s1": 10, "s2": 20, "s3": 30}, "lr": {"peak": 1e-4, "warmup": 1, "mid_step": 1},
        "out": str(run / "out"), "metrics_dir": str(run / "metrics"), "checkpoint_dir": str(run / "checkpoints"), **over})


def step_run(args) -> dict:
    """One Pair-GRPO step's time and peak memory, and the planner's estimate of the peak."""
    from focusdiff.judge.select import build_judge
    from focusdiff.stages.plan import Hardware, run_plan
    from focusdiff.train.trainer import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = step_config(Path(args.world), Path(args.run), "bf16" if args.dtype == "bf16" else "no",
                      **json.loads(args.overrides))
    logged = []
    judge = build_judge(cfg.judge)
    with PeakMemory(device) as peak:
        t0 = time.perf_counter()
        train(cfg, judge, log=lambda metrics, step: logged.append(metrics))
        seconds = time.perf_counter() - t0
    hw = Hardware(gpus=1, gpu_mem_gib=1e6, zero=0, headroom=0.0, prompt_tokens=args.prompt_tokens)
    _, plan = run_plan(cfg, hw)
    metrics = logged[0]
    return {"seconds": seconds, "peak_bytes": peak.above_start, "planned_peak_bytes": plan.peak,
            "planned_parts": plan.parts, "images": metrics["train/images"],
            "times": {k: v for k, v in metrics.items() if k.startswith("time/")},
            "loss": metrics["train/loss"], "grad_norm": metrics["train/grad_norm"]}


def child(args, **extra) -> dict:
    """Run this script's `--child` part in a fresh process and return its JSON."""
    argv = [sys.executable, __file__, "--child", *[f"--{k.replace('_', '-')}={v}" for k, v in
                                                    {**vars(args), **extra}.items() if v is not None and k not in ("child", "json")]]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_rollout(args) -> dict:
    runs = {name: child(args, part="rollout", sampler=name) for name in ("naive", "generate", "ours")}
    return {"runs": runs, "ours_vs_naive": runs["naive"]["seconds"] / runs["ours"]["seconds"],
            "ours_vs_generate": runs["generate"]["seconds"] / runs["ours"]["seconds"]}


def measure_step(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        world = step_world(Path(tmp) / "world", args.shape, args.layers)
        result = child(args, part="step", world=str(world), run=str(Path(tmp) / "run"))
    result["peak_vs_planned"] = result["peak_bytes"] / result["planned_peak_bytes"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["rollout", "step", "both"], default="both")
    ap.add_argument("--shape", default="janus-pro-1b")
    ap.add_argument("--layers", type=int, default=None, help="language-model layers (default: 1 on a CPU, all on a GPU)")
    ap.add_argument("--batch", type=int, default=None, help="prompts per rollout (CFG doubles the rows); default 2 CPU, 16 GPU")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: fp32 on a CPU, bf16 on a GPU")
    ap.add_argument("--repeats", type=int, default=1, help="timed rollouts per sampler after a warm-up (median)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="the planner's padded prompt length (ShapesWorld: ~16)")
    ap.add_argument("--overrides", default="{}", help="JSON of train.* fields for the step")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sampler", help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    args.layers = args.layers or (None if gpu else 1)
    args.batch = args.batch or (16 if gpu else 2)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if args.child:
        print(json.dumps(rollout_run(args) if args.part == "rollout" else step_run(args)))
        return
    results = {"shape": args.shape, "layers": args.layers, "batch": args.batch, "dtype": args.dtype,
               "device": torch.cuda.get_device_name() if gpu else f"CPU, {os.cpu_count()} cores"}
    if args.part in ("rollout", "both"):
        results["rollout"] = r = measure_rollout(args)
        print(f"{args.shape}, {args.layers} layers, {args.dtype}, batch {args.batch} (CFG rows {2 * args.batch}), "
              f"{r['runs']['ours']['tokens']} tokens per image, {results['device']}")
        for name, run in r["runs"].items():
            print(f"  {name:9s} {run['s_per_image']:8.3f} s/image   peak {run['peak_bytes'] / 2**30:6.2f} GiB above the model")
        print(f"ratio ours/naive {r['ours_vs_naive']:.2f}x, ours/generate {r['ours_vs_generate']:.2f}x")
    if args.part in ("step", "both"):
        results["step"] = s = measure_step(args)
        print(f"one Pair-GRPO step ({s['images']:.0f} images, injection on): {s['seconds']:.1f} s "
              f"({', '.join(f'{k[5:-2]} {v:.1f}' for k, v in s['times'].items())}); loss {s['loss']:.4g}, grad norm "
              f"{s['grad_norm']:.4g}")
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in s["planned_parts"].items())
        print(f"peak memory measured {s['peak_bytes'] / 2**30:.2f} GiB, planned {s['planned_peak_bytes'] / 2**30:.2f} GiB "
              f"({parts}): measured / planned {s['peak_vs_planned']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
