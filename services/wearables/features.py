"""Features over windows (pure): hourly summaries, HRV RMSSD, desaturation, CGM time in range, CV, MAGE."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from services.wearables.windows import HourWindow, Minute

DESATURATION_THRESHOLD = 90.0  # % SpO2, 1-minute mean
TIR_LOW, TIR_HIGH = 70.0, 180.0  # mg/dL, international consensus (Battelino 2019)


def hourly_summary(window: HourWindow) -> dict[str, float]:
    minutes = window.minutes
    n = sum(m.n for m in minutes)
    mean = sum(m.mean * m.n for m in minutes) / n
    # pooled variance: within-minute deviations plus between-minute spread
    m2 = sum(m.m2 + m.n * (m.mean - mean) ** 2 for m in minutes)
    return {
        "n": float(n),
        "minutes": float(len(minutes)),
        "mean": mean,
        "min": min(m.min for m in minutes),
        "max": max(m.max for m in minutes),
        "sd": math.sqrt(m2 / (n - 1)) if n > 1 else 0.0,
    }


def rmssd_ms(minutes: Sequence[Minute]) -> float | None:
    """Root mean square of successive RR differences (ms) over the minutes."""
    n = sum(m.ssd_n for m in minutes)
    return math.sqrt(sum(m.ssd_sum for m in minutes) / n) if n else None


def desaturation(minutes: Sequence[Minute], threshold: float = DESATURATION_THRESHOLD) -> tuple[int, int]:
    """(minutes with mean SpO2 below threshold, events = runs of consecutive such minutes)."""
    low = [m.mean < threshold for m in sorted(minutes, key=lambda m: m.start)]
    starts = [m.start for m in sorted(minutes, key=lambda m: m.start)]
    events = 0
    for i, is_low in enumerate(low):
        if is_low and (i == 0 or not low[i - 1] or starts[i] - starts[i - 1] > 60):
            events += 1
    return sum(low), events


def glucose_summary(readings: Sequence[float]) -> dict[str, float]:
    """Consensus CGM metrics over a series of readings (mg/dL)."""
    n = len(readings)
    mean = sum(readings) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in readings) / (n - 1)) if n > 1 else 0.0
    return {
        "n": float(n),
        "mean": mean,
        "sd": sd,
        "cv_percent": 100.0 * sd / mean if mean else 0.0,
        "tir_percent": 100.0 * sum(TIR_LOW <= g <= TIR_HIGH for g in readings) / n,
        "tbr_percent": 100.0 * sum(g < TIR_LOW for g in readings) / n,
        "tar_percent": 100.0 * sum(g > TIR_HIGH for g in readings) / n,
        "gmi_percent": 3.31 + 0.02392 * mean,  # glucose management indicator (Bergenstal 2018)
        "mage": mage(readings, sd),
    }


def mage(readings: Sequence[float], sd: float | None = None) -> float:
    """Mean amplitude of glycaemic excursions (after Service 1970): the mean of swings between consecutive
    peaks and nadirs that exceed 1 SD of the series, counting rises and falls."""
    if len(readings) < 3:
        return 0.0
    if sd is None:
        mean = sum(readings) / len(readings)
        sd = math.sqrt(sum((g - mean) ** 2 for g in readings) / (len(readings) - 1))
    # turning points of the series with plateaus collapsed
    values = [readings[0]]
    for g in readings[1:]:
        if g != values[-1]:
            values.append(g)
    turns = [values[0]]
    for i in range(1, len(values) - 1):
        if (values[i] - values[i - 1]) * (values[i + 1] - values[i]) < 0:
            turns.append(values[i])
    turns.append(values[-1])
    # swings between consecutive turning points, both directions, that exceed 1 SD
    amplitudes = [abs(b - a) for a, b in pairwise(turns) if abs(b - a) > sd]
    return sum(amplitudes) / len(amplitudes) if amplitudes else 0.0
