"""Under which protocol a version's PairComp scores were measured: the evaluator, the suite,
how the images were drawn and from which seed.

The promotion gate compares two versions only when they were measured the same way (scores
at CFG 2 and CFG 5, or from two judges, are not comparable). The evaluate stage records the
protocol on the version as the tag `eval.paircomp.evaluator`; the gate reads that tag back.
The tag string is the record's stable form (`as_tag` / `from_tag`), byte for byte the one
earlier versions of focusdiff wrote, because the registry already holds such tags:

    exact:|suite=shapes:test|sampling=cfg_weight=5.0,temperature=1.0,top_k=0,top_p=1.0|seed=0

A judge read off answer-token probabilities (hf, openai) adds which tokens counted as yes/no,
`|answers=official` or `|answers=variants`; a tag without it is one written before that choice
existed (variants were summed) and is not comparable with either.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from focusdiff.model.sampling import SamplingConfig
from focusdiff.records import RecordError, validation_error

TAG = "eval.paircomp.evaluator"  # the model-version tag that holds it


class EvaluationProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(min_length=1, pattern=r"^[^|:]+$", description="the evaluator judge's backend")
    model: str = Field("", pattern=r"^[^|]*$", description="the evaluator's model ('' for the exact checker)")
    suite: str = Field(min_length=1, pattern=r"^[^|:]+$", description="shapes or official")
    split: str = Field(min_length=1, pattern=r"^[^|]+$", description="which held-out pairs (shapes suite)")
    sampling: SamplingConfig
    seed: int = Field(ge=0, description="image k is drawn with seed + k")
    answers: Literal["", "official", "variants"] = Field(
        "", description="which answer tokens counted as yes/no ('' for judges that give a probability)")

    def as_tag(self) -> str:
        sampling = ",".join(f"{k}={v}" for k, v in self.sampling.model_dump().items())
        tag = f"{self.backend}:{self.model}|suite={self.suite}:{self.split}|sampling={sampling}|seed={self.seed}"
        return f"{tag}|answers={self.answers}" if self.answers else tag

    @classmethod
    def from_tag(cls, tag: str) -> EvaluationProtocol:
        """The protocol `as_tag` wrote; a RecordError naming the field that does not parse."""
        parts = tag.split("|")
        if len(parts) not in (4, 5):
            raise RecordError(f"{tag!r} has {len(parts)} '|'-separated parts, not 4 or 5 "
                              "(evaluator|suite=...|sampling=...|seed=...[|answers=...])", file=TAG)
        evaluator, suite, sampling, seed = parts[:4]
        answers = _value(parts[4], "answers", tag) if len(parts) == 5 else ""
        backend, colon, model = evaluator.partition(":")
        if not colon:
            raise RecordError(f"{evaluator!r} is not backend:model (in {tag!r})", file=TAG, field="evaluator")
        suite_name, colon, split = _value(suite, "suite", tag).partition(":")
        if not colon:
            raise RecordError(f"{suite!r} is not suite=<suite>:<split> (in {tag!r})", file=TAG, field="suite")
        settings: dict[str, Any] = {}
        for setting in _value(sampling, "sampling", tag).split(","):
            key, eq, value = setting.partition("=")
            if not eq or key in settings:
                raise RecordError(f"{setting!r} is not one key=value setting (in {tag!r})", file=TAG, field="sampling")
            settings[key] = value
        if list(settings) != list(SamplingConfig.model_fields):
            raise RecordError(f"settings {', '.join(settings)} are not {', '.join(SamplingConfig.model_fields)} "
                              f"(in {tag!r})", file=TAG, field="sampling")
        try:
            protocol = cls(backend=backend, model=model, suite=suite_name, split=split, sampling=settings,
                           seed=_value(seed, "seed", tag), answers=answers)
        except ValidationError as exc:
            raise validation_error(exc, TAG, f" (in {tag!r})") from None
        # The gate compares tags: two tags of one protocol must be one string (not `5` and `5.0`).
        if protocol.as_tag() != tag:
            raise RecordError(f"{tag!r} is not written as this protocol writes it ({protocol.as_tag()!r})", file=TAG)
        return protocol

    def differences(self, other: EvaluationProtocol) -> list[str]:
        """The fields in which `other` differs from this one, as `field: this vs other`."""
        ours, theirs = self.model_dump(), other.model_dump()
        flat = lambda d: {**{k: v for k, v in d.items() if k != "sampling"},  # noqa: E731
                          **{f"sampling.{k}": v for k, v in d["sampling"].items()}}
        ours, theirs = flat(ours), flat(theirs)
        return [f"{k}: {ours[k]!r} vs {theirs[k]!r}" for k in ours if ours[k] != theirs[k]]


def _value(part: str, name: str, tag: str) -> str:
    key, eq, value = part.partition("=")
    if key != name or not eq:
        raise RecordError(f"{part!r} is not {name}=... (in {tag!r})", file=TAG, field=name)
    return value
