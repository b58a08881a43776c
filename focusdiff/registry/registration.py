"""A registered model version, as one typed record from the train stage to the evaluations.

The train stage registers the policy it trained and writes `<train.metrics_dir>/registration.json`
(`Registration.save`, or `Registration.save_unregistered` when registration is off: the file
is a DVC output either way, and a stale one would attach evaluations to another version).
`focusdiff evaluate`, the DVC evaluate stages and the Prefect flows read it back
(`Registration.load`, `Registration.for_policy`) and pass the record to `record_evaluation`.
Pydantic only, so reading it loads neither MLflow nor torch.

The file keeps the shape it always had: model_name, version, run_id, model_uri (derived,
checked on reading) and policy (the trained directory); or {"registered": false}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from focusdiff.io import atomic_write_json
from focusdiff.records import RecordError, validation_error

REGISTRATION_FILE = "registration.json"  # written in train.metrics_dir


class Registration(BaseModel):
    """Version `version` of registered model `model_name`, logged under MLflow run `run_id`;
    `policy` is the local checkpoint directory it was made from, when this machine has one
    (a version found on the registry by its flow-run tag has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(min_length=1)
    version: str = Field(pattern=r"^[0-9]+$", description="the registry's version number, as a string")
    run_id: str = Field(min_length=1)
    policy: str | None = None

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    def as_json(self) -> dict[str, Any]:
        data = {"model_name": self.model_name, "version": self.version, "run_id": self.run_id, "model_uri": self.model_uri}
        return data if self.policy is None else {**data, "policy": self.policy}

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "registration") -> Registration:
        """The record `as_json` wrote; a RecordError naming `source` and the field otherwise."""
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, got {type(data).__name__}", file=source)
        fields = dict(data)
        model_uri = fields.pop("model_uri", None)
        try:
            registration = cls.model_validate(fields, strict=True)
        except ValidationError as exc:
            raise validation_error(exc, source) from None
        if model_uri is not None and model_uri != registration.model_uri:
            raise RecordError(f"{model_uri!r} does not name version {registration.version} of "
                              f"{registration.model_name!r} ({registration.model_uri!r})", file=source, field="model_uri")
        return registration

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.as_json())

    @staticmethod
    def save_unregistered(path: Path) -> None:
        """The file a training run without registration writes: it names no version."""
        atomic_write_json(path, {"registered": False})

    @classmethod
    def load(cls, path: Path) -> Registration | None:
        """The registration `path` holds, or None when it says nothing was registered. A missing,
        unreadable or malformed file is a RecordError naming it (and the field)."""
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError:
            raise RecordError("no such file: the train stage writes it (focusdiff train)", file=path) from None
        except json.JSONDecodeError as exc:
            raise RecordError(f"not JSON: {exc}", file=path) from None
        if data == {"registered": False}:
            return None
        return cls.from_json(data, path)

    @classmethod
    def for_policy(cls, path: Path, policy: str) -> Registration | None:
        """The registered version that `policy` (a directory) is, per the train stage's file at
        `path`; None when there is no such file (the policy was not trained here), when nothing
        was registered, or when the file names another directory."""
        if not Path(path).is_file():
            return None
        registration = cls.load(path)
        if registration is None or registration.policy is None:
            return None
        return registration if Path(registration.policy).resolve() == Path(policy).resolve() else None
