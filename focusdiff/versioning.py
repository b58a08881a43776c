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
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from focusdiff.errors import FocusdiffError


class DvcError(FocusdiffError):
    """A dvc command failed; the message carries its output."""


def _dvc_env(env: Mapping[str, str] | None) -> dict[str, str]:
    full_env = {**os.environ, **(env or {})}
    # Stage commands (`focusdiff ...`) must run from this environment, even when
    # its bin directory is not on PATH (python called by absolute path).
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    return full_env


def _failed(args: tuple[str, ...], cwd: str | Path, code: int, output: str) -> DvcError:
    tail = output.strip()[-4000:]
    return DvcError(f"`dvc {' '.join(args)}` failed in {Path(cwd).resolve()} (exit {code}):\n{tail}")


def dvc(*args: str, cwd: str | Path = ".", env: Mapping[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_dvc_env(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise _failed(args, cwd, proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout


def repro(stage: str, cwd: str | Path = ".", env: Mapping[str, str] | None = None,
          on_line: Callable[[str], None] | None = None) -> str:
    """`dvc repro <stage>`; returns its output. With `on_line`, every line the stage writes
    (stdout and stderr, merged) is passed on as it comes, so a long stage's progress lines
    reach the caller's log while it runs, not at its end."""
    if on_line is None:
        return dvc("repro", stage, cwd=cwd, env=env)
    args = ("repro", stage)
    # unbuffered: a stage's stdout lines would otherwise wait in its buffer until it exits
    full_env = {**_dvc_env(env), "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    with subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            lines.append(line)
            on_line(line.rstrip("\n"))
    output = "".join(lines)
    if proc.returncode != 0:
        raise _failed(args, cwd, proc.returncode, output)
    return output


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
