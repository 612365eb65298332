"""One vendor batch in, per-patient sample batches and per-sample rejections out (pure)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import wearable_pb2

from services.common.measurements import LOINC, METRICS
from services.wearables_gateway.registry import Vendor
from services.wearables_gateway.templates import Measurement, Rejection, Template, apply

MAX_READINGS = 10_000


@dataclass(frozen=True)
class Limits:
    clock_skew: timedelta = timedelta(minutes=5)  # device clocks run a little ahead
    max_age: timedelta = timedelta(days=7)  # older data is a backfill job, not a stream


@dataclass
class BatchOutcome:
    batches: list[wearable_pb2.WearableSampleBatch] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    error: str = ""

    @property
    def accepted(self) -> int:
        return sum(len(b.samples) for b in self.batches)


def content_hash(device_type: str, readings: Sequence[Mapping[str, Any]]) -> str:
    canonical = json.dumps([device_type, list(readings)], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check(m: Measurement, now: datetime, limits: Limits) -> str | None:
    """Why a normalised measurement is not acceptable, or None."""
    spec = METRICS[m.metric]
    if not math.isfinite(m.value) or not spec.low <= m.value <= spec.high:
        return f"{m.metric} {m.value:g} {spec.unit} outside {spec.low:g}..{spec.high:g}"
    if m.time > now + limits.clock_skew:
        return f"timestamp {m.time.isoformat()} is in the future"
    if m.time < now - limits.max_age:
        return f"timestamp {m.time.isoformat()} is older than {limits.max_age.days} days"
    return None


def process(
    vendor: Vendor,
    device_type: str,
    readings: Sequence[Mapping[str, Any]],
    templates: Mapping[str, Template],
    idempotency_key: str,
    now: datetime,
    limits: Limits = Limits(),
) -> BatchOutcome:
    template = templates.get(device_type)
    if template is None:
        return BatchOutcome(error=f"unknown device type {device_type!r}")
    if vendor.device_types and device_type not in vendor.device_types:
        return BatchOutcome(error=f"vendor may not send device type {device_type!r}")
    if len(readings) > MAX_READINGS:
        return BatchOutcome(error=f"more than {MAX_READINGS} readings in one batch")
    outcome = BatchOutcome()
    per_patient: dict[str, list[wearable_pb2.WearableSample]] = defaultdict(list)
    received = Timestamp()
    received.FromDatetime(now)
    for index, reading in enumerate(readings):
        if not isinstance(reading, Mapping):
            outcome.rejections.append(Rejection(index, "", "reading is not an object"))
            continue
        measurements, rejections = apply(template, reading, index)
        outcome.rejections += rejections
        for m in measurements:
            patient_id = vendor.patient_for(m.device_id)
            if patient_id is None:
                outcome.rejections.append(Rejection(index, template.device_id_field, "device not registered to vendor"))
                break
            problem = check(m, now, limits)
            if problem:
                field_name = next(f.source for f in template.mappings if f.metric == m.metric)
                outcome.rejections.append(Rejection(index, field_name, problem))
                continue
            spec = METRICS[m.metric]
            effective = Timestamp()
            effective.FromDatetime(m.time)
            per_patient[patient_id].append(
                wearable_pb2.WearableSample(
                    device_id=m.device_id,
                    patient_id=patient_id,
                    loinc_code=spec.code,
                    value=m.value,
                    unit=spec.unit,
                    effective_time=effective,
                    metric=m.metric,
                    code_system="" if spec.system == LOINC else spec.system,
                )
            )
    for _, samples in sorted(per_patient.items()):
        outcome.batches.append(
            wearable_pb2.WearableSampleBatch(
                vendor_id=vendor.vendor_id, idempotency_key=idempotency_key, samples=samples, received_at=received
            )
        )
    return outcome
