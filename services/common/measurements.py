"""The wearable measurement vocabulary: medstream metric name -> code, UCUM unit and plausible range.

Shared by the ingestion gateway (normalisation, validation) and the wearables service (features, rules).
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
LOCAL = "urn:medstream:metric"  # where no LOINC code fits a device measurement


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    system: str
    code: str
    unit: str  # UCUM
    low: float  # plausible physiological/device range, inclusive
    high: float
    display: str


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("heart_rate", LOINC, "8867-4", "/min", 20, 300, "Heart rate"),
        MetricSpec("rr_interval", LOCAL, "rr-interval", "ms", 200, 3000, "R-R interval (beat to beat)"),
        MetricSpec("oxygen_saturation", LOINC, "59408-5", "%", 50, 100, "SpO2 by pulse oximetry"),
        MetricSpec("steps", LOINC, "55423-8", "{steps}", 0, 1000, "Steps in the reading's interval"),
        MetricSpec("skin_temperature", LOINC, "39106-0", "Cel", 20, 45, "Skin temperature"),
        MetricSpec("glucose", LOINC, "99504-3", "mg/dL", 20, 600, "Glucose in interstitial fluid (CGM)"),
        MetricSpec("sleep_stage", LOCAL, "sleep-stage", "{stage}", 0, 3, "Sleep stage: 0 wake, 1 light, 2 deep, 3 REM"),
    )
}
