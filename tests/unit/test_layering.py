"""The package's layers, read from its imports: each layer may import only what ALLOWED lists.

Layers point one way. At the bottom, small utilities (errors, io, redact, viz, progress);
then the domain packages (shapes, data, model, judge, train, eval, registry), each
knowing only its own typed config section; then `config` (the parameter file's hub,
composing those sections) and `stages` (the one place that wires config, tracking,
registry and domain code together); on top, the CLI and the Prefect flows, which only
call stages. Every import counts, also those inside functions (they are how a lazy
import hides a dependency, not how it removes one).

KNOWN_VIOLATIONS is the ratchet while issue 25 moves the remaining stage code into
focusdiff/stages/: the test fails on any import against ALLOWED that is not listed,
and on any listed one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.project import REPO_ROOT

ROOT = REPO_ROOT

UTILITIES = {"errors", "io", "redact", "viz", "progress", "records", "schedule", "keys"}
DOMAIN = {"shapes", "data", "model", "judge", "train", "eval", "registry"}

# layer -> the layers it may import (besides itself). One place; README's Layout shows it.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "io": {"errors"},
    "redact": set(),
    "viz": set(),
    "progress": {"errors"},
    "records": {"errors"},
    "schedule": set(),
    "keys": set(),
    "tracking_config": set(),  # where MLflow records: a section of its own, torch-free
    "tracking": UTILITIES | {"tracking_config"},
    "versioning": UTILITIES,
    "shapes": UTILITIES | {"data"},  # the world writes the canonical dataset format
    "data": UTILITIES,
    "model": UTILITIES | {"shapes"},  # the ShapesWorld base trains on scenes
    "judge": UTILITIES | {"shapes", "data"},
    "eval": UTILITIES | {"shapes", "data", "judge", "model"},
    "train": UTILITIES | {"shapes", "data", "judge", "model"},
    "registry": UTILITIES | {"tracking", "tracking_config", "model", "eval"},  # a registered version is a policy plus its evidence
    "config": UTILITIES | DOMAIN | {"tracking_config"},
    "stages": UTILITIES | DOMAIN | {"tracking", "tracking_config", "versioning", "config"},
    "cli": UTILITIES | {"stages", "config", "flows"},  # `focusdiff pipeline` runs the pipeline flow
    "flows": UTILITIES | {"stages", "config"},
}

KNOWN_VIOLATIONS: set[str] = set()  # empty: every import follows ALLOWED


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    """The layer of a project module: `flows`, or focusdiff's subpackage or top-level module."""
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if parts[0] != "focusdiff" or len(parts) == 1:
        return None  # focusdiff/__init__.py and third-party modules belong to no layer
    return parts[1]


def imports(path: Path) -> set[str]:
    """Every project module `path` imports, at any depth (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from focusdiff import tracking` names a module in the alias
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module in ("focusdiff", "flows"))
    return {name for name in found if layer(name) is not None}


def violations() -> set[str]:
    out = set()
    for path in sorted([*(ROOT / "focusdiff").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]):
        source = module_name(path)
        source_layer = layer(source)
        if source_layer is None:
            continue
        assert source_layer in ALLOWED, f"{path}: layer {source_layer!r} is missing from ALLOWED"
        for target in imports(path):
            target_layer = layer(target)
            if target_layer != source_layer and target_layer not in ALLOWED[source_layer]:
                out.add(f"{source} -> {target}")
    return out


def test_imports_follow_the_layers():
    found = violations()
    new, fixed = sorted(found - KNOWN_VIOLATIONS), sorted(KNOWN_VIOLATIONS - found)
    assert not new, "imports against the layers (see ALLOWED):\n" + "\n".join(new)
    assert not fixed, "no longer violated; remove from KNOWN_VIOLATIONS:\n" + "\n".join(fixed)


def test_the_rules_the_issue_names_are_in_allowed():
    """The rules themselves, so that loosening ALLOWED shows up as a failing test."""
    for domain in DOMAIN:
        assert not ALLOWED[domain] & {"config", "stages", "cli", "flows"}, domain
    assert "train" not in ALLOWED["eval"]
    assert "model" not in ALLOWED["judge"]
    assert ALLOWED["cli"] <= UTILITIES | {"stages", "config", "flows"}
    assert ALLOWED["flows"] <= UTILITIES | {"stages", "config"}


def test_a_violation_is_found(tmp_path, monkeypatch):
    """The reader sees imports inside functions and `from focusdiff import x` forms."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from focusdiff.config import Params\n    from focusdiff import stages\n")
    assert imports(source) == {"focusdiff.config", "focusdiff.stages"}
