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

ROOT = Path(__file__).resolve().parents[1]
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


def test_data_import_error_names_file_row_field(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt1": "a red cube", "prompt2": "a blue cube"}, {"prompt1": "a cat"}]))
    out = tmp_path / "out"
    proc = subprocess.run([FOCUSDIFF, "data", "import", str(pairs), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {pairs}, row 2, field 'prompt2'" in proc.stderr
    assert not out.exists()
