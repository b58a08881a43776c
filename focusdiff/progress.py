"""One progress reporter for every long stage (judge training, Pair-GRPO, evaluation, generation).

Domain code never sees this module: it takes a plain callback, `on_progress(done, metrics)` or
`advance(n)`, and the stage (or CLI command, or flow task) that runs it builds the reporter and
passes `reporter.update` or `reporter.advance`. Where the output goes is decided once, here:

- inside a Prefect flow or task run: log lines through its run logger (they show in the UI);
- else, with stderr a terminal: a rich progress bar;
- else (a redirected log, a `dvc repro` the pipeline runs): log lines through the
  `focusdiff.progress` logger, which `log_to_stderr()` (called by the CLI) sends to stderr.

A log line is written for the first update, then at most every `every_s` seconds, and always
for the last step: done/total, rate, ETA and the caller's key metrics, rounded for reading.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DEFAULT_EVERY_S = 30.0
LOGGER_NAME = "focusdiff.progress"

OnProgress = Callable[[int, Mapping[str, float]], None]


def significant(value: float, digits: int = 3) -> str:
    """A number rounded for reading: 3 significant digits, no exponent below a million."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text and 1e-4 <= abs(value) < 1e6:  # :g switches to exponents early (e.g. 1.23e+03)
        decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
        text = f"{value:.{decimals}f}"
    return text


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def metric_text(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """`name value` for each of `keys` present in `metrics` (all of them without `keys`); a name
    shows only its last path part (`train/reward_mean` -> `reward_mean`)."""
    chosen = [k for k in (keys if keys is not None else metrics) if k in metrics]
    return " ".join(f"{k.rsplit('/', 1)[-1]} {significant(metrics[k])}" for k in chosen)


def run_logger() -> logging.Logger | logging.LoggerAdapter | None:
    """The Prefect run logger when called inside a flow or task run, else None. Prefect is not
    imported for this: a process that has not imported it is in no run."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    from prefect.logging import get_run_logger

    return get_run_logger()


def log_to_stderr() -> None:
    """Send the `focusdiff` loggers' INFO lines (progress included) to stderr, timestamped: the
    CLI's setup. Only focusdiff's: a root config would also print every HTTP request httpx logs."""
    logger = logging.getLogger("focusdiff")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a library's root handler must not print each line twice


class Reporter:
    """Progress of one loop of `total` units (None: unknown), from `start` (a resumed run).

    `update(done, metrics)` sets the units done so far; `advance(n)` adds n. Use it as a context
    manager (or call `close()`), so the bar stops and the final line is written on any exit."""

    def __init__(self, name: str, total: int | None, *, start: int = 0, unit: str = "steps",
                 describe: Callable[[Mapping[str, float]], str] = metric_text, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.name, self.total, self.start, self.unit = name, total, start, unit
        self.describe, self.every_s, self.clock = describe, every_s, clock
        self.done, self.metrics = start, {}
        self._started = clock()
        self._first: tuple[float, int] | None = None  # (when, done) at the first update
        self._last_line_at: float | None = None
        self._last_line_done: int | None = None
        self._closed = False
        self.logger = logger or run_logger()
        in_terminal = sys.stderr.isatty() if tty is None else tty
        self._bar = self._task = None
        if self.logger is None:
            if in_terminal:
                self._start_bar()
            else:
                self.logger = logging.getLogger(LOGGER_NAME)

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(f"[bold]{self.name}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn(self.unit), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=Console(stderr=True))
        self._task = self._bar.add_task(self.name, total=self.total, completed=self.start, info="")
        self._bar.start()

    def update(self, done: int, metrics: Mapping[str, float] | None = None) -> None:
        self.done = done
        if self._first is None:
            self._first = (self.clock(), done)
        if metrics is not None:
            self.metrics = dict(metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=self.describe(self.metrics))
            return
        now = self.clock()
        finished = self.total is not None and done >= self.total
        if self._last_line_at is None or now - self._last_line_at >= self.every_s or finished:
            self._write_line(now)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def line(self, now: float) -> str:
        """`name: done/total unit (pct) | rate | ETA | metrics`, the parts that are known."""
        elapsed = now - self._started
        # the rate from the first update on, once there is one: set-up before the loop (loading
        # models, building a vocabulary) is not a step and would make every early ETA too long
        since, done_then = self._first if self._first and self.done > self._first[1] else (self._started, self.start)
        rate = (self.done - done_then) / (now - since) if now > since else 0.0
        if self.total is None:
            parts = [f"{self.name}: {self.done} {self.unit}"]
        else:
            pct = 100 * self.done / self.total if self.total else 100.0
            parts = [f"{self.name}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"]
        parts.append(f"{significant(rate)} {self.unit}/s")
        if self.total is not None:
            left = self.total - self.done
            parts.append("done in " + duration(elapsed) if left <= 0 else
                         f"ETA {duration(left / rate)}" if rate > 0 else "ETA unknown")
        if text := self.describe(self.metrics):
            parts.append(text)
        return " | ".join(parts)

    def _write_line(self, now: float) -> None:
        self.logger.info(self.line(now))
        self._last_line_at, self._last_line_done = now, self.done

    def close(self) -> None:
        """Stop the bar, or write the last state if no line showed it yet (a loop of unknown
        length ending, or one stopped by an error)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
        elif self._last_line_done != self.done:
            self._write_line(self.clock())

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
