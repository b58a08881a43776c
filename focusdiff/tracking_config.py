"""Where MLflow records runs: the `tracking:` block of params.yaml.

A module of its own, owned by tracking.py, so that the tracking code depends on this one
class and not on the whole-project config (which loads every stage's section, the
Kubernetes job's included); config.py takes it from here for `Params`. Pydantic only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrackingConfig(BaseModel):
    """Where MLflow records runs. MLFLOW_TRACKING_URI in the environment wins over `uri`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field("sqlite:///mlflow.db", description="tracking URI: sqlite file (default) or http(s) server")
    artifact_location: str = Field(
        "mlartifacts", description="artifact root for new experiments on a local backend (dir or s3://)"
    )
    experiment: str = Field("focusdiff", min_length=1)
