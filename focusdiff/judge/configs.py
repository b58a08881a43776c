"""Config of the `judge` stage: the learned ShapesWorld reward judge (focusdiff/judge/
shapes_judge.py). Torch-free, so that loading params.yaml stays fast."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ShapesJudgeConfig(BaseModel):
    """A small yes/no VQA model for ShapesWorld: object regions encoded by a small CNN and
    their geometry, caption words embedded, both read by a transformer encoder; trained on
    pairs whose partner caption is the hard negative. Stands in for a real run's large VLM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the model
    width: int = Field(128, ge=16, multiple_of=8, description="transformer width")
    layers: int = Field(2, ge=1, description="transformer encoder layers over [CLS] + words + background + regions")
    heads: int = Field(4, ge=1)
    max_words: int = Field(32, ge=8, description="longest caption, in words (longer ones are a judge failure)")
    max_objects: int = Field(10, ge=1, description="largest regions read per image (more are dropped, smallest first)")
    crop: int = Field(16, ge=8, multiple_of=4, description="side of the square each region is resized to")
    fg_threshold: float = Field(48.0, gt=0, description="RGB distance from the background that counts as foreground")
    min_area: int = Field(3, ge=1, description="smaller foreground specks are noise, not regions")

    # training
    steps: int = Field(900, ge=1, description="optimizer steps")
    pairs_per_step: int = Field(32, ge=1, description="fresh train-distribution pairs per step (4 items each)")
    random_negatives: float = Field(
        0.25, ge=0, le=1, description="share of images also asked another pair's caption (labelled by the scene)")
    attribute_weight: float = Field(
        0.5, ge=0, description="weight of the auxiliary loss naming each region's shape, color, size, glyph")
    grounding_weight: float = Field(
        0.5, ge=0, description="weight of the auxiliary losses binding each region to the caption's groups "
                    "and the background token to the caption's background clause")
    augment: float = Field(0.5, ge=0, le=1, description="share of images given a VQ-like perturbation")
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(60, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    log_every: int = Field(50, ge=1)

    # the gate
    min_accuracy: float = Field(
        0.95, ge=0, le=1, description="agreement with the exact checker on the dataset's test pairs")
    out: Path = Field(Path("models/shapes-judge"), description="the trained judge (config, vocabulary, weights)")
    metrics: Path = Field(Path("metrics/judge.json"), description="DVC metrics file of the test calibration")
