"""Overlapped judging (train.overlap_judging) against a served judge on 127.0.0.1: step time with
and without it. The judge is `focusdiff judge serve` (an OpenAI-compatible server in its own
process, as vLLM/SGLang serve the real one), the policy the shipped ShapesWorld base, the data
params.yaml's, the images per step params.yaml's in micro-batches of one item (a step of one
micro-batch has nothing to overlap). The same short run is trained in turns (off, on, off, on, ...) so that a change
in the machine's load hits both alike; prints the median seconds per step and the ratio.

  ./uvw run python bench/overlap_judging.py                       # the learned shapes judge (models/shapes-judge)
  ./uvw run python bench/overlap_judging.py --backend exact --steps 4 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOCUSDIFF = str(Path(sys.executable).parent / "focusdiff")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(backend: str, model: str | None, port: int) -> subprocess.Popen:
    argv = [FOCUSDIFF, "judge", "serve", "--backend", backend, "--port", str(port)]
    if model:
        argv += ["--model", model]
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the judge server exited ({server.returncode}): {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the judge server did not come up within 120 s")


def step_seconds(overlap: bool, args, port: int, work: Path) -> float:
    """Median wall time of the run's steps (the first, which warms up, left out)."""
    from focusdiff.config import load_params
    from focusdiff.judge.select import build_judge
    from focusdiff.train.trainer import train

    params = load_params(ROOT / "params.yaml")
    run = work / f"{'on' if overlap else 'off'}-{time.monotonic_ns()}"
    cfg = params.train.model_copy(update={
        "judge": params.train.judge.model_copy(update={"backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                                       "model": f"focusdiff-{args.backend}", "max_concurrency": 8}),
        # the same images per step as params.yaml, in micro-batches of one item: overlap needs two or more
        "items_per_micro_batch": 1,
        "grad_accum": params.train.grad_accum * params.train.items_per_micro_batch,
        "steps": args.steps, "overlap_judging": overlap, "data": ROOT / params.train.data,
        "out": run / "out", "metrics_dir": run / "metrics", "checkpoint_dir": run / "checkpoints"})
    history = train(cfg, build_judge(cfg.judge)).history
    return statistics.median(h["time/step_s"] for h in history[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="shapes", help="the served judge's backend (shapes, exact)")
    ap.add_argument("--model", default=None, help="its model (default for shapes: models/shapes-judge)")
    ap.add_argument("--steps", type=int, default=6, help="steps per run (the first is left out)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, in turns")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "local")  # the local server checks no key; the client sends one
    model = args.model or ("models/shapes-judge" if args.backend == "shapes" else None)
    port = free_port()
    server = serve(args.backend, model, port)
    try:
        times: dict[bool, list[float]] = {False: [], True: []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                for overlap in (False, True):
                    times[overlap].append(step_seconds(overlap, args, port, Path(tmp)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"served {args.backend} judge on 127.0.0.1, {args.steps} steps x {args.repeats} runs per setting (in turns)")
    print(f"  overlap off: {off:.2f} s/step   on: {on:.2f} s/step   off/on: {off / on:.2f}x")


if __name__ == "__main__":
    main()
