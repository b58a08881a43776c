"""A 5x7 bitmap font for the text category (glyphs rendered on the canvas).

Only glyphs whose bitmap touches all four edges of the 5x7 cell are used, so the
checker can crop a glyph by its bounding box and sample the grid without knowing
where the cell was; and any two used glyphs differ in at least 4 cells, so they
stay distinguishable after a VQ round trip.
"""

from __future__ import annotations

import numpy as np

_FONT_ROWS: dict[str, str] = {
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
}
MIN_GLYPH_DISTANCE = 4


def _bitmap(rows: str) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows.split()], dtype=bool)


def _touches_all_edges(b: np.ndarray) -> bool:
    return bool(b[0].any() and b[-1].any() and b[:, 0].any() and b[:, -1].any())


def _select_glyphs() -> dict[str, np.ndarray]:
    chosen: dict[str, np.ndarray] = {}
    for ch, rows in _FONT_ROWS.items():
        b = _bitmap(rows)
        if not _touches_all_edges(b):
            continue
        if all(int((b != o).sum()) >= MIN_GLYPH_DISTANCE for o in chosen.values()):
            chosen[ch] = b
    return chosen


GLYPHS: dict[str, np.ndarray] = _select_glyphs()
GLYPH_CHARS: tuple[str, ...] = tuple(GLYPHS)
