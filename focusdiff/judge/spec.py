"""Which judge to use, as configuration: the reward judge of a training run and the evaluator
of a benchmark are both a `JudgeSpec` (and are configured separately). Torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JudgeSpec(BaseModel):
    """Which judge gives rewards (or scores an evaluation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["exact", "shapes", "hf", "openai"] = Field(
        "shapes", description="exact checker | learned ShapesWorld judge | in-process VLM | OpenAI-compatible server")
    model: str | None = Field(None, description="checkpoint dir or hub id (hf); the judge stage's output (shapes, default models/shapes-judge); served model name (openai)")
    base_url: str | None = Field(None, description="openai backend: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (never the key)")
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0, description="openai backend: retries per item on timeouts, 429 and 5xx")
    answer_tokens: Literal["variants", "official"] = Field(
        "variants", description="hf and openai backends: which first-token entries count as yes/no; official: only "
                                "yes/Yes/YES and no/No/NO (PairComp's script, the default of its evaluator); variants: "
                                "every word-piece form too (' yes', '▁Yes')")

    @model_validator(mode="after")
    def _needs(self) -> "JudgeSpec":
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai judge backend needs base_url and model")
        if self.backend == "hf" and not self.model:
            raise ValueError("the hf judge backend needs model (a checkpoint directory or hub id)")
        return self


class WeightedJudgeSpec(JudgeSpec):
    """One of several reward judges (`train.judges`): its rewards are normalised over each group
    on their own, then summed with `weight` and the sums normalised over the step (GDPO; T2I-R1's
    and Flow-GRPO's reward mixtures), so that no judge dominates by its scale and no single judge
    can be gamed alone; only the weights' ratios count."""

    name: str = Field(min_length=1, description="names the judge in metrics (train/reward_mean.judge.<name>)")
    weight: float = Field(1.0, gt=0, description="its share of the advantage")
