"""Import user pair data (the reference FocusDiff-Data format) as a canonical dataset.

Accepted inputs, chosen by extension or by `fmt`:

* ``.json``: a list of objects ``{prompt1, prompt2, image1, image2}`` with
  optional ``category`` (slug or PairComp name), ``split`` and ``id``; image
  fields are paths relative to the JSON file's directory, or absolute;
* ``.jsonl``: one such object per line;
* ``.parquet`` in the Hugging Face datasets layout: the same columns, image
  columns being structs ``{bytes, path}`` with the encoded image embedded;

plus an optional text file of unpaired prompts, one per line.

The output directory is assembled in a temporary sibling and swapped in whole
(`atomic_directory`), so a bad input leaves it absent or untouched. Every bad
row raises a `DataError` naming the file, the 1-based row (list index + 1 for
JSON, line number for JSONL and text, row index + 1 for parquet) and the field.

Decisions worth knowing:

* Every row is kept (the reference loader silently used only the first half).
  Duplicate pairs (same two prompts, in either order) are reported with their
  rows and kept unless ``drop_duplicates`` (then the first of each group stays).
* Unknown fields or columns are errors: a typo such as ``categroy`` would
  otherwise fall back silently to a default.
* A row without ``id`` gets ``pair-NNNNNN`` from its row number (unpaired
  prompts get ``prompt-NNNNNN`` from their line number): stable for as long as
  the input's row order is.
* A row without ``split`` gets one from a SHA-256 of its prompts (sorted, so a
  pair and its swapped duplicate land together): re-imports are stable and
  duplicates cannot leak between train and test.
* Images are decoded (pixel count checked from the header first), turned
  upright per their EXIF orientation, converted to RGB and written as PNG named
  by the first 16 hex digits of the SHA-256 of their size and RGB pixels, so an
  image is stored once whatever its source encoding. Metadata (ICC profile,
  EXIF, text chunks) is not carried over.
* Non-RGB images are converted and counted by original mode, per image field.
  Transparency is composited onto white (dropping alpha naively would expose
  whatever colours happen to sit under transparent pixels); 16-bit grayscale
  is scaled to 8 bits rather than clipped as Pillow's ``convert`` would.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from pydantic import BaseModel

from focusdiff.data.schema import (
    PairRecord,
    PromptRecord,
    json_type_name,
    parse_record,
    read_jsonl,
    write_records,
)
from focusdiff.data.validate import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_unique_ids,
    duplicate_groups,
    load_image,
    pair_key,
)
from focusdiff.errors import ConfigError, DataError
from focusdiff.io import atomic_directory

Format = Literal["auto", "json", "jsonl", "parquet"]
FORMAT_BY_EXTENSION = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}

PAIR_FIELDS: tuple[str, ...] = ("id", "split", "category", "prompt1", "prompt2", "image1", "image2")
PROMPT_FIELDS: tuple[str, ...] = ("prompt1", "prompt2")
IMAGE_FIELDS: tuple[str, ...] = ("image1", "image2")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PARQUET_BATCH_ROWS = 64  # bounds the image bytes held in memory at once


class ImportReport(BaseModel):
    """What an import read, wrote and noticed; also stored in the manifest."""

    source_format: str  # json, jsonl or parquet
    rows: int  # pair rows read from the input
    pairs: int  # pairs written (rows minus dropped duplicates)
    prompts: int  # unpaired prompts written
    images: int  # distinct PNG files written
    absent_images: int  # image fields left empty in the written pairs
    converted_modes: dict[str, int]  # original image mode -> image fields converted to RGB
    duplicate_pairs: list[list[int]]  # groups of input rows with the same two prompts (either order)
    duplicates_dropped: int
    generated_ids: int  # written pairs whose id was derived from the row number
    assigned_splits: int  # written pairs whose split was derived from the prompt hash
    by_split: dict[str, int]  # written pairs per split
    by_category: dict[str, int]  # written pairs per category ("uncategorized" for none)


# ---------------------------------------------------------------- small helpers


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", file=path) from None


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assign_split(prompts: Sequence[str], *, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of the prompts (their order does not matter)."""
    key = "\x1f".join(sorted(prompts)).encode("utf-8")
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _check_options(fmt: str, val_fraction: float, test_fraction: float, max_image_pixels: int) -> None:
    if fmt not in ("auto", "json", "jsonl", "parquet"):
        raise ConfigError(f"format must be auto, json, jsonl or parquet, got {fmt!r}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f <= 1.0:
            raise ConfigError(f"{name} must be within [0, 1], got {f}")
    if val_fraction + test_fraction > 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be at most 1, got {val_fraction + test_fraction}")
    if max_image_pixels <= 0:
        raise ConfigError(f"max_image_pixels must be positive, got {max_image_pixels}")


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return FORMAT_BY_EXTENSION[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot tell the format from the extension {path.suffix!r}; "
            f"use one of {sorted(FORMAT_BY_EXTENSION)} or name the format explicitly",
            file=path,
        ) from None


def _check_out_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    # atomic_directory replaces out_dir whole: never let that delete something else.
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError("output path exists and is not a directory", file=out_dir)
        if any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
            raise DataError("refusing to replace a non-empty directory that is not a focusdiff dataset", file=out_dir)
    for path in inputs:
        if path.resolve().is_relative_to(out_dir.resolve()):
            raise DataError("input lies inside the output directory, which the import replaces whole", file=path)


# ---------------------------------------------------------------- reading rows


def _read_json_rows(path: Path) -> list[tuple[int, Any]]:
    data = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 at line {line} (byte {exc.start})", file=path) from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=path) from None
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON list of pair objects at the top level, got {json_type_name(rows)}", file=path)
    return [(i, row) for i, row in enumerate(rows, start=1)]


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError("file not found", file=path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", file=path) from None
    names = pf.schema_arrow.names
    for col in PROMPT_FIELDS:
        if col not in names:
            raise DataError(f"missing required column (columns are {names})", file=path, field=col)
    for col in names:
        # Columns such as __index_level_0__ are pandas/datasets bookkeeping, not data.
        if col not in PAIR_FIELDS and not col.startswith("__"):
            raise DataError(f"unknown column; expected some of {', '.join(PAIR_FIELDS)}", file=path, field=col)
    for col in IMAGE_FIELDS:
        if col in names:
            _check_image_column_type(pf.schema_arrow.field(col).type, file=path, field=col)
    return pf


def _check_image_column_type(t: pa.DataType, *, file: Path, field: str) -> None:
    ok = (
        pa.types.is_null(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or (pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} <= {"bytes", "path"})
    )
    if not ok:
        raise DataError(
            f"unsupported column type {t}; expected struct<bytes: binary, path: string>", file=file, field=field
        )


def _read_parquet_rows(path: Path) -> list[tuple[int, Any]]:
    with _open_parquet(path) as pf:
        text_cols = [c for c in pf.schema_arrow.names if c in PAIR_FIELDS and c not in IMAGE_FIELDS]
        try:
            table = pf.read(columns=text_cols)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read parquet data: {exc}", file=path) from None
    return [(i, row) for i, row in enumerate(table.to_pylist(), start=1)]


def _parquet_image_values(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_parquet(path) as pf:
        cols = [c for c in IMAGE_FIELDS if c in pf.schema_arrow.names]
        if not cols:
            return
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=cols):
                for values in batch.to_pylist():
                    row += 1
                    yield row, values
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read parquet data after row {row}: {exc}", file=path) from None


def _read_rows(path: Path, fmt: str) -> list[tuple[int, Any]]:
    """(1-based row, raw object) for every pair row; parquet rows omit image columns."""
    if fmt == "json":
        return _read_json_rows(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    return _read_parquet_rows(path)


def _image_values(path: Path, fmt: str, rows: Sequence[tuple[int, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, {image field: raw value}) for every row; parquet image bytes are streamed."""
    if fmt == "parquet":
        yield from _parquet_image_values(path)
    else:
        for row, raw in rows:
            yield row, {f: raw.get(f) for f in IMAGE_FIELDS}


# ---------------------------------------------------------------- parsing rows


def _check_row(raw: Any, *, file: Path, row: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DataError(f"expected an object with prompt1 and prompt2, got {json_type_name(raw)}", file=file, row=row)
    for key in raw:
        if key not in PAIR_FIELDS:
            raise DataError(f"unknown field; expected some of {', '.join(PAIR_FIELDS)}", file=file, row=row, field=key)
    for key in PROMPT_FIELDS:
        value = raw.get(key)
        if value is None:
            raise DataError(
                "missing required field" if key not in raw else "required field is null", file=file, row=row, field=key
            )
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {json_type_name(value)}", file=file, row=row, field=key)
        if not value.strip():
            raise DataError("empty or whitespace-only text", file=file, row=row, field=key)
    return raw


class _Parsed(NamedTuple):
    record: PairRecord  # without images yet
    generated_id: bool
    assigned_split: bool


def _parse_pair(raw: Any, *, file: Path, row: int, val_fraction: float, test_fraction: float) -> _Parsed:
    raw = _check_row(raw, file=file, row=row)
    fields = {k: raw[k] for k in ("prompt1", "prompt2", "category", "split") if raw.get(k) is not None}
    ident = raw.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)  # integer ids are common in exported data
    fields["id"] = f"pair-{row:06d}" if ident is None else ident
    record = parse_record(PairRecord, fields, file=file, row=row)
    split_missing = raw.get("split") is None
    if split_missing:
        split = assign_split((record.prompt1, record.prompt2), val_fraction=val_fraction, test_fraction=test_fraction)
        record = record.model_copy(update={"split": split})
    return _Parsed(record, ident is None, split_missing)


def _read_unpaired(path: Path, *, val_fraction: float, test_fraction: float) -> list[PromptRecord]:
    data = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    prompts = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"invalid UTF-8 at byte {exc.start} of the line", file=path, row=lineno) from None
        if not text.strip():
            continue
        split = assign_split((text.strip(),), val_fraction=val_fraction, test_fraction=test_fraction)
        fields = {"id": f"prompt-{lineno:06d}", "prompt": text, "split": split}
        prompts.append(parse_record(PromptRecord, fields, file=path, row=lineno))
    return prompts


# ---------------------------------------------------------------- images


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (see the module docstring for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):
        wide = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _image_source(value: Any, *, base_dir: Path, file: Path, row: int, field: str) -> Path | bytes | None:
    """A raw image field as a path to read, embedded bytes, or None when absent."""
    if isinstance(value, dict):  # the datasets Image struct {bytes, path}
        data = value.get("bytes")
        if data is not None:
            if not isinstance(data, (bytes, bytearray)):
                raise DataError(f"expected binary image bytes, got {json_type_name(data)}", file=file, row=row, field=field)
            return bytes(data)
        value = value.get("path")
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise DataError(f"expected an image path or null, got {json_type_name(value)}", file=file, row=row, field=field)
    if not value.strip():
        raise DataError("empty image path; use null for a pair without this image", file=file, row=row, field=field)
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


class _ImageStore:
    """Writes each distinct image once under images/ and counts mode conversions."""

    def __init__(self, root: Path, max_pixels: int) -> None:
        self.root = root
        self.max_pixels = max_pixels
        (root / "images").mkdir()
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}  # source -> (relative path, original mode)
        self.written: set[str] = set()
        self.converted: Counter[str] = Counter()

    def add(self, source: Path | bytes, *, file: Path, row: int, field: str) -> str:
        key = (
            ("path", str(source.resolve()))
            if isinstance(source, Path)
            else ("bytes", hashlib.sha256(source).hexdigest())
        )
        if key not in self._seen:
            im = load_image(source, max_pixels=self.max_pixels, file=file, row=row, field=field)
            mode = im.mode
            try:
                rgb = to_rgb(ImageOps.exif_transpose(im))
            except Exception as exc:  # noqa: BLE001 - odd modes and broken EXIF raise various types
                raise DataError(
                    f"cannot convert image (mode {mode}) to RGB: {exc}", file=file, row=row, field=field
                ) from None
            self._seen[key] = (self._write(rgb), mode)
        rel, mode = self._seen[key]
        if mode != "RGB":
            self.converted[mode] += 1
        return rel

    def _write(self, rgb: Image.Image) -> str:
        width, height = rgb.size
        pixels = rgb.tobytes()
        digest = hashlib.sha256(f"{width}x{height}\n".encode() + pixels).hexdigest()[:16]
        rel = f"images/{digest}.png"
        if rel not in self.written:
            rgb.info = {}  # no ICC/EXIF/text carried over: the name depends on pixels only
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
            (self.root / rel).write_bytes(buf.getvalue())
            self.written.add(rel)
        return rel


def _attach_images(
    kept: dict[int, PairRecord], values: Iterator[tuple[int, dict[str, Any]]], store: _ImageStore, *, file: Path
) -> dict[int, PairRecord]:
    out = dict(kept)
    for row, fields in values:
        if row not in kept:
            continue  # a dropped duplicate
        update = {}
        for field in IMAGE_FIELDS:
            source = _image_source(fields.get(field), base_dir=file.parent, file=file, row=row, field=field)
            if source is not None:
                update[field] = store.add(source, file=file, row=row, field=field)
        out[row] = kept[row].model_copy(update=update)
    return out


# ---------------------------------------------------------------- the import


def import_dataset(
    pairs_file: str | Path,
    out_dir: str | Path,
    *,
    unpaired_file: str | Path | None = None,
    fmt: Format = "auto",
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    drop_duplicates: bool = False,
) -> ImportReport:
    """Convert user pair data into the canonical dataset directory `out_dir`.

    `out_dir` is replaced whole on success (it must be absent, empty or an
    existing focusdiff dataset) and left untouched on any error.
    """
    pairs_file, out_dir = Path(pairs_file), Path(out_dir)
    unpaired = Path(unpaired_file) if unpaired_file is not None else None
    _check_options(fmt, val_fraction, test_fraction, max_image_pixels)
    source_format = _detect_format(pairs_file, fmt)
    _check_out_dir(out_dir, [pairs_file] + ([unpaired] if unpaired else []))
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}

    # Every text check runs before any image is decoded or anything is written.
    raw_rows = _read_rows(pairs_file, source_format)
    if not raw_rows:
        raise DataError("no pairs found", file=pairs_file)
    parsed = {row: _parse_pair(raw, file=pairs_file, row=row, **fractions) for row, raw in raw_rows}
    duplicates = duplicate_groups([(row, pair_key(p.record.prompt1, p.record.prompt2)) for row, p in parsed.items()])
    dropped = {row for group in duplicates for row in group[1:]} if drop_duplicates else set()
    kept = {row: p.record for row, p in parsed.items() if row not in dropped}
    check_unique_ids(pairs_file, list(kept.items()))
    prompts = _read_unpaired(unpaired, **fractions) if unpaired else []

    with atomic_directory(out_dir) as tmp:
        store = _ImageStore(tmp, max_image_pixels)
        values = _image_values(pairs_file, source_format, raw_rows)
        pairs = list(_attach_images(kept, values, store, file=pairs_file).values())
        report = ImportReport(
            source_format=source_format,
            rows=len(raw_rows),
            pairs=len(pairs),
            prompts=len(prompts),
            images=len(store.written),
            absent_images=sum((p.image1 is None) + (p.image2 is None) for p in pairs),
            converted_modes=dict(sorted(store.converted.items())),
            duplicate_pairs=duplicates,
            duplicates_dropped=len(dropped),
            generated_ids=sum(p.generated_id for row, p in parsed.items() if row not in dropped),
            assigned_splits=sum(p.assigned_split for row, p in parsed.items() if row not in dropped),
            by_split=dict(sorted(Counter(p.split for p in pairs).items())),
            by_category=dict(sorted(Counter(p.category or "uncategorized" for p in pairs).items())),
        )
        options = {**fractions, "max_image_pixels": max_image_pixels, "drop_duplicates": drop_duplicates}
        source = _source_info(pairs_file, unpaired, source_format, options)
        write_records(tmp, pairs, prompts, {"source": source, "import_report": report.model_dump(mode="json")})
    return report


def _source_info(
    pairs_file: Path, unpaired: Path | None, source_format: str, options: dict[str, Any]
) -> dict[str, Any]:
    # Names and hashes, not absolute paths: the manifest should not depend on the machine.
    def describe(path: Path | None) -> dict[str, str] | None:
        return None if path is None else {"name": path.name, "sha256": _sha256_file(path)}

    return {
        "kind": "import",
        "format": source_format,
        "pairs_file": describe(pairs_file),
        "unpaired_file": describe(unpaired),
        "options": options,
    }
