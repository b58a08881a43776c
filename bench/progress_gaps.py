"""How often each Prefect task of a pipeline run reported progress, read from its redirected log.

    ./uvw run focusdiff pipeline > run.log 2>&1
    python bench/progress_gaps.py run.log

Prints, per task run: its duration, its progress lines (a stage's `done/total` or
`generating:` lines) and the longest silence between its first line, its progress lines
and its last line. Issue 25 asks for at most a minute in the judge, train and evaluate tasks.
"""

from __future__ import annotations

import datetime
import re
import sys

TASK_LINE = re.compile(r"(\d\d:\d\d:\d\d\.\d+) \| INFO\s+\| Task run '([^']+)' - (.*)")
PROGRESS = re.compile(r"steps \(|generating:|: \d+/\d+ ")


def main(path: str) -> None:
    tasks: dict[str, list[tuple[datetime.datetime, str]]] = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        m = TASK_LINE.match(line.rstrip("\n"))
        if m:
            t = datetime.datetime.strptime(m.group(1), "%H:%M:%S.%f")
            tasks.setdefault(m.group(2), []).append((t, m.group(3)))
    if not tasks:
        raise SystemExit(f"{path}: no Prefect task lines (was it `focusdiff pipeline`'s output?)")
    for name, events in tasks.items():
        progress = [t for t, msg in events if PROGRESS.search(msg)]
        points = [events[0][0], *progress, events[-1][0]]
        longest = max((b - a).total_seconds() for a, b in zip(points, points[1:]))
        print(f"{name:40s} {(events[-1][0] - events[0][0]).total_seconds():6.0f} s  "
              f"progress lines {len(progress):3d}  longest silence {longest:5.1f} s")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/progress_gaps.py <pipeline log>")
    main(sys.argv[1])
