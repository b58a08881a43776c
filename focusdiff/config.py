"""Typed configuration: `params.yaml` -> validated config objects, before any work.

Every stage has one section; a wrong key, type or range is a ConfigError naming
the file and the dotted key. `dvc.yaml` declares which sections each stage
depends on, so `dvc exp run -S data.shapes.seed=3` re-runs exactly what changed.

Loading is strict, so that nothing is silently lost or made up:

* a key given twice in one mapping is an error (YAML would keep the last);
* values are validated as the JSON data they are, in pydantic's strict mode: `true` or
  `"4"` is not an integer, `1` is not a boolean; paths are strings and tuples lists, and
  an integer is a valid float;
* numbers must be finite (`.inf` and `.nan` are refused wherever they appear);
* every stage's block must be present: a deleted `train:` block is an error, not the
  reference run's constants;
* `1e-5` is a number, as in YAML 1.2 and JSON (PyYAML alone reads it as a string).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from focusdiff.errors import ConfigError
from focusdiff.eval.configs import EvalConfig
from focusdiff.judge.configs import ShapesJudgeConfig
from focusdiff.model.configs import LMTrainConfig, VQTrainConfig
from focusdiff.registry.gate import GateConfig
from focusdiff.shapes.world import COLORS, SHAPES
from focusdiff.tracking_config import TrackingConfig
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.pytorchjob import ClusterConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitCounts(Section):
    train: int = Field(ge=0, description="items in the train split")
    val: int = Field(ge=0, description="items in the validation split")
    test: int = Field(ge=0, description="items in the test split")


class ShapesDataConfig(Section):
    """How the embedded ShapesWorld dataset is built."""

    canvas: int = Field(32, ge=32, le=512, description="image side in pixels")
    seed: int = Field(0, ge=0, description="master seed; each split derives its own")
    pairs_per_category: SplitCounts = Field(description="pairs per PairComp category, per split")
    prompts: SplitCounts = Field(description="unpaired prompts per split")
    holdout: list[tuple[str, str]] = Field(
        default_factory=list, description="(color, shape) combinations kept out of the train split"
    )

    @field_validator("holdout")
    @classmethod
    def _known(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for color, shape in v:
            if color not in COLORS:
                raise ValueError(f"unknown color {color!r} (one of {', '.join(COLORS)})")
            if shape not in SHAPES:
                raise ValueError(f"unknown shape {shape!r} (one of {', '.join(SHAPES)})")
        return v


class ImportConfig(Section):
    """User data in the FocusDiff-Data format (JSON list, JSONL or parquet)."""

    pairs_file: Path
    unpaired_file: Path | None = None
    format: Literal["auto", "json", "jsonl", "parquet"] = "auto"
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    drop_duplicates: bool = False


class DataConfig(Section):
    source: Literal["shapes", "import"] = Field("shapes", description="build ShapesWorld or import user data")
    out: Path = Field(Path("data/pairs"), description="dataset directory (a DVC-tracked output)")
    max_image_pixels: int = Field(64_000_000, gt=0, description="larger images are rejected (decompression bombs)")
    shapes: ShapesDataConfig
    import_: ImportConfig | None = Field(None, alias="import")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BootstrapConfig(Section):
    """The ShapesWorld base model: VQ tokenizer, then SFT of the language model."""

    vq: VQTrainConfig
    lm: LMTrainConfig


class Params(Section):
    """The whole parameter file. Every block is required: a missing one is a mistake, and
    its defaults (the reference run's constants for `train`) would be a silent substitute."""

    tracking: TrackingConfig
    data: DataConfig
    bootstrap: BootstrapConfig
    judge: ShapesJudgeConfig
    train: GRPOConfig
    evaluate: EvalConfig
    promote: GateConfig
    cluster: ClusterConfig


def _format_error(exc: ValidationError, file: Path) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "<root>"
        key = key.replace("import_", "import")
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{file}: {key}: {msg}{got}")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate the parameter file. `overrides` maps dotted keys to values."""
    path = Path(path)
    raw = read_yaml_mapping(path, "parameter file")
    apply_overrides(raw, overrides, path)
    return _validate(Params, raw, path)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None):
    """A training recipe (recipes/*.yaml): the fields of a `train:` block, validated."""
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe")
    apply_overrides(raw, overrides, path)
    return _validate(GRPOConfig, raw, path)


def _validate(model: type[BaseModel], raw: dict[str, Any], path: Path):
    """Validate parsed YAML strictly: as JSON, in pydantic's strict mode (see the module
    docstring). JSON mode is what lets a string be a path and a list a tuple, while strict
    mode refuses the lax coercions (`true` -> 1, `"4"` -> 4)."""
    _check_plain_data(raw, (), path)
    try:
        return model.model_validate_json(json.dumps(raw, allow_nan=False), strict=True)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, path)) from None


def _check_plain_data(value: Any, keys: tuple[str, ...], path: Path) -> None:
    """Refuse what JSON cannot hold, naming the dotted key: non-finite numbers, dates and
    other YAML-only types, and non-string mapping keys."""
    where = ".".join(keys) or "<root>"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}: {where}: key {key!r} is not a string (quote it)")
            _check_plain_data(item, (*keys, key), path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain_data(item, (*keys, str(i)), path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {where}: Input should be a finite number (got {value!r})")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise ConfigError(f"{path}: {where}: {type(value).__name__} values are not accepted (got {value!r}; quote it "
                          "if it is meant as text)")


# --------------------------------------------------------------- reading YAML strictly


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-5` as a float as YAML 1.2 and JSON do."""


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, path: Path | str = "<string>") -> Any:
    """Parse one YAML document; a key repeated in a mapping is a ConfigError naming the
    file, its line and the dotted key (plain YAML keeps the last value without a word)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _reject_duplicate_keys(node, (), path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(node: yaml.Node, keys: tuple[str, ...], path: Path | str) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key in first_line:
                    raise ConfigError(f"{path}:{line}: {'.'.join((*keys, key))}: duplicate key "
                                      f"(first given at line {first_line[key]}; YAML would keep the last)")
                first_line[key] = line
            _reject_duplicate_keys(value_node, (*keys, key), path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, (*keys, str(i)), path)


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    try:
        raw = parse_yaml(path.read_text("utf-8"), path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None, path: Path) -> None:
    """Set dotted keys (`train.beta`) in a parsed YAML mapping, in place."""
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: cannot override {key}: {p} is not a section")
        node[leaf] = value
