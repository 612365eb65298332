"""From a vital-signs snapshot and the model's risk to a finding, an alert and graph changes (pure)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, finding_pb2, graph_pb2, vitals_pb2

from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.deterioration.contract import ALERT_THRESHOLD
from services.deterioration.news2 import Vitals, news2_score

KIND = "deterioration-risk"
# medstream's own code system for finding kinds: no standard code says "model-estimated NEWS2 trigger risk".
FINDING_KIND_SYSTEM = "urn:medstream:finding-kind"

_NAMESPACE = uuid.UUID("4f1c7a52-8a0e-4c52-9a4b-6d1f0f0c2b11")

# Plausible physiological ranges: outside them the value is a charting or device error, not a patient state.
RANGES = {
    "respiratory_rate": (1.0, 80.0),
    "oxygen_saturation": (40.0, 100.0),
    "body_temperature": (25.0, 45.0),
    "systolic_blood_pressure": (30.0, 300.0),
    "heart_rate": (10.0, 300.0),
}


def validate(s: vitals_pb2.VitalSignsSnapshot) -> list[str]:
    """Contract problems, empty when the snapshot can be scored."""
    problems = []
    if not s.snapshot_id:
        problems.append("snapshot_id is required")
    if not s.patient_id:
        problems.append("patient_id is required")
    if not s.HasField("effective_time"):
        problems.append("effective_time is required")
    for name, (low, high) in RANGES.items():
        value = getattr(s, name)
        if not math.isfinite(value) or not low <= value <= high:
            problems.append(f"{name}={value} outside {low}..{high}")
    if s.consciousness == vitals_pb2.CONSCIOUSNESS_UNSPECIFIED:
        problems.append("consciousness is required")
    return problems


def to_vitals(s: vitals_pb2.VitalSignsSnapshot) -> Vitals:
    return Vitals(
        s.respiratory_rate,
        s.oxygen_saturation,
        s.on_supplemental_oxygen,
        s.body_temperature,
        s.systolic_blood_pressure,
        s.heart_rate,
        int(s.consciousness),
    )


def severity(risk: float) -> int:
    if risk >= 0.9:
        return finding_pb2.SEVERITY_HIGH
    if risk >= ALERT_THRESHOLD:
        return finding_pb2.SEVERITY_MEDIUM
    return finding_pb2.SEVERITY_LOW


@dataclass(frozen=True)
class Assessment:
    finding: finding_pb2.Finding
    alert: alert_pb2.Alert | None
    mutation: graph_pb2.GraphMutation


def assess(
    s: vitals_pb2.VitalSignsSnapshot, risk: float, model: common_pb2.ModelRef, provenance: common_pb2.Provenance
) -> Assessment:
    # Same snapshot + same model version => same ids, so replays and redeliveries are idempotent downstream.
    finding_id = str(uuid.uuid5(_NAMESPACE, f"{s.snapshot_id}|{KIND}|{model.name}|{model.version}"))
    news2 = news2_score(to_vitals(s))
    sev = severity(risk)
    summary = f"Deterioration risk {risk:.2f} (NEWS2 {news2}) from {model.name} v{model.version}"
    finding = finding_pb2.Finding(
        finding_id=finding_id,
        patient_id=s.patient_id,
        kind=KIND,
        code=finding_pb2.Coding(system=FINDING_KIND_SYSTEM, code=KIND, display="Risk of NEWS2 urgent-response trigger"),
        score=risk,
        severity=sev,
        model=model,
        effective_time=s.effective_time,
        summary=summary,
        measurements=[finding_pb2.Measurement(name="news2_score", value=float(news2), unit="{score}")],
        provenance=provenance,
    )
    alert = None
    if risk >= ALERT_THRESHOLD:
        raised = Timestamp()
        raised.GetCurrentTime()
        alert = alert_pb2.Alert(
            alert_id=str(uuid.uuid5(_NAMESPACE, f"alert|{finding_id}")),
            patient_id=s.patient_id,
            kind="deterioration",
            severity=sev,
            summary=summary,
            raised_at=raised,
            window_start=s.effective_time,
            window_end=s.effective_time,
            rule_id="",
            model=model,
            finding_id=finding_id,
        )
    patient = Node("Patient", s.patient_id)
    finding_node = Node(
        "Finding",
        finding_id,
        {
            "kind": KIND,
            "score": round(risk, 6),
            "severity": finding_pb2.Severity.Name(sev),  # type: ignore[arg-type]
            "news2": news2,
            "effective_time": s.effective_time.ToJsonString(),
            "model": f"{model.name}:{model.version}",
        },
    )
    model_node = Node("Model", f"{model.name}:{model.version}", {"name": model.name, "version": model.version})
    relationships = [
        Relationship(patient, "HAS_FINDING", finding_node),
        Relationship(finding_node, "PRODUCED_BY", model_node),
    ]
    if s.encounter_id:
        encounter = Node("Encounter", s.encounter_id)
        relationships += [
            Relationship(patient, "HAS_ENCOUNTER", encounter),
            Relationship(finding_node, "DURING", encounter),
        ]
    mutation = to_mutation(finding_id, relationships=relationships, provenance=provenance)
    return Assessment(finding, alert, mutation)
