"""The canonical paired dataset: what every later stage reads.

A dataset is a directory, written whole and atomically by `focusdiff data build`
(ShapesWorld) or `focusdiff data import` (user data in the FocusDiff-Data
format, JSONL or parquet):

    <dataset>/
      pairs.jsonl      one PairRecord per line (both prompts of a pair, both images)
      prompts.jsonl    one PromptRecord per line (unpaired prompts)
      images/          RGB PNG files referenced by relative path
      manifest.json    format tag, source, counts per split and category, import report

Every pair is kept (the reference loader silently used only the first half).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from focusdiff.errors import DataError

DATASET_FORMAT = "focusdiff-pairs/1"

# The six PairComp categories: slug -> the name used in PairComp.json.
CATEGORIES: dict[str, str] = {
    "overall_appearance": "Overall appearance difference",
    "color": "Color difference",
    "counting": "Counting difference",
    "position": "Position difference",
    "style_tone": "Style & Tone difference",
    "text": "Text difference",
}

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


def normalize_category(value: str) -> str:
    """Map a slug or a PairComp category name (any case) to its slug."""
    v = value.strip()
    low = v.lower()
    if low in CATEGORIES:
        return low
    for slug, name in CATEGORIES.items():
        if low in (name.lower(), name.lower().removesuffix(" difference")):
            return slug
    raise ValueError(
        f"unknown category {value!r}; expected one of {sorted(CATEGORIES)} "
        f"or a PairComp name such as {CATEGORIES['color']!r}"
    )


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v


class PairRecord(_Record):
    """Two prompts with one fine-grained difference, and their ground truths."""

    id: str = Field(min_length=1)
    split: Split = "train"
    category: str | None = None
    prompt1: str = Field(min_length=1)
    prompt2: str = Field(min_length=1)
    image1: str | None = None  # path relative to the dataset directory
    image2: str | None = None
    # ShapesWorld stores the scene specs it rendered; user data has none.
    scene1: dict[str, Any] | None = None
    scene2: dict[str, Any] | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, v: str | None) -> str | None:
        return None if v is None else normalize_category(v)

    @field_validator("prompt2")
    @classmethod
    def _differs(cls, v: str, info: ValidationInfo) -> str:
        if v == info.data.get("prompt1"):
            raise ValueError("identical to prompt1: a pair needs one fine-grained difference")
        return v


class PromptRecord(_Record):
    """An unpaired prompt (the reference consumes these two at a time)."""

    id: str = Field(min_length=1)
    split: Split = "train"
    prompt: str = Field(min_length=1)
    category: str | None = None
    image: str | None = None
    scene: dict[str, Any] | None = None


_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number",
    bytes: "binary data", type(None): "null",
}


def json_type_name(value: Any) -> str:
    """A value's type as an error message says it: "an object", "an integer", "null"."""
    name = _JSON_TYPE_NAMES.get(type(value))
    if name is not None:
        return name
    other = type(value).__name__
    return f"{'an' if other[:1].lower() in 'aeiou' else 'a'} {other}"


def _first_error(exc: ValidationError) -> tuple[str | None, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    return field, msg


def parse_record(model: type[_Record], raw: Any, *, file: str | Path, row: int) -> Any:
    """Validate one raw row; errors name the file, row and field."""
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object, got {json_type_name(raw)}", file=file, row=row)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        field, msg = _first_error(exc)
        raise DataError(msg, file=file, row=row, field=field) from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """Rows of a JSONL file as (1-based line number, parsed object); blank lines skipped.
    A UTF-8 byte-order mark at the start is dropped, as for JSON and text inputs."""
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    rows = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"invalid UTF-8 at byte {exc.start}", file=path, row=lineno) from None
        try:
            rows.append((lineno, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=path, row=lineno) from None
    return rows


class Dataset(BaseModel):
    """A loaded canonical dataset (records only; images stay on disk)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    root: Path
    pairs: list[PairRecord]
    prompts: list[PromptRecord]
    manifest: dict[str, Any]

    def image_path(self, rel: str) -> Path:
        return self.root / rel

    def split(self, name: str) -> "Dataset":
        return Dataset(
            root=self.root,
            pairs=[p for p in self.pairs if p.split == name],
            prompts=[p for p in self.prompts if p.split == name],
            manifest=self.manifest,
        )


def load_dataset(root: str | Path) -> Dataset:
    """Load a canonical dataset directory, validating every row."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(
            "not a focusdiff dataset (manifest.json missing); build one with "
            "`focusdiff data build` or `focusdiff data import`",
            file=manifest_path,
        )
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable manifest: {exc}", file=manifest_path) from None
    if manifest.get("format") != DATASET_FORMAT:
        raise DataError(
            f"unsupported dataset format {manifest.get('format')!r}, expected {DATASET_FORMAT!r}",
            file=manifest_path,
            field="format",
        )
    pairs_path, prompts_path = root / "pairs.jsonl", root / "prompts.jsonl"
    pairs = [parse_record(PairRecord, r, file=pairs_path, row=n) for n, r in read_jsonl(pairs_path)]
    prompts = [parse_record(PromptRecord, r, file=prompts_path, row=n) for n, r in read_jsonl(prompts_path)]
    return Dataset(root=root, pairs=pairs, prompts=prompts, manifest=manifest)


def dataset_counts(pairs: list[PairRecord], prompts: list[PromptRecord]) -> dict[str, Any]:
    """Counts per split and per category, as stored in the manifest and logged to MLflow."""
    counts: dict[str, Any] = {"pairs": len(pairs), "prompts": len(prompts), "by_split": {}, "by_category": {}}
    for p in pairs:
        counts["by_split"].setdefault(p.split, {"pairs": 0, "prompts": 0})["pairs"] += 1
        cat = p.category or "uncategorized"
        counts["by_category"].setdefault(cat, {s: 0 for s in SPLITS})[p.split] += 1
    for p in prompts:
        counts["by_split"].setdefault(p.split, {"pairs": 0, "prompts": 0})["prompts"] += 1
    return counts


def write_records(
    root: Path, pairs: list[PairRecord], prompts: list[PromptRecord], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write pairs.jsonl, prompts.jsonl and manifest.json into a dataset directory being built.

    `manifest` adds to the format tag and counts (e.g. `source`, a build or import
    report); it must be deterministic so identical inputs give identical bytes (and
    the same DVC hash). Returns the manifest written.
    """
    from focusdiff.io import atomic_write_json, atomic_write_text, jsonl_text

    atomic_write_text(root / "pairs.jsonl", jsonl_text(p.model_dump(mode="json", exclude_none=True) for p in pairs))
    atomic_write_text(root / "prompts.jsonl", jsonl_text(p.model_dump(mode="json", exclude_none=True) for p in prompts))
    full = {"format": DATASET_FORMAT, "counts": dataset_counts(pairs, prompts), **manifest}
    atomic_write_json(root / "manifest.json", full)
    return full
