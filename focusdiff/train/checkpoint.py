"""Resumable Pair-GRPO checkpoints, written atomically and verified before loading.

Layout: `<checkpoints>/step-00000100/` holds the trainable weights (`model.safetensors`),
one optimizer state per process (`optimizer-rank<r>.pt`, loaded with weights_only=True),
and `state.json`: step, the run's fingerprint and the identity it hashes (so a mismatch
can name what differs), the tracking run it logs to, world size, running counters, and
the sha256 of every file. All processes write into `.step-….partial`; the main process
renames it into place only after every file is written and hashed, so a killed run
leaves either a complete checkpoint or a `.partial` directory that is never loaded.
`<checkpoints>/run.json` names the tracking run from the start, so a run killed before
its first checkpoint is still found (and marked failed) by the next one.

Checkpoints are never deleted for being another run's: the trainer refuses them, or on
an explicit restart moves them aside (`move_aside`).

Nothing else needs saving: the data order, the curriculum coin flips and the sampling
noise are all derived from (seed, step, item index), so the step alone restores them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from focusdiff.errors import FocusdiffError
from focusdiff.io import atomic_write_json
from focusdiff.records import file_hashes
from focusdiff.model.checkpoints import CheckpointError, pickle_refused

_STEP_DIR = re.compile(r"^step-(\d{8})$")
RUN_FILE = "run.json"


class CheckpointMismatch(FocusdiffError):
    """The checkpoint directory holds another run's checkpoints (other trajectory parameters,
    weights or data). They are neither resumed nor deleted."""


def give_umask_mode(files: Iterable[Path]) -> None:
    """Give `files` the mode a plain open() gives under the current umask. safetensors writes
    0600 (a private temporary file renamed into place), which left the weights unreadable to
    the group and others that can read every other file of the output."""
    mask = os.umask(0)
    os.umask(mask)
    for file in files:
        os.chmod(file, 0o666 & ~mask)


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save(root: Path, step: int, accelerator, model_state: dict[str, torch.Tensor] | None, optimizer,
         state: dict[str, Any], keep: int, ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Collective: every process calls it. `model_state` (trainable weights) and `ema` (the
    EMA weights, when the run keeps them) are needed on the main process only."""
    final = root / f"step-{step:08d}"
    partial = root / f".step-{step:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, partial / "model.safetensors")
        give_umask_mode([partial / "model.safetensors"])
        if ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.items()}, partial / EMA_FILE)
            give_umask_mode([partial / EMA_FILE])
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


def newest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint under `root` and its state (files not yet verified: see
    `verify`); None when there is none. An unreadable state raises CheckpointError."""
    dirs = step_dirs(root)
    if not dirs:
        return None
    _, path = dirs[-1]
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text("utf-8"))
        state["files"].items()
        int(state["step"]), int(state["world_size"])
    except FileNotFoundError:
        raise CheckpointError(f"{state_file}: missing (partial checkpoint); delete {path} to resume from an older one") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc}); delete {path} to resume from an older one") from None
    return path, state


def verify(path: Path, state: dict[str, Any]) -> None:
    """Check that the checkpoint at `path` holds every file its state lists, with those hashes."""
    state_file = path / "state.json"
    files = state["files"]
    for name in ["model.safetensors", *[f"optimizer-rank{r}.pt" for r in range(state["world_size"])]]:
        if name not in files:
            raise CheckpointError(f"{state_file}: lists no {name} (partial checkpoint); delete {path}")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint; delete {path} to resume from an older one")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise CheckpointError(f"{file}: sha256 differs from {state_file} (corrupt); delete {path} to resume from an older one")


def file_digests(paths: Iterable[Path], known: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256, size and mtime of each file, keyed by its absolute path. The identity is the
    content; a file whose size and mtime are those `known` recorded (a previous start's stats)
    is not read again, so resuming a run on 15 GB of weights does not re-hash them."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        key = str(path.resolve())
        stat = path.stat()
        seen = known.get(key)
        if isinstance(seen, dict) and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns \
                and isinstance(seen.get("sha256"), str):
            found[key] = seen
            continue
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        found[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return found


def differences(recorded: dict[str, Any] | None, current: dict[str, Any], most: int = 8) -> str:
    """What differs between a checkpoint's recorded run identity and this run's, for the error:
    `config.lr.peak: 0.001 in the checkpoint, 0.002 now; ...`."""
    if not isinstance(recorded, dict):
        return "unknown (the checkpoint records no run parameters: it predates them)"
    old, new = _flat(recorded), _flat(current)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))
    shown = [f"{k}: {_show(old.get(k, _ABSENT))} in the checkpoint, {_show(new.get(k, _ABSENT))} now" for k in keys[:most]]
    more = f"; and {len(keys) - most} more" if len(keys) > most else ""
    return "; ".join(shown) + more if shown else "none recorded (its fingerprint differs)"


_ABSENT = object()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, str) and len(value) > 40:  # a sha256: its start tells them apart
        return value[:12] + "..."
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def move_aside(root: Path) -> Path:
    """Rename the checkpoint directory to `<root>.old-<UTC time>` (never deleting it)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = root.with_name(f"{root.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = root.with_name(f"{root.name}.old-{stamp}-{n}")
    root.rename(target)
    return target


def record_run(root: Path, run_id: str) -> None:
    """Name the tracking run that writes these checkpoints (before the first one exists)."""
    atomic_write_json(root / RUN_FILE, {"mlflow_run_id": run_id})


def recorded_run(root: Path) -> str | None:
    """The tracking run `record_run` named, or None."""
    path = root / RUN_FILE
    if not path.is_file():
        return None
    try:
        run_id = json.loads(path.read_text("utf-8"))["mlflow_run_id"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); delete it (it only names the run's MLflow run)") from None
    if not isinstance(run_id, str):
        raise CheckpointError(f"{path}: mlflow_run_id is {run_id!r}, not a run id; delete it")
    return run_id


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
        saved = torch.load(shard, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:  # objects other than tensors: refused, never unpickled
        raise pickle_refused(shard, exc) from None
    except Exception as exc:  # truncated or not a torch file: a damaged checkpoint
        raise CheckpointError(f"{shard}: cannot read the optimizer state ({type(exc).__name__}: {exc})") from None
    try:
        optimizer.load_state_dict(saved)
    except Exception as exc:  # another optimizer's state: the checkpoint does not fit this run
        raise CheckpointError(f"{shard}: cannot restore the optimizer ({type(exc).__name__}: {exc})") from None


EMA_FILE = "ema.safetensors"


def load_ema(path: Path, ema) -> None:
    """Restore a run's EMA weights (train/ema.py) from its checkpoint at `path`."""
    file = path / EMA_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing, but this run keeps EMA weights (train.ema_decay); the checkpoint was "
                              "written without them")
    try:
        ema.load_state_dict(load_file(file), str(file))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
