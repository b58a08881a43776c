"""Typed configuration: `params.yaml` -> validated config objects, before any work.

Every stage has one section; a wrong key, type or range is a ConfigError naming
the file and the dotted key. `dvc.yaml` declares which sections each stage
depends on, so `dvc exp run -S data.shapes.seed=3` re-runs exactly what changed.
"""

from __future__ import annotations

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


class TrackingConfig(Section):
    """Where MLflow records runs. MLFLOW_TRACKING_URI in the environment wins over `uri`."""

    uri: str = Field("sqlite:///mlflow.db", description="tracking URI: sqlite file (default) or http(s) server")
    artifact_location: str = Field(
        "mlartifacts", description="artifact root for new experiments on a local backend (dir or s3://)"
    )
    experiment: str = Field("focusdiff", min_length=1)


class BootstrapConfig(Section):
    """The ShapesWorld base model: VQ tokenizer, then SFT of the language model."""

    vq: VQTrainConfig
    lm: LMTrainConfig


class Params(Section):
    tracking: TrackingConfig = TrackingConfig()
    data: DataConfig
    bootstrap: BootstrapConfig
    judge: ShapesJudgeConfig = ShapesJudgeConfig()
    train: GRPOConfig = GRPOConfig()
    evaluate: EvalConfig = EvalConfig()
    promote: GateConfig = GateConfig()
    cluster: ClusterConfig = ClusterConfig()


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
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, path)) from None


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
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


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None):
    """A training recipe (recipes/*.yaml): the fields of a `train:` block, validated."""
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe")
    apply_overrides(raw, overrides, path)
    try:
        return GRPOConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, path)) from None
