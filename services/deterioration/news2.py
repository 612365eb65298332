"""NEWS2 (Royal College of Physicians, 2017) aggregate score and the feature vector the risk model reads.

Pure functions over plain values: the training data labels and the serving features come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Consciousness levels as in the VitalSignsSnapshot enum: 1 = alert; 2..5 = new confusion, voice, pain, unresponsive.
ALERT = 1

FEATURES = (
    "respiratory_rate",
    "oxygen_saturation",
    "on_supplemental_oxygen",
    "body_temperature",
    "systolic_blood_pressure",
    "heart_rate",
    "not_alert",
)


@dataclass(frozen=True, slots=True)
class Vitals:
    respiratory_rate: float
    oxygen_saturation: float
    on_supplemental_oxygen: bool
    body_temperature: float
    systolic_blood_pressure: float
    heart_rate: float
    consciousness: int = ALERT


def _band(value: float, bands: tuple[tuple[float, int], ...], above: int) -> int:
    """Score of the first band whose upper bound (inclusive) holds `value`."""
    for upper, score in bands:
        if value <= upper:
            return score
    return above


def news2_score(v: Vitals) -> int:
    """NEWS2 aggregate score using SpO2 scale 1."""
    score = _band(v.respiratory_rate, ((8, 3), (11, 1), (20, 0), (24, 2)), 3)
    score += _band(v.oxygen_saturation, ((91, 3), (93, 2), (95, 1)), 0)
    score += 2 if v.on_supplemental_oxygen else 0
    score += _band(v.body_temperature, ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1)), 2)
    score += _band(v.systolic_blood_pressure, ((90, 3), (100, 2), (110, 1), (219, 0)), 3)
    score += _band(v.heart_rate, ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2)), 3)
    score += 0 if v.consciousness == ALERT else 3
    return score


def urgent_response(v: Vitals) -> bool:
    """NEWS2's urgent-response trigger: aggregate >= 5 or any single parameter scoring 3."""
    if news2_score(v) >= 5:
        return True
    single = (
        _band(v.respiratory_rate, ((8, 3), (11, 1), (20, 0), (24, 2)), 3),
        _band(v.oxygen_saturation, ((91, 3), (93, 2), (95, 1)), 0),
        _band(v.body_temperature, ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1)), 2),
        _band(v.systolic_blood_pressure, ((90, 3), (100, 2), (110, 1), (219, 0)), 3),
        _band(v.heart_rate, ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2)), 3),
        0 if v.consciousness == ALERT else 3,
    )
    return max(single) == 3


def features(v: Vitals) -> np.ndarray:
    """Raw-unit feature vector in FEATURES order (the model normalises internally)."""
    return np.array(
        [
            v.respiratory_rate,
            v.oxygen_saturation,
            float(v.on_supplemental_oxygen),
            v.body_temperature,
            v.systolic_blood_pressure,
            v.heart_rate,
            float(v.consciousness != ALERT),
        ],
        dtype=np.float32,
    )
