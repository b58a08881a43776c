"""Atomic file and directory writes.

A stage that fails half-way must leave no half-written output behind: files are
written to a temporary sibling and renamed into place (rename is atomic on one
filesystem); directories are assembled in a temporary sibling and swapped in.

A directory output has one writer at a time: `atomic_directory` holds an exclusive
lock on a sibling `.<name>.lock` file, and a second writer fails at once naming the
holder's pid. Temporary siblings carry their writer's pid in their name, so the next
writer can remove those a killed process left behind (never a live process's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from focusdiff.errors import FocusdiffError


class OutputBusyError(FocusdiffError):
    """Another process is writing the same output directory."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` whole.

    On any exception the temporary directory is removed and `path` (if it
    existed) is left untouched. While the block runs this process holds the
    output's lock (`output_lock`); temporaries a killed writer left are removed
    first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        _remove_stale_siblings(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.{os.getpid()}.old"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of output `path` (flock on the sibling `.<name>.lock`,
    which records the holder's pid); raise OutputBusyError at once if another process
    holds it. The lock file is removed on release."""
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise OutputBusyError(
                f"{path}: another process (pid {_lock_holder(lock_path)}) is writing this output; "
                f"wait for it to finish, or stop it (lock file {lock_path})"
            ) from None
        # The previous holder may have removed the file between our open and our lock:
        # then we locked an orphan, and must lock the file now at lock_path instead.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def _lock_holder(lock_path: Path) -> str:
    """The pid recorded in a lock file, as text ("unknown" while the holder is writing it)."""
    try:
        return lock_path.read_text().strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def _remove_stale_siblings(path: Path) -> None:
    """Clear what a writer killed mid-way (SIGKILL runs no cleanup) left beside `path`:
    its `.<name>.<pid>.*.tmp` directory is removed; its `.<name>.<pid>.old` (the previous
    output, moved aside just before the swap) is put back if `path` is missing, else
    removed. Only siblings whose pid is no longer running are touched; this runs under
    the output's lock, so no live writer of this output owns one anyway."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.(?:[^.]+\.tmp|old)")
    for sibling in sorted(path.parent.iterdir()):
        match = pattern.fullmatch(sibling.name)
        if not (match and sibling.is_dir()) or _running(int(match.group(1))):
            continue
        if sibling.name.endswith(".old") and not path.exists():
            os.replace(sibling, path)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
