"""The imaging dispatcher on the real stack: a report's SEG and SR go to a PACS (dcmtk's storescp, C-STORE) and to
an archive (the imaging gateway's STOW-RS). A PACS outage with a dispatcher crash in it holds up only the PACS and
loses nothing; objects no destination could take are dead-lettered with the reason, and the loop goes on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from medstream.events.v1 import common_pb2, deadletter_pb2, dicom_pb2, fhir_pb2

from services.cli.dcmtk import dcmtk
from services.common.blobs import LocalBlobStore
from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import DEAD_LETTERS, DICOM_INSTANCES, FHIR_WRITEBACK
from services.imaging.evidence import dicom_bytes, evidence_objects, store_evidence
from services.imaging.postprocess import labelled_candidates
from services.imaging.preprocess import load_series, rescale
from services.imaging.routes import ROUTES
from services.imaging_dispatcher.destinations import DimseDestination
from tests.conftest import ServiceProcess, running, unique, wait_for
from training.imaging import lung
from training.imaging.synthetic_ct import generate_ct, slice_datasets

pytestmark = pytest.mark.integration
PACS, DISPATCHER, ARCHIVE_HTTP, ARCHIVE_DIMSE = 18210, 18211, 18212, 18213
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
MODEL = common_pb2.ModelRef(name="lung_nodule", version="1")


class StoreScp:
    """dcmtk's storescp as the PACS: AE title PACS, every received object written to `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.proc = folder, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-aet", "PACS", "-od", str(self.folder), str(PACS)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(DimseDestination("pacs", "127.0.0.1", PACS, "PACS", "TEST", 2.0).echo, 20, what="storescp C-ECHO")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def received(self) -> set[str]:
        return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in self.folder.iterdir()}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> Iterator[StoreScp]:
    scp = StoreScp(tmp_path_factory.mktemp("pacs"))
    scp.start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    # Fresh consumer groups each run: a destination's group starts at the topic's end.
    return {"pacs": unique("pacs"), "archive": unique("archive")}


@pytest.fixture(scope="module")
def services(local_stack, pacs, names, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    destinations = [
        f"{names['pacs']}=dicom://PACS@127.0.0.1:{PACS}",
        f"{names['archive']}=http://127.0.0.1:{ARCHIVE_HTTP}/dicomweb",
    ]
    procs = {
        "imaging-gateway": ServiceProcess(
            "imaging-gateway",
            ARCHIVE_HTTP,
            logs,
            {
                "MEDSTREAM_DICOM_DIMSE_PORT": str(ARCHIVE_DIMSE),
                "MEDSTREAM_DICOM_BLOB_DIR": str(tmp_path_factory.mktemp("archive")),
            },
        ),
        "imaging-dispatcher": ServiceProcess(
            "imaging-dispatcher",
            DISPATCHER,
            logs,
            {
                "MEDSTREAM_DISPATCH_DESTINATIONS": json.dumps(destinations),
                "MEDSTREAM_DISPATCH_STOW_TOKEN": "dev-pacs-token",
                "MEDSTREAM_DISPATCH_TIMEOUT_S": "5",
            },
        ),
    }
    with running(procs, 120):
        yield procs


@pytest.fixture(scope="module")
def analysed():
    """A synthetic CT and its two known nodules, standing in for an analysis (the worker's own SEG/SR code)."""
    ct = generate_ct(11, n_nodules=2)
    datasets = [pydicom.dcmread(BytesIO(dicom_bytes(ds))) for ds in slice_datasets(ct)]
    volume = rescale(load_series(datasets))
    grid = lung.prepare(volume)
    found, labels = labelled_candidates(lung.training_sample(ct).mask, grid.affine, grid.spacing, 0.5, 8.0)
    return ct, datasets, volume, grid, found, labels


def report(analysed, store: LocalBlobStore, base: str) -> tuple[fhir_pb2.FhirResourceEvent, set[str]]:
    """The write-back event of one analysed revision with its SEG and SR stored, and their SOP Instance UIDs."""
    ct, datasets, volume, grid, found, labels = analysed
    objects = evidence_objects(datasets, volume, grid, labels, ROUTES["lung-nodule"], found, None, MODEL, base, NOW)
    refs = asyncio.run(store_evidence(store, objects))
    uids = {pydicom.dcmread(BytesIO(data)).SOPInstanceUID for _, _, data, ct_ in objects if ct_ == "application/dicom"}
    return event(ct.patient_id, [{"contentType": r.content_type, "url": r.uri, "title": r.kind} for r in refs]), uids


def event(patient: str, forms: list[dict]) -> fhir_pb2.FhirResourceEvent:
    report_id = str(uuid.uuid4())
    resource = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary",
        "subject": {"reference": f"Patient/{patient}"},
        "presentedForm": forms,
    }
    return fhir_pb2.FhirResourceEvent(
        event_id=report_id,
        resource_type="DiagnosticReport",
        resource_id=report_id,
        patient_reference=f"Patient/{patient}",
        resource_json=json.dumps(resource).encode(),
    )


def publish(settings, *events: fhir_pb2.FhirResourceEvent) -> None:
    producer = EventProducer(settings, "test")
    for e in events:
        producer.send_sync(FHIR_WRITEBACK.name, e.patient_reference.encode(), e)
    producer.close()


def archived(settings, since) -> set[str]:
    """SOP Instance UIDs the archive (the imaging gateway) stored from STOW-RS since `since`."""
    arrivals = read_messages(settings, DICOM_INSTANCES.name, dicom_pb2.DicomInstanceArrival, since)
    return {a.sop_instance_uid for a in arrivals}


def test_seg_and_sr_reach_the_pacs_by_c_store_and_the_archive_by_stow_rs(
    local_stack, services, pacs, analysed, tmp_path
):
    since = end_offsets(local_stack, DICOM_INSTANCES.name)
    report_event, uids = report(analysed, LocalBlobStore(tmp_path), "dispatch|1")
    assert len(uids) == 2  # SEG and SR; the key-image PNG is not DICOM and stays in the blob store
    publish(local_stack, report_event)
    wait_for(lambda: uids <= pacs.received(), 60, what="SEG and SR in the PACS")
    wait_for(lambda: uids <= archived(local_stack, since), 60, what="SEG and SR in the archive")
    received = {pydicom.dcmread(f, stop_before_pixels=True).Modality for f in pacs.folder.iterdir()}
    assert {"SEG", "SR"} <= received


def test_a_pacs_outage_and_a_dispatcher_crash_hold_up_only_the_pacs_and_lose_nothing(
    local_stack, services, pacs, analysed, tmp_path
):
    since = end_offsets(local_stack, DICOM_INSTANCES.name)
    report_event, uids = report(analysed, LocalBlobStore(tmp_path), "dispatch|2")
    pacs.stop()
    try:
        publish(local_stack, report_event)
        # The archive is not held up by the PACS being down.
        wait_for(lambda: uids <= archived(local_stack, since), 60, what="SEG and SR in the archive")
        services["imaging-dispatcher"].kill()  # SIGKILL while the PACS delivery waits: nothing was committed
        services["imaging-dispatcher"].start()
        wait_for(services["imaging-dispatcher"].ready, 120, what="dispatcher back")
    finally:
        pacs.start()
    wait_for(lambda: uids <= pacs.received(), 90, what="SEG and SR in the PACS after it came back")


def test_objects_nobody_can_send_are_dead_lettered_with_the_reason_and_the_loop_goes_on(
    local_stack, services, pacs, analysed, tmp_path, names
):
    dead_before = end_offsets(local_stack, DEAD_LETTERS.name)
    not_dicom = tmp_path / "not-dicom.dcm"
    not_dicom.write_bytes(b"%PDF-1.7 a report, not a DICOM object")
    missing = event("p-missing", [{"contentType": "application/dicom", "url": (tmp_path / "gone.dcm").as_uri()}])
    unreadable = event("p-unreadable", [{"contentType": "application/dicom", "url": not_dicom.as_uri()}])
    good, uids = report(analysed, LocalBlobStore(tmp_path), "dispatch|3")
    publish(local_stack, missing, unreadable, good)
    wait_for(lambda: uids <= pacs.received(), 60, what="the good report's objects after the bad ones")

    def letters() -> list[deadletter_pb2.DeadLetter]:
        return [
            d
            for d in read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, dead_before)
            if d.consumer == "imaging-dispatcher"
        ]

    wait_for(lambda: len(letters()) >= 4, 30, what="a dead letter per bad report and destination")
    texts = [d.error_text for d in letters()]
    for name in names.values():
        assert any(name in t and "unreadable: FileNotFoundError" in t for t in texts), texts
        assert any(name in t and "not a readable DICOM file" in t for t in texts), texts
    assert all(d.source_topic == FHIR_WRITEBACK.name for d in letters())
