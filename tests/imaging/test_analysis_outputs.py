"""What one analysed series publishes: findings with measurements, a valid FHIR DiagnosticReport, a stroke alert,
graph upserts; the same series revision and model version always give the same ids."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from medstream.events.v1 import common_pb2, dicom_pb2, finding_pb2

from services.common.graph_events import from_mutation
from services.imaging.analysis import SeriesUnreadable
from services.imaging.analysis import read_instances as read_series
from services.imaging.findings import Context, outputs
from services.imaging.postprocess import Candidate, Change
from services.imaging.priors import Comparison, PriorFinding, PriorStudy
from services.imaging.routes import ROUTES

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
MODEL = common_pb2.ModelRef(name="stroke_lesion", version="1")


def series(route: str) -> dicom_pb2.DicomSeriesComplete:
    return dicom_pb2.DicomSeriesComplete(
        series_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        patient_id="SYN-7",
        modality="MR",
        body_part_examined="BRAIN",
        revision=2,
        route=route,
        instances=[dicom_pb2.DicomInstanceRef(sop_instance_uid="1.2.3.4.1", blob_uri="file:///b/1.dcm")],
    )


LESIONS = [
    Candidate((10.0, -20.0, 30.0), (5, 6, 7), 4.2, 20.0, 24.0, 0.93, 270),
    Candidate((-40.0, 5.0, 12.0), (9, 9, 9), 0.9, 12.0, 14.0, 0.71, 58),
]


def test_stroke_findings_alert_report_and_graph():
    out = outputs(series("stroke"), ROUTES["stroke"], LESIONS, MODEL, NOW)
    assert [f.kind for f in out.findings] == ["stroke-lesion", "stroke-lesion"]
    first = out.findings[0]
    assert first.severity == finding_pb2.SEVERITY_CRITICAL and first.code.code == "I63.9"
    assert {m.name: m.value for m in first.measurements}["volume"] == pytest.approx(4.2)
    [alert] = out.alerts
    assert alert.kind == "suspected-stroke" and alert.finding_id == first.finding_id
    report = json.loads(out.report.resource_json)
    DiagnosticReport.model_validate(report)
    assert len(report["contained"]) == 2 and "not for clinical use" in report["conclusion"]
    assert out.report.patient_reference == "Patient/SYN-7"
    nodes, rels = from_mutation(out.mutation)
    assert {r.type for r in rels} == {"HAS_FINDING", "SUGGESTS", "PRODUCED_BY"}
    assert {n.key for n in nodes} == {"1.2.3.4"}


def test_ids_are_stable_for_a_revision_and_model_version():
    a = outputs(series("stroke"), ROUTES["stroke"], LESIONS, MODEL, NOW)
    b = outputs(series("stroke"), ROUTES["stroke"], LESIONS, MODEL, NOW + dt.timedelta(minutes=5))
    assert [f.finding_id for f in a.findings] == [f.finding_id for f in b.findings]
    assert a.report.resource_id == b.report.resource_id and a.alerts[0].alert_id == b.alerts[0].alert_id
    newer = outputs(
        series("stroke"), ROUTES["stroke"], LESIONS, common_pb2.ModelRef(name="stroke_lesion", version="2"), NOW
    )
    assert newer.findings[0].finding_id != a.findings[0].finding_id


def test_no_lesion_still_reports_and_lung_severity_follows_size():
    empty = outputs(series("lung-nodule"), ROUTES["lung-nodule"], [], MODEL, NOW)
    assert not empty.findings and not empty.alerts
    assert json.loads(empty.report.resource_json)["conclusion"].startswith("No lung nodule found")
    lung = outputs(series("lung-nodule"), ROUTES["lung-nodule"], LESIONS, MODEL, NOW)
    assert [f.severity for f in lung.findings] == [finding_pb2.SEVERITY_MEDIUM, finding_pb2.SEVERITY_MEDIUM]
    assert not lung.alerts


def test_a_missing_or_foreign_blob_makes_the_series_unreadable(tmp_path):
    with pytest.raises(SeriesUnreadable, match="FileNotFoundError"):
        read_series([(tmp_path / "gone.dcm").as_uri()])
    with pytest.raises(SeriesUnreadable):
        read_series(["ftp://example.org/x.dcm"])


def test_a_comparison_with_the_prior_reaches_findings_report_and_graph():
    prior_lesion = Candidate((10.5, -20.0, 30.0), (0, 0, 0), 2.1, 15.9, 0, 1.0, 0)
    prior = PriorStudy(
        "1.2.2", "1.2.2.4", dt.date(2026, 8, 29), ("file:///b/0.dcm",), (PriorFinding("prior-1", prior_lesion),)
    )
    changes = [Change(LESIONS[0], prior_lesion, 0.5, 100.0, 90.0), Change(LESIONS[1], None, None, None, None)]
    comparison = Comparison(prior, 90.0, changes, ["prior-1", None], -0.5, (1.0, 2.0, 0.0))
    evidence = (
        finding_pb2.EvidenceRef(kind="dicom-seg", uri="s3://b/outputs/x/seg.dcm", content_type="application/dicom"),
    )
    context = Context(study_date=dt.date(2026, 11, 27), comparison=comparison, evidence=evidence)
    out = outputs(
        series("lung-nodule"),
        ROUTES["lung-nodule"],
        LESIONS,
        common_pb2.ModelRef(name="lung_nodule", version="3"),
        NOW,
        context,
    )

    grown, new = out.findings
    assert grown.prior_finding_id == "prior-1" and not new.prior_finding_id
    measured = {m.name: (m.value, m.unit) for m in grown.measurements}
    assert measured["volume_change"] == (100.0, "%") and measured["doubling_time"] == (90.0, "d")
    assert measured["prior_volume"] == (2.1, "mL")
    assert "+100% volume since 2026-08-29 (volume doubling time 90 days)" in grown.summary
    assert "new since the prior study of 2026-08-29" in new.summary
    assert list(grown.evidence) == list(evidence)

    report = json.loads(out.report.resource_json)
    DiagnosticReport.model_validate(report)
    assert "prior study of 2026-08-29 (90 days earlier, registered rigidly): 1 matched, 1 new" in report["conclusion"]
    assert report["presentedForm"] == [
        {"contentType": "application/dicom", "url": "s3://b/outputs/x/seg.dcm", "title": "dicom-seg"}
    ]
    texts = [c["code"]["text"] for c in report["contained"][0]["component"]]
    assert "volume doubling time" in texts

    nodes, rels = from_mutation(out.mutation)
    study = [n for n in nodes if n.label == "Study"]
    assert study and study[0].properties["study_date"] == "2026-11-27"
    series_node = next(n for n in nodes if n.label == "Series")
    assert (
        series_node.properties["route"] == "lung-nodule" and series_node.properties["analysed_model"] == "lung_nodule:3"
    )
    assert [(r.start.key, r.end.key) for r in rels if r.type == "CHANGED_FROM"] == [(grown.finding_id, "prior-1")]


def test_a_report_without_evidence_says_why():
    out = outputs(series("stroke"), ROUTES["stroke"], LESIONS, MODEL, NOW, Context(evidence_error="ValueError: x"))
    assert "No DICOM SEG/SR or key image: ValueError: x" in json.loads(out.report.resource_json)["conclusion"]
    assert not out.findings[0].evidence
