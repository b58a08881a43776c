"""The ShapesWorld VQ tokenizer: training matches transformers' encode/decode, the gate holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import JanusVQVAE

from focusdiff.config import load_params
from focusdiff.model.configs import VQTrainConfig
from focusdiff.model.vq import (
    SceneStream,
    _encode_normalized,
    reconstruct,
    to_images,
    to_pixels,
    train_vq,
)
from focusdiff.stages.bootstrap import QualityGateError, file_hashes, run_vq_stage
from tests.project import REPO_ROOT

ROOT = REPO_ROOT
TINY = VQTrainConfig(steps=4, batch_size=8, warmup_steps=1, restart_every=2, eval_every=4,
                     eval_pairs_per_category=1, codebook_size=64, threads=1)


@pytest.fixture(scope="module")
def trained() -> JanusVQVAE:
    vq, _ = train_vq(TINY)
    return vq


def test_pixel_round_trip_is_exact():
    images = SceneStream(32, seed=1).batch(4)
    assert (to_images(to_pixels(images)) == images).all()


def test_codebook_rows_are_unit_norm(trained):
    norms = trained.quantize.embedding.weight.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_transformers_encode_picks_the_code_training_uses(trained):
    """encode() takes the nearest raw code; with unit rows that is the cosine argmax used in training."""
    x = to_pixels(SceneStream(32, seed=2).batch(6))
    with torch.no_grad():
        tokens = trained.encode(x).image_tokens
        cosine = (_encode_normalized(trained, x) @ trained.quantize.embedding.weight.T).argmax(-1)
    assert torch.equal(tokens.view(-1), cosine)


def test_reconstruct_is_decode_of_encode(trained):
    images = SceneStream(32, seed=3).batch(3)
    with torch.no_grad():
        x = to_pixels(images)
        tokens = trained.encode(x).image_tokens.view(3, -1)
        assert tokens.shape == (3, 64)  # 8x8 tokens per 32 px image
        by_hand = trained.decoder(trained.post_quant_conv(
            F.normalize(trained.quantize.embedding(tokens), dim=-1).view(3, 8, 8, -1).permute(0, 3, 1, 2)))
        assert torch.allclose(trained.decode(tokens), by_hand, atol=1e-5)
    # Same tokens, same decoder; float layout differences may move a rounding by one level.
    assert abs(reconstruct(trained, images).astype(int) - to_images(by_hand).astype(int)).max() <= 1


def _params(tmp_path: Path, **vq):
    overrides = {"tracking.uri": f"sqlite:///{tmp_path}/m.db", "tracking.artifact_location": str(tmp_path / "a"),
                 "bootstrap.vq.out": str(tmp_path / "vq")}
    overrides.update({f"bootstrap.vq.{k}": v for k, v in {**TINY.model_dump(exclude={"out"}), **vq}.items()})
    return load_params(ROOT / "params.yaml", overrides=overrides)


def test_gate_failure_writes_nothing(tmp_path):
    with pytest.raises(QualityGateError, match=r"below the gate bootstrap\.vq\.min_accuracy=99\.00%; .* left unchanged"):
        run_vq_stage(_params(tmp_path, min_accuracy=0.99))
    assert not (tmp_path / "vq").exists()


def test_stage_writes_safetensors_and_a_true_record(tmp_path):
    result = run_vq_stage(_params(tmp_path, min_accuracy=0.0))
    out = tmp_path / "vq"
    record = json.loads((out / "record.json").read_text())
    assert record["files"] == file_hashes(out)
    assert "model.safetensors" in record["files"] and not list(out.glob("*.bin"))
    assert record["reconstruction_clause_accuracy"] == result.accuracy
    assert record["locality"]["tokens_per_block"] >= 0 and set(record["locality"]["tokens_changed"]) >= {"color", "text"}
    reloaded = JanusVQVAE.from_pretrained(out)
    assert reloaded.config.num_embeddings == TINY.codebook_size


def test_killed_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    """Every random state the loop draws from is in the checkpoint (torch's global generator, the
    scene stream's, code usage, the EMA): a resumed run ends with the uninterrupted run's weights."""
    from focusdiff.errors import TrainingPaused
    from focusdiff.model.checkpoints import CheckpointError

    cfg = TINY.model_copy(update={"steps": 6, "checkpoint_every": 2, "restart_every": 3, "eval_every": 100})
    straight, _ = train_vq(cfg)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingPaused, match=r"at step 2 of 6 \(checkpoint in .*ckpt\); run the same command again"):
        train_vq(cfg, checkpoint_dir=ckpt, stop_after_s=0.0)  # a bounded invocation: stops at its first checkpoint
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    seen = []
    resumed, _ = train_vq(cfg, log=lambda m, s: seen.append(m), checkpoint_dir=ckpt)
    assert [m["vq/resumed_from_step"] for m in seen if "vq/resumed_from_step" in m] == [2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    # another trajectory does not resume it; a damaged one is reported, never loaded
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    (ckpt / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"ema.safetensors: sha256 differs from .*state.json \(corrupt\)"):
        train_vq(cfg, checkpoint_dir=ckpt)
    other, seen = cfg.model_copy(update={"lr": 1e-3}), []
    train_vq(other, log=lambda m, s: seen.append(m), checkpoint_dir=ckpt)
    assert not any("vq/resumed_from_step" in m for m in seen)


def test_a_paused_stage_exits_75_and_the_same_command_finishes_it(tmp_path):
    """`focusdiff bootstrap vq --max-minutes 0` stops at the first checkpoint (exit 75, its MLflow
    run KILLED and tagged paused, nothing written); the same command again finishes and cleans up."""
    import subprocess

    from mlflow import MlflowClient

    from tests.project import VENV_BIN

    sets = [a for k, v in {**TINY.model_dump(exclude={"out", "init"}), "checkpoint_every": 2, "min_accuracy": 0.0}.items()
            for a in ("-S", f"bootstrap.vq.{k}={v}")]
    argv = [str(VENV_BIN / "focusdiff"), "bootstrap", "vq", "--params", str(ROOT / "params.yaml"), *sets,
            "-S", f"bootstrap.vq.out={tmp_path / 'vq'}", "-S", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "-S", f"tracking.artifact_location={tmp_path / 'artifacts'}"]
    paused = subprocess.run([*argv, "--max-minutes", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert paused.returncode == 75, paused.stderr[-2000:]
    assert "paused: stopped after 0 min at step 2 of 4" in " ".join(paused.stderr.split())
    assert "bootstrap vq: 1/4 steps" in paused.stderr  # never silent: progress lines while it trains
    assert not (tmp_path / "vq").exists() and (tmp_path / ".vq.checkpoints" / "state.json").is_file()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "vq" / "record.json").is_file() and not (tmp_path / ".vq.checkpoints").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focusdiff").experiment_id], order_by=["start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert "run the same command again to continue" in runs[0].data.tags["paused"] and "error" not in runs[0].data.tags


def test_touched_blocks_marks_each_grid_block_with_a_changed_pixel():
    """8x8 images on a 2x2 token grid (4x4-pixel blocks), raster order: a pixel changed at (1, 6)
    touches block 1 (top right), one at (7, 0) block 2 (bottom left); batch axes pass through."""
    from focusdiff.model.vq import touched_blocks

    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 6, 2] = 9
    b[7, 0, 0] = 1
    assert touched_blocks(a, b, side=2).tolist() == [False, True, True, False]
    assert touched_blocks(np.stack([a, a]), np.stack([b, a]), side=2).tolist() == [[False, True, True, False], [False] * 4]


def test_a_grid_that_does_not_tile_the_image_is_a_clear_error():
    from focusdiff.model.vq import touched_blocks

    a = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"a 3x3 token grid does not tile a 8x8 image"):
        touched_blocks(a, a, side=3)


def test_the_edit_consistency_loss_counts_only_untouched_blocks():
    """Two pairs of 8x8 images on a 2x2 token grid (4x4-pixel blocks): pair 0's edit touches the
    top-left block, pair 1's nothing. Latent changes: pair 0 moves 1.0 in its touched block and
    0.5 (squared: 0.25) in one untouched block; pair 1 moves 0.2 (0.04) in one block."""
    from focusdiff.model.vq import untouched_latent_change

    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[1, 0, 0] = 255  # pair 0: the scenes differ in block (0, 0)
    z = torch.zeros(4 * 4, 2)  # (images x blocks, D), blocks row-major per image
    z[4 + 0, 0] = 1.0  # image 1, block 0 (touched): not counted
    z[4 + 3, 1] = 0.5  # image 1, block 3 (untouched)
    z[12 + 2, 0] = 0.2  # image 3 (pair 1), block 2
    # untouched blocks: pair 0 has 3, pair 1 has 4 -> (0.25 + 0.04) / 7
    assert untouched_latent_change(z, images).item() == pytest.approx((0.25 + 0.04) / 7)


def test_training_with_the_edit_loss_logs_it_and_the_locality():
    seen = []
    train_vq(TINY.model_copy(update={"edit_weight": 1.0}), log=lambda m, s: seen.append(m))
    assert any("vq/edit_loss" in m for m in seen)
    final = next(m for m in reversed(seen) if "vq/locality.tokens_per_block" in m)
    assert final["vq/locality.tokens_per_block"] >= 0 and "vq/locality.color.blocks_changed" in final


def test_the_code_stability_loss_is_the_cross_entropy_of_untouched_assignments():
    """Two pairs of 8x8 images on a 2x2 token grid; codes (1, 0) and (0, 1), temperature 1.
    Pair 0's edit touches block 0 (not counted); every latent is (1, 0), whose soft assignment
    p = softmax(1, 0) agrees with its partner's, costing the entropy H(p), except pair 1's
    block 2, where the second scene's latent is (0, 1): cross-entropy -sum p log q, q = softmax(0, 1)."""
    import math

    from focusdiff.model.vq import untouched_code_instability

    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[1, 0, 0] = 255
    z = torch.zeros(16, 2)
    z[:, 0] = 1.0
    z[12 + 2] = torch.tensor([0.0, 1.0])
    codebook = torch.eye(2)
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]
    entropy = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1]))
    crossed = -(p[0] * math.log(p[1]) + p[1] * math.log(p[0]))
    expected = (6 * entropy + crossed) / 7  # 3 untouched blocks in pair 0, 4 in pair 1
    assert untouched_code_instability(z, codebook, images, temperature=1.0).item() == pytest.approx(expected)
    # colder: a confident, agreeing assignment costs almost nothing
    agreeing = torch.zeros(16, 2)
    agreeing[:, 0] = 1.0
    assert untouched_code_instability(agreeing, codebook, images, temperature=0.01).item() < 1e-6


def test_training_with_the_stability_loss_logs_it():
    seen = []
    train_vq(TINY.model_copy(update={"stability_weight": 0.1}), log=lambda m, s: seen.append(m))
    assert any("vq/stability_loss" in m for m in seen)


def _local_params(tmp_path: Path, init: Path, **vq):
    """A tiny `bootstrap.vq_local`: fine-tunes `init` (a tiny trained VQ) with the stability loss."""
    overrides = {"tracking.uri": f"sqlite:///{tmp_path}/m.db", "tracking.artifact_location": str(tmp_path / "a"),
                 "bootstrap.vq_local.out": str(tmp_path / "vq-local"), "bootstrap.vq_local.init": str(init)}
    tiny = TINY.model_dump(exclude={"out", "init"}) | {"restart_every": 0, "stability_weight": 0.1, "min_accuracy": 0.0}
    overrides.update({f"bootstrap.vq_local.{k}": v for k, v in {**tiny, **vq}.items()})
    return load_params(ROOT / "params.yaml", overrides=overrides)


def test_the_locality_fine_tune_starts_from_its_init_and_records_it(tmp_path):
    run_vq_stage(_params(tmp_path, min_accuracy=0.0))
    init = tmp_path / "vq"
    result = run_vq_stage(_local_params(tmp_path, init), "vq_local")
    record = json.loads((result.out / "record.json").read_text())
    assert record["command"] == "focusdiff bootstrap vq-local"
    assert record["init"] == {"path": str(init), "model.safetensors": file_hashes(init)["model.safetensors"]}
    assert record["locality"]["tokens_per_block"] == pytest.approx(result.tokens_per_block)
    # a fine-tune, not a fresh start: 4 small steps leave the codebook close to the init's
    before = JanusVQVAE.from_pretrained(init).quantize.embedding.weight
    after = JanusVQVAE.from_pretrained(result.out).quantize.embedding.weight
    assert torch.allclose(before, after, atol=0.05) and not torch.equal(before, after)


def test_a_fine_tune_from_another_architecture_is_refused(tmp_path):
    run_vq_stage(_params(tmp_path, min_accuracy=0.0))  # 64 codes
    with pytest.raises(ValueError, match=r"init .*vq: its architecture differs from the config's: "
                                         r"num_embeddings is 64, config says 128"):
        run_vq_stage(_local_params(tmp_path, tmp_path / "vq", codebook_size=128), "vq_local")
    assert not (tmp_path / "vq-local").exists()


def test_a_fine_tune_without_its_init_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match=r"bootstrap\.vq_local\.init: .*nowhere holds no trained VQ "
                                        r"\(record\.json missing\); train it first"):
        run_vq_stage(_local_params(tmp_path, tmp_path / "nowhere"), "vq_local")
