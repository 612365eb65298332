"""Event-time windows over one patient's metric stream (pure).

Tumbling 1-minute windows close once the watermark (latest event time seen) passes their end plus the allowed
lateness; a sample for a closed minute is late and dropped (counted). Hopping 1-hour windows (hop 15 min) are
built from closed minutes. Glucose keeps a rolling 7-day series of raw readings. Duplicate samples (same
time) collapse, so a redelivered batch changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

MINUTE = 60
HOUR = 3600
HOP = 15 * MINUTE
ALLOWED_LATENESS = 2 * MINUTE
GLUCOSE_HORIZON = 7 * 24 * HOUR
KEEP_MINUTES = HOUR // MINUTE + HOP // MINUTE  # enough closed minutes for the next hourly window


@dataclass
class Minute:
    """Aggregate of one closed 1-minute window."""

    start: int
    n: int
    mean: float
    min: float
    max: float
    m2: float  # sum of squared deviations from the mean (for SD over longer windows)
    ssd_sum: float = 0.0  # sum of squared successive differences (RR intervals: RMSSD)
    ssd_n: int = 0
    last: float = math.nan  # last value in time order (successive differences across minutes)


@dataclass
class MetricWindows:
    """Window state of one metric of one patient (JSON-serialisable via `to_dict`/`from_dict`)."""

    watermark: float = -math.inf
    open: dict[int, dict[float, float]] = field(default_factory=dict)  # minute start -> {time: value}
    closed: list[Minute] = field(default_factory=list)
    last_closed: int = -1  # start of the newest closed minute
    hour_emitted_until: int = -1
    glucose: dict[float, float] = field(default_factory=dict)  # time -> mg/dL, last 7 days
    late_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "open": {str(m): [[t, v] for t, v in s.items()] for m, s in self.open.items()},
            "closed": [vars(m) | {"last": None if math.isnan(m.last) else m.last} for m in self.closed],
            "last_closed": self.last_closed,
            "hour_emitted_until": self.hour_emitted_until,
            "glucose": [[t, v] for t, v in self.glucose.items()],
            "late_dropped": self.late_dropped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricWindows:
        return cls(
            watermark=d["watermark"] if d.get("watermark") is not None else -math.inf,
            open={int(m): {float(t): float(v) for t, v in s} for m, s in d.get("open", {}).items()},
            closed=[Minute(**(c | {"last": math.nan if c.get("last") is None else c["last"]})) for c in d["closed"]],
            last_closed=d["last_closed"],
            hour_emitted_until=d["hour_emitted_until"],
            glucose={float(t): float(v) for t, v in d.get("glucose", [])},
            late_dropped=d.get("late_dropped", 0),
        )


@dataclass(frozen=True)
class HourWindow:
    start: int
    end: int
    minutes: tuple[Minute, ...]


@dataclass
class Advance:
    """What one batch of samples closed."""

    minutes: list[Minute] = field(default_factory=list)
    hours: list[HourWindow] = field(default_factory=list)
    late: int = 0
    new_glucose: list[tuple[float, float]] = field(default_factory=list)


def aggregate(start: int, samples: dict[float, float], previous_last: float) -> Minute:
    times = sorted(samples)
    values = [samples[t] for t in times]
    n = len(values)
    mean = sum(values) / n
    m2 = sum((v - mean) ** 2 for v in values)
    chain = ([previous_last] if not math.isnan(previous_last) else []) + values
    diffs = [(b - a) ** 2 for a, b in pairwise(chain)]
    return Minute(start, n, mean, min(values), max(values), m2, sum(diffs), len(diffs), values[-1])


def add_samples(
    state: MetricWindows,
    samples: Iterable[tuple[float, float]],
    is_glucose: bool = False,
    lateness: int = ALLOWED_LATENESS,
) -> Advance:
    """Fold samples (epoch seconds, value) into the state; return what closed."""
    out = Advance()
    for t, v in samples:
        minute = int(t // MINUTE) * MINUTE
        if minute <= state.last_closed:
            out.late += 1
            continue
        bucket = state.open.setdefault(minute, {})
        if t not in bucket and is_glucose:
            out.new_glucose.append((t, v))
        bucket[t] = v
        state.watermark = max(state.watermark, t)
    state.late_dropped += out.late
    for minute in sorted(m for m in state.open if m + MINUTE + lateness <= state.watermark):
        previous_last = state.closed[-1].last if state.closed else math.nan
        agg = aggregate(minute, state.open.pop(minute), previous_last)
        state.closed.append(agg)
        state.last_closed = minute
        out.minutes.append(agg)
    if is_glucose:
        for t, v in out.new_glucose:
            state.glucose[t] = v
        horizon = state.watermark - GLUCOSE_HORIZON
        state.glucose = {t: v for t, v in state.glucose.items() if t > horizon}
    if out.minutes:
        if state.hour_emitted_until < 0:
            state.hour_emitted_until = (out.minutes[0].start // HOP) * HOP
        closed_until = state.last_closed + MINUTE
        end = state.hour_emitted_until + HOP
        while end <= closed_until:
            window = tuple(m for m in state.closed if end - HOUR <= m.start < end)
            if window:
                out.hours.append(HourWindow(end - HOUR, end, window))
            state.hour_emitted_until = end
            end += HOP
        keep_from = state.last_closed - KEEP_MINUTES * MINUTE
        state.closed = [m for m in state.closed if m.start > keep_from]
    return out
