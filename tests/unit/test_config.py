"""params.yaml validation: every bad key, type or range is named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from focusdiff.config import load_params
from focusdiff.errors import ConfigError

from tests.project import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"


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


def test_set_takes_full_dotted_keys_and_names_the_short_form():
    from focusdiff.config import parse_overrides

    assert parse_overrides(["train.beta=0.05", "evaluate.policy=shapes-base", "train.judge.model=null"]) == {
        "train.beta": 0.05, "evaluate.policy": "shapes-base", "train.judge.model": None}
    with pytest.raises(ConfigError) as err:
        parse_overrides(["margin=2"], example_block="promote")
    assert str(err.value) == ("-S 'margin=2': 'margin' is not a block of the parameter file (tracking, data, "
                              "bootstrap, judge, train, evaluate, promote, cluster); -S takes full dotted keys as "
                              "`dvc exp run -S` does, e.g. -S promote.margin=2")
    with pytest.raises(ConfigError, match=r"^-S 'train.beta': expected dotted.key=value$"):
        parse_overrides(["train.beta"])


def test_recipe_overrides_are_train_keys():
    from focusdiff.config import within

    assert within("train", {"train.beta": 0.1, "train.lr.peak": 1e-5}, "the recipe r.yaml") == {"beta": 0.1, "lr.peak": 1e-5}
    with pytest.raises(ConfigError) as err:
        within("train", {"evaluate.seed": 3}, "the recipe r.yaml")
    assert str(err.value) == "-S evaluate.seed: the recipe r.yaml holds the train block only; give train.* keys"


def test_typed_updates_are_validated():
    from focusdiff.config import updated

    params = load_params(PARAMS)
    changed = updated(params, evaluate=updated(params.evaluate, policy="shapes-base"))
    assert changed.evaluate.policy == "shapes-base" and params.evaluate.policy != "shapes-base"
    assert changed.train == params.train
    with pytest.raises(ConfigError) as err:
        updated(params.cluster.pytorchjob, nodes=0)
    assert str(err.value) == "command line: nodes: Input should be greater than or equal to 1 (got 0)"


def test_the_paircomp_evaluator_cannot_be_a_reward_judge(tmp_path):
    params = REPO_ROOT / "params.yaml"
    with pytest.raises(ConfigError, match=r"params.yaml: <root>: train.judge is evaluate.paircomp.evaluator \(exact\): "
                                          r"the held-out evaluator must be another judge than every reward judge$"):
        load_params(params, overrides={"train.judge.backend": "exact", "train.judge.model": None})
    raw = yaml.safe_load(params.read_text())
    del raw["train"]["judge"]
    raw["train"]["judges"] = [{"name": "learned", "backend": "shapes"}, {"name": "checker", "backend": "exact"}]
    mixture = tmp_path / "params.yaml"
    mixture.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train.judges \(checker\) is evaluate.paircomp.evaluator \(exact\)"):
        load_params(mixture)
    raw["train"]["judges"][1] = {"name": "vlm", "backend": "hf", "model": "some/vlm"}
    mixture.write_text(yaml.safe_dump(raw))
    assert [j.name for j in load_params(mixture).train.reward_judges] == ["learned", "vlm"]
