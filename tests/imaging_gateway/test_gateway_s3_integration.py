"""The gateway process on the S3 blob store, against real Kafka, dcmtk's storescu and tools/s3server: every instance
stored is in the bucket and its claim check carries an s3:// URI that reads back the same bytes; a restart of the
S3 server loses nothing."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from medstream.events.v1 import dicom_pb2
from pydicom import dcmread

from services.cli.dcmtk import dcmtk
from services.common.blobs import blob_store, read_blob
from services.common.topic_reader import end_offsets, read_records
from services.common.topics import DICOM_INSTANCES, FHIR_WRITEBACK
from tests.conftest import ServiceProcess, unique, wait_for
from tests.imaging.helpers import reports_for, storescu
from tests.imaging_gateway.test_gateway_integration import fresh_ct, stow
from tests.s3server import S3Server
from training.imaging.synthetic_ct import generate_ct, write_series

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(dcmtk("storescu")) is None, reason="dcmtk is not installed (scripts/bootstrap.sh)"),
]
S3_PORT, HTTP_PORT, DIMSE_PORT, WORKER_PORT = 18205, 18206, 18207, 18208
STOW = f"http://127.0.0.1:{HTTP_PORT}/dicomweb/studies"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(S3_PORT, tmp_path_factory.mktemp("s3") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(local_stack, s3: S3Server) -> Iterator[tuple[ServiceProcess, dict[int, int]]]:
    since = end_offsets(local_stack, DICOM_INSTANCES.name)
    env = {
        "MEDSTREAM_DICOM_DIMSE_PORT": str(DIMSE_PORT),
        "MEDSTREAM_BLOB_STORE": "s3",
        "MEDSTREAM_S3_BUCKET": s3.bucket,
        "MEDSTREAM_S3_PREFIX": "gateway",
        "MEDSTREAM_S3_ENDPOINT_URL": s3.endpoint_url,
        "MEDSTREAM_S3_ACCESS_KEY_ID": "medstream-test",
        "MEDSTREAM_S3_SECRET_ACCESS_KEY": "medstream-test-secret",
    }
    proc = ServiceProcess("imaging-gateway", HTTP_PORT, local_stack.state_dir / "logs", env).start()
    wait_for(proc.ready, 60, what="imaging gateway ready")
    yield proc, since
    proc.stop()


def arrivals(settings: Any, since: dict[int, int]) -> list[dicom_pb2.DicomInstanceArrival]:
    return [
        dicom_pb2.DicomInstanceArrival.FromString(v) for _, v, _ in read_records(settings, DICOM_INSTANCES.name, since)
    ]


def test_stow_and_storescu_land_in_the_bucket(local_stack, gateway, s3: S3Server, tmp_path: Path) -> None:
    _, since = gateway
    sent = [fresh_ct() for _ in range(3)]
    assert stow(sent, url=STOW).status_code == 200
    assert stow(sent[:1], url=STOW).status_code == 200, "a duplicate is answered Success"
    folder = tmp_path / "scu"
    folder.mkdir()
    for n in range(2):
        (folder / f"{n}.dcm").write_bytes(fresh_ct())
    calling = unique("S3")[:16].upper().replace("-", "")
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            calling,
            "-aec",
            "MEDSTREAM",
            "127.0.0.1",
            str(DIMSE_PORT),
            *map(str, folder.iterdir()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    files = [*sent, *(p.read_bytes() for p in folder.iterdir())]
    uids = {str(dcmread(BytesIO(d), stop_before_pixels=True).SOPInstanceUID): d for d in files}
    mine = [a for a in arrivals(local_stack, since) if a.sop_instance_uid in uids]
    assert sorted(a.sop_instance_uid for a in mine) == sorted(uids), "each instance announced exactly once"
    store = blob_store(s3.settings(s3_prefix="gateway"))
    for a in mine:
        assert a.blob_uri.startswith(f"s3://{s3.bucket}/gateway/")
        data = read_blob(a.blob_uri, s3.settings(blob_store="local"))
        assert hashlib.sha256(data).hexdigest() == a.sha256
        assert str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID) == a.sop_instance_uid
        if uids[a.sop_instance_uid] in sent:  # STOW-RS stores the file as sent; C-STORE its dataset as a file
            assert data == uids[a.sop_instance_uid]
        assert store.announced(a.blob_uri)


@pytest.mark.timeout(180)
def test_s3_down_refuses_with_out_of_resources_then_recovers(local_stack, gateway, s3: S3Server) -> None:
    _, since = gateway
    data = fresh_ct()
    s3.stop()
    try:
        resp = stow([data], url=STOW)
        assert resp.status_code == 503 and resp.headers.get("Retry-After")
        (failed,) = resp.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xA700]
    finally:
        s3.start()
    assert stow([data], url=STOW).status_code == 200
    uid = str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    (arrival,) = [a for a in arrivals(local_stack, since) if a.sop_instance_uid == uid]
    assert read_blob(arrival.blob_uri, s3.settings()) == data


def test_imaging_worker_reads_the_series_from_s3_and_stores_its_evidence_there(local_stack, gateway, s3, tmp_path):
    env = {k: v for k, v in gateway[0].env.items() if k.startswith("MEDSTREAM_S3") or k == "MEDSTREAM_BLOB_STORE"}
    worker = ServiceProcess(
        "imaging", WORKER_PORT, local_stack.state_dir / "logs", {**env, "MEDSTREAM_IMAGING_QUIET_S": "3"}
    ).start()
    try:
        wait_for(worker.ready, 120, what="imaging worker ready")
        ct = generate_ct(int(time.time()) % 100_000 + 800_000, n_nodules=2)
        write_series(ct, tmp_path / "ct")
        (tmp_path / "ct" / "ground_truth.json").unlink(missing_ok=True)
        since = end_offsets(local_stack, FHIR_WRITEBACK.name)
        storescu(tmp_path / "ct", DIMSE_PORT)
        wait_for(lambda: reports_for(local_stack, since, ct.patient_id), 120, what="report")
    finally:
        worker.stop()
    [report] = reports_for(local_stack, since, ct.patient_id)
    forms = {f["title"]: f for f in report.get("presentedForm", [])}
    assert {"dicom-sr", "dicom-seg", "key-image"} <= set(forms), report.get("presentedForm")
    assert all(f["url"].startswith(f"s3://{s3.bucket}/gateway/outputs/") for f in forms.values())
    seg = dcmread(BytesIO(read_blob(forms["dicom-seg"]["url"], s3.settings())))
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.series_instance_uid
    sr = dcmread(BytesIO(read_blob(forms["dicom-sr"]["url"], s3.settings())))
    assert sr.Modality == "SR"
    assert read_blob(forms["key-image"]["url"], s3.settings()).startswith(b"\x89PNG")
