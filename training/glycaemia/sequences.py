"""CGM sequences on a 5-minute grid (pure): regridding, model input windows and the hypoglycaemia label.

The window and horizon come from the model's contract (services/wearables/contract.py): the model reads the
last `WINDOW` readings (2 h) in raw mg/dL; the label says whether a hypoglycaemic event (`EVENT_READINGS`
consecutive readings below `HYPO_MG_DL`, i.e. at least 15 min, the consensus level-1 event) happens within the
next `HORIZON` readings (60 min). Windows that end in hypoglycaemia already are left out: that is a threshold
alarm, not a prediction.
"""

from __future__ import annotations

import numpy as np

from services.wearables.contract import HORIZON_S, STEP_S, WINDOW

STEP_MIN = STEP_S // 60
HORIZON = HORIZON_S // STEP_S  # readings ahead: 60 min
HYPO_MG_DL = 70.0
EVENT_READINGS = 3  # consecutive readings below HYPO_MG_DL: 15 min
MAX_GAP_MIN = 10.5  # interpolate across one missing reading at most; longer gaps stay missing


def to_grid(minutes: np.ndarray, glucose: np.ndarray, max_gap_min: float = MAX_GAP_MIN) -> np.ndarray:
    """Readings at ascending times (minutes) linearly interpolated onto a 5-minute grid starting at the first.

    A grid point inside a gap longer than `max_gap_min` between readings is NaN, so no window uses it.
    """
    minutes = np.asarray(minutes, dtype=np.float64)
    glucose = np.asarray(glucose, dtype=np.float64)
    if len(minutes) == 0:
        return np.empty(0, dtype=np.float32)
    grid = minutes[0] + STEP_MIN * np.arange(int((minutes[-1] - minutes[0]) // STEP_MIN) + 1)
    values = np.interp(grid, minutes, glucose)
    right = np.searchsorted(minutes, grid, side="left")  # first reading at or after each grid point
    left = np.maximum(right - 1, 0)
    on_reading = np.isclose(minutes[right], grid, rtol=0.0, atol=1e-6)
    values[(minutes[right] - minutes[left] > max_gap_min) & ~on_reading] = np.nan
    return values.astype(np.float32)


def windows(glucose_5min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every complete (no NaN) input window with its label: X [n, WINDOW] mg/dL float32, y [n] float32 0/1."""
    g = np.asarray(glucose_5min, dtype=np.float32)
    span = WINDOW + HORIZON
    if len(g) < span:
        return np.empty((0, WINDOW), dtype=np.float32), np.empty(0, dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(g, span)
    complete = ~np.isnan(view).any(axis=1)
    keep = view[complete & (view[:, WINDOW - 1] >= HYPO_MG_DL)]
    low = keep[:, WINDOW:] < HYPO_MG_DL
    # an event starts at offset k when EVENT_READINGS readings from k on are all low
    starts = HORIZON - EVENT_READINGS + 1
    event = np.ones((len(keep), starts), dtype=bool)
    for k in range(EVENT_READINGS):
        event &= low[:, k : k + starts]
    return np.ascontiguousarray(keep[:, :WINDOW]), event.any(axis=1).astype(np.float32)
