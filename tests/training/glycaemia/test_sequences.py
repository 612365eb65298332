import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.glycaemia.sequences import (
    EVENT_READINGS,
    HORIZON,
    HYPO_MG_DL,
    WINDOW,
    to_grid,
    windows,
)

pytestmark = pytest.mark.unit


def series(future: list[float], history: float = 120.0) -> np.ndarray:
    """One window of steady history followed by a horizon that starts with `future` and stays at 110."""
    tail = future + [110.0] * (HORIZON - len(future))
    return np.array([history] * WINDOW + tail, dtype=np.float32)


def test_one_window_per_complete_span():
    x, y = windows(np.full(WINDOW + HORIZON + 4, 120.0))
    assert x.shape == (5, WINDOW) and x.dtype == np.float32
    assert y.tolist() == [0.0] * 5
    assert windows(np.full(WINDOW + HORIZON - 1, 120.0))[0].shape == (0, WINDOW)


def test_three_consecutive_lows_within_the_hour_are_an_event():
    assert windows(series([100, 90, 80, 69, 65, 62]))[1].tolist() == [1.0]
    late = [100.0] * (HORIZON - EVENT_READINGS) + [65.0] * EVENT_READINGS  # last 15 min of the horizon
    assert windows(series(late))[1].tolist() == [1.0]


def test_short_or_broken_dips_are_not():
    assert windows(series([90, 68, 66, 75]))[1].tolist() == [0.0]  # 10 min below
    assert windows(series([68, 66, 71, 65, 64, 72]))[1].tolist() == [0.0]  # interrupted
    assert windows(series([100.0] * (HORIZON - 2) + [65.0, 60.0]))[1].tolist() == [0.0]  # would finish after 60 min
    assert windows(series([HYPO_MG_DL] * HORIZON))[1].tolist() == [0.0]  # 70 itself is not below 70


def test_window_ending_in_hypoglycaemia_is_left_out():
    g = series([60, 60, 60])
    g[WINDOW - 1] = 65.0
    assert len(windows(g)[1]) == 0


def test_gaps_drop_every_window_that_touches_them():
    span = WINDOW + HORIZON
    g = np.full(100, 120.0, dtype=np.float32)
    g[50] = np.nan
    x, y = windows(g)
    assert len(y) == (len(g) - span + 1) - span  # the `span` windows that start at 50 - span + 1 .. 50
    assert not np.isnan(x).any()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(40, 200) | st.just(float("nan")), min_size=WINDOW + HORIZON, max_size=80))
def test_labels_match_a_reading_by_reading_definition(values):
    g = np.array(values, dtype=np.float32)
    expected = []
    for start in range(len(g) - WINDOW - HORIZON + 1):
        span = g[start : start + WINDOW + HORIZON]
        if np.isnan(span).any() or span[WINDOW - 1] < HYPO_MG_DL:
            continue
        run = longest = 0
        for v in span[WINDOW:]:
            run = run + 1 if v < HYPO_MG_DL else 0
            longest = max(longest, run)
        expected.append(float(longest >= EVENT_READINGS))
    assert windows(g)[1].tolist() == expected


def test_grid_interpolates_jittered_readings_and_keeps_long_gaps_empty():
    minutes = np.array([0.0, 5.0, 9.9, 15.1, 20.0, 30.0, 45.0, 50.0])
    glucose = np.array([100, 105, 110, 115, 120, 130, 145, 150], dtype=np.float64)
    grid = to_grid(minutes, glucose)
    assert grid.dtype == np.float32 and len(grid) == 11  # 0, 5, ..., 50
    np.testing.assert_allclose(grid[:5], [100, 105, 110.1, 114.9, 120], atol=0.05)
    assert grid[5] == pytest.approx(125)  # one missing reading (10 min gap) is bridged
    assert np.isnan(grid[7:9]).all()  # a 15-minute gap is not
    assert grid[6] == 130 and grid[10] == 150
    assert len(to_grid(np.array([]), np.array([]))) == 0
