"""Throwaway copies of this project, for tests that run DVC, the CLI or the pipeline.

A test gets its own checkout: the files git knows about (tracked, plus untracked
files that are not ignored, so work in progress is included), committed to a fresh
git repository, with ``params.yaml`` shrunk so that building the dataset takes about
a second. Nothing the real checkout has produced comes along: no ``.venv``,
``data/``, ``mlflow.db``, ``mlartifacts/``, ``.dvc-storage/`` or ``.dvc/cache``. The
committed ``dvc.lock`` comes along by default, as in a real clone: its data stage
was written for the full-size parameters and is stale, while stages whose outputs
ship in git (the bootstrap weights) stay up to date.

:func:`project_env` gives subprocesses an environment isolated from the host: this
virtualenv's ``bin`` first on PATH (so ``dvc`` and the stage command ``focusdiff``
resolve to it), DVC's global/system/site config dirs in the test's temp dir, git
without global/system config, no DVC analytics, and none of the variables through
which a caller could leak tracking state (MLFLOW_TRACKING_URI, FOCUSDIFF_*).

Speed: the venv is byte-compiled at install (pyproject.toml's `compile-bytecode`), so every
`dvc`/`focusdiff` subprocess reads its bytecode, also where the host sets
PYTHONDONTWRITEBYTECODE. The environment leaves Python's bytecode settings alone: a per-session
PYTHONPYCACHEPREFIX (as here before) hides that bytecode, and every test worker recompiled torch,
transformers, mlflow, dvc and prefect from source (~40 s each on 2 cores).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
# Not resolved: the venv's python is a symlink, and `bin/` must be the venv's own.
VENV_BIN = Path(sys.executable).parent

# Outputs of the real checkout that a copy must never inherit. Most are git-ignored
# (so `git ls-files` skips them anyway); the list is the second line of defence.
EXCLUDED_TOP = {".venv", "data", "mlflow.db", "mlartifacts", ".dvc-storage", "mlruns", "outputs", "runs",
                "models", "metrics"}  # DVC outputs and metrics of a local `focusdiff pipeline`
EXCLUDED_PATHS = {".dvc/cache", ".dvc/tmp", ".dvc/config.local", "dvc.lock"}

# Small enough that a ShapesWorld build takes ~1 s (60 pairs, 8 prompts).
SMALL_SHAPES: dict[str, Any] = {
    "pairs_per_category": {"train": 6, "val": 2, "test": 2},
    "prompts": {"train": 4, "val": 2, "test": 2},
}

# The later stages, shrunk so that the whole pipeline runs in about a minute: a judge
# that proves its code path (its accuracy gate is measured on the real parameters, in
# tests/unit/test_judge_shapes.py and by `dvc repro judge`), two Pair-GRPO steps, and the four
# benchmarks on a few prompts each. A first champion needs no floor here.
SMALL_STAGES: dict[str, Any] = {
    "judge": {"width": 32, "layers": 1, "heads": 2, "steps": 4, "pairs_per_step": 4, "warmup_steps": 1,
              "threads": 1, "min_accuracy": 0.0},
    "train": {"group_size": 3, "items_per_micro_batch": 1, "steps": 2, "updates_per_batch": 1, "threads": 1,
              "lr": {"warmup": 1}, "curriculum": {"s1": 1, "s2": 2, "s3": 3}, "checkpoint_every": 10},
    "evaluate": {"batch_size": 64, "bootstrap": 0, "report_pairs": 2,
                 "geneval": {"prompts_per_task": 1}, "t2i_compbench": {"prompts_per_category": 2, "images_per_prompt": 2},
                 "dpg_bench": {"prompts": 2}},
    "promote": {"floor": 0.0, "margin": 0.0, "bootstrap": 100},
}

# Variables a caller may have set that would make a copy's runs go elsewhere.
_LEAKY_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
              "FOCUSDIFF_PARENT_RUN_ID", "FOCUSDIFF_FLOW_RUN_ID", "FOCUSDIFF_DATA_VERSION")  # fmt: skip

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "focusdiff-test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "focusdiff-test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def project_files(source: Path = REPO_ROOT) -> list[str]:
    """Paths (relative to ``source``) a clone would have, plus untracked-but-not-ignored ones."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source, capture_output=True, check=True, env={**os.environ, **_GIT_ENV},
    ).stdout.decode()  # fmt: skip
    files = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        parts = Path(rel).parts
        if parts[0] in EXCLUDED_TOP or any(rel == p or rel.startswith(p + "/") for p in EXCLUDED_PATHS):
            continue
        if (source / rel).is_file():  # tracked but deleted in the worktree: a clone-to-be lacks it too
            files.append(rel)
    return files


def project_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for dvc/git/focusdiff subprocesses of a project copy (see module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    for name in ("dvc-global", "dvc-system", "dvc-site-cache"):
        (home / name).mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "DVC_NO_ANALYTICS": "1",
            "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
            "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
            "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **_GIT_ENV,
        }
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Make ``os.environ`` exactly ``env`` for the block (for in-process code that spawns dvc)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class ProjectCopy:
    """A throwaway checkout of this project at ``root``; ``env`` is for its subprocesses."""

    root: Path
    env: dict[str, str] = field(repr=False)  # the whole environment: never print it

    # -- subprocesses -------------------------------------------------------- #

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 300, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(a) for a in argv], cwd=self.root, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(
                f"{list(argv)} failed in {self.root} (exit {res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
            )
        return res

    def dvc(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The `dvc` CLI of this venv (as a user would type it)."""
        return self.run([str(VENV_BIN / "dvc"), *args], check=check, env=env)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["git", *args], check=check)

    def commit(self, message: str = "test") -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    # -- files --------------------------------------------------------------- #

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict[str, Any]:
        return yaml.safe_load(self.params_path.read_text("utf-8"))

    def update_params(self, update: Mapping[str, Any], *, commit: bool = True) -> None:
        """Deep-merge ``update`` into params.yaml (comments are not kept)."""
        self.params_path.write_text(yaml.safe_dump(_merge(self.params(), update), sort_keys=False), "utf-8")
        if commit:
            self.commit("params")

    @property
    def data_dir(self) -> Path:
        return self.root / self.params()["data"]["out"]

    def lock_out(self, out: str = "data/pairs") -> dict[str, Any]:
        """The dvc.lock entry of output ``out`` (path, hash, md5, size, nfiles)."""
        lock = yaml.safe_load((self.root / "dvc.lock").read_text("utf-8"))
        for stage in lock["stages"].values():
            for entry in stage.get("outs") or []:
                if entry["path"].rstrip("/") == out:
                    return entry
        raise AssertionError(f"dvc.lock has no output {out!r}: {lock}")

    def lock_md5(self, out: str = "data/pairs") -> str:
        return self.lock_out(out)["md5"]

    @property
    def tracking_uri(self) -> str:
        """Absolute form of the copy's default (sqlite) tracking store."""
        return f"sqlite:///{self.root / 'mlflow.db'}"


SHIPPED_STAGES = ("bootstrap_vq", "bootstrap_vq_local", "bootstrap_lm")


@functools.cache
def check_shipped_stages_locked(source: Path) -> None:
    """Fail at once when dvc.lock does not match the code the shipped bootstrap stages depend on.

    Otherwise every project copy's `dvc repro` silently retrains them (an hour on 2 cores) and
    the suite runs past CI's limit instead of failing. Cached: one `dvc status` per session.
    """
    result = subprocess.run([sys.executable, "-m", "dvc", "status", *SHIPPED_STAGES],
                            cwd=source, capture_output=True, text=True)
    if result.returncode != 0 or "changed" in result.stdout:
        raise RuntimeError(
            f"dvc.lock in {source} is stale for the shipped stages {SHIPPED_STAGES}: "
            f"`dvc status` printed:\n{result.stdout}{result.stderr}\n"
            f"If their outputs are unchanged, run `dvc commit -f {' '.join(SHIPPED_STAGES)}` and commit dvc.lock.")


def make_project(
    dest: Path,
    *,
    with_lock: bool = True,
    shapes: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    source: Path = REPO_ROOT,
    env_extra: Mapping[str, str] | None = None,
) -> ProjectCopy:
    """Copy the project into ``dest``, shrink its dataset, and commit it to a fresh git repo.

    ``shapes`` replaces SMALL_SHAPES (merged into ``data.shapes``); SMALL_STAGES shrinks the
    later stages; ``params`` is
    deep-merged into params.yaml last. ``with_lock`` (default, as in a real clone) copies
    dvc.lock, so stages whose outputs ship in git (the bootstrap weights) are up to date
    and only the shrunk data stage re-runs.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    for rel in project_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)
    if with_lock and (source / "dvc.lock").is_file():
        check_shipped_stages_locked(source)
        shutil.copy2(source / "dvc.lock", dest / "dvc.lock")
    home = dest.parent / f"{dest.name}-home"
    proj = ProjectCopy(root=dest, env=project_env(home, env_extra))
    proj.update_params({"data": {"shapes": dict(shapes if shapes is not None else SMALL_SHAPES)}, **SMALL_STAGES},
                       commit=False)
    if params:
        proj.update_params(params, commit=False)
    proj.git("-c", "init.defaultBranch=main", "init", "-q")
    proj.commit("project copy")
    return proj
