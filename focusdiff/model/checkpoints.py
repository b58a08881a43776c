"""Resumable training state for the bootstrap loops (the VQ and the base LM), in one format.

A long CPU bootstrap (an hour or two) runs as bounded invocations: every `checkpoint_every`
steps the whole state is written here, and the next invocation with the same trajectory
parameters (the run's fingerprint) continues from it with the same result as an
uninterrupted run. A checkpoint directory holds:

    <module>.safetensors   each module's weights (model; the VQ also its EMA copy)
    optimizer.pt           the optimizer's state (tensors and plain containers only)
    rng.safetensors        random generator states and other loop tensors
    state.json             the step, the fingerprint, JSON-able loop state (numpy RNG states)
                           and every file's sha256

It is written atomically (a whole directory or none) and read only when every hash matches:
a damaged checkpoint is a CheckpointError that says to delete it, never loaded. Nothing is
unpickled beyond tensors (`torch.load(weights_only=True)`; its refusal is reported without
torch's advice to turn that off). Pair-GRPO's checkpoints (focusdiff/train/checkpoint.py)
share the error and the refusal message.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from focusdiff.errors import FocusdiffError
from focusdiff.io import atomic_directory, atomic_write_json
from focusdiff.records import file_hashes

OPTIMIZER_FILE, TENSORS_FILE, STATE_FILE = "optimizer.pt", "rng.safetensors", "state.json"


class CheckpointError(FocusdiffError):
    """A training checkpoint is corrupt or partial; it is never loaded silently."""


def pickle_refused(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """The error for a checkpoint file that `torch.load(weights_only=True)` refused: it holds
    objects other than tensors and plain containers. Torch's own message goes on to advise
    weights_only=False, which would run whatever code the file carries; only its diagnosis
    is kept."""
    match = re.search(r"WeightsUnpickler error: (.*)", str(error))
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if match:
        reason = match.group(1).split(". ")[0]
    else:  # torch's preamble alone is advice, not a diagnosis
        reason = "objects torch's safe loader does not allow" if "weights only" in first.lower() else first
    return CheckpointError(f"{path}: refused, not loaded: it is not a plain tensor/optimizer state ({reason}); "
                           "a checkpoint this code wrote holds only tensors, so this file is damaged or not one of ours")


def save_state(directory: Path, step: int, fingerprint: str, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    """Everything a loop needs to continue bit for bit, written atomically with file hashes."""
    with atomic_directory(directory) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / TENSORS_FILE)
        atomic_write_json(tmp / STATE_FILE, {"step": step, "fingerprint": fingerprint, "files": file_hashes(tmp), **extra})


def load_state(directory: Path, fingerprint: str, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """Restore the modules and optimizer from a checkpoint of this run; returns (step, the loop
    tensors, the state.json fields), or None when there is none (or it belongs to other
    parameters: that run starts fresh and replaces it). A damaged one raises CheckpointError."""
    state_file = directory / STATE_FILE
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text("utf-8"))
        files, step = state["files"], int(state["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc}); delete {directory} to start over") from None
    if state.get("fingerprint") != fingerprint:
        return None
    for name in (*(f"{m}.safetensors" for m in modules), OPTIMIZER_FILE, TENSORS_FILE):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint; delete {directory} to start over")
        if hashlib.sha256(path.read_bytes()).hexdigest() != files.get(name):
            raise CheckpointError(f"{path}: sha256 differs from {state_file} (corrupt); delete {directory} to start over")
    for name, module in modules.items():
        load_model(module, str(directory / f"{name}.safetensors"))
    try:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
    except pickle.UnpicklingError as exc:
        raise pickle_refused(directory / OPTIMIZER_FILE, exc) from None
    return step, load_file(directory / TENSORS_FILE), state
