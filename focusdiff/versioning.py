"""Data versioning through DVC: reproduce a stage, read its content hash, push.

DVC is driven as a subprocess (`python -m dvc`), exactly as a user would run it,
so the pipeline and `dvc repro` share one lock file and one cache. The version of
an output is the content hash DVC records for it in dvc.lock (`<md5>.dir` for a
directory), so two identical datasets have the same version wherever they live.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from focusdiff.errors import FocusdiffError


class DvcError(FocusdiffError):
    """A dvc command failed; the message carries its output."""


def dvc(*args: str, cwd: str | Path = ".", env: Mapping[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "dvc", *args]
    full_env = {**os.environ, **(env or {})}
    # Stage commands (`focusdiff ...`) must run from this environment, even when
    # its bin directory is not on PATH (python called by absolute path).
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-4000:]
        raise DvcError(f"`dvc {' '.join(args)}` failed in {Path(cwd).resolve()} (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def repro(stage: str, cwd: str | Path = ".", env: Mapping[str, str] | None = None) -> str:
    return dvc("repro", stage, cwd=cwd, env=env)


def output_version(out: str | Path, cwd: str | Path = ".") -> str:
    """The content hash DVC recorded for output `out` in dvc.lock."""
    lock = Path(cwd) / "dvc.lock"
    if not lock.is_file():
        raise DvcError(f"{lock}: not found; run `dvc repro` first")
    data = yaml.safe_load(lock.read_text("utf-8")) or {}
    want = Path(out).as_posix().rstrip("/")
    for name, stage in (data.get("stages") or {}).items():
        for o in stage.get("outs") or []:
            if Path(o["path"]).as_posix().rstrip("/") == want:
                if "md5" not in o:
                    raise DvcError(f"{lock}: stage {name!r}, output {want!r} has no md5")
                return o["md5"]
    raise DvcError(f"{lock}: no stage has output {want!r}")


def default_remote(cwd: str | Path = ".") -> str | None:
    """The default remote's name, or None when none is configured."""
    try:
        return dvc("remote", "default", cwd=cwd).strip() or None
    except DvcError as exc:
        if "No default remote set" in str(exc):
            return None
        raise


def push(targets: list[str], cwd: str | Path = ".", remote: str | None = None) -> str:
    args = ["push", *targets] + (["--remote", remote] if remote else [])
    return dvc(*args, cwd=cwd)
