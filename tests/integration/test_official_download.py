"""The official prompt files are downloaded from a pinned commit, verified against their
sha256 and cached; a tampered download is refused and never cached. Served by a real HTTP
server on 127.0.0.1 laid out like raw.githubusercontent.com."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from focusdiff.eval import paircomp
from focusdiff.eval.official import BenchmarkFileError, official_file, url

from tests.project import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 laid out like raw.githubusercontent.com."""
    root = tmp_path / "mirror"
    target = root / url("paircomp", "PairComp.json").removeprefix("https://raw.githubusercontent.com/")
    target.parent.mkdir(parents=True)
    target.write_bytes((SHARED / "paircomp" / "PairComp.json").read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FOCUSDIFF_BENCHMARK_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("FOCUSDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FOCUSDIFF_BENCHMARK_DIR", raising=False)
    yield target
    server.shutdown()


def test_download_is_verified_and_cached(mirror, tmp_path):
    path = official_file("paircomp", "PairComp.json")
    assert path == tmp_path / "cache" / "benchmarks" / "paircomp" / "PairComp.json"
    assert len(paircomp.load_pairs(path)) == 550
    mirror.unlink()  # served from the cache now
    assert official_file("paircomp", "PairComp.json") == path


def test_tampered_download_is_refused_and_not_cached(mirror, tmp_path):
    mirror.write_text("[]")
    with pytest.raises(BenchmarkFileError, match=r"PairComp.json: downloaded sha256 [0-9a-f]{64} is not the pinned f4fe0842"):
        official_file("paircomp", "PairComp.json")
    assert not (tmp_path / "cache" / "benchmarks" / "paircomp" / "PairComp.json").exists()
    offline = tmp_path / "offline" / "paircomp"
    offline.mkdir(parents=True)
    (offline / "PairComp.json").write_text("[]")
    with pytest.raises(BenchmarkFileError, match=r"offline/paircomp/PairComp.json: sha256 .* is not the pinned"):
        official_file("paircomp", "PairComp.json", tmp_path / "offline")
