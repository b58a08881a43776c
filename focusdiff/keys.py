"""Configuration keys that survive added fields.

Runs are checkpointed and ablation cells recorded under a hash of their configuration. A field
added later would change every hash, so old checkpoints would no longer resume and committed
records would no longer name their configuration. Each section therefore lists the fields it
gained with the value that keeps the behaviour from before them; at that value a field is left
out of the key, any other value is another configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def without_neutral_additions(dump: dict[str, Any], neutral: Mapping[str, Any]) -> dict[str, Any]:
    """`dump` (a configuration's JSON dump) less the fields of `neutral` (dotted path -> the value
    that keeps the earlier behaviour) that hold that value. The caller's dump is not changed."""
    out = dict(dump)
    for path, value in neutral.items():
        *sections, name = path.split(".")
        parent = out
        for section in sections:
            if not isinstance(parent.get(section), dict):
                break
            parent[section] = parent = dict(parent[section])
        else:
            if name in parent and parent[name] == value:
                del parent[name]
    return out
