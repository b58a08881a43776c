"""The `data` stage under DVC, as a user runs it: `dvc repro data`, remotes, determinism.

(The later stages run in tests/integration/test_pipeline.py and tests/integration/test_deployments.py.)

Every test works in a throwaway copy of the project (tests/project.py) with a small
dataset, and drives the real `dvc` CLI; S3 is a real moto server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.project import SMALL_SHAPES, ProjectCopy, make_project, tree_digest
from tests.servers import S3Server

DATA = "data/pairs"
N_CATEGORIES = 6


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _s3_key(prefix: str, md5: str) -> str:
    """DVC 3 object layout on a remote: <remote>/files/md5/<2 chars>/<rest>."""
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


def _forget_local(proj: ProjectCopy, *, state: bool = False) -> None:
    """Delete the dataset and the DVC cache (and optionally DVC's state db in .dvc/tmp)."""
    shutil.rmtree(proj.root / DATA, ignore_errors=True)
    shutil.rmtree(proj.root / ".dvc" / "cache", ignore_errors=True)
    if state:
        shutil.rmtree(proj.root / ".dvc" / "tmp", ignore_errors=True)


# --------------------------------------------------------------------------- #
# No remote at all
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProjectCopy, str]]:
    """A fresh clone (committed dvc.lock) with no DVC remote, after one `dvc repro`."""
    proj = make_project(tmp_path_factory.mktemp("dvc-noremote") / "project")
    proj.dvc("remote", "remove", "local")
    proj.commit("no remote")
    first = proj.dvc("repro", "data")
    yield proj, first.stdout


@pytest.mark.slow
def test_repro_without_remote_builds_then_skips(built: tuple[ProjectCopy, str]) -> None:
    proj, first_out = built
    assert proj.dvc("remote", "list").stdout.strip() == ""
    assert not (proj.root / ".dvc-storage").exists()

    # First run: the stage ran and DVC recorded its output.
    assert "Running stage 'data'" in first_out, first_out
    data = proj.root / DATA
    manifest = json.loads((data / "manifest.json").read_text())
    by_category = manifest["counts"]["by_category"]
    assert len(by_category) == N_CATEGORIES
    assert all(c == SMALL_SHAPES["pairs_per_category"] for c in by_category.values()), by_category
    out = proj.lock_out(DATA)
    assert out["hash"] == "md5" and out["md5"].endswith(".dir")
    files = tree_digest(data)
    assert out["nfiles"] == len(files)
    assert out["size"] == sum((data / f).stat().st_size for f in files)
    # The lock records the small params the copy was built with, not the committed ones.
    assert yaml.safe_load((proj.root / "dvc.lock").read_text())["stages"]["data"]["params"]["params.yaml"]["data"][
        "shapes"
    ]["pairs_per_category"] == SMALL_SHAPES["pairs_per_category"]

    # Second run: nothing changed, so nothing is rebuilt.
    before = {f: (data / f).stat().st_mtime_ns for f in files}
    second = proj.dvc("repro", "data")
    assert "Stage 'data' didn't change, skipping" in second.stdout, second.stdout
    assert "Running stage" not in second.stdout
    assert {f: (data / f).stat().st_mtime_ns for f in files} == before
    assert tree_digest(data) == files
    assert "Data and pipelines are up to date." in proj.dvc("status", "data").stdout

    # Without a remote there is nowhere to push: DVC says so instead of pretending.
    push = proj.dvc("push", check=False)
    assert push.returncode != 0
    assert "no remote specified" in (push.stdout + push.stderr), push.stderr


@pytest.mark.slow
def test_build_is_deterministic(built: tuple[ProjectCopy, str], tmp_path: Path) -> None:
    """Same params -> same DVC md5, whatever the checkout path or build time."""
    proj_a, _ = built
    md5_a = proj_a.lock_md5(DATA)
    digest_a = tree_digest(proj_a.root / DATA)

    # A fresh clone *as committed*: its dvc.lock was written for the full-size params.
    proj_b = make_project(tmp_path / "elsewhere" / "clone", with_lock=True)
    committed_md5 = proj_b.lock_md5(DATA)
    status = proj_b.dvc("status").stdout
    assert "changed deps" in status and "params.yaml" in status, status
    assert "not in cache:" in status and DATA in status, status
    out = proj_b.dvc("repro", "data").stdout
    assert "Running stage 'data'" in out, out
    assert proj_b.lock_md5(DATA) == md5_a
    assert tree_digest(proj_b.root / DATA) == digest_a
    assert committed_md5 != md5_a  # the committed lock is for 400 pairs/category, not 6

    # A forced rebuild in place gives the same version again.
    forced = proj_a.dvc("repro", "--force", "data").stdout  # not the bootstrap stages: they would retrain
    assert "Running stage 'data'" in forced, forced
    assert proj_a.lock_md5(DATA) == md5_a


# --------------------------------------------------------------------------- #
# S3 remote (moto)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def s3_project(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[tuple[ProjectCopy, str]]:
    """A copy whose default remote is S3, configured with exactly the documented commands; built and pushed."""
    proj = make_project(tmp_path_factory.mktemp("dvc-s3") / "project", env_extra=s3_server.env)
    prefix = _unique("dvc-remote")
    proj.dvc("remote", "add", "-d", "s3", f"s3://{s3_server.bucket}/{prefix}")
    proj.dvc("remote", "modify", "s3", "verify", "true")
    proj.dvc("remote", "modify", "s3", "endpointurl", s3_server.endpoint_url)
    proj.commit("s3 remote")
    proj.dvc("repro", "data")
    push = proj.dvc("push")
    assert "files pushed" in push.stdout, push.stdout
    yield proj, prefix


@pytest.mark.servers
def test_s3_push_then_pull_restores_exact_bytes(s3_project: tuple[ProjectCopy, str], s3_server: S3Server) -> None:
    proj, prefix = s3_project
    assert proj.dvc("remote", "default").stdout.strip() == "s3"
    out = proj.lock_out(DATA)
    built = tree_digest(proj.root / DATA)
    assert len(built) == out["nfiles"]

    # Every file of the dataset, plus the directory listing (<md5>.dir), is in the bucket.
    keys = set(s3_server.keys(prefix + "/"))
    assert _s3_key(prefix, out["md5"]) in keys
    file_md5s = {hashlib.md5((proj.root / DATA / f).read_bytes()).hexdigest() for f in built}
    assert {_s3_key(prefix, m) for m in file_md5s} <= keys
    assert len(keys) == len(file_md5s) + 1
    assert "Cache and remote 's3' are in sync." in proj.dvc("status", "--cloud").stdout

    # Forget everything local; restore purely from S3.
    _forget_local(proj)
    assert not (proj.root / DATA).exists()
    pull = proj.dvc("pull", "data")  # the stages after data have no lock entries in a fresh clone
    assert f"{len(file_md5s) + 1} files fetched" in pull.stdout, pull.stdout
    assert tree_digest(proj.root / DATA) == built
    assert "Data and pipelines are up to date." in proj.dvc("status", "data").stdout
    assert "Stage 'data' didn't change, skipping" in proj.dvc("repro", "data").stdout


@pytest.mark.servers
def test_s3_corrupted_object_on_pull(s3_project: tuple[ProjectCopy, str], s3_server: S3Server) -> None:
    """What DVC 3.67 does when an object in the remote no longer matches its hash.

    By default (remote option ``verify`` false) `dvc pull` does NOT re-hash what it
    downloads: it exits 0, stores the corrupt bytes in the cache under the expected
    hash, checks them out, and even `dvc status` reports "up to date" (its state db
    trusts the hash it just checked out) until that state is dropped. With
    ``dvc remote modify <remote> verify true`` the pull fails instead, keeps nothing
    corrupt, and a later pull of the repaired object succeeds.
    """
    proj, _ = s3_project
    # A remote of its own, so the corruption cannot affect other tests.
    prefix = _unique("dvc-corrupt")
    proj.dvc("remote", "add", "s3c", f"s3://{s3_server.bucket}/{prefix}")
    proj.dvc("remote", "modify", "s3c", "endpointurl", s3_server.endpoint_url)
    proj.dvc("push", "data", "-r", "s3c")
    built = tree_digest(proj.root / DATA)

    victim = proj.root / DATA / "manifest.json"
    good = victim.read_bytes()
    md5 = hashlib.md5(good).hexdigest()
    key = _s3_key(prefix, md5)
    client = s3_server.client()
    assert client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == good
    bad = b'{"corrupted": true}\n' + good[20:]
    assert len(bad) == len(good) and hashlib.md5(bad).hexdigest() != md5
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=bad)

    # 1. Default: a silent, successful pull of corrupt data.
    _forget_local(proj, state=True)
    pull = proj.dvc("pull", "data", "-r", "s3c", check=False)
    assert pull.returncode == 0, pull.stderr
    assert victim.read_bytes() == bad
    after = tree_digest(proj.root / DATA)
    assert {f for f in built if after.get(f) != built[f]} == {"manifest.json"}
    cached = proj.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert hashlib.md5(cached.read_bytes()).hexdigest() != md5  # cache entry named md5 holds other bytes
    assert "Data and pipelines are up to date." in proj.dvc("status", "data").stdout
    # Only once DVC re-hashes the workspace (state db dropped) is the damage visible.
    shutil.rmtree(proj.root / ".dvc" / "tmp")
    status = proj.dvc("status", "data").stdout
    assert "modified:" in status and DATA in status, status

    # 2. verify=true: the pull fails and nothing corrupt is checked out or cached.
    proj.dvc("remote", "modify", "s3c", "verify", "true")
    _forget_local(proj, state=True)
    pull = proj.dvc("pull", "data", "-r", "s3c", check=False)
    assert pull.returncode != 0, pull.stdout
    assert "Checkout failed for following targets" in pull.stderr and DATA in pull.stderr, pull.stderr
    assert not (proj.root / DATA).exists()
    assert not cached.exists()
    status = proj.dvc("status", "data").stdout
    assert "not in cache:" in status and DATA in status, status

    # 3. Repair the object: the verified pull now restores the exact dataset.
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=good)
    proj.dvc("pull", "data", "-r", "s3c")
    assert tree_digest(proj.root / DATA) == built
