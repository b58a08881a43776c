"""PairComp's HTML report: the headline numbers with their intervals, the deviations from
the official protocol, then the worst pairs' four images side by side with their scores,
so a reader sees what the gate's number is made of. Self-contained: the page links the
images by their path in the benchmark folder (report.html sits beside images/).
"""

from __future__ import annotations

import html

import numpy as np

from focusdiff.eval import paircomp


def paircomp_report(pairs: list[paircomp.PairCompPair], matrix: np.ndarray, metrics: dict[str, float],
                    intervals: dict[str, list[float]], deviations: list[str], worst: int) -> str:
    """A self-contained HTML page: headline numbers, then the worst pairs' 4 images with scores."""
    head = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td>"
        f"<td>{'' if k not in intervals else f'[{intervals[k][0]:.1f}, {intervals[k][1]:.1f}]'}</td></tr>"
        for k, v in metrics.items())
    rows = []
    for pair, g, scores in paircomp.worst_pairs(pairs, matrix, worst):
        cells = "".join(
            f"<td><img src='images/{paircomp.image_file(pair.index, c, i)}' width=128 style='image-rendering:pixelated'>"
            f"<br>{scores[2 * c + i]:.3f}</td>" for c in range(2) for i in range(2))
        rows.append(f"<tr><td>#{pair.index} {html.escape(pair.category)}<br>g={g:.3f}<br>1: {html.escape(pair.caption1)}"
                    f"<br>2: {html.escape(pair.caption2)}</td>{cells}</tr>")
    devs = "".join(f"<li>{html.escape(d)}</li>" for d in deviations)
    return (f"<!doctype html><meta charset=utf-8><title>PairComp</title><h1>PairComp</h1>"
            f"<table border=1><tr><th>metric (x100)</th><th>value</th><th>95% interval</th></tr>{head}</table>"
            f"<h2>Deviations from the official protocol</h2><ul>{devs or '<li>none</li>'}</ul>"
            f"<h2>Worst pairs (lowest geometric mean)</h2><table border=1>{''.join(rows)}</table>")
