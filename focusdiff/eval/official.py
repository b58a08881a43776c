"""The official benchmark prompt files: fetched from their repositories at pinned commits,
checked against pinned sha256s, cached.

The project does not ship the prompt sets. `official_file` returns a verified local copy:
from `offline_dir` (or FOCUSDIFF_BENCHMARK_DIR) when given, else from the cache, else
downloaded from raw.githubusercontent.com at the pinned commit and written to the cache
atomically. A checksum mismatch is an error naming the file, the source and both hashes;
nothing unverified is ever used or cached.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from focusdiff.errors import FocusdiffError
from focusdiff.io import atomic_write_bytes

OFFLINE_ENV = "FOCUSDIFF_BENCHMARK_DIR"
CACHE_ENV = "FOCUSDIFF_CACHE_DIR"
URL_ENV = "FOCUSDIFF_BENCHMARK_URL"  # a mirror of raw.githubusercontent.com (tests: a local server)


class BenchmarkFileError(FocusdiffError):
    """An official prompt file is missing, unreachable or not the pinned one."""


@dataclass(frozen=True)
class Source:
    repo: str
    commit: str
    folder: str  # in the repository


SOURCES = {
    "geneval": Source("djghosh13/geneval", "af4902f24d3ca90ebbb446dd9891a59e0f82725f", "prompts"),
    "t2i_compbench": Source("Karine-Huang/T2I-CompBench", "1b7094991a57f3c22abdd4f6e8ba6c1a15517073", "examples"),
    "paircomp": Source("wendell0218/FocusDiff", "070155b01ff74c08841721bd001705120e3ef13d", "PairComp/prompt"),
    "dpg_bench": Source("TencentQQGYLab/ELLA", "3c228f1dc6c4d3cad0a47493816151a419f14db3", "dpg_bench"),
}

# benchmark -> file (relative to the benchmark's folder) -> sha256 of the pinned version.
SHA256 = {
    "geneval": {
        "evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
        "generation_prompts.txt": "55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680",
        "object_names.txt": "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
    },
    "paircomp": {"PairComp.json": "f4fe0842de2ea4cd1739e25d888e32bce80959a46e4e96bb606ec2336bb654d4"},
    "t2i_compbench": {
        "dataset/3d_spatial_val.txt": "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9",
        "dataset/color_val.txt": "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d",
        "dataset/complex_val.txt": "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
        "dataset/complex_val_action.txt": "d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e",
        "dataset/complex_val_spatial.txt": "6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02",
        "dataset/complex_val_spatialaction.txt": "e02ddc7fed812e6577e7386ec2137ce0a994a5ce19771661f68df7ac349a6ca9",
        "dataset/non_spatial_val.txt": "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
        "dataset/numeracy_val.txt": "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe",
        "dataset/shape_val.txt": "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
        "dataset/spatial_val.txt": "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
        "dataset/texture_val.txt": "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
    },
}


# Files whose pinned sha256 this release could not record (the file was not available to
# hash): fetched at the pinned commit, their sha256 is reported with the results.
UNPINNED = {("dpg_bench", "dpg_bench.csv")}


def cache_dir() -> Path:
    """FOCUSDIFF_CACHE_DIR/benchmarks, else $XDG_CACHE_HOME (or ~/.cache)/focusdiff/benchmarks."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "benchmarks"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "focusdiff" / "benchmarks"


def url(benchmark: str, name: str) -> str:
    s = SOURCES[benchmark]
    root = os.environ.get(URL_ENV, "https://raw.githubusercontent.com").rstrip("/")
    return f"{root}/{s.repo}/{s.commit}/{s.folder}/{name}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected(benchmark: str, name: str) -> str | None:
    if (benchmark, name) in UNPINNED:
        return None
    try:
        return SHA256[benchmark][name]
    except KeyError:
        known = ", ".join(f"{b}/{n}" for b, files in SHA256.items() for n in files)
        raise BenchmarkFileError(f"no pinned checksum for {benchmark}/{name}; pinned files: {known}") from None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


@retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(4), wait=wait_exponential_jitter(1, 20), reraise=True)
def _download(address: str, timeout: float) -> bytes:
    with urllib.request.urlopen(address, timeout=timeout) as response:  # noqa: S310 (https URL built from pinned parts)
        return response.read()


def official_file(benchmark: str, name: str, offline_dir: str | Path | None = None, timeout: float = 60.0) -> Path:
    """A verified local copy of `<benchmark>/<name>` (see the module docstring)."""
    if benchmark not in SOURCES:
        raise BenchmarkFileError(f"unknown benchmark {benchmark!r}; known: {', '.join(sorted(SOURCES))}")
    expected = _expected(benchmark, name)
    offline = offline_dir or os.environ.get(OFFLINE_ENV)
    if offline:
        path = Path(offline) / benchmark / name
        if not path.is_file():
            raise BenchmarkFileError(f"{path}: not found in the offline benchmark directory {offline}")
        actual = _sha256(path.read_bytes())
        if expected is not None and actual != expected:
            raise BenchmarkFileError(f"{path}: sha256 {actual} is not the pinned {expected} ({url(benchmark, name)})")
        return path
    cached = cache_dir() / benchmark / name
    if cached.is_file() and (expected is None or _sha256(cached.read_bytes()) == expected):
        return cached
    address = url(benchmark, name)
    try:
        data = _download(address, timeout)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise BenchmarkFileError(f"cannot download {address}: {exc}; without network, give an offline copy with "
                                 f"--benchmark-dir or {OFFLINE_ENV}") from None
    actual = _sha256(data)
    if expected is not None and actual != expected:
        raise BenchmarkFileError(f"{address}: downloaded sha256 {actual} is not the pinned {expected}; not cached")
    atomic_write_bytes(cached, data)
    return cached
