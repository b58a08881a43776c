"""Evaluation configuration (the `evaluate:` block of params.yaml). Torch-free.

Each benchmark names its suite (`shapes`: ShapesWorld's suite in the official schema;
`official`: the published prompt files, downloaded at pinned commits) and its scorer.
The PairComp evaluator is configured here, apart from the training run's reward judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from focusdiff.judge.spec import JudgeSpec
from focusdiff.model.sampling import SamplingConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairCompConfig(_Section):
    suite: Literal["shapes", "official"] = "shapes"
    split: Literal["val", "test"] = Field("test", description="shapes suite: which held-out pairs")
    evaluator: JudgeSpec = Field(JudgeSpec(backend="exact", answer_tokens="official"),
                                 description="the judge whose s_g gates promotion")

    @model_validator(mode="after")
    def _official_answer_tokens(self) -> "PairCompConfig":
        """The evaluator counts only the official yes/no vocabulary entries unless told otherwise
        (a reward judge's `answer_tokens` default is `variants`)."""
        if "answer_tokens" not in self.evaluator.model_fields_set:
            object.__setattr__(self, "evaluator", self.evaluator.model_copy(update={"answer_tokens": "official"}))
        return self


class GenEvalConfig(_Section):
    suite: Literal["shapes", "official"] = "shapes"
    prompts_per_task: int = Field(12, ge=1, description="shapes suite: prompts per GenEval task")
    detector: Literal["shapes", "mask2former"] = Field("shapes", description="shapes: the exact checker's parse")
    detector_model: str = "facebook/mask2former-swin-small-coco-instance"
    color_model: str = "openai/clip-vit-large-patch14"


OFFICIAL_VQA_IMAGE_SIZE = 480  # T2I-CompBench runs BLIP-VQA at 480 px (its vqa.yaml)


class T2ICompBenchConfig(_Section):
    suite: Literal["shapes", "official"] = "shapes"
    prompts_per_category: int = Field(10, ge=2, description="shapes suite: prompts per category")
    images_per_prompt: int = Field(10, ge=1, description="images drawn per prompt; the official protocol draws 10 "
                                   "(fewer is a recorded deviation, for quick checks)")
    categories: tuple[str, ...] = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
    scorers: Literal["shapes", "transformers"] = Field("shapes", description="shapes: exact checker + grammar")
    vqa_model: str = "Salesforce/blip-vqa-capfilt-large"
    vqa_image_size: int = Field(OFFICIAL_VQA_IMAGE_SIZE, ge=16, description="BLIP-VQA's input side in pixels; the official runs 480 "
                                "(its vqa.yaml), position embeddings interpolated from the checkpoint's 384")
    detector_model: str = Field("google/owlv2-base-patch16-ensemble", description="stands in for UniDet (not in transformers)")
    clip_model: str = "openai/clip-vit-base-patch32"
    spacy_model: str = "en_core_web_sm"


class DPGBenchConfig(_Section):
    suite: Literal["shapes", "official"] = "shapes"
    prompts: int = Field(24, ge=1, description="shapes suite: dense prompts (8 questions each)")
    answerer: Literal["shapes", "judge"] = Field("shapes", description="shapes: the exact checker reads each question's tuple")
    judge: JudgeSpec | None = Field(None, description="answerer=judge: a VLM (hf or openai) asked each question verbatim")


class EvalConfig(_Section):
    policy: str = Field("models/grpo", description="the policy to evaluate: a directory, a hub id or shapes-base")
    data: Path = Field(Path("data/pairs"), description="dataset the ShapesWorld suites are drawn from")
    out: Path = Field(Path("outputs/eval"), description="images and per-image scores, one folder per benchmark")
    metrics_dir: Path = Field(Path("metrics/eval"), description="<benchmark>.json headline numbers (DVC metrics)")
    benchmark_dir: Path | None = Field(None, description="offline copies of the official prompt files")
    seed: int = Field(0, ge=0, description="image k of a benchmark is drawn with seed + k")
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = Field(64, ge=1, description="images per sampler call (the images do not depend on it; 64 is fastest on 2 CPU cores)")
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% intervals (0: none)")
    report_pairs: int = Field(12, ge=0, description="worst pairs shown in the HTML report")
    paircomp: PairCompConfig = PairCompConfig()
    geneval: GenEvalConfig = GenEvalConfig()
    t2i_compbench: T2ICompBenchConfig = T2ICompBenchConfig()
    dpg_bench: DPGBenchConfig = DPGBenchConfig()
