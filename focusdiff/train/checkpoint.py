"""Resumable Pair-GRPO checkpoints, written atomically and verified before loading.

Layout: `<checkpoints>/step-00000100/` holds the trainable weights (`model.safetensors`),
one optimizer state per process (`optimizer-rank<r>.pt`, loaded with weights_only=True),
and `state.json`: step, the run's fingerprint, world size, running counters, and the
sha256 of every file. All processes write into `.step-….partial`; the main process
renames it into place only after every file is written and hashed, so a killed run
leaves either a complete checkpoint or a `.partial` directory that is never loaded.

Nothing else needs saving: the data order, the curriculum coin flips and the sampling
noise are all derived from (seed, step, item index), so the step alone restores them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from focusdiff.io import atomic_write_json
from focusdiff.model.records import file_hashes
from focusdiff.model.sft import CheckpointError

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save(root: Path, step: int, accelerator, model_state: dict[str, torch.Tensor] | None, optimizer,
         state: dict[str, Any], keep: int) -> Path:
    """Collective: every process calls it. `model_state` (trainable weights) is needed on the
    main process only."""
    final = root / f"step-{step:08d}"
    partial = root / f".step-{step:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, partial / "model.safetensors")
    accelerator.wait_for_everyone()
    torch.save(optimizer.state_dict(), partial / f"optimizer-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(partial / "state.json", {**state, "step": step, "world_size": accelerator.num_processes,
                                                   "files": file_hashes(partial)})
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for _, old in step_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest(root: Path, fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of this run, verified; None when there is none or the
    directory holds another run's (different parameters). Damage raises CheckpointError."""
    dirs = step_dirs(root)
    if not dirs:
        return None
    _, path = dirs[-1]
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text("utf-8"))
        files = state["files"]
        int(state["step"]), int(state["world_size"])
    except FileNotFoundError:
        raise CheckpointError(f"{state_file}: missing (partial checkpoint); delete {path} to resume from an older one") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc}); delete {path} to resume from an older one") from None
    if state.get("fingerprint") != fingerprint:
        return None
    for name in ["model.safetensors", *[f"optimizer-rank{r}.pt" for r in range(state["world_size"])]]:
        if name not in files:
            raise CheckpointError(f"{state_file}: lists no {name} (partial checkpoint); delete {path}")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint; delete {path} to resume from an older one")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise CheckpointError(f"{file}: sha256 differs from {state_file} (corrupt); delete {path} to resume from an older one")
    return path, state


def load(path: Path, state: dict[str, Any], accelerator, model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter],
         optimizer) -> None:
    if state["world_size"] != accelerator.num_processes:
        raise CheckpointError(f"{path} was written by {state['world_size']} processes; resume it with the same number "
                              f"(this launch has {accelerator.num_processes})")
    weights = load_file(path / "model.safetensors")
    missing = sorted(set(trainable) - set(weights))
    unexpected = sorted(set(weights) - set(trainable))
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'}: does not match the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, param in trainable.items():
            if weights[name].shape != param.shape:
                raise CheckpointError(f"{path / 'model.safetensors'}: {name} has shape {tuple(weights[name].shape)}, "
                                      f"the model {tuple(param.shape)}")
            param.copy_(weights[name].to(param.dtype))
    shard = path / f"optimizer-rank{accelerator.process_index}.pt"
    try:
        optimizer.load_state_dict(torch.load(shard, weights_only=True, map_location="cpu"))
    except Exception as exc:  # an unpicklable or mismatched state is a damaged checkpoint
        raise CheckpointError(f"{shard}: cannot restore the optimizer ({type(exc).__name__}: {exc})") from None
