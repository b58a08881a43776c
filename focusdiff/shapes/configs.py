"""How the embedded ShapesWorld dataset is built: the `data.shapes` block of params.yaml.

Owned by the shapes package so that `build_shapes_dataset` needs nothing above it;
`focusdiff.config` composes it into the whole parameter file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from focusdiff.shapes.world import COLORS, SHAPES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitCounts(_Section):
    train: int = Field(ge=0, description="items in the train split")
    val: int = Field(ge=0, description="items in the validation split")
    test: int = Field(ge=0, description="items in the test split")


class ShapesDataConfig(_Section):
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
