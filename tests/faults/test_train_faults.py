"""Training faults of issue #24 ("Nothing lost, nothing made up"): what resuming keeps, what a
run whose judge is down reports, and what a killed run leaves in MLflow.

The policy is a tiny random-initialised Janus, the dataset a small ShapesWorld one, as in
tests/unit/test_train.py. The unreachable judge is the real OpenAI-compatible client pointed at
a closed loopback port; MLflow is the session's real tracking server (tests/servers.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from focusdiff.config import TrackingConfig
from focusdiff.errors import FocusdiffError
from focusdiff.judge.base import JudgeFailure
from focusdiff.judge.exact import ExactJudge
from focusdiff.model.checkpoints import CheckpointError
from focusdiff.registry.gate import GateConfig
from focusdiff.train import checkpoint
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.trainer import train

from tests.judges import JudgeGoneAfter
from tests.tiny_models import save_tiny_world
from tests.project import VENV_BIN
from tests.servers import free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small ShapesWorld dataset and a tiny random Janus policy saved in transformers format."""
    root = tmp_path_factory.mktemp("train-faults")
    return save_tiny_world(root, {"train": 3, "val": 1, "test": 1}, {"train": 3, "val": 1, "test": 1})


def _config(world: Path, run: Path, policy: Path | None = None, **over) -> dict:
    cfg = {
        "policy": str(policy or world / "policy"), "data": str(world / "data"), "judge": {"backend": "exact"},
        "group_size": 4, "grad_accum": 2, "steps": 3, "checkpoint_every": 1, "threads": 1,
        "lr": {"peak": 1e-3, "warmup": 1, "mid_step": 2}, "curriculum": {"s1": 1, "s2": 2, "s3": 4},
        "out": str(run / "out"), "metrics_dir": str(run / "metrics"),
    }
    cfg.update(over)
    return cfg


def _grpo(world: Path, run: Path, **over) -> GRPOConfig:
    return GRPOConfig.model_validate(_config(world, run, **over))




PER_STEP = 2 * 1 * 2 * 4  # images judged per step: micro-batches x items x prompts x G


def _stopped_after(cfg: GRPOConfig, steps: int) -> None:
    """Train until the judge goes away in step `steps` + 1, leaving the checkpoints of `steps` steps."""
    with pytest.raises(JudgeFailure, match="judge went away"):
        train(cfg, JudgeGoneAfter(steps * PER_STEP))


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- case 1: resume deletes checkpoints


def test_resume_survives_judge_transport_changes_and_touched_weights(world, tmp_path, capsys):
    """Another judge URL-like setting (retries, concurrency) or a `touch` of the base weights
    (same bytes) is the same run: it resumes instead of wiping the checkpoints."""
    policy = tmp_path / "policy"
    shutil.copytree(world / "policy", policy)
    cfg = _grpo(world, tmp_path, policy=policy)
    _stopped_after(cfg, 2)
    assert [s for s, _ in checkpoint.step_dirs(cfg.checkpoints)] == [1, 2]
    capsys.readouterr()

    weights = policy / "model.safetensors"
    later = weights.stat().st_mtime_ns + 5_000_000_000
    os.utime(weights, ns=(later, later))  # touched: same bytes, another modification time
    moved = _grpo(world, tmp_path, policy=policy, judge={"backend": "exact", "max_retries": 6, "max_concurrency": 2},
                  on_judge_failure="drop", keep_checkpoints=3, log_every=2)
    result = train(moved, ExactJudge())
    assert f"resuming from {cfg.checkpoints / 'step-00000002'}" in capsys.readouterr().out
    assert result.resumed_from == 2 and len(result.history) == 3


def test_another_runs_checkpoints_are_refused_naming_what_differs_then_moved_aside_on_restart(
        world, tmp_path, mlflow_tracking):
    policy = tmp_path / "policy"
    shutil.copytree(world / "policy", policy)
    cfg = _grpo(world, tmp_path, policy=policy)
    _stopped_after(cfg, 1)
    kept = _tree(cfg.checkpoints)

    # another learning rate: refused, naming the field and the two ways on; nothing deleted
    other_lr = _grpo(world, tmp_path, policy=policy, lr={"peak": 2e-3, "warmup": 1, "mid_step": 2})
    with pytest.raises(FocusdiffError) as err:
        train(other_lr, ExactJudge())
    message = str(err.value)
    assert "config.lr.peak: 0.001 in the checkpoint, 0.002 now" in message
    assert "Nothing was resumed or deleted" in message and "another out" in message and "--restart" in message
    assert _tree(cfg.checkpoints) == kept

    # other weights (other bytes): refused, naming the weight file
    from safetensors.torch import load_file, save_file

    tensors = load_file(policy / "model.safetensors")
    name = next(k for k in tensors if k.startswith("model.language_model"))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, policy / "model.safetensors", metadata={"format": "pt"})
    differs = r"policy\.model\.safetensors: [0-9a-f]{12}\.\.\. in the checkpoint, [0-9a-f]{12}\.\.\. now"
    with pytest.raises(FocusdiffError, match=differs):
        train(cfg, ExactJudge())
    assert _tree(cfg.checkpoints) == kept

    # a checkpoint from before identities were recorded: its parameters are unknown
    state_file = cfg.checkpoints / "step-00000001" / "state.json"
    saved = json.loads(state_file.read_text())
    old_format = {k: v for k, v in saved.items() if k not in ("identity", "file_stats")} | {"fingerprint": "0" * 64}
    state_file.write_text(json.dumps(old_format))
    with pytest.raises(FocusdiffError, match=r"differences: unknown \(the checkpoint records no run"):
        train(cfg, ExactJudge())

    # `focusdiff train --restart`: moved aside whole, never deleted, and the run starts over
    from typer.testing import CliRunner

    from focusdiff.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_config(world, tmp_path, policy=policy, steps=1)))
    result = CliRunner().invoke(app, ["train", "-c", str(recipe), "-p", str(tmp_path / "none.yaml"), "--restart"])
    assert result.exit_code == 0, result.output
    assert "moved the checkpoints of a run with other parameters" in result.output
    assert "(resumed from 0)" in result.output and cfg.out.is_dir()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(f"{cfg.checkpoints.name}.old-")]
    assert set(_tree(aside)) == set(kept)
    assert json.loads((aside / "step-00000001" / "state.json").read_text()) == old_format


# ----------------------------------------------------------------------------- case 2: the judge is down


def _down_judge() -> dict:
    """The real OpenAI-compatible client, pointed at a loopback port nothing listens on."""
    return {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "judge", "max_retries": 0}


def test_a_run_whose_judge_is_down_fails_logs_no_reward_and_is_not_registered(world, tmp_path, mlflow_tracking):
    from focusdiff.stages.train import run_train_stage

    client = mlflow_tracking.client()
    registry = GateConfig(model_name=f"faults-down-judge-{os.getpid()}", register_trained=True)

    def runs_of(cfg: GRPOConfig):
        return client.search_runs([client.get_experiment_by_name("focusdiff").experiment_id],
                                  filter_string=f"params.`train.out` = '{cfg.out}'")

    # with the default budget (10% of the run's items): fails at the first step, before any update
    cfg = _grpo(world, tmp_path / "budget", judge=_down_judge(), on_judge_failure="drop", steps=2)
    with pytest.raises(FocusdiffError, match=r"step 0: the judge \(openai\) could not score 2 of the run's 4 items "
                                             r"\(50\.0%\), over train\.max_dropped_fraction \(10\.0%\)"):
        run_train_stage(cfg, TrackingConfig(), registry=registry)
    # a budget of everything: every step runs, none updates or logs a reward, and the run still fails
    everything = _grpo(world, tmp_path / "all", judge=_down_judge(), on_judge_failure="drop", steps=2,
                       max_dropped_fraction=1.0)
    with pytest.raises(FocusdiffError, match=r"none of the 2 steps made an update: of 4 items, .*scored none of them"):
        run_train_stage(everything, TrackingConfig(), registry=registry)

    for failed in (cfg, everything):
        [run] = runs_of(failed)
        assert run.info.status == "FAILED" and "TrainingFailed" in run.data.tags["error"]
        for key in ("train/reward_mean", "train/reward_std", "train/grad_norm", "train/kl"):
            assert key not in run.data.metrics, key
        assert not failed.out.exists() and not (failed.metrics_dir / "registration.json").exists()
    dropped = client.get_metric_history(runs_of(everything)[0].info.run_id, "train/dropped_items")
    assert sorted((m.step, m.value) for m in dropped) == [(0, 2.0), (1, 2.0)]
    assert client.search_registered_models(f"name = '{registry.model_name}'") == []


# ----------------------------------------------------------------------------- case 8: files, MLflow, errors


def test_trained_weights_get_the_same_mode_as_the_other_files(world, tmp_path):
    cfg = _grpo(world, tmp_path, steps=1)
    train(cfg, ExactJudge())
    modes = {p.name: p.stat().st_mode & 0o777 for p in cfg.out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~_umask(), modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Opaque:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_a_checkpoint_holding_pickled_objects_is_refused_without_torchs_unsafe_advice(world, tmp_path):
    cfg = _grpo(world, tmp_path)
    _stopped_after(cfg, 1)
    [(_, path)] = checkpoint.step_dirs(cfg.checkpoints)
    shard = path / "optimizer-rank0.pt"
    torch.save({"state": {}, "param_groups": [], "extra": Opaque()}, shard)
    state = json.loads((path / "state.json").read_text())
    state["files"]["optimizer-rank0.pt"] = hashlib.sha256(shard.read_bytes()).hexdigest()  # as if written so
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as err:
        train(cfg, ExactJudge())
    message = str(err.value)
    assert f"{shard}: refused, not loaded: it is not a plain tensor/optimizer state" in message
    assert "Opaque" in message and "weights_only" not in message and "trust" not in message


def test_the_lm_bootstrap_checkpoint_refuses_pickled_objects_the_same_way(tmp_path):
    from safetensors.torch import save_model

    from focusdiff.model.sft import load_checkpoint

    model = torch.nn.Linear(2, 2)
    save_model(model, str(tmp_path / "model.safetensors"))
    torch.save({"extra": Opaque()}, tmp_path / "optimizer.pt")
    (tmp_path / "rng.safetensors").write_bytes(b"")
    files = {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
             for n in ("model.safetensors", "optimizer.pt", "rng.safetensors")}
    (tmp_path / "state.json").write_text(json.dumps({"step": 1, "fingerprint": "f", "files": files}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, "f", model, torch.optim.SGD(model.parameters(), lr=0.1), None, None)
    assert "optimizer.pt: refused, not loaded" in str(err.value) and "weights_only" not in str(err.value)


def _kill_after_checkpoint(recipe: Path, checkpoints: Path, step: int, cwd: Path) -> None:
    """Run `focusdiff train` and SIGKILL it once the checkpoint of `step` steps exists."""
    proc = subprocess.Popen([str(VENV_BIN / "focusdiff"), "train", "-c", str(recipe), "-p", str(cwd / "none.yaml")],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (checkpoints / f"step-{step:08d}").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


@pytest.mark.slow
def test_a_killed_run_continues_its_mlflow_run_or_is_marked_failed(world, tmp_path, mlflow_tracking):
    """Killed after 2 of 4 steps: the rerun continues the same MLflow run, which ends FINISHED
    holding every step. Killed again, then restarted with other parameters: the dead run is
    marked FAILED, saying where its checkpoints went."""
    from focusdiff.config import load_recipe
    from focusdiff.stages.train import run_train_stage

    client = mlflow_tracking.client()
    experiment = client.get_experiment_by_name
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_config(world, tmp_path, steps=4, checkpoint_every=1)))
    cfg = load_recipe(recipe)

    def runs():
        return client.search_runs([experiment("focusdiff").experiment_id],
                                  filter_string=f"params.`train.out` = '{cfg.out}'", order_by=["attributes.start_time"])

    _kill_after_checkpoint(recipe, cfg.checkpoints, 2, tmp_path)
    [killed] = runs()
    assert killed.info.status == "RUNNING"
    result = run_train_stage(cfg, TrackingConfig())
    assert result.resumed_from >= 2 and result.mlflow_run_id == killed.info.run_id
    [continued] = runs()
    assert continued.info.status == "FINISHED"
    rewards = client.get_metric_history(killed.info.run_id, "train/reward_mean")
    assert sorted({m.step for m in rewards}) == [0, 1, 2, 3]  # the killed process's steps and the rerun's

    shutil.rmtree(cfg.out)
    _kill_after_checkpoint(recipe, cfg.checkpoints, 1, tmp_path)
    dead = runs()[-1]
    assert dead.info.status == "RUNNING" and dead.info.run_id != killed.info.run_id
    other = cfg.model_copy(update={"seed": 7, "restart": True, "steps": 1})
    fresh = run_train_stage(other, TrackingConfig())
    assert fresh.resumed_from == 0 and fresh.mlflow_run_id not in (dead.info.run_id, killed.info.run_id)
    marked = client.get_run(dead.info.run_id)
    assert marked.info.status == "FAILED"
    assert "ended without finishing the run" in marked.data.tags["error"]
    assert f"{cfg.checkpoints.name}.old-" in marked.data.tags["error"]
