"""Issue #24, "nothing lost, nothing made up": params.yaml and recipes are read strictly,
and data imports leave nothing behind, take turns, read every text format alike and
name what they refuse; a prompt that does not fit the model's positions is an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from focusdiff.config import load_params, load_recipe
from focusdiff.data.imports import import_dataset
from focusdiff.data.schema import load_dataset
from focusdiff.errors import ConfigError, DataError, FocusdiffError

from tests.project import REPO_ROOT

ROOT = REPO_ROOT
PARAMS = ROOT / "params.yaml"
RECIPE = ROOT / "recipes" / "janus-pro-1b-pair-grpo.yaml"


# ---------------------------------------------------------------- params.yaml and recipes


def _edited(tmp_path: Path, old: str, new: str, source: Path = PARAMS) -> Path:
    """A copy of `source` with one line edited as a user would (comments and order kept)."""
    text = source.read_text("utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new), "utf-8")
    return path


def test_duplicate_key_is_named_with_file_line_and_dotted_key(tmp_path):
    path = _edited(tmp_path, "  beta: 0.1 ", "  beta: 0.1\n  beta: 0.5 ")
    lines = path.read_text().splitlines()
    first = next(i for i, s in enumerate(lines, 1) if s.startswith("  beta: 0.1"))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == (f"{path}:{first + 1}: train.beta: duplicate key (first given at line {first}; "
                              "YAML would keep the last)")


def test_duplicate_key_in_a_recipe_is_refused(tmp_path):
    path = _edited(tmp_path, "seed: 42\n", "seed: 42\nseed: 7\n", source=RECIPE)
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: seed: duplicate key \(first given at line \d+"):
        load_recipe(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("  steps: 300 ", "  steps: true ", r"train\.steps: Input should be a valid integer \(got True\)"),
        ("  steps: 300 ", '  steps: "4" ', r"train\.steps: Input should be a valid integer \(got '4'\)"),
        ("  steps: 300 ", "  steps: 300.0 ", r"train\.steps: Input should be a valid integer \(got 300\.0\)"),
        ("  register_trained: true", "  register_trained: 1", r"promote\.register_trained: Input should be a valid boolean \(got 1\)"),
        ("peak: 0.00005", "peak: .inf", r"train\.lr\.peak: Input should be a finite number \(got inf\)"),
        ("  beta: 0.1 ", "  beta: .inf ", r"train\.beta: Input should be a finite number \(got inf\)"),
        ("  margin: 1.0", "  margin: .nan", r"promote\.margin: Input should be a finite number \(got nan\)"),
        ("  floor: 0.0", "  floor: -.inf", r"promote\.floor: Input should be a finite number \(got -inf\)"),
        ("experiment: focusdiff", "experiment: 2024-01-01", r"tracking\.experiment: date values are not accepted"),
    ],
)
def test_params_types_are_strict_and_numbers_finite(tmp_path, old, new, message):
    path = _edited(tmp_path, old, new)
    with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
        load_params(path)


def test_a_recipe_refuses_an_infinite_learning_rate(tmp_path):
    path = _edited(tmp_path, "peak: 1.0e-5", "peak: .inf", source=RECIPE)
    with pytest.raises(ConfigError, match=rf"{path}: lr\.peak: Input should be a finite number \(got inf\)"):
        load_recipe(path)


@pytest.mark.parametrize("block", ["tracking", "judge", "train", "evaluate", "promote", "cluster"])
def test_every_block_is_required(tmp_path, block):
    raw = yaml.safe_load(PARAMS.read_text())
    del raw[block]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: {block}: Field required"


def test_natural_spellings_still_load(tmp_path):
    """Strictness refuses coercions, not the ordinary ways of writing values: an integer
    where a float goes, `5e-5` (a string to plain PyYAML), paths as strings, lists as tuples."""
    path = _edited(tmp_path, "peak: 0.00005", "peak: 5e-5")
    path.write_text(path.read_text().replace("  margin: 1.0", "  margin: 1"))
    params = load_params(path, overrides={"train.adam_betas": [0.9, 0.99], "train.lr.warmup": 5})
    assert params.train.lr.peak == 5e-5 and params.promote.margin == 1.0
    assert params.train.adam_betas == (0.9, 0.99) and params.train.out == Path("models/grpo")
    assert params.train.lr.warmup == 5


# ---------------------------------------------------------------- data import


def _slow_import_input(root: Path, rows: int = 300) -> Path:
    """Pairs whose images are hard links to one noisy 512x512 PNG: every field is decoded
    anew (the store keys images by path), so the import writes for a few seconds."""
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    img = root / "img"
    img.mkdir(parents=True)
    Image.fromarray(noise).save(img / "noise.png")
    for i in range(2 * rows):
        os.link(img / "noise.png", img / f"{i}.png")
    pairs = [{"prompt1": f"a red cube {i}", "prompt2": f"a blue cube {i}", "image1": f"img/{2 * i}.png",
              "image2": f"img/{2 * i + 1}.png"} for i in range(rows)]
    path = root / "pairs.json"
    path.write_text(json.dumps(pairs))
    return path


def _temp_siblings(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


def _start_import(pairs: Path, out: Path) -> subprocess.Popen:
    """`import_dataset` in a process of its own; returns once it is writing `out`'s temporary."""
    code = "import sys; from focusdiff.data.imports import import_dataset; import_dataset(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(pairs), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _temp_siblings(out):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the import never started writing"
        time.sleep(0.005)
    return proc


def _small_input(root: Path, name: str = "small.json") -> Path:
    path = root / name
    path.write_text(json.dumps([{"prompt1": "a red cube", "prompt2": "a blue cube"}]))
    return path


def test_killed_import_leaves_nothing_behind_after_the_next_one(tmp_path):
    out = tmp_path / "ds"
    proc = _start_import(_slow_import_input(tmp_path / "in"), out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _temp_siblings(out), "the killed import should have left its temporary"
    assert not out.exists()

    report = import_dataset(_small_input(tmp_path), out)
    assert report.pairs == 1 and len(load_dataset(out).pairs) == 1
    assert _temp_siblings(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in", "small.json"]  # no lock file either


def test_previous_output_moved_aside_by_a_killed_import_is_put_back(tmp_path):
    """Killed between moving the old output aside and swapping the new one in: the next
    import puts the old one back first, so its own failure leaves the previous dataset."""
    out = tmp_path / "ds"
    import_dataset(_small_input(tmp_path), out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.replace(out, tmp_path / f".ds.{int(dead.stdout)}.old")
    missing_image = tmp_path / "bad.json"
    missing_image.write_text(json.dumps([{"prompt1": "a cat", "prompt2": "two cats", "image1": "nope.png"}]))
    with pytest.raises(DataError, match=r"bad\.json, row 1, field 'image1'"):
        import_dataset(missing_image, out)
    assert load_dataset(out).pairs[0].prompt1 == "a red cube"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "ds", "small.json"]


def test_concurrent_import_into_one_out_fails_naming_the_holder(tmp_path):
    out = tmp_path / "ds"
    proc = _start_import(_slow_import_input(tmp_path / "in"), out)
    try:
        with pytest.raises(FocusdiffError) as err:
            import_dataset(_small_input(tmp_path), out)
        assert str(err.value).startswith(f"{out}: another process (pid {proc.pid}) is writing this output")
    finally:
        proc.kill()
        proc.wait()


def test_bom_is_accepted_in_jsonl_as_in_json_and_text(tmp_path):
    rows = [{"prompt1": "a red cube", "prompt2": "a blue cube"}, {"prompt1": "two cats", "prompt2": "three cats"}]
    bom = "\ufeff"
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(bom + "".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    as_json = tmp_path / "pairs.json"
    as_json.write_text(bom + json.dumps(rows), "utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(bom + "a green cube\n", "utf-8")
    from_jsonl = import_dataset(jsonl, tmp_path / "a", unpaired_file=prompts)
    from_json = import_dataset(as_json, tmp_path / "b", unpaired_file=prompts)
    assert from_jsonl.pairs == from_json.pairs == 2
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()
    assert load_dataset(tmp_path / "a").prompts[0].prompt == "a green cube"


@pytest.mark.parametrize("value, name", [(5, "an integer"), (1.5, "a number"), (["x"], "a list"), ({}, "an object")])
def test_type_names_read_right(tmp_path, value, name):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt1": value, "prompt2": "a blue cube"}]))
    with pytest.raises(DataError) as err:
        import_dataset(pairs, tmp_path / "out")
    assert str(err.value) == f"{pairs}, row 1, field 'prompt1': expected a string, got {name}"


# ---------------------------------------------------------------- prompt length


@pytest.fixture(scope="module")
def tiny_policy():
    import torch
    from transformers import JanusForConditionalGeneration

    from focusdiff.model.configs import VQTrainConfig
    from focusdiff.model.policy import Policy
    from focusdiff.model.shapes_model import build_config, build_tokenizer
    from focusdiff.model.vq import vq_config

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = JanusForConditionalGeneration(build_config(tok, vq_config(VQTrainConfig()), hidden=64, layers=2)).eval()
    return Policy(model, tok, "tiny-random")


@pytest.mark.usefixtures("one_torch_thread")
def test_prompt_longer_than_the_positions_is_an_error(tiny_policy):
    import torch

    from focusdiff.model.sampler import sample, token_logprobs

    assert tiny_policy.model.config.text_config.max_position_embeddings == 256
    assert tiny_policy.num_image_tokens == 64
    long = " ".join(["a red circle above a blue square"] * 30)  # 210 words
    short = "a red circle"
    message = (r"prompt 2 of the batch \('a red circle above a blue square a red circle above a blu\.\.\.'\) is "
               r"\d+ tokens with the chat template; with the 64 image tokens that exceeds the model's 256 "
               r"positions \(max_position_embeddings\): at most 192 prompt tokens fit")
    with pytest.raises(FocusdiffError, match=message):
        sample(tiny_policy, [short, long], [0, 1], decode=False)
    with pytest.raises(FocusdiffError, match=message):
        token_logprobs(tiny_policy, [short, long], torch.zeros(2, 64, dtype=torch.long))
    assert sample(tiny_policy, [short], [0], decode=False).tokens.shape == (1, 64)
