"""`focusdiff generate`: files, grid, per-image seeds, and clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import JanusForConditionalGeneration
from typer.testing import CliRunner

from focusdiff.cli import app
from focusdiff.errors import FocusdiffError
from focusdiff.model.configs import VQTrainConfig
from focusdiff.model.shapes_model import build_config, build_tokenizer
from focusdiff.model.vq import vq_config
from tests.project import REPO_ROOT

FOCUSDIFF = str(Path(sys.executable).parent / "focusdiff")
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    torch.manual_seed(0)
    tok = build_tokenizer()
    JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig(codebook_size=32)), hidden=32, layers=1)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _run(*args: str):
    return runner.invoke(app, ["generate", *args])


def test_writes_images_grid_and_metadata(policy_dir, tmp_path):
    out = tmp_path / "gen"
    result = _run("a red circle", "two blue squares", "--policy", str(policy_dir), "--out", str(out), "--n", "3", "--seed", "5")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == sorted([f"{i:03d}_{j}.png" for i in range(2) for j in range(3)] + ["grid.png"])
    meta = json.loads((out / "prompts.json").read_text())
    assert meta["prompts"] == ["a red circle", "two blue squares"] and meta["seed"] == 5
    assert Image.open(out / "000_0.png").size == (32, 32)
    # per-image seeds: image 3 (prompt 1, image 0) is reproduced alone with seed 5 + 3
    again = tmp_path / "again"
    assert _run("two blue squares", "--policy", str(policy_dir), "--out", str(again), "--n", "1", "--seed", "8").exit_code == 0
    assert (np.asarray(Image.open(out / "001_0.png")) == np.asarray(Image.open(again / "000_0.png"))).all()


@pytest.mark.parametrize(
    "args, error",
    [
        ((), "no prompts: pass them as arguments or with --prompts-file"),
        (("a red circle", "--policy", "{tmp}/nope"), "no such directory: {tmp}/nope"),
        (("a red circle", "--temperature", "0"), "temperature must be > 0"),
    ],
)
def test_errors_are_clear(policy_dir, tmp_path, args, error):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--policy" not in args:
        args += ["--policy", str(policy_dir)]
    result = _run(*args, "--out", str(tmp_path / "x"))
    assert isinstance(result.exception, FocusdiffError)
    assert error.format(tmp=tmp_path) in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_cli_exit_code_for_user_errors(tmp_path):
    proc = subprocess.run([FOCUSDIFF, "generate", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "error: no prompts" in proc.stderr


def test_bootstrap_report_prints_quality_table(policy_dir):
    result = runner.invoke(app, ["bootstrap", "report", "--policy", str(policy_dir), "--pairs-per-category", "1"])
    assert result.exit_code == 0, result.output
    for cat in ("color", "counting", "overall appearance", "position", "style tone", "text"):
        assert cat in result.output
    words = " ".join(result.output.split())  # the title wraps where the policy's path is long
    assert "single-object prompts right:" in words and "12 images" in words


def test_bootstrap_report_defaults_to_the_stage_quality_set(policy_dir, tmp_path):
    """Without --pairs-per-category it measures what the bootstrap_lm stage measured."""
    import yaml

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text("utf-8"))
    params["bootstrap"]["lm"]["eval_pairs_per_category"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), "utf-8")
    result = runner.invoke(app, ["bootstrap", "report", "--policy", str(policy_dir), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "12 images, 1 pairs per" in " ".join(result.output.split())  # rich wraps the title


def test_cfg_weight_defaults_to_the_policys_guidance_scale(policy_dir, tmp_path):
    """The ShapesWorld base is meant to be sampled at w=2 and Janus-Pro at 5: each carries its
    own in generation_config, and `generate` uses it unless --cfg-weight says otherwise."""
    from transformers import GenerationConfig

    local = tmp_path / "policy"
    model = JanusForConditionalGeneration.from_pretrained(policy_dir)
    model.generation_config = GenerationConfig(guidance_scale=2.5)
    model.save_pretrained(local)
    build_tokenizer().save_pretrained(local)
    for extra, expected in (((), 2.5), (("--cfg-weight", "3"), 3.0)):
        out = tmp_path / f"gen{expected}"
        result = _run("a red circle", "--policy", str(local), "--out", str(out), "--n", "1", *extra)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "prompts.json").read_text())["sampling"]["cfg_weight"] == expected


def test_edit_locality_counts_the_blocks_an_edit_touches_and_the_tokens_it_changes(policy_dir):
    from dataclasses import replace

    from focusdiff.model.loading import load_policy
    from focusdiff.model.quality import edit_locality
    from focusdiff.shapes.accuracy import sample_pairs
    from focusdiff.shapes.world import Obj, Scene

    policy = load_policy(policy_dir)
    template = sample_pairs(1, 32, 0)[0]
    red = Scene(objects=(Obj("square", "red", "small", 10, 10),))
    blue = Scene(objects=(Obj("square", "blue", "small", 10, 10),))
    # a 7 px square centred at (10, 10) covers rows and columns 7..13: 4 px blocks 1..3 of each, 9 blocks
    changed = edit_locality(policy, [replace(template, category="color", scene1=red, scene2=blue)])
    assert changed.tokens == 64 and changed.blocks_changed == {"color": 9.0}
    assert 0 < changed.tokens_changed["color"] <= 64
    same = edit_locality(policy, [replace(template, category="color", scene1=red, scene2=red)])
    assert same.blocks_changed == {"color": 0.0} and same.tokens_changed == {"color": 0.0}


def test_bootstrap_report_prints_the_tokenizer_locality(policy_dir):
    result = runner.invoke(app, ["bootstrap", "report", "--policy", str(policy_dir), "--pairs-per-category", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "what a pair's edit changes, of 64" in text and "pixel blocks" in text
    assert re.search(r"tokens changed per pixel block touched, over the in-place edits \(color, appearance, text\): "
                     r"\d+\.\d\d", text), text
