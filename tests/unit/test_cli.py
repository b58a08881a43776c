"""The `focusdiff` command line: stage commands, reports, and clean error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from focusdiff.cli import app

from tests.project import REPO_ROOT

ROOT = REPO_ROOT
FOCUSDIFF = str(Path(sys.executable).parent / "focusdiff")
runner = CliRunner()


def _small_params(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "art"), "experiment": "cli"}
    raw["data"]["out"] = str(tmp_path / "pairs")
    raw["data"]["shapes"]["pairs_per_category"] = {"train": 4, "val": 1, "test": 1}
    raw["data"]["shapes"]["prompts"] = {"train": 3, "val": 1, "test": 1}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_data_build_builds_and_tracks(tmp_path):
    params = _small_params(tmp_path)
    result = runner.invoke(app, ["data", "build", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "MLflow run:" in result.output
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == 36
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "data"
    assert run.data.metrics["data.pairs.counting.train"] == 4
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} >= {"data/sample_pairs.png", "data/manifest.json"}


def test_data_validate_prints_report(tmp_path):
    params = _small_params(tmp_path)
    assert runner.invoke(app, ["data", "build", "--params", str(params)]).exit_code == 0
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "pairs")])
    assert result.exit_code == 0
    assert json.loads(result.output)["pairs"] == 36


def test_checker_report_prints_gates():
    result = runner.invoke(app, ["shapes", "checker-report", "--pairs-per-category", "10"])
    assert result.exit_code == 0, result.output
    for name in ("clean", "noise", "blur", "color_shift", "offset", "vq_like", "jpeg"):
        assert name in result.output
    assert "FAIL" not in result.output


def test_shapes_render_writes_png(tmp_path):
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["shapes", "render", "two red circles above a blue square", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_are_one_line_with_exit_2(tmp_path):
    bad = _small_params(tmp_path)
    raw = yaml.safe_load(bad.read_text())
    raw["data"]["shapes"]["canvas"] = 8
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([FOCUSDIFF, "data", "build", "--params", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"error: {bad}: data.shapes.canvas: Input should be greater than or equal to 32" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([FOCUSDIFF, "data", "validate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "manifest.json missing" in proc.stderr
    proc = subprocess.run([FOCUSDIFF, "shapes", "render", "a red dog"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "error: not a ShapesWorld caption: cannot read 'a red dog'" in proc.stderr
    result = runner.invoke(app, ["evaluate", "-b", "paircomp", "--policy", "shapes-base", "--version", "champion"])
    assert result.exit_code == 2 and "give --policy or --version, not both" in result.output


def test_data_import_error_names_file_row_field(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt1": "a red cube", "prompt2": "a blue cube"}, {"prompt1": "a cat"}]))
    out = tmp_path / "out"
    proc = subprocess.run([FOCUSDIFF, "data", "import", str(pairs), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {pairs}, row 2, field 'prompt2'" in proc.stderr
    assert not out.exists()


def test_redirected_stages_write_progress_lines_to_their_log(tmp_path):
    """`focusdiff judge train` and `focusdiff train` with stderr redirected to a file (as in a
    `dvc repro` the pipeline runs, or `... > log 2>&1`): timestamped progress lines, the first
    and the last step at least, with the stage's key metric."""
    import re

    params = _small_params(tmp_path)
    assert runner.invoke(app, ["data", "build", "--params", str(params)]).exit_code == 0
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    judge = ["--set", "judge.width=32", "--set", "judge.layers=1", "--set", "judge.heads=2", "--set", "judge.steps=3",
             "--set", "judge.pairs_per_step=4", "--set", "judge.warmup_steps=1", "--set", "judge.threads=1",
             "--set", "judge.min_accuracy=0"]
    train = [f"--set=train.{s}" for s in ("judge.backend=exact", "judge.model=null", f"data={tmp_path / 'pairs'}", "steps=2",
                                    "group_size=3", "items_per_micro_batch=1", "threads=1", "lr.warmup=1",
                                    "curriculum.s1=1", "curriculum.s2=2", "curriculum.s3=3")]
    train.append("--set=evaluate.paircomp.evaluator.backend=shapes")  # the checker rewards: it cannot also evaluate
    for name, command in (("judge", ["judge", "train", *judge]), ("train", ["train", *train])):
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.run([FOCUSDIFF, *command, "--params", str(params)], stdout=out, stderr=subprocess.STDOUT,
                                  cwd=tmp_path, env=env)
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        steps = 3 if name == "judge" else 2
        metric = "loss" if name == "judge" else "reward_mean"
        for done in (1, steps):
            assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {name}: {done}/{steps} steps \(\d+%\) \| [\d.]+ steps/s \| "
                             rf"(ETA|done in) \w+ \| {metric} ", text, re.MULTILINE), text[-3000:]
        assert "\x1b[" not in text  # no terminal bar's escape codes in a log
