"""The ShapesWorld build: deterministic, every pair kept, splits without leakage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from focusdiff.config import ShapesDataConfig
from focusdiff.data.schema import load_dataset
from focusdiff.data.validate import validate_dataset
from focusdiff.shapes.build import build_shapes_dataset
from focusdiff.shapes.checker import check
from focusdiff.shapes.generate import LayoutError
from focusdiff.shapes.world import COLORS, SHAPES, Scene

CFG = ShapesDataConfig(
    canvas=32,
    seed=5,
    pairs_per_category={"train": 20, "val": 5, "test": 5},
    prompts={"train": 10, "val": 4, "test": 4},
    holdout=[("purple", "triangle"), ("yellow", "square")],
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "pairs"
    manifest = build_shapes_dataset(CFG, out)
    return out, manifest


def test_counts_and_validation(built):
    out, manifest = built
    ds = load_dataset(out)
    assert len(ds.pairs) == 6 * 30 and len(ds.prompts) == 18
    assert manifest["counts"]["by_category"]["color"] == {"train": 20, "val": 5, "test": 5}
    report = validate_dataset(out)
    assert report.pairs == 180 and report.pairs_without_images == 0
    assert manifest["build_report"]["checker_self_test_failures"] == 0


def test_deterministic(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_shapes_dataset(CFG, again)
    assert _digest(out) == _digest(again)


def test_no_leakage_and_holdout_only_outside_train(built):
    ds = load_dataset(built[0])
    train = {frozenset((p.prompt1, p.prompt2)) for p in ds.split("train").pairs}
    for split in ("val", "test"):
        assert not train & {frozenset((p.prompt1, p.prompt2)) for p in ds.split(split).pairs}
    holdout = {tuple(h) for h in CFG.holdout}
    for p in ds.split("train").pairs:
        for spec in (p.scene1, p.scene2):
            assert not {(o["color"], o["shape"]) for o in spec["objects"]} & holdout


def _load(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def test_images_match_their_captions(built):
    ds = load_dataset(built[0])
    for p in ds.pairs[:60]:
        image1 = _load(ds.image_path(p.image1))
        assert check(image1, p.prompt1).correct
        assert not check(image1, p.prompt2).correct
        assert Scene.from_dict(p.scene1).canvas == 32


def test_failed_build_leaves_previous_dataset(tmp_path):
    out = tmp_path / "keep"
    build_shapes_dataset(CFG, out)
    before = _digest(out)
    # Holding out every combination leaves the train sampler nothing to draw: the
    # build fails part-way and must leave the existing dataset exactly as it was.
    everything = [(c, s) for c in COLORS for s in SHAPES]
    with pytest.raises(LayoutError, match="could not sample"):
        build_shapes_dataset(CFG.model_copy(update={"holdout": everything}), out)
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no temporary left behind


def test_outputs_have_umask_permissions(built):
    import os
    import stat

    out, _ = built
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~mask
