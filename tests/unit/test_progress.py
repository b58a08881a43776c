"""The progress reporter (focusdiff/progress.py) in log mode, and the flows' result artifacts'
text (flows/artifacts.py): what a redirected log and the Prefect UI show.

The terminal bar is rich's and is not tested here; `tests/unit/test_cli.py` runs a stage with its
stderr redirected, and `tests/integration/test_pipeline.py` reads the progress lines and artifacts of a
pipeline flow run back from Prefect.
"""

from __future__ import annotations

import logging

import pytest

from flows.artifacts import result_markdown, rounded_summary, run_link, version_link
from focusdiff.progress import Reporter, duration, metric_text, significant


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    logger = logging.getLogger("tests.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    yield logger, handler.lines
    logger.removeHandler(handler)


def test_log_lines_come_first_then_at_the_interval_and_always_last(lines):
    logger, out = lines
    clock = FakeClock()
    with Reporter("train", 10, every_s=30, clock=clock, tty=False, logger=logger,
                  describe=lambda m: metric_text(m, ("train/reward_mean",))) as progress:
        for step in range(10):
            clock.now += 12  # 12 s a step: a line at steps 1, 4 (36 s after the first), 7, and the last
            progress.update(step + 1, {"train/reward_mean": 0.123456 * step, "train/kl": 1.0})
    assert [line.split(" ", 1)[1].split(" ", 1)[0] for line in out] == ["1/10", "4/10", "7/10", "10/10"]
    assert out[0] == "train: 1/10 steps (10%) | 0.0833 steps/s | ETA 1m48s | reward_mean 0"
    assert out[1] == "train: 4/10 steps (40%) | 0.0833 steps/s | ETA 1m12s | reward_mean 0.37"
    assert out[-1] == "train: 10/10 steps (100%) | 0.0833 steps/s | done in 2m00s | reward_mean 1.11"


def test_a_resumed_run_counts_its_rate_from_where_it_started(lines):
    logger, out = lines
    clock = FakeClock()
    with Reporter("train", 100, start=90, clock=clock, tty=False, logger=logger) as progress:
        clock.now += 5
        progress.update(91, {})
    assert out == ["train: 91/100 steps (91%) | 0.2 steps/s | ETA 45s"]


def test_unknown_total_and_an_early_stop_still_end_with_a_line(lines):
    logger, out = lines
    clock = FakeClock()
    with Reporter("paircomp: generating", None, unit="images", clock=clock, tty=False, logger=logger) as progress:
        for _ in range(5):
            clock.now += 4
            progress.advance(8)
    assert out == ["paircomp: generating: 8 images | 2 images/s", "paircomp: generating: 40 images | 2 images/s"]

    out.clear()
    with pytest.raises(RuntimeError):
        with Reporter("judge", 10, clock=clock, tty=False, logger=logger) as progress:
            progress.update(1)
            clock.now += 1
            progress.update(2)
            raise RuntimeError("stopped")
    assert [line.split(" | ")[0] for line in out] == ["judge: 1/10 steps (10%)", "judge: 2/10 steps (20%)"]


def test_outside_a_run_without_a_terminal_lines_go_to_the_focusdiff_logger(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="focusdiff.progress"):
        with Reporter("judge", 2, clock=clock, tty=False) as progress:
            progress.update(1)
            progress.update(2)
    assert [r.name for r in caplog.records] == ["focusdiff.progress"] * 2


def test_numbers_are_rounded_for_reading():
    assert [significant(v) for v in (0.123456, 24.5678, 1234.5, 0.000123456, 0, 3, float("nan"))] == \
        ["0.123", "24.6", "1234", "0.000123", "0", "3", "nan"]
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m05s"]
    assert metric_text({"judge/loss": 0.51234, "judge/lr": 1e-3}, ("judge/loss", "judge/missing")) == "loss 0.512"


def test_result_markdown_rounds_and_links_without_credentials():
    metrics = {"paircomp.s_g": 24.56789123456, "paircomp.s_a": 61.0}
    intervals = {"paircomp.s_g": [20.123456, 29.987654]}
    text = result_markdown("focusdiff pipeline", metrics, intervals, {"promote": True, "reasons": ["s_g 24.6 > 20"]},
                           [run_link("https://u:secret@mlflow.example/", "3", "abc", "MLflow pipeline run"),
                            version_link("sqlite:////p/mlflow.db", "focusdiff-shapes", "2")],
                           facts={"judge.test.agreement": 0.99912345})
    assert "| paircomp.s_g | 24.6 | [20.1, 30] |" in text and "| paircomp.s_a | 61 |  |" in text
    assert "- **judge.test.agreement**: 0.999" in text
    assert "## Gate: promoted\n- s_g 24.6 > 20" in text
    assert "[abc](https://***@mlflow.example/#/experiments/3/runs/abc)" in text and "secret" not in text
    assert "`mlflow ui --backend-store-uri sqlite:////p/mlflow.db`" in text and "`models:/focusdiff-shapes/2`" in text
    assert rounded_summary(metrics, intervals) == "paircomp.s_g 24.6 [20.1, 30], paircomp.s_a 61"
