"""Imaging analysis: a completed, routed series -> preprocessing -> 3D model on Triton -> lesion candidates ->
findings, a FHIR DiagnosticReport with Observations, an urgent alert for a suspected stroke, graph upserts.

Everything about one series revision is derived deterministically from (series UID, revision, model version),
so a replay after a crash publishes the same ids and the graph MERGEs change nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, dicom_pb2, fhir_pb2, finding_pb2, graph_pb2
from prometheus_client import Counter

from services.common.blobs import BlobStore, BlobStoreUnavailable, read_blob
from services.common.config import Settings
from services.common.graph import Graph, Node, Relationship
from services.common.graph_events import to_mutation
from services.common.triton import TritonClient
from services.imaging import dicom_outputs, lung, stroke
from services.imaging.network import stitch, tile
from services.imaging.postprocess import Candidate, Change, labelled_candidates
from services.imaging.preprocess import Volume, load_series, rescale
from services.imaging.priors import Comparison, PriorStudy, find_prior, measure_change, study_date

log = logging.getLogger(__name__)
EVIDENCE_FAILURES = Counter("medstream_imaging_evidence_failures_total", "Series reported without SEG/SR/key image",
                            ["service", "route"])  # fmt: skip
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


def read_series(uris: Sequence[str], settings: Settings | None = None) -> tuple[list[pydicom.Dataset], Volume]:
    """The series' instances from the blob store (file:// or s3://) -> their datasets and one volume in HU (CT)
    or normalised intensity (MR). A blob store that is down raises BlobStoreUnavailable (wait and retry)."""
    try:
        datasets: list[pydicom.Dataset] = [pydicom.dcmread(io.BytesIO(read_blob(uri, settings))) for uri in uris]
        return datasets, rescale(load_series(datasets))
    except BlobStoreUnavailable:
        raise
    except (OSError, ValueError, AttributeError, KeyError) as exc:  # missing blobs, pydicom and preprocess errors
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
        summary = (f"{route.kind.replace('-', ' ')} {c.diameter_mm:.1f} mm ({c.volume_ml:.2f} mL), "
                   f"confidence {c.confidence:.2f}{_change_text(change, context)}, "
                   f"from {model.name} v{model.version}")  # fmt: skip
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
                    *_change_measurements(change),
                ],
                provenance=common_pb2.Provenance(producer="imaging", source_event_id=base),
                prior_finding_id=prior_id or "", evidence=context.evidence,
            )
        )  # fmt: skip
        observations.append(_observation(finding_id, patient_id, route, c, rank, change))
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


def _severity(route: Route, c: Candidate) -> int:
    if route.name == "stroke":
        return int(finding_pb2.SEVERITY_CRITICAL)
    return int(finding_pb2.SEVERITY_MEDIUM if c.diameter_mm >= 8.0 else finding_pb2.SEVERITY_LOW)


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
    units = {"prior_volume": ("volume in the prior study", "mL"), "volume_change": ("volume change", "%"),
             "doubling_time": ("volume doubling time", "d")}  # fmt: skip
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
            "coding": [{"system": ICD10CM, "code": route.code[0], "display": route.code[1]}],
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
        if found else f"No {route.kind.replace('-', ' ')} found"
    )  # fmt: skip
    if context.comparison is not None:
        prior = context.comparison
        grown = sum(1 for ch in prior.changes if ch.prior is not None)
        conclusion += (f". Compared with the prior study of {prior.prior.study_date.isoformat()} "
                       f"({prior.days:.0f} days earlier, registered rigidly): {grown} matched, "
                       f"{len(prior.changes) - grown} new")  # fmt: skip
    if context.evidence_error:
        conclusion += f". No DICOM SEG/SR or key image: {context.evidence_error}"
    conclusion += f". {model.name} v{model.version}; trained on synthetic data, not for clinical use."
    resource: dict[str, Any] = {
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
        "conclusion": conclusion,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{series.series_instance_uid}"}],
    }
    if context.evidence:
        resource["presentedForm"] = [
            {"contentType": e.content_type, "url": e.uri, "title": e.kind} for e in context.evidence
        ]
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
    condition = Node("Condition", route.code[0], {"system": ICD10CM, "display": route.code[1]})
    rels = []
    for f in findings:
        props = {m.name: m.value for m in f.measurements}
        node = Node("Finding", f.finding_id, {"kind": f.kind, "score": round(f.score, 4), "revision": series.revision,
                                              "model": model_key, "summary": f.summary, **props})  # fmt: skip
        rels += [
            Relationship(patient, "HAS_FINDING", node),
            Relationship(series_node, "HAS_FINDING", node),
            Relationship(node, "SUGGESTS", condition),
            Relationship(node, "PRODUCED_BY", model_node),
        ]
        if f.prior_finding_id:
            rels.append(Relationship(node, "CHANGED_FROM", Node("Finding", f.prior_finding_id)))
    return to_mutation(f"imaging:{base}", nodes, rels)


@dataclass(frozen=True)
class Services:
    """What an analysis talks to: Triton (segmentation), Neo4j (prior studies), the blob store (instances in,
    evidence out)."""

    triton: TritonClient
    graph: Graph
    store: BlobStore
    settings: Settings | None = None


async def compare_with_prior(
    services: Services,
    series: dicom_pb2.DicomSeriesComplete,
    route: Route,
    grid: Volume,
    found: Sequence[Candidate],
    date: dt.date | None,
) -> Comparison | None:
    """Find the prior study in the graph, read and register it, match lesions. Neo4j errors propagate (the
    caller waits and retries); an unreadable prior is reported without comparison rather than failing."""
    if not series.patient_id or date is None:
        return None
    prior: PriorStudy | None = await find_prior(
        services.graph, series.patient_id, series.study_instance_uid, date, route.name
    )
    if prior is None:
        return None
    try:
        _, prior_volume = await asyncio.to_thread(read_series, prior.blob_uris, services.settings)
    except SeriesUnreadable:
        return None
    prior_grid, _ = await asyncio.to_thread(prepare, route, prior_volume)
    days = float((date - prior.study_date).days)
    try:
        return await asyncio.to_thread(measure_change, grid, prior_grid, found, prior, days)
    except (RuntimeError, ValueError) as exc:  # SimpleITK refuses volumes it cannot register
        log.warning("prior study not compared", extra={"reason": f"{type(exc).__name__}: {exc}"[:300]})
        return None


def evidence_objects(
    datasets: Sequence[pydicom.Dataset],
    volume: Volume,
    grid: Volume,
    labels: np.ndarray,
    route: Route,
    found: Sequence[Candidate],
    comparison: Comparison | None,
    model: common_pb2.ModelRef,
    base: str,
    now: dt.datetime,
) -> list[tuple[str, str, bytes, str]]:
    """(kind, name, bytes, content type) of the DICOM SEG, the TID 1500 SR and a key image of the top finding
    (pure; names carry no identifiers, only a hash of the revision)."""
    changes = comparison.changes if comparison else [None] * len(found)
    findings = [dicom_outputs.SegmentedFinding.from_candidate(k, c, ch)
                for k, (c, ch) in enumerate(zip(found, changes, strict=True), start=1)]  # fmt: skip
    folder = str(uuid.uuid5(_NAMESPACE, f"evidence|{base}"))
    names = {"algorithm_name": model.name, "algorithm_version": model.version}
    on_sources = dicom_outputs.labels_on_sources(labels, grid.affine, datasets)
    seg = dicom_outputs.segmentation(datasets, on_sources, findings, kind=route.kind, seed=base, now=now, **names)
    sr = dicom_outputs.measurement_report(datasets, seg, findings, kind=route.kind, seed=base, now=now, **names)
    out = [("dicom-sr", f"{folder}/sr.dcm", dicom_bytes(sr), "application/dicom")]
    if seg is not None:
        out.insert(0, ("dicom-seg", f"{folder}/seg.dcm", dicom_bytes(seg), "application/dicom"))
        on_volume = dicom_outputs.labels_on_volume(labels, grid.affine, volume.affine, _shape3(volume.array))
        if (on_volume == 1).any():
            caption = dicom_outputs.key_image_caption(findings[0], kind=route.kind, **names)
            png = dicom_outputs.key_image_png(
                volume.array, on_volume, 1, window=_window(route, volume), caption=caption
            )
            out.append(("key-image", f"{folder}/key-image-1.png", png, "image/png"))
    return out


def _shape3(array: np.ndarray) -> tuple[int, int, int]:
    z, y, x = array.shape
    return int(z), int(y), int(x)


def _window(route: Route, volume: Volume) -> tuple[float, float]:
    if route.name == "lung-nodule":
        return lung.WINDOW
    low, high = np.percentile(volume.array, [1, 99.5])
    return float((low + high) / 2), float(max(high - low, 1e-3))


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def store_evidence(
    store: BlobStore, objects: Sequence[tuple[str, str, bytes, str]]
) -> list[finding_pb2.EvidenceRef]:
    refs = []
    for kind, name, data, content_type in objects:
        uri = await asyncio.to_thread(store.put_output, name, data, content_type)
        refs.append(finding_pb2.EvidenceRef(kind=kind, uri=uri, content_type=content_type))
    return refs


async def analyse(
    services: Services, series: dicom_pb2.DicomSeriesComplete, now: dt.datetime | None = None
) -> tuple[Outputs, dict[str, float]]:
    """Read, preprocess, segment, measure, compare with the prior, store the evidence; returns the outputs and
    stage timings in seconds. The evidence is stored before the caller publishes anything that points to it."""
    route = ROUTES[series.route]
    now = now or dt.datetime.now(dt.UTC)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    datasets, volume = await asyncio.to_thread(read_series, [i.blob_uri for i in series.instances], services.settings)
    grid, keep = await asyncio.to_thread(prepare, route, volume)
    t1 = loop.time()
    prob, version, patches = await segment(services.triton, route, grid, keep)
    t2 = loop.time()
    found, labels = await asyncio.to_thread(
        labelled_candidates, prob, grid.affine, grid.spacing, route.threshold, route.min_volume_mm3
    )
    date = study_date(datasets[0].get("StudyDate"))
    t3 = loop.time()
    comparison = await compare_with_prior(services, series, route, grid, found, date)
    t4 = loop.time()
    model = common_pb2.ModelRef(name=route.model, version=version)
    evidence_error = ""
    try:
        objects = await asyncio.to_thread(
            evidence_objects, datasets, volume, grid, labels, route, found, comparison, model, base_key(series, model),
            now,
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # Findings are still published; the report says evidence is missing and the log says why.
        log.warning(
            "evidence not produced", extra={"route": route.name, "reason": f"{type(exc).__name__}: {exc}"[:300]}
        )
        EVIDENCE_FAILURES.labels("imaging", route.name).inc()
        objects, evidence_error = [], f"{type(exc).__name__}: {exc}"[:300]
    refs = await store_evidence(services.store, objects)
    t5 = loop.time()
    result = outputs(series, route, found, model, now, Context(date, comparison, tuple(refs), evidence_error))
    t6 = loop.time()
    timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": (t3 - t2) + (t6 - t5), "prior": t4 - t3,
               "evidence": t5 - t4, "patches": float(patches)}  # fmt: skip
    return result, timings
