"""Imaging analysis: a completed, routed series -> preprocessing -> 3D model on Triton -> lesion candidates ->
findings, a FHIR DiagnosticReport with Observations, an urgent alert for a suspected stroke, graph upserts.

Everything about one series revision is derived deterministically from (series UID, revision, model version),
so a replay after a crash publishes the same ids and the graph MERGEs change nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pydicom
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, dicom_pb2, fhir_pb2, finding_pb2, graph_pb2

from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.triton import TritonClient
from services.imaging import lung, stroke
from services.imaging.network import stitch, tile
from services.imaging.postprocess import Candidate, candidates
from services.imaging.preprocess import Volume, load_series, rescale

_NAMESPACE = uuid.UUID("0d6f3c0e-1b7e-4f4e-9a53-5d0b8f2e6a71")
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Route:
    name: str  # as DicomSeriesComplete.route
    model: str
    kind: str  # Finding.kind
    code: tuple[str, str]  # ICD-10-CM code and display for a found lesion
    report_code: tuple[str, str]  # LOINC of the report
    threshold: float
    min_volume_mm3: float
    patch: int
    stride: int


ROUTES = {
    "lung-nodule": Route("lung-nodule", lung.MODEL_NAME, "lung-nodule", ("R91.1", "Solitary pulmonary nodule"),
                         ("24627-2", "Chest CT"), lung.THRESHOLD, lung.MIN_VOLUME_MM3, lung.PATCH, lung.STRIDE),
    "stroke": Route("stroke", stroke.MODEL_NAME, "stroke-lesion", ("I63.9", "Cerebral infarction, unspecified"),
                    ("24590-2", "MR Brain"), stroke.THRESHOLD, stroke.MIN_VOLUME_MM3, stroke.PATCH, stroke.STRIDE),
}  # fmt: skip


class SeriesUnreadable(ValueError):
    """The series' instances cannot be read or assembled into a volume (the reason is in the message)."""


def blob_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise SeriesUnreadable(f"blob store {parsed.scheme!r} is not supported here (file:// only)")
    return Path(unquote(parsed.path))


def read_volume(series: dicom_pb2.DicomSeriesComplete) -> Volume:
    """The series' instances from the blob store -> one volume in HU (CT) or normalised intensity (MR)."""
    try:
        datasets = [pydicom.dcmread(blob_path(i.blob_uri)) for i in series.instances]
        return rescale(load_series(datasets))
    except (OSError, ValueError, AttributeError, KeyError) as exc:  # pydicom and preprocess errors
        raise SeriesUnreadable(f"{type(exc).__name__}: {exc}"[:500]) from exc


def prepare(route: Route, volume: Volume) -> tuple[Volume, Any]:
    """The model's input grid for the route, and which patches are worth predicting."""
    if route.name == "lung-nodule":
        return lung.prepare(volume), lung.has_lung
    return stroke.prepare(volume), None


async def segment(triton: TritonClient, route: Route, grid: Volume, keep: Any) -> tuple[np.ndarray, str, int]:
    """Probability map from Triton: every patch of the series sent at once (split to the model's batch limit,
    the server's dynamic batcher combines them). Returns (probabilities, model version, patches)."""
    tiles = await asyncio.to_thread(tile, grid.array, route.patch, route.stride, keep)
    if not tiles.origins:
        return np.zeros(grid.array.shape, dtype=np.float32), await triton.model_version(route.model), 0
    out, version = await triton.infer_many(route.model, {"PATCH": tiles.patches}, ["PROB"], max_batch=16)
    return await asyncio.to_thread(stitch, tiles, out["PROB"]), version, len(tiles.origins)


@dataclass(frozen=True)
class Outputs:
    findings: list[finding_pb2.Finding]
    alerts: list[alert_pb2.Alert]
    report: fhir_pb2.FhirResourceEvent
    mutation: graph_pb2.GraphMutation


def _ts(when: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def outputs(
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    found: Sequence[Candidate],
    model: common_pb2.ModelRef,
    now: dt.datetime,
) -> Outputs:
    """Findings, alert, FHIR report and graph upserts for one analysed series revision (pure)."""
    base = f"{series.series_instance_uid}|{series.revision}|{model.name}|{model.version}"
    patient_id = series.patient_id or f"unknown-{series.study_instance_uid}"
    findings, observations = [], []
    for rank, c in enumerate(found, start=1):
        finding_id = str(uuid.uuid5(_NAMESPACE, f"{base}|{rank}"))
        x, y, z = c.centre_mm
        summary = (f"{route.kind.replace('-', ' ')} {c.diameter_mm:.1f} mm ({c.volume_ml:.2f} mL), "
                   f"confidence {c.confidence:.2f}, from {model.name} v{model.version}")  # fmt: skip
        severity = _severity(route, c)
        findings.append(
            finding_pb2.Finding(
                finding_id=finding_id, patient_id=patient_id, kind=route.kind,
                code=finding_pb2.Coding(system=ICD10CM, code=route.code[0], display=route.code[1]),
                score=c.confidence, severity=severity, model=model, effective_time=_ts(now), summary=summary,
                measurements=[
                    finding_pb2.Measurement(name="diameter", value=round(c.diameter_mm, 2), unit="mm"),
                    finding_pb2.Measurement(name="volume", value=round(c.volume_ml, 4), unit="mL"),
                    finding_pb2.Measurement(name="centre_x", value=round(x, 1), unit="mm"),
                    finding_pb2.Measurement(name="centre_y", value=round(y, 1), unit="mm"),
                    finding_pb2.Measurement(name="centre_z", value=round(z, 1), unit="mm"),
                ],
                provenance=common_pb2.Provenance(producer="imaging", source_event_id=base),
            )
        )  # fmt: skip
        observations.append(_observation(finding_id, patient_id, route, c, rank))
    alerts = []
    if route.name == "stroke" and findings:
        top = findings[0]
        alerts.append(
            alert_pb2.Alert(
                alert_id=str(uuid.uuid5(_NAMESPACE, f"alert|{base}")), patient_id=patient_id, kind="suspected-stroke",
                severity=finding_pb2.SEVERITY_CRITICAL, summary=f"Suspected acute stroke lesion: {top.summary}",
                raised_at=_ts(now), window_start=_ts(now), window_end=_ts(now), model=model, finding_id=top.finding_id,
            )
        )  # fmt: skip
    report = _report(series, route, found, observations, model, patient_id, base, now)
    return Outputs(findings, alerts, report, _mutation(series, route, findings, model, patient_id, base))


def _severity(route: Route, c: Candidate) -> int:
    if route.name == "stroke":
        return int(finding_pb2.SEVERITY_CRITICAL)
    return int(finding_pb2.SEVERITY_MEDIUM if c.diameter_mm >= 8.0 else finding_pb2.SEVERITY_LOW)


def _observation(finding_id: str, patient_id: str, route: Route, c: Candidate, rank: int) -> dict[str, Any]:
    def quantity(value: float, unit: str) -> dict[str, Any]:
        return {"value": round(value, 3), "unit": unit, "system": UCUM, "code": unit}

    return {
        "resourceType": "Observation",
        "id": finding_id,
        "status": "preliminary",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
        ],
        "code": {
            "coding": [{"system": ICD10CM, "code": route.code[0], "display": route.code[1]}],
            "text": f"{route.kind} {rank}",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "component": [
            {"code": {"text": "diameter (volume-equivalent sphere)"}, "valueQuantity": quantity(c.diameter_mm, "mm")},
            {"code": {"text": "volume"}, "valueQuantity": quantity(c.volume_ml, "mL")},
            {"code": {"text": "model confidence"}, "valueQuantity": quantity(c.confidence, "1")},
            {"code": {"text": "centre x (patient LPS)"}, "valueQuantity": quantity(c.centre_mm[0], "mm")},
            {"code": {"text": "centre y (patient LPS)"}, "valueQuantity": quantity(c.centre_mm[1], "mm")},
            {"code": {"text": "centre z (patient LPS)"}, "valueQuantity": quantity(c.centre_mm[2], "mm")},
        ],
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
) -> fhir_pb2.FhirResourceEvent:
    report_id = str(uuid.uuid5(_NAMESPACE, f"report|{base}"))
    conclusion = (
        f"{len(found)} candidate {route.kind.replace('-', ' ')}(s): "
        + "; ".join(f"{c.diameter_mm:.1f} mm, {c.volume_ml:.2f} mL" for c in found)
        if found else f"No {route.kind.replace('-', ' ')} found"
    ) + f". {model.name} v{model.version}; trained on synthetic data, not for clinical use."  # fmt: skip
    resource = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [{"system": LOINC, "code": route.report_code[0], "display": route.report_code[1]}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": now.isoformat(),
        "issued": now.isoformat(),
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "imagingStudy": [],
        "conclusion": conclusion,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{series.series_instance_uid}"}],
    }
    resource.pop("imagingStudy")
    ts = _ts(now)
    return fhir_pb2.FhirResourceEvent(
        event_id=report_id, resource_type="DiagnosticReport", resource_id=report_id,
        patient_reference=f"Patient/{patient_id}", operation=fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=json.dumps(resource, separators=(",", ":")).encode(), received_at=ts,
    )  # fmt: skip


def _mutation(
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    findings: list[finding_pb2.Finding],
    model: common_pb2.ModelRef,
    patient_id: str,
    base: str,
) -> graph_pb2.GraphMutation:
    patient = Node("Patient", patient_id)
    series_node = Node("Series", series.series_instance_uid, {"analysed_revision": series.revision})
    model_node = Node("Model", f"{model.name}:{model.version}", {"name": model.name, "version": model.version})
    condition = Node("Condition", route.code[0], {"system": ICD10CM, "display": route.code[1]})
    rels = []
    for f in findings:
        props = {m.name: m.value for m in f.measurements}
        node = Node("Finding", f.finding_id, {"kind": f.kind, "score": round(f.score, 4), "revision": series.revision,
                                              "summary": f.summary, **props})  # fmt: skip
        rels += [
            Relationship(patient, "HAS_FINDING", node),
            Relationship(series_node, "HAS_FINDING", node),
            Relationship(node, "SUGGESTS", condition),
            Relationship(node, "PRODUCED_BY", model_node),
        ]
    return to_mutation(f"imaging:{base}", [series_node], rels)


async def analyse(
    triton: TritonClient, series: dicom_pb2.DicomSeriesComplete, now: dt.datetime | None = None
) -> tuple[Outputs, dict[str, float]]:
    """Read, preprocess, segment, measure; returns the outputs and stage timings in seconds."""
    route = ROUTES[series.route]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    volume = await asyncio.to_thread(read_volume, series)
    grid, keep = await asyncio.to_thread(prepare, route, volume)
    t1 = loop.time()
    prob, version, patches = await segment(triton, route, grid, keep)
    t2 = loop.time()
    found = await asyncio.to_thread(candidates, prob, grid.affine, grid.spacing, route.threshold, route.min_volume_mm3)
    model = common_pb2.ModelRef(name=route.model, version=version)
    result = outputs(series, route, found, model, now or dt.datetime.now(dt.UTC))
    t3 = loop.time()
    return result, {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2, "patches": float(patches)}
