"""What a flow run publishes as its result: Prefect artifacts a person reads in the UI's Artifacts tab.

Each flow run ends with a markdown artifact (the headline metrics with their 95% intervals, the
gate's decision and reasons, links to the MLflow run and the model version) and a table artifact
of the same metrics. Numbers are rounded for reading (3 significant digits, intervals as
[lo, hi]); the exact values stay in MLflow and the DVC metrics files. URLs are shown with
their credentials masked; a tracking store with no web UI (sqlite, a file store) gets the run
id and the `mlflow ui` command that serves it instead of a link.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from focusdiff.progress import significant
from focusdiff.redact import redact_urls


def interval_text(interval: Sequence[float] | None) -> str:
    return "" if not interval else f"[{significant(interval[0])}, {significant(interval[1])}]"


def metrics_rows(metrics: Mapping[str, float], intervals: Mapping[str, Sequence[float]]) -> list[dict[str, str]]:
    """One row per metric: name, rounded value, rounded 95% interval (empty when none)."""
    return [{"metric": k, "value": significant(v), "95% interval": interval_text(intervals.get(k))}
            for k, v in metrics.items()]


def rounded_summary(metrics: Mapping[str, float], intervals: Mapping[str, Sequence[float]]) -> str:
    """`name value [lo, hi], ...` for a log line."""
    return ", ".join(f"{r['metric']} {r['value']}" + (f" {r['95% interval']}" if r["95% interval"] else "")
                     for r in metrics_rows(metrics, intervals))


def _web_ui(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def run_link(tracking_uri: str, experiment_id: str, run_id: str, label: str) -> str:
    """A markdown line pointing at an MLflow run."""
    if _web_ui(tracking_uri):
        url = redact_urls(f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")
        return f"- {label}: [{run_id}]({url})"
    return f"- {label}: run `{run_id}` (see it with `mlflow ui --backend-store-uri {redact_urls(tracking_uri)}`)"


def version_link(tracking_uri: str, model_name: str, version: str) -> str:
    """A markdown line pointing at a registered model version."""
    if _web_ui(tracking_uri):
        url = redact_urls(f"{tracking_uri.rstrip('/')}/#/models/{model_name}/versions/{version}")
        return f"- model version: [{model_name} v{version}]({url})"
    return (f"- model version: {model_name} v{version} (`models:/{model_name}/{version}`; see it with "
            f"`mlflow ui --backend-store-uri {redact_urls(tracking_uri)}`)")


def result_markdown(title: str, metrics: Mapping[str, float], intervals: Mapping[str, Sequence[float]],
                    decision: Mapping[str, Any] | None = None, links: Sequence[str] = (),
                    facts: Mapping[str, Any] | None = None, failed: Mapping[str, str] | None = None) -> str:
    """The run's result as one markdown page: facts, metrics table, gate, failures, links."""
    lines = [f"# {title}", ""]
    for key, value in (facts or {}).items():
        lines.append(f"- **{key}**: {significant(value) if isinstance(value, float) else value}")
    if facts:
        lines.append("")
    if metrics:
        lines += ["| metric | value | 95% interval |", "|---|---:|---:|"]
        lines += [f"| {r['metric']} | {r['value']} | {r['95% interval']} |" for r in metrics_rows(metrics, intervals)]
        lines.append("")
    if decision is not None:
        lines.append(f"## Gate: {'promoted' if decision['promote'] else 'not promoted'}")
        lines += [f"- {reason}" for reason in decision.get("reasons", [])]
        lines.append("")
    if failed:
        lines.append("## Failed")
        lines += [f"- {name}: {redact_urls(reason)}" for name, reason in failed.items()]
        lines.append("")
    if links:
        lines += ["## Links", *links, ""]
    return "\n".join(lines)


def publish(key: str, markdown: str, metrics: Mapping[str, float], intervals: Mapping[str, Sequence[float]],
            description: str) -> None:
    """The markdown page under `key` and the metrics table under `<key>-metrics` (lowercase
    letters, digits and dashes: keyed artifacts also show on the UI's Artifacts page)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown, key=key, description=description)
    if metrics:
        create_table_artifact(metrics_rows(metrics, intervals), key=f"{key}-metrics", description=description)
