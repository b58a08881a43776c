"""EMA weights (train.ema_decay): the update by hand, the run's output, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from focusdiff.judge.exact import ExactJudge
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.ema import ParameterEMA
from focusdiff.train.trainer import train

from tests.interrupt import StopTraining, stop_at
from tests.tiny_models import save_tiny_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ema_update_by_hand():
    p = {"w": torch.nn.Parameter(torch.tensor([1.0, -2.0]))}
    ema = ParameterEMA(p, decay=0.5)
    with torch.no_grad():
        p["w"].copy_(torch.tensor([2.0, 0.0]))
    ema.update(p)  # 0.5 * 1 + 0.5 * 2, 0.5 * -2 + 0.5 * 0
    assert ema.shadow["w"].tolist() == [1.5, -1.0]
    with torch.no_grad():
        p["w"].copy_(torch.tensor([4.0, 0.0]))
    ema.update(p)
    assert ema.shadow["w"].tolist() == [2.75, -0.5]
    ema.copy_to(p)
    assert p["w"].tolist() == [2.75, -0.5]


def test_ema_state_that_does_not_fit_names_the_file_and_parameter():
    ema = ParameterEMA({"w": torch.nn.Parameter(torch.zeros(2))}, decay=0.9)
    with pytest.raises(ValueError, match=r"ck/ema.safetensors: does not match the trainable parameters \(missing \['w'\]"):
        ema.load_state_dict({"v": torch.zeros(2)}, "ck/ema.safetensors")
    with pytest.raises(ValueError, match=r"ck/ema.safetensors: w has shape \(3,\), the parameter \(2,\)"):
        ema.load_state_dict({"w": torch.zeros(3)}, "ck/ema.safetensors")
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), got 1.0"):
        ParameterEMA({}, decay=1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return save_tiny_world(tmp_path_factory.mktemp("ema"), {"train": 3, "val": 1, "test": 1}, {"train": 3, "val": 1, "test": 1})


def _config(world: Path, run: Path, **over) -> GRPOConfig:
    return GRPOConfig.model_validate({
        "policy": str(world / "policy"), "data": str(world / "data"), "judge": {"backend": "exact"},
        "group_size": 4, "grad_accum": 2, "steps": 4, "checkpoint_every": 2, "threads": 1, "beta": 0.1,
        "lr": {"peak": 1e-2, "warmup": 1, "mid_step": 2}, "curriculum": {"s1": 1, "s2": 2, "s3": 4},
        "out": str(run / "out"), "metrics_dir": str(run / "metrics"), **over})


def test_the_output_is_the_ema_and_decay_0_is_the_last_step(world, tmp_path):
    plain = _config(world, tmp_path / "plain", steps=2)
    decay0 = _config(world, tmp_path / "decay0", steps=2, ema_decay=0.0)
    ema = _config(world, tmp_path / "ema", steps=2, ema_decay=0.5)
    for cfg in (plain, decay0, ema):
        train(cfg, ExactJudge())
    a, b, c = (load_file(cfg.out / "model.safetensors") for cfg in (plain, decay0, ema))
    assert all(torch.equal(a[k], b[k]) for k in a)  # an average over one update is the update
    lm = [k for k in a if k.startswith("model.language_model.")]
    assert any(not torch.equal(a[k], c[k]) for k in lm)  # the average lags behind the last step
    assert json.loads((ema.out / "record.json").read_text())["weights"] == "ema"


def test_an_interrupted_ema_run_resumes_to_the_same_weights(world, tmp_path):
    whole = _config(world, tmp_path / "whole", ema_decay=0.7)
    cut = _config(world, tmp_path / "cut", ema_decay=0.7)
    train(whole, ExactJudge())
    with pytest.raises(StopTraining):
        train(cut, ExactJudge(), log=stop_at(2))  # step index 2 runs after the step-2 checkpoint
    assert (cut.checkpoints / "step-00000002" / "ema.safetensors").is_file()
    result = train(cut, ExactJudge())
    assert result.resumed_from == 2
    a, b = load_file(whole.out / "model.safetensors"), load_file(cut.out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
