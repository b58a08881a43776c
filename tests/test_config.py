"""params.yaml validation: every bad key, type or range is named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from focusdiff.config import load_params
from focusdiff.errors import ConfigError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(PARAMS.read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_project_params_load():
    params = load_params(PARAMS)
    assert params.data.source == "shapes"
    assert params.data.shapes.canvas == 32
    assert params.data.shapes.pairs_per_category.test * 6 >= 120  # PairComp-shapes needs >= 120 test pairs


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["data"]["shapes"].update(canvas=16), r"data\.shapes\.canvas: Input should be greater than or equal to 32 \(got 16\)"),
        (lambda r: r["data"]["shapes"].update(cnavas=32), r"data\.shapes\.cnavas: unknown key"),
        (lambda r: r["data"]["shapes"].update(seed="zero"), r"data\.shapes\.seed: Input should be a valid integer"),
        (lambda r: r["data"].update(source="s3"), r"data\.source: Input should be 'shapes' or 'import'"),
        (lambda r: r["data"]["shapes"].update(holdout=[["teal", "circle"]]), r"data\.shapes\.holdout: unknown color 'teal'"),
        (lambda r: r["data"]["shapes"]["pairs_per_category"].pop("test"), r"data\.shapes\.pairs_per_category\.test: Field required"),
        (lambda r: r["data"].update({"import": {"pairs_file": "x.json", "val_fraction": 1.5}}), r"data\.import\.val_fraction: Input should be less than 1"),
        (lambda r: r["tracking"].update(experiment=""), r"tracking\.experiment: String should have at least 1 character"),
        (lambda r: r.update(trian={}), r"trian: unknown key"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match=r"scalar\.yaml: expected a mapping at the top level, got int"):
        load_params(scalar)


def test_overrides_use_dotted_keys():
    params = load_params(PARAMS, overrides={"data.shapes.seed": 7})
    assert params.data.shapes.seed == 7
    with pytest.raises(ConfigError, match=r"data\.shapes\.seed: Input should be greater than or equal to 0"):
        load_params(PARAMS, overrides={"data.shapes.seed": -1})
