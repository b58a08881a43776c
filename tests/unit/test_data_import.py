"""Import of user pair data (JSON, JSONL, parquet) and validation of canonical datasets."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from focusdiff.data.imports import assign_split, import_dataset
from focusdiff.data.schema import load_dataset
from focusdiff.data.validate import validate_dataset
from focusdiff.errors import ConfigError, DataError

# ---------------------------------------------------------------- input builders


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (8, 8), color: Any = None, fmt: str = "PNG") -> bytes:
    if color is None:
        color = {"RGB": (200, 30, 30), "RGBA": (0, 0, 255, 0), "L": 90, "LA": (90, 0), "CMYK": (0, 255, 255, 0)}.get(
            mode, 1
        )
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_png(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), color: Any = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(mode, size, color))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a size but has no pixel data: opens lazily, never decodes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def truncated_png() -> bytes:
    """The first half of a noisy 64x64 PNG: a valid header, then the pixel data stops."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def pair_row(i: int, *, images: bool = True, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt1": f"a red cube, scene {i}", "prompt2": f"a blue cube, scene {i}"}
    if images:
        row |= {"image1": f"img/{i}a.png", "image2": f"img/{i}b.png"}
    return row | over


def make_images(root: Path, n: int) -> None:
    """Distinct RGB images img/{i}a.png and img/{i}b.png for i in range(n)."""
    for i in range(n):
        write_png(root / f"img/{i}a.png", color=(i + 1, 0, 0))
        write_png(root / f"img/{i}b.png", color=(0, i + 1, 0))


def write_json(root: Path, rows: Any, name: str = "pairs.json") -> Path:
    path = root / name
    path.write_text(json.dumps(rows), "utf-8")
    return path


def write_jsonl(root: Path, rows: list[Any], name: str = "pairs.jsonl") -> Path:
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquet(root: Path, columns: dict[str, list[Any]], name: str = "pairs.parquet") -> Path:
    arrays = {k: pa.array(v, type=IMAGE_STRUCT if k.startswith("image") else pa.string()) for k, v in columns.items()}
    path = root / name
    pq.write_table(pa.table(arrays), path)
    return path


def parquet_columns(n: int) -> dict[str, list[Any]]:
    return {
        "prompt1": [f"a red cube, scene {i}" for i in range(n)],
        "prompt2": [f"a blue cube, scene {i}" for i in range(n)],
        "image1": [{"bytes": png_bytes(color=(i, 1, 1)), "path": f"{i}a.png"} for i in range(n)],
        "image2": [{"bytes": png_bytes(color=(1, i, 1)), "path": None} for i in range(n)],
    }


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails(pairs_file: Path, out: Path, match: str, **kwargs: Any) -> DataError:
    """Import must raise a located DataError and leave `out` absent."""
    with pytest.raises(DataError, match=match) as info:
        import_dataset(pairs_file, out, **kwargs)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary dir left behind"
    return info.value


def loc(file: str, row: int | None = None, field: str | None = None) -> str:
    """Regex for the start of a located message (the file is a full path ending in `file`)."""
    parts = [re.escape(file)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts) + ": .*"


# ---------------------------------------------------------------- round trips


def test_json_round_trip_with_unpaired_prompts(tmp_path: Path) -> None:
    make_images(tmp_path, 7)
    rows = [pair_row(i) for i in range(7)]
    rows[0]["category"] = "Color difference"
    rows[1] |= {"category": "counting", "split": "test", "id": "mine"}
    rows[2]["id"] = 17
    pairs_file = write_json(tmp_path, rows)
    unpaired = tmp_path / "prompts.txt"
    unpaired.write_text("a cat\n\n  \na dog on a mat\r\nthree birds\n", "utf-8")

    report = import_dataset(pairs_file, tmp_path / "ds", unpaired_file=unpaired)

    ds = load_dataset(tmp_path / "ds")
    assert (len(ds.pairs), len(ds.prompts)) == (7, 3)
    assert (report.rows, report.pairs, report.prompts, report.images) == (7, 7, 3, 14)
    assert [p.prompt for p in ds.prompts] == ["a cat", "a dog on a mat", "three birds"]
    assert [p.id for p in ds.prompts] == ["prompt-000001", "prompt-000004", "prompt-000005"]
    assert [p.id for p in ds.pairs[:4]] == ["pair-000001", "mine", "17", "pair-000004"]
    assert report.generated_ids == 5
    assert ds.pairs[0].category == "color" and ds.pairs[1].category == "counting"
    assert ds.pairs[1].split == "test" and report.assigned_splits == 6
    assert report.by_category == {"color": 1, "counting": 1, "uncategorized": 5}
    for p in ds.pairs:
        for rel in (p.image1, p.image2):
            assert rel is not None and re.fullmatch(r"images/[0-9a-f]{16}\.png", rel)
            with Image.open(ds.image_path(rel)) as im:
                assert (im.format, im.mode) == ("PNG", "RGB")
    assert ds.manifest["counts"]["pairs"] == 7
    assert ds.manifest["import_report"] == report.model_dump(mode="json")
    assert ds.manifest["source"]["pairs_file"]["name"] == "pairs.json"
    assert validate_dataset(tmp_path / "ds").pairs == 7


def test_jsonl_round_trip_absolute_paths_and_absent_images(tmp_path: Path) -> None:
    make_images(tmp_path, 4)
    rows = [pair_row(i) for i in range(4)]
    rows[0]["image1"] = str((tmp_path / "img/0a.png").resolve())
    rows[1] = pair_row(1, images=False)
    rows[2]["image2"] = None
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", "utf-8")

    report = import_dataset(path, tmp_path / "ds")

    ds = load_dataset(tmp_path / "ds")
    assert len(ds.pairs) == 4 and report.source_format == "jsonl"
    assert ds.pairs[1].image1 is None and ds.pairs[1].image2 is None
    assert ds.pairs[2].image1 is not None and ds.pairs[2].image2 is None
    assert report.absent_images == 3 and report.images == 5
    assert validate_dataset(tmp_path / "ds").pairs_without_images == 2


def test_parquet_round_trip(tmp_path: Path) -> None:
    cols = parquet_columns(5)
    cols["image2"][3] = {"bytes": None, "path": None}  # the datasets encoding of "no image"
    cols["image1"][4] = None
    cols["category"] = ["text", None, "Position difference", None, None]
    cols["split"] = [None, "val", None, None, None]
    path = write_parquet(tmp_path, cols)

    report = import_dataset(path, tmp_path / "ds")

    ds = load_dataset(tmp_path / "ds")
    assert len(ds.pairs) == 5 and report.source_format == "parquet"
    assert ds.pairs[3].image2 is None and ds.pairs[4].image1 is None and report.absent_images == 2
    assert ds.pairs[0].category == "text" and ds.pairs[2].category == "position"
    assert ds.pairs[1].split == "val"
    with Image.open(ds.image_path(ds.pairs[2].image1)) as im:
        assert im.getpixel((0, 0)) == (2, 1, 1)
    validate_dataset(tmp_path / "ds")


def test_every_pair_is_kept(tmp_path: Path) -> None:
    n = 101  # odd, so "first half" mistakes show
    path = write_jsonl(tmp_path, [pair_row(i, images=False) for i in range(n)])
    report = import_dataset(path, tmp_path / "ds")
    assert report.pairs == n and len(load_dataset(tmp_path / "ds").pairs) == n


def test_format_override_and_identical_images_stored_once(tmp_path: Path) -> None:
    write_png(tmp_path / "same1.png", color=(5, 5, 5))
    write_png(tmp_path / "same2.png", color=(5, 5, 5))
    rows = [pair_row(0, image1="same1.png", image2="same2.png"), pair_row(1, image1="same1.png", image2=None)]
    path = tmp_path / "pairs.data"
    path.write_text("\n".join(json.dumps(r) for r in rows), "utf-8")
    report = import_dataset(path, tmp_path / "ds", fmt="jsonl")
    ds = load_dataset(tmp_path / "ds")
    assert report.images == 1 and ds.pairs[0].image1 == ds.pairs[0].image2 == ds.pairs[1].image1


def test_reimport_replaces_existing_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    import_dataset(write_jsonl(tmp_path, [pair_row(i, images=False) for i in range(3)]), out)
    import_dataset(write_jsonl(tmp_path, [pair_row(i, images=False) for i in range(2)], name="b.jsonl"), out)
    assert len(load_dataset(out).pairs) == 2


# ---------------------------------------------------------------- modes, duplicates, splits


def test_non_rgb_modes_are_converted_and_counted(tmp_path: Path) -> None:
    write_png(tmp_path / "l.png", "L")
    write_png(tmp_path / "rgba.png", "RGBA", color=(0, 0, 255, 0))  # fully transparent blue
    write_png(tmp_path / "la.png", "LA")
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    wide = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    rows = [
        pair_row(0, image1="l.png", image2="rgba.png"),
        pair_row(1, image1="la.png", image2="p.png"),
        pair_row(2, image1="cmyk.jpg", image2="i16.png"),
        pair_row(3, image1="l.png", image2=None),
    ]
    report = import_dataset(write_json(tmp_path, rows), tmp_path / "ds")

    assert report.converted_modes == {"CMYK": 1, "I;16": 1, "L": 2, "LA": 1, "P": 1, "RGBA": 1}
    ds = load_dataset(tmp_path / "ds")
    with Image.open(ds.image_path(ds.pairs[0].image2)) as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    with Image.open(ds.image_path(ds.pairs[2].image2)) as im:
        assert [im.getpixel((x, y))[0] for y in range(2) for x in range(2)] == [0, 128, 255, 255]  # scaled, not clipped
    validate_dataset(tmp_path / "ds")


def test_duplicates_reported_kept_or_dropped(tmp_path: Path) -> None:
    rows = [pair_row(i, images=False) for i in range(4)]
    rows.append(pair_row(1, images=False))  # row 5 repeats row 2
    rows.append({"prompt1": rows[1]["prompt2"], "prompt2": rows[1]["prompt1"]})  # row 6: row 2 swapped
    rows.append(pair_row(3, images=False, id="x"))  # row 7 repeats row 4
    path = write_json(tmp_path, rows)

    report = import_dataset(path, tmp_path / "kept")
    assert report.duplicate_pairs == [[2, 5, 6], [4, 7]]
    assert report.pairs == 7 and report.duplicates_dropped == 0
    assert json.loads((tmp_path / "kept/manifest.json").read_text())["import_report"]["duplicate_pairs"] == [
        [2, 5, 6],
        [4, 7],
    ]
    splits = {p.split for p in load_dataset(tmp_path / "kept").pairs if "scene 1" in p.prompt1 + p.prompt2}
    assert len(splits) == 1  # duplicates share a split: no leakage
    assert validate_dataset(tmp_path / "kept").duplicate_pairs == [[2, 5, 6], [4, 7]]

    report = import_dataset(path, tmp_path / "dropped", drop_duplicates=True)
    assert report.pairs == 4 and report.duplicates_dropped == 3 and report.rows == 7
    assert [p.id for p in load_dataset(tmp_path / "dropped").pairs] == [f"pair-00000{i}" for i in range(1, 5)]


def test_split_is_deterministic_and_follows_fractions(tmp_path: Path) -> None:
    rows = [pair_row(i, images=False) for i in range(300)]
    rows[0]["split"] = "val"
    path = write_json(tmp_path, rows)
    a = import_dataset(path, tmp_path / "a", val_fraction=0.2, test_fraction=0.1)
    b = import_dataset(path, tmp_path / "b", val_fraction=0.2, test_fraction=0.1)
    split_a = [p.split for p in load_dataset(tmp_path / "a").pairs]
    assert split_a == [p.split for p in load_dataset(tmp_path / "b").pairs]
    assert a.by_split == b.by_split and split_a[0] == "val"
    assert 30 <= a.by_split["val"] <= 90 and 10 <= a.by_split["test"] <= 50
    assert assign_split(["x", "y"], val_fraction=0.5, test_fraction=0.5) == assign_split(
        ["y", "x"], val_fraction=0.5, test_fraction=0.5
    )
    default = import_dataset(path, tmp_path / "c")
    assert default.by_split == {"train": 299, "val": 1}


# ---------------------------------------------------------------- bad pair rows


def test_missing_field(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False), {"prompt1": "a cat"}]
    fails(write_json(tmp_path, rows), tmp_path / "ds", loc("pairs.json", 2, "prompt2") + "missing required field")


def test_whitespace_only_field_reports_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(pair_row(0, images=False)) + "\n\n" + json.dumps({"prompt1": " \t", "prompt2": "x"}) + "\n"
    )
    fails(path, tmp_path / "ds", loc("pairs.jsonl", 3, "prompt1") + "empty or whitespace-only")


def test_non_string_prompt(tmp_path: Path) -> None:
    fails(
        write_json(tmp_path, [{"prompt1": 3, "prompt2": "x"}]),
        tmp_path / "ds",
        loc("pairs.json", 1, "prompt1") + "expected a string",
    )


def test_identical_captions(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False), {"prompt1": "a cat ", "prompt2": " a cat"}]
    fails(write_json(tmp_path, rows), tmp_path / "ds", loc("pairs.json", 2, "prompt2") + "identical to prompt1")


def test_unknown_category(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False, category="Shape difference")]
    fails(
        write_json(tmp_path, rows),
        tmp_path / "ds",
        loc("pairs.json", 1, "category") + "unknown category 'Shape difference'",
    )


def test_bad_split(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False), pair_row(1, images=False, split="training")]
    fails(
        write_jsonl(tmp_path, rows),
        tmp_path / "ds",
        loc("pairs.jsonl", 2, "split") + "Input should be 'train', 'val' or 'test'",
    )


def test_unknown_field(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False, categroy="color")]
    fails(write_json(tmp_path, rows), tmp_path / "ds", loc("pairs.json", 1, "categroy") + "unknown field")


def test_duplicate_id(tmp_path: Path) -> None:
    rows = [pair_row(0, images=False, id="a"), pair_row(1, images=False), pair_row(2, images=False, id="a")]
    fails(
        write_json(tmp_path, rows), tmp_path / "ds", loc("pairs.json", 3, "id") + r"duplicate id 'a' \(first on row 1\)"
    )


def test_row_not_an_object(tmp_path: Path) -> None:
    fails(
        write_json(tmp_path, [pair_row(0, images=False), ["a", "b"]]),
        tmp_path / "ds",
        loc("pairs.json", 2) + "expected an object",
    )
    fails(
        write_jsonl(tmp_path, [pair_row(0, images=False), "a b"]),
        tmp_path / "ds",
        loc("pairs.jsonl", 2) + "expected an object",
    )


def test_top_level_not_a_list(tmp_path: Path) -> None:
    fails(
        write_json(tmp_path, {"pairs": []}),
        tmp_path / "ds",
        loc("pairs.json") + "expected a JSON list .* got an object",
    )


def test_empty_input(tmp_path: Path) -> None:
    fails(write_json(tmp_path, []), tmp_path / "ds", loc("pairs.json") + "no pairs found")


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt1": "a", "prompt2": "b"},\n  {"prompt1": "a" "prompt2": "c"}\n]')
    fails(path, tmp_path / "ds", loc("pairs.json") + r"invalid JSON: .*\(line 3, column 19\)")
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt1": "a", "prompt2": "b"}\n{"prompt1": "a",\n')
    fails(path, tmp_path / "ds", loc("pairs.jsonl", 2) + "invalid JSON")


def test_bad_utf8_in_pairs_file(tmp_path: Path) -> None:
    good = json.dumps(pair_row(0, images=False)).encode()
    bad = b'{"prompt1": "caf\xe9", "prompt2": "tea"}'
    json_path = tmp_path / "pairs.json"
    json_path.write_bytes(b"[\n" + good + b",\n" + bad + b"\n]")
    fails(json_path, tmp_path / "ds", loc("pairs.json") + r"invalid UTF-8 at line 3")
    jsonl_path = tmp_path / "pairs.jsonl"
    jsonl_path.write_bytes(good + b"\n" + bad + b"\n")
    fails(jsonl_path, tmp_path / "ds", loc("pairs.jsonl", 2) + "invalid UTF-8")


def test_missing_pairs_file_and_unknown_extension(tmp_path: Path) -> None:
    fails(tmp_path / "nope.json", tmp_path / "ds", loc("nope.json") + "file not found")
    (tmp_path / "pairs.csv").write_text("prompt1,prompt2\n")
    fails(tmp_path / "pairs.csv", tmp_path / "ds", loc("pairs.csv") + "cannot tell the format")


# ---------------------------------------------------------------- unpaired prompts


def test_unpaired_bad_utf8(tmp_path: Path) -> None:
    unpaired = tmp_path / "prompts.txt"
    unpaired.write_bytes(b"a cat\n\xff\xfe dog\n")
    pairs = write_json(tmp_path, [pair_row(0, images=False)])
    fails(pairs, tmp_path / "ds", loc("prompts.txt", 2) + "invalid UTF-8", unpaired_file=unpaired)


def test_unpaired_missing(tmp_path: Path) -> None:
    pairs = write_json(tmp_path, [pair_row(0, images=False)])
    fails(pairs, tmp_path / "ds", loc("none.txt") + "file not found", unpaired_file=tmp_path / "none.txt")


# ---------------------------------------------------------------- bad images


def test_image_file_missing(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    rows = [pair_row(0), pair_row(1)]
    fails(
        write_json(tmp_path, rows), tmp_path / "ds", loc("pairs.json", 2, "image1") + r"image file not found: .*1a\.png"
    )


def test_image_not_an_image(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    (tmp_path / "img/0b.png").write_text("definitely not a PNG")
    fails(
        write_json(tmp_path, [pair_row(0)]),
        tmp_path / "ds",
        loc("pairs.json", 1, "image2") + r"image .*0b\.png is not an image",
    )


def test_image_truncated(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    (tmp_path / "img/0a.png").write_bytes(truncated_png())
    fails(write_json(tmp_path, [pair_row(0)]), tmp_path / "ds", loc("pairs.json", 1, "image1") + "cannot be decoded")


def test_image_over_pixel_limit(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    err = fails(
        write_json(tmp_path, [pair_row(0)]),
        tmp_path / "ds",
        loc("pairs.json", 1, "image1") + "8x8 = 64 pixels, over the limit of 63",
        max_image_pixels=63,
    )
    assert err.field == "image1"


def test_image_bomb_refused_before_decoding(tmp_path: Path) -> None:
    # 9000x9000 = 81M pixels: over our default 64M, under Pillow's own warning threshold,
    # and with no pixel data: decoding it would fail differently, so this shows the header check.
    make_images(tmp_path, 1)
    png_header_only(tmp_path / "img/0b.png", 9000, 9000)
    fails(
        write_json(tmp_path, [pair_row(0)]),
        tmp_path / "ds",
        loc("pairs.json", 1, "image2") + "9000x9000 = 81000000 pixels, over the limit",
    )


def test_pillow_bomb_guard_becomes_data_error(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    pairs = write_json(tmp_path, [pair_row(0)])
    png_header_only(tmp_path / "img/0a.png", 20000, 20000)  # over 2x Pillow's limit: DecompressionBombError
    fails(pairs, tmp_path / "ds", loc("pairs.json", 1, "image1") + "decompression-bomb guard", max_image_pixels=10**9)
    png_header_only(tmp_path / "img/0a.png", 10000, 10000)  # over Pillow's limit: DecompressionBombWarning
    fails(pairs, tmp_path / "ds", loc("pairs.json", 1, "image1") + "decompression-bomb guard", max_image_pixels=10**9)


def test_image_path_wrong_type_or_empty(tmp_path: Path) -> None:
    fails(
        write_json(tmp_path, [pair_row(0, image1=5)]),
        tmp_path / "ds",
        loc("pairs.json", 1, "image1") + "expected an image path",
    )
    fails(
        write_json(tmp_path, [pair_row(0, images=False, image2=" ")]),
        tmp_path / "ds",
        loc("pairs.json", 1, "image2") + "empty image path",
    )


def test_bad_image_leaves_existing_dataset_untouched(tmp_path: Path) -> None:
    make_images(tmp_path, 2)
    out = tmp_path / "ds"
    import_dataset(write_json(tmp_path, [pair_row(0), pair_row(1)]), out)
    before = snapshot(out)
    (tmp_path / "img/1b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=loc("pairs.json", 2, "image2")):
        import_dataset(tmp_path / "pairs.json", out)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")) == []


def test_refuses_to_replace_a_non_dataset_directory(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="refusing to replace"):
        import_dataset(write_json(tmp_path, [pair_row(0, images=False)]), out)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        import_dataset("x.json", "out", val_fraction=-0.1)
    with pytest.raises(ConfigError, match="at most 1"):
        import_dataset("x.json", "out", val_fraction=0.6, test_fraction=0.6)


# ---------------------------------------------------------------- bad parquet


def test_parquet_missing_column(tmp_path: Path) -> None:
    cols = parquet_columns(2)
    del cols["prompt2"]
    fails(
        write_parquet(tmp_path, cols),
        tmp_path / "ds",
        loc("pairs.parquet", field="prompt2") + "missing required column",
    )


def test_parquet_undecodable_bytes(tmp_path: Path) -> None:
    cols = parquet_columns(3)
    cols["image2"][2] = {"bytes": b"not an image at all", "path": "x.png"}
    fails(
        write_parquet(tmp_path, cols),
        tmp_path / "ds",
        loc("pairs.parquet", 3, "image2") + "embedded image bytes is not an image",
    )


def test_parquet_null_prompt_and_bad_category(tmp_path: Path) -> None:
    cols = parquet_columns(3)
    cols["prompt1"][1] = None
    fails(write_parquet(tmp_path, cols), tmp_path / "ds", loc("pairs.parquet", 2, "prompt1") + "required field is null")
    cols = parquet_columns(3)
    cols["category"] = [None, None, "nope"]
    fails(write_parquet(tmp_path, cols), tmp_path / "ds", loc("pairs.parquet", 3, "category") + "unknown category")


def test_parquet_unreadable(tmp_path: Path) -> None:
    (tmp_path / "pairs.parquet").write_bytes(b"PAR1 not really")
    fails(tmp_path / "pairs.parquet", tmp_path / "ds", loc("pairs.parquet") + "not a readable parquet file")


# ---------------------------------------------------------------- validate_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    make_images(tmp_path, 3)
    rows = [pair_row(i) for i in range(3)]
    import_dataset(write_json(tmp_path, rows), tmp_path / "ds")
    return tmp_path / "ds"


def test_validate_passes_on_import(dataset: Path) -> None:
    report = validate_dataset(dataset)
    assert (report.pairs, report.prompts, report.images) == (3, 0, 6)
    assert report.orphan_images == [] and report.duplicate_pairs == []
    assert report.by_split == {"train": {"pairs": 3, "prompts": 0}}


def test_validate_corrupt_image(dataset: Path) -> None:
    (dataset / load_dataset(dataset).pairs[1].image2).write_bytes(truncated_png())
    with pytest.raises(DataError, match=loc("pairs.jsonl", 2, "image2") + "cannot be decoded"):
        validate_dataset(dataset)


def test_validate_deleted_image(dataset: Path) -> None:
    (dataset / load_dataset(dataset).pairs[2].image1).unlink()
    with pytest.raises(DataError, match=loc("pairs.jsonl", 3, "image1") + "image file not found"):
        validate_dataset(dataset)


def test_validate_broken_jsonl_row(dataset: Path) -> None:
    path = dataset / "pairs.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=loc("pairs.jsonl", 2) + "invalid JSON"):
        validate_dataset(dataset)


def test_validate_non_rgb_or_non_png_image(dataset: Path) -> None:
    rel = load_dataset(dataset).pairs[0].image1
    write_png(dataset / rel, "L")
    with pytest.raises(DataError, match=loc("pairs.jsonl", 1, "image1") + "mode L, expected RGB"):
        validate_dataset(dataset)
    Image.new("RGB", (8, 8)).save(dataset / rel, format="JPEG")
    with pytest.raises(
        DataError, match=loc("pairs.jsonl", 1, "image1") + r"is not an image in an accepted format \(PNG\)"
    ):
        validate_dataset(dataset)


def test_validate_duplicate_ids_paths_and_counts(dataset: Path) -> None:
    path = dataset / "pairs.jsonl"
    original = path.read_text()
    rows = [json.loads(line) for line in original.splitlines()]

    rows[2]["id"] = rows[0]["id"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=loc("pairs.jsonl", 3, "id") + "duplicate id"):
        validate_dataset(dataset)

    rows[2]["id"] = "fresh"
    rows[2]["image1"] = "../outside.png"
    write_png(dataset.parent / "outside.png")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=loc("pairs.jsonl", 3, "image1") + "must be relative and inside the dataset"):
        validate_dataset(dataset)

    path.write_text(original)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["counts"]["pairs"] = 4
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=loc("manifest.json", field="counts.pairs") + "manifest says 4"):
        validate_dataset(dataset)


def test_validate_reports_orphans(dataset: Path) -> None:
    write_png(dataset / "images/stray.png")
    assert validate_dataset(dataset).orphan_images == ["images/stray.png"]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (16, 8), (10, 200, 10)).save(tmp_path / "photo.jpg", exif=exif)
    import_dataset(write_json(tmp_path, [pair_row(0, image1="photo.jpg", image2=None)]), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    with Image.open(ds.image_path(ds.pairs[0].image1)) as im:
        assert im.size == (8, 16)


def test_refuses_input_inside_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    import_dataset(write_json(tmp_path, [pair_row(0, images=False)]), out)
    inside = write_json(out, [pair_row(1, images=False)], name="more.json")
    with pytest.raises(DataError, match=loc("more.json") + "inside the output directory"):
        import_dataset(inside, out)
    assert inside.exists()
