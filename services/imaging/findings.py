"""Findings, alert, FHIR DiagnosticReport with Observations and graph upserts of one analysed series revision
(pure). Every id derives from (series UID, revision, model version), so a replay publishes the same ids and the
graph MERGEs change nothing."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, dicom_pb2, fhir_pb2, finding_pb2, graph_pb2

from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.imaging.postprocess import Candidate, Change
from services.imaging.priors import Comparison
from services.imaging.routes import Coding, Route

_NAMESPACE = uuid.UUID("0d6f3c0e-1b7e-4f4e-9a53-5d0b8f2e6a71")
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Outputs:
    findings: list[finding_pb2.Finding]
    alerts: list[alert_pb2.Alert]
    report: fhir_pb2.FhirResourceEvent
    mutation: graph_pb2.GraphMutation


@dataclass(frozen=True)
class Context:
    """What an analysis knows beyond its lesions: the study date, the comparison with the prior study, and the
    evidence objects already stored for this revision."""

    study_date: dt.date | None = None
    comparison: Comparison | None = None
    evidence: tuple[finding_pb2.EvidenceRef, ...] = ()
    evidence_error: str = ""  # why no evidence could be produced, when it could not

    def change(self, rank: int) -> tuple[Change | None, str | None]:
        if self.comparison is None:
            return None, None
        return self.comparison.changes[rank - 1], self.comparison.prior_ids[rank - 1]


def _ts(when: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def base_key(series: dicom_pb2.DicomSeriesComplete, model: common_pb2.ModelRef) -> str:
    """Everything derived from one analysed revision is keyed by this (replays derive the same ids)."""
    return f"{series.series_instance_uid}|{series.revision}|{model.name}|{model.version}"


def outputs(
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    found: Sequence[Candidate],
    model: common_pb2.ModelRef,
    now: dt.datetime,
    context: Context | None = None,
) -> Outputs:
    """Findings, alert, FHIR report and graph upserts for one analysed series revision (pure)."""
    context = context or Context()
    base = base_key(series, model)
    patient_id = series.patient_id or f"unknown-{series.study_instance_uid}"
    findings, observations = [], []
    for rank, c in enumerate(found, start=1):
        finding_id = str(uuid.uuid5(_NAMESPACE, f"{base}|{rank}"))
        x, y, z = c.centre_mm
        change, prior_id = context.change(rank)
        summary = (
            f"{route.kind.replace('-', ' ')} {c.diameter_mm:.1f} mm ({c.volume_ml:.2f} mL), "
            f"confidence {c.confidence:.2f}{_change_text(change, context)}, "
            f"from {model.name} v{model.version}"
        )
        severity = route.severity(c)
        findings.append(
            finding_pb2.Finding(
                finding_id=finding_id,
                patient_id=patient_id,
                kind=route.kind,
                code=finding_pb2.Coding(system=route.code.system, code=route.code.code, display=route.code.display),
                score=c.confidence,
                severity=severity,
                model=model,
                effective_time=_ts(now),
                summary=summary,
                measurements=[
                    finding_pb2.Measurement(name="diameter", value=round(c.diameter_mm, 2), unit="mm"),
                    finding_pb2.Measurement(name="volume", value=round(c.volume_ml, 4), unit="mL"),
                    finding_pb2.Measurement(name="centre_x", value=round(x, 1), unit="mm"),
                    finding_pb2.Measurement(name="centre_y", value=round(y, 1), unit="mm"),
                    finding_pb2.Measurement(name="centre_z", value=round(z, 1), unit="mm"),
                    *_change_measurements(change),
                ],
                provenance=common_pb2.Provenance(producer="imaging", source_event_id=base),
                prior_finding_id=prior_id or "",
                evidence=context.evidence,
            )
        )
        observations.append(_observation(finding_id, patient_id, route, c, rank, change))
    alerts = []
    if route.alert is not None and findings:
        top, rule = findings[0], route.alert
        alerts.append(
            alert_pb2.Alert(
                alert_id=str(uuid.uuid5(_NAMESPACE, f"alert|{base}")),
                patient_id=patient_id,
                kind=rule.kind,
                severity=rule.severity,
                summary=f"{rule.summary}: {top.summary}",
                raised_at=_ts(now),
                window_start=_ts(now),
                window_end=_ts(now),
                model=model,
                finding_id=top.finding_id,
            )
        )
    report = _report(series, route, found, observations, model, patient_id, base, now, context)
    return Outputs(findings, alerts, report, _mutation(series, route, findings, model, patient_id, base, context))


def _change_measurements(change: Change | None) -> list[finding_pb2.Measurement]:
    if change is None or change.prior is None:
        return []
    out = [finding_pb2.Measurement(name="prior_volume", value=round(change.prior.volume_ml, 4), unit="mL")]
    if change.volume_change_pct is not None:
        out.append(finding_pb2.Measurement(name="volume_change", value=round(change.volume_change_pct, 1), unit="%"))
    if change.doubling_time_days is not None:
        out.append(finding_pb2.Measurement(name="doubling_time", value=round(change.doubling_time_days, 1), unit="d"))
    return out


def _change_text(change: Change | None, context: Context) -> str:
    if change is None or context.comparison is None:
        return ""
    since = context.comparison.prior.study_date.isoformat()
    if change.prior is None:
        return f", new since the prior study of {since}"
    text = f", {change.volume_change_pct:+.0f}% volume since {since}" if change.volume_change_pct is not None else ""
    if change.doubling_time_days is not None:
        text += f" (volume doubling time {change.doubling_time_days:.0f} days)"
    return text


def _coding(c: Coding) -> dict[str, str]:
    return {"system": c.system, "code": c.code, "display": c.display}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": round(value, 3), "unit": unit, "system": UCUM, "code": unit}


def _observation(
    finding_id: str, patient_id: str, route: Route, c: Candidate, rank: int, change: Change | None
) -> dict[str, Any]:
    components = [
        {"code": {"text": "diameter (volume-equivalent sphere)"}, "valueQuantity": _quantity(c.diameter_mm, "mm")},
        {"code": {"text": "volume"}, "valueQuantity": _quantity(c.volume_ml, "mL")},
        {"code": {"text": "model confidence"}, "valueQuantity": _quantity(c.confidence, "1")},
        {"code": {"text": "centre x (patient LPS)"}, "valueQuantity": _quantity(c.centre_mm[0], "mm")},
        {"code": {"text": "centre y (patient LPS)"}, "valueQuantity": _quantity(c.centre_mm[1], "mm")},
        {"code": {"text": "centre z (patient LPS)"}, "valueQuantity": _quantity(c.centre_mm[2], "mm")},
    ]
    units = {
        "prior_volume": ("volume in the prior study", "mL"),
        "volume_change": ("volume change", "%"),
        "doubling_time": ("volume doubling time", "d"),
    }
    for m in _change_measurements(change):
        text, unit = units[m.name]
        components.append({"code": {"text": text}, "valueQuantity": _quantity(m.value, unit)})
    return {
        "resourceType": "Observation",
        "id": finding_id,
        "status": "preliminary",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
        ],
        "code": {
            "coding": [_coding(route.code)],
            "text": f"{route.kind} {rank}",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "component": components,
    }


def _report(
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    found: Sequence[Candidate],
    observations: list[dict[str, Any]],
    model: common_pb2.ModelRef,
    patient_id: str,
    base: str,
    now: dt.datetime,
    context: Context,
) -> fhir_pb2.FhirResourceEvent:
    report_id = str(uuid.uuid5(_NAMESPACE, f"report|{base}"))
    conclusion = (
        f"{len(found)} candidate {route.kind.replace('-', ' ')}(s): "
        + "; ".join(f"{c.diameter_mm:.1f} mm, {c.volume_ml:.2f} mL" for c in found)
        if found
        else f"No {route.kind.replace('-', ' ')} found"
    )
    if context.comparison is not None:
        prior = context.comparison
        grown = sum(1 for ch in prior.changes if ch.prior is not None)
        conclusion += (
            f". Compared with the prior study of {prior.prior.study_date.isoformat()} "
            f"({prior.days:.0f} days earlier, registered rigidly): {grown} matched, "
            f"{len(prior.changes) - grown} new"
        )
    if context.evidence_error:
        conclusion += f". No DICOM SEG/SR or key image: {context.evidence_error}"
    conclusion += f". {model.name} v{model.version}; trained on synthetic data, not for clinical use."
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [_coding(route.report_code)]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": now.isoformat(),
        "issued": now.isoformat(),
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{series.series_instance_uid}"}],
    }
    if context.evidence:
        resource["presentedForm"] = [
            {"contentType": e.content_type, "url": e.uri, "title": e.kind} for e in context.evidence
        ]
    ts = _ts(now)
    return fhir_pb2.FhirResourceEvent(
        event_id=report_id,
        resource_type="DiagnosticReport",
        resource_id=report_id,
        patient_reference=f"Patient/{patient_id}",
        operation=fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=json.dumps(resource, separators=(",", ":")).encode(),
        received_at=ts,
    )


def _mutation(
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    findings: list[finding_pb2.Finding],
    model: common_pb2.ModelRef,
    patient_id: str,
    base: str,
    context: Context,
) -> graph_pb2.GraphMutation:
    patient = Node("Patient", patient_id)
    model_key = f"{model.name}:{model.version}"
    analysed = {"analysed_revision": series.revision, "analysed_model": model_key, "route": route.name}
    series_node = Node("Series", series.series_instance_uid, analysed)
    nodes = [series_node]
    if context.study_date is not None:  # how the next study of this patient finds this one as its prior
        nodes.append(Node("Study", series.study_instance_uid, {"study_date": context.study_date.isoformat()}))
    model_node = Node("Model", model_key, {"name": model.name, "version": model.version})
    condition = Node("Condition", route.code.code, {"system": route.code.system, "display": route.code.display})
    rels = []
    for f in findings:
        props = {m.name: m.value for m in f.measurements}
        node = Node(
            "Finding",
            f.finding_id,
            {
                "kind": f.kind,
                "score": round(f.score, 4),
                "revision": series.revision,
                "model": model_key,
                "summary": f.summary,
                **props,
            },
        )
        rels += [
            Relationship(patient, "HAS_FINDING", node),
            Relationship(series_node, "HAS_FINDING", node),
            Relationship(node, "SUGGESTS", condition),
            Relationship(node, "PRODUCED_BY", model_node),
        ]
        if f.prior_finding_id:
            rels.append(Relationship(node, "CHANGED_FROM", Node("Finding", f.prior_finding_id)))
    return to_mutation(f"imaging:{base}", nodes, rels)
