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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from focusdiff.data.configs import ImportConfig
from focusdiff.errors import ConfigError
from focusdiff.eval.configs import EvalConfig
from focusdiff.judge.configs import ShapesJudgeConfig
from focusdiff.model.configs import LMTrainConfig, VQTrainConfig
from focusdiff.registry.gate import GateConfig
from focusdiff.shapes.configs import ShapesDataConfig
from focusdiff.tracking_config import TrackingConfig
from focusdiff.train.configs import GRPOConfig
from focusdiff.train.pytorchjob import ClusterConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    vq_local: VQTrainConfig  # the locality fine-tune of `vq` (init: vq.out)
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

    @model_validator(mode="after")
    def _evaluator_held_out(self) -> "Params":
        """PairComp's evaluator (and so the promotion gate) must not be one of the judges the
        policy was trained to please: a policy that games its reward judge would then also
        game its measurement."""
        evaluator = self.evaluate.paircomp.evaluator
        for spec in self.train.reward_judges:
            if (spec.backend, spec.model) == (evaluator.backend, evaluator.model):
                field = "train.judge" if self.train.judges is None else f"train.judges ({spec.name})"
                raise ValueError(f"{field} is evaluate.paircomp.evaluator ({evaluator.backend}"
                                 f"{', ' + evaluator.model if evaluator.model else ''}): the held-out evaluator must "
                                 "be another judge than every reward judge")
        return self


def _format_error(exc: ValidationError, file: Path) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "<root>"
        key = key.replace("import_", "import")
        msg = err["msg"].removeprefix("Value error, ")
        # a check of the whole file (no loc) names its fields itself; its input is the whole file
        got = "" if err["type"] == "missing" or not err["loc"] else f" (got {err['input']!r})"
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


def parse_overrides(items: list[str] | None, example_block: str = "train") -> dict[str, Any]:
    """`-S key=value` items -> {dotted key: value}, each value parsed as YAML as strictly as the
    file. Keys are full dotted keys of the parameter file (`train.beta`), as `dvc exp run -S`
    takes them; the old section-relative form (`beta`) is an error that shows the full key."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"-S {item!r}: expected dotted.key=value")
        block = key.split(".")[0]
        if block not in Params.model_fields:
            raise ConfigError(f"-S {item!r}: {block!r} is not a block of the parameter file "
                              f"({', '.join(Params.model_fields)}); -S takes full dotted keys as `dvc exp run -S` "
                              f"does, e.g. -S {example_block}.{key}={value}")
        parsed[key] = parse_yaml(value, f"-S {item!r}")
    return parsed


def within(block: str, overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """The overrides of one block, relative to it (for a file that holds only that block, such
    as a recipe); a key of another block is an error naming `source`."""
    inside = {}
    for key, value in overrides.items():
        first, _, rest = key.partition(".")
        if first != block or not rest:
            raise ConfigError(f"-S {key}: {source} holds the {block} block only; give {block}.* keys")
        inside[rest] = value
    return inside


def updated(section: BaseModel, **changes: Any) -> BaseModel:
    """A copy of a config section with typed changes (a CLI option's value), validated again;
    a bad value is a ConfigError naming the key."""
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, Path("command line"))) from None


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
