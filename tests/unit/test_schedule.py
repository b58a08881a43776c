"""The bootstrap learning-rate schedule against hand-computed values."""

import pytest

from focusdiff.schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    lr, warmup, total, floor = 1.0, 4, 14, 0.1
    assert warmup_cosine(0, lr, warmup, total, floor) == pytest.approx(0.25)  # (0 + 1) / 4
    assert warmup_cosine(3, lr, warmup, total, floor) == pytest.approx(1.0)
    assert warmup_cosine(4, lr, warmup, total, floor) == pytest.approx(1.0)  # cosine starts at the peak
    assert warmup_cosine(9, lr, warmup, total, floor) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert warmup_cosine(14, lr, warmup, total, floor) == pytest.approx(0.1)  # the floor


def test_no_warmup():
    assert warmup_cosine(0, 2e-3, 0, 10, 0.0) == pytest.approx(2e-3)
