"""How image tokens are drawn: the one sampling configuration of the project.

The sampler (sampler.py) draws with it, the trainer's rollouts take it from `train.sampling`
and the evaluation from `evaluate.sampling`, the same class in each place, so a setting
never has to be translated between layers. Torch-free (pydantic only), so that loading
params.yaml stays fast.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingConfig(BaseModel):
    """CFG weight, temperature, truncation (Janus-Pro / FocusDiff defaults: w=5, T=1, no truncation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cfg_weight: float = Field(5.0, ge=1, description="l = l_uncond + w * (l_cond - l_uncond)")
    temperature: float = Field(1.0, description="> 0")
    # transformers' generate defaults to top_k=50 unless told otherwise; the sampler does not truncate by default
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0, le=1, description="1: off")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float) -> float:
        # a validator rather than gt=0, for a message that says which setting and why
        if not value > 0:
            raise ValueError(f"temperature must be > 0 (logits are divided by it), got {value}")
        return value
