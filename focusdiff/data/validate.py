"""Safe image opening, and a full re-check of a canonical dataset directory.

Images come from users, so opening one is guarded: the pixel count is read
from the header and checked *before* anything is decoded (a small file can
declare a huge canvas), Pillow's own decompression-bomb guard is turned into a
located `DataError` too, and only plain raster formats are accepted (Pillow
would hand EPS to Ghostscript, for instance).

`validate_dataset` re-checks what `load_dataset` trusts on disk: every record
parses, ids are unique, every referenced image exists inside the dataset and
is a decodable RGB PNG, and the manifest's counts match the records. It raises
on the first hard error (file, row and field named) and otherwise returns a
`ValidationReport` with the soft findings (duplicate pairs, orphan images).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from focusdiff.data.schema import (
    PairRecord,
    PromptRecord,
    dataset_counts,
    json_type_name,
    load_dataset,
    read_jsonl,
)
from focusdiff.errors import DataError

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000

# Formats accepted from users; the canonical dataset itself holds PNG only.
SOURCE_IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
DATASET_IMAGE_FORMATS: tuple[str, ...] = ("PNG",)


def load_image(
    source: Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    formats: Sequence[str] = SOURCE_IMAGE_FORMATS,
    file: str | Path | None = None,
    row: int | None = None,
    field: str | None = None,
) -> Image.Image:
    """Open and fully decode one image, in its original mode.

    `source` is a file path or the encoded bytes. Every failure (missing,
    unreadable, not an image, truncated, too many pixels) is a `DataError`
    located at `file`/`row`/`field` (the record that references the image).
    """

    def fail(message: str) -> DataError:
        return DataError(message, file=file, row=row, field=field)

    label = f"image {source}" if isinstance(source, Path) else "embedded image bytes"
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise fail(f"image file not found: {source}") from None
        except IsADirectoryError:
            raise fail(f"image path is a directory, not a file: {source}") from None
        except OSError as exc:
            raise fail(f"cannot read image file {source}: {exc.strerror or exc}") from None
    else:
        data = source

    with warnings.catch_warnings():
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = im.size  # from the header; nothing decoded yet
            if width <= 0 or height <= 0:
                raise fail(f"{label} has an empty size {width}x{height}")
            if width * height > max_pixels:
                raise fail(
                    f"{label} is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (max_image_pixels); refusing to decode it"
                )
            im.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise fail(f"{label} refused by Pillow's decompression-bomb guard: {exc}") from None
        except UnidentifiedImageError:
            raise fail(f"{label} is not an image in an accepted format ({', '.join(formats)})") from None
        except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise many types
            raise fail(f"{label} cannot be decoded (corrupt or truncated?): {exc}") from None
    return im


class ValidationReport(BaseModel):
    """What `validate_dataset` found in a dataset that passed the hard checks."""

    pairs: int
    prompts: int
    images: int  # distinct image files referenced and checked
    pairs_without_images: int  # pairs with image1 or image2 absent
    duplicate_pairs: list[list[int]]  # pairs.jsonl line numbers sharing the same two prompts
    orphan_images: list[str]  # files under images/ that no record references
    by_split: dict[str, Any]
    by_category: dict[str, Any]


def pair_key(prompt1: str, prompt2: str) -> tuple[str, str]:
    """Identity of a pair for duplicate detection: its two prompts, in either order."""
    a, b = sorted((prompt1, prompt2))
    return a, b


def duplicate_groups(keys: Sequence[tuple[int, tuple[str, str]]]) -> list[list[int]]:
    """Groups of row numbers that share a key (only groups of two or more)."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for row, key in keys:
        by_key.setdefault(key, []).append(row)
    return [rows for rows in by_key.values() if len(rows) > 1]


def check_unique_ids(path: Path, rows: Sequence[tuple[int, PairRecord | PromptRecord]]) -> None:
    """Raise on the second use of an id; rows are (row number, record)."""
    first: dict[str, int] = {}
    for lineno, rec in rows:
        if rec.id in first:
            raise DataError(
                f"duplicate id {rec.id!r} (first on row {first[rec.id]})", file=path, row=lineno, field="id"
            )
        first[rec.id] = lineno


def _resolve_inside(root: Path, rel: str, *, file: Path, row: int, field: str) -> Path:
    rel_path = Path(rel)
    path = (root / rel_path).resolve()
    if rel_path.is_absolute() or not path.is_relative_to(root.resolve()):
        raise DataError(f"image path {rel!r} must be relative and inside the dataset", file=file, row=row, field=field)
    return path


def _check_image(root: Path, rel: str, max_pixels: int, *, file: Path, row: int, field: str) -> None:
    path = _resolve_inside(root, rel, file=file, row=row, field=field)
    im = load_image(path, max_pixels=max_pixels, formats=DATASET_IMAGE_FORMATS, file=file, row=row, field=field)
    if im.mode != "RGB":
        raise DataError(f"image {rel} has mode {im.mode}, expected RGB", file=file, row=row, field=field)


def _check_counts(root: Path, manifest: dict[str, Any], counts: dict[str, Any]) -> None:
    # Only manifests that record counts are compared; the key is optional in the layout.
    if "counts" not in manifest:
        return
    stated, manifest_path = manifest["counts"], root / "manifest.json"
    if not isinstance(stated, dict):
        raise DataError(f"expected an object, got {json_type_name(stated)}", file=manifest_path, field="counts")
    for key, actual in counts.items():
        if stated.get(key) != actual:
            raise DataError(
                f"manifest says {stated.get(key)!r} but the records give {actual!r}",
                file=manifest_path,
                field=f"counts.{key}",
            )


def validate_dataset(root: str | Path, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ValidationReport:
    """Re-check a canonical dataset directory; raise `DataError` on the first hard error."""
    root = Path(root)
    ds = load_dataset(root)  # manifest format and every row's schema
    pairs_path, prompts_path = root / "pairs.jsonl", root / "prompts.jsonl"
    # load_dataset drops line numbers; re-read them so errors can point at rows.
    pair_rows = list(zip([n for n, _ in read_jsonl(pairs_path)], ds.pairs, strict=True))
    prompt_rows = list(zip([n for n, _ in read_jsonl(prompts_path)], ds.prompts, strict=True))
    check_unique_ids(pairs_path, pair_rows)
    check_unique_ids(prompts_path, prompt_rows)

    checked: set[str] = set()

    def check(rel: str | None, *, file: Path, row: int, field: str) -> None:
        if rel is not None and rel not in checked:
            _check_image(root, rel, max_image_pixels, file=file, row=row, field=field)
            checked.add(rel)

    for lineno, pair in pair_rows:
        check(pair.image1, file=pairs_path, row=lineno, field="image1")
        check(pair.image2, file=pairs_path, row=lineno, field="image2")
    for lineno, prompt in prompt_rows:
        check(prompt.image, file=prompts_path, row=lineno, field="image")

    counts = dataset_counts(ds.pairs, ds.prompts)
    _check_counts(root, ds.manifest, counts)

    referenced = {(root / rel).resolve() for rel in checked}
    images_dir = root / "images"
    on_disk = sorted(p for p in images_dir.rglob("*") if p.is_file()) if images_dir.is_dir() else []
    orphans = [p.relative_to(root).as_posix() for p in on_disk if p.resolve() not in referenced]

    return ValidationReport(
        pairs=len(ds.pairs),
        prompts=len(ds.prompts),
        images=len(checked),
        pairs_without_images=sum(1 for p in ds.pairs if p.image1 is None or p.image2 is None),
        duplicate_pairs=duplicate_groups([(n, pair_key(p.prompt1, p.prompt2)) for n, p in pair_rows]),
        orphan_images=orphans,
        by_split=counts["by_split"],
        by_category=counts["by_category"],
    )
