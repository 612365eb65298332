"""The imaging gateway against real Kafka, dcmtk (echoscu, storescu) and dicomweb-client: nothing vanishes.

Every file sent is either stored (blob on disk + one claim check on medstream.dicom.instances.v1) or refused with a
DICOM status; the tests count both sides.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from medstream.events.v1 import dicom_pb2
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import generate_uid

from services.cli.dcmtk import dcmtk
from services.common.blobs import LocalBlobStore
from services.common.topic_reader import end_offsets, read_records
from services.common.topics import DICOM_INSTANCES
from tests.conftest import ServiceProcess, unique, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(dcmtk("storescu")) is None, reason="dcmtk is not installed (scripts/bootstrap.sh)"),
]
HTTP_PORT, DIMSE_PORT = 18120, 18121
DOWN_HTTP_PORT, DOWN_DIMSE_PORT, NO_BROKER = 18122, 18123, "127.0.0.1:18139"
AUTH = {"Authorization": "Bearer dev-pacs-token"}
STOW = f"http://127.0.0.1:{HTTP_PORT}/dicomweb/studies"
PYDICOM_FILES = Path(str(get_testdata_file("CT_small.dcm"))).parent
PYDICOM_DATA_FILES = Path(str(get_testdata_file("US1_UNCR.dcm"))).parent  # pydicom-data (retired US classes, big MR)
STATUS_NAMES = {"DataSetDoesNotMatchSOPClass": 0xA900, "CannotUnderstand": 0xC000, "OutOfResources": 0xA700}


class Gateway:
    def __init__(self, proc: ServiceProcess, blobs: LocalBlobStore, since: dict[int, int]) -> None:
        self.proc, self.blobs, self.since = proc, blobs, since

    def arrivals(self, settings: Any) -> list[dicom_pb2.DicomInstanceArrival]:
        """Claim checks published since this module started."""
        return [
            dicom_pb2.DicomInstanceArrival.FromString(v)
            for _, v, _ in read_records(settings, DICOM_INSTANCES.name, self.since)
        ]


@pytest.fixture(scope="module")
def gateway(local_stack, tmp_path_factory) -> Iterator[Gateway]:
    blob_dir = tmp_path_factory.mktemp("blobs")
    since = end_offsets(local_stack, DICOM_INSTANCES.name)
    env = {"MEDSTREAM_DICOM_DIMSE_PORT": str(DIMSE_PORT), "MEDSTREAM_DICOM_BLOB_DIR": str(blob_dir)}
    proc = ServiceProcess("imaging-gateway", HTTP_PORT, local_stack.state_dir / "logs", env).start()
    wait_for(proc.ready, 60, what="imaging gateway ready")
    yield Gateway(proc, LocalBlobStore(blob_dir), since)
    proc.stop()


def stow(parts: list[bytes], url: str = STOW, port_url: str | None = None) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    headers = {**AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    return httpx.post(port_url or url, content=body, headers=headers, timeout=60)


def fresh_ct(**changes: Any) -> bytes:
    ds = dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def storescu_profile(folders: list[Path], out: Path) -> Path:
    """A storescu association profile proposing each (SOP class, transfer syntax) the folder holds, so compressed
    files travel as they are (storescu proposes only uncompressed syntaxes by default and cannot transcode)."""
    pairs = set()
    for path in (p for folder in folders for p in folder.rglob("*")):
        try:
            meta = dcmread(path, stop_before_pixels=True).file_meta
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception:
            continue
        if all(pair):
            pairs.add(pair)
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        offered = dict.fromkeys([ts, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        lines += [f"[TS{i}]", *(f"TransferSyntax{n} = {t}" for n, t in enumerate(offered, 1))]
    lines += ["[[PresentationContexts]]", "[Files]"]
    lines += [f"PresentationContext{n} = {c}\\TS{syntaxes.index(t)}" for n, (c, t) in enumerate(sorted(pairs), 1)]
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Files"]
    out.write_text("\n".join(lines) + "\n")
    return out


def storescu_outcomes(output: str) -> dict[str, str]:
    """file -> what storescu says happened to it: a store response, or why it never sent it."""
    outcomes: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = m.group(1)
        elif current is None:
            continue
        elif m := re.match(r"I: Received Store Response \((.+)\)", line):
            outcomes[current], current = m.group(1), None
        elif m := re.match(r"E: (No SOP Class or Instance UID in file|Bad DICOM file|No presentation context)", line):
            outcomes[current], current = f"not sent: {m.group(1)}", None
    return outcomes


# ---------------------------------------------------------------- DIMSE with dcmtk


def test_echoscu_is_answered(gateway: Gateway) -> None:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDSTREAM", "127.0.0.1", str(DIMSE_PORT)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_folder_every_file_stored_or_refused(local_stack, gateway: Gateway, tmp_path: Path) -> None:
    calling = unique("SCU")[:16].upper().replace("-", "")
    profile = storescu_profile([PYDICOM_FILES, PYDICOM_DATA_FILES], tmp_path / "storescu.cfg")
    result = subprocess.run(
        [
            *(dcmtk("storescu"), "-v", "-xf", str(profile), "Files", "-aet", calling, "-aec", "MEDSTREAM"),
            *("+sd", "+r", "-nh", "127.0.0.1", str(DIMSE_PORT), str(PYDICOM_FILES), str(PYDICOM_DATA_FILES)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    outcomes = storescu_outcomes(result.stdout + result.stderr)
    sent = len(re.findall(r"^I: Sending file: ", result.stdout + result.stderr, re.M))
    assert len(outcomes) == sent > 200, "every file storescu picked up has exactly one outcome"
    stored = {f for f, o in outcomes.items() if o == "Success"}
    refused = {f: o for f, o in outcomes.items() if o.startswith("Error: ")}
    assert set(outcomes) == stored | set(refused) | {f for f, o in outcomes.items() if o.startswith("not sent")}
    assert {o.split(": ")[1] for o in refused.values()} <= set(STATUS_NAMES), refused
    assert len(stored) > 170

    mine = [a for a in gateway.arrivals(local_stack) if a.calling_ae_title == calling]
    assert {a.sop_instance_uid for a in mine} == {
        str(dcmread(f, stop_before_pixels=True, force=True).SOPInstanceUID) for f in stored
    }
    assert len({(a.sop_instance_uid, a.sha256) for a in mine}) == len(mine) <= len(stored)
    for a in mine:
        path = gateway.blobs.path_for(a.sop_instance_uid, a.sha256)
        assert a.blob_uri == path.as_uri() and gateway.blobs.announced(a.blob_uri)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a.sha256
        assert a.transport == dicom_pb2.DICOM_TRANSPORT_DIMSE_C_STORE


# ---------------------------------------------------------------- STOW-RS


def test_dicomweb_client_stow_and_a_broken_part_refused_with_a_reason(local_stack, gateway: Gateway) -> None:
    client = DICOMwebClient(url=f"http://127.0.0.1:{HTTP_PORT}/dicomweb", headers=AUTH)
    datasets = [dcmread(BytesIO(fresh_ct())) for _ in range(3)]
    answer = client.store_instances(datasets)
    assert sorted(i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence) == sorted(
        d.SOPInstanceUID for d in datasets
    )
    good, other_study = fresh_ct(), fresh_ct(StudyInstanceUID=generate_uid())
    study = dcmread(BytesIO(good)).StudyInstanceUID
    resp = stow([good, b"\0" * 128 + b"DICM" + b"broken", other_study], url=f"{STOW}/{study}")
    assert resp.status_code == 202 and resp.headers["Content-Type"] == "application/dicom+json"
    body = resp.json()
    assert len(body["00081199"]["Value"]) == 1
    reasons = sorted(item["00081197"]["Value"][0] for item in body["00081198"]["Value"])
    assert reasons == [0xA900, 0xC000]
    assert stow([b"junk"]).status_code == 409
    assert httpx.post(STOW, content=b"", headers={"Content-Type": "multipart/related"}).status_code == 401
    announced = {a.sop_instance_uid for a in gateway.arrivals(local_stack)}
    assert {d.SOPInstanceUID for d in datasets} <= announced
    assert dcmread(BytesIO(other_study)).SOPInstanceUID not in announced


def test_the_same_instance_twice_is_announced_once(local_stack, gateway: Gateway) -> None:
    data = fresh_ct()
    uid = dcmread(BytesIO(data)).SOPInstanceUID
    assert stow([data]).status_code == 200 and stow([data]).status_code == 200
    changed = dcmread(BytesIO(data))
    changed.InstanceNumber = 42
    out = BytesIO()
    changed.save_as(out, enforce_file_format=True)
    assert stow([out.getvalue()]).status_code == 200
    mine = [a for a in gateway.arrivals(local_stack) if a.sop_instance_uid == uid]
    assert sorted(a.instance_number for a in mine) == [1, 42], "a new version is announced, a duplicate is not"


def test_every_bundled_test_file_is_stored_or_refused(local_stack, gateway: Gateway) -> None:
    files = [p for p in map(Path, sorted(get_testdata_files())) if p.is_file()]  # it lists a folder too
    assert len(files) > 200, "pydicom's test files and pydicom-data"
    stored = refused = 0
    for start in range(0, len(files), 25):
        batch = files[start : start + 25]
        resp = stow([f.read_bytes() for f in batch])
        assert resp.status_code in (200, 202, 409), resp.text
        body = resp.json()
        referenced = body.get("00081199", {}).get("Value", [])
        failed = body.get("00081198", {}).get("Value", [])
        assert len(referenced) + len(failed) == len(batch), "one answer per part"
        assert {item["00081197"]["Value"][0] for item in failed} <= {0xA900, 0xC000, 0x0122}
        stored, refused = stored + len(referenced), refused + len(failed)
    print(f"{len(files)} files: {stored} stored, {refused} refused with a reason")
    assert stored > 150

    # A stored file's bytes are in the blob store, announced exactly once (by whichever transport came first).
    announced = [(a.sop_instance_uid, a.sha256) for a in gateway.arrivals(local_stack)]
    assert len(announced) == len(set(announced))
    with_blob = 0
    for f in files:
        data = f.read_bytes()
        try:
            uid = str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        except Exception:
            continue
        blob = gateway.blobs.path_for(uid, hashlib.sha256(data).hexdigest())
        if blob.exists():
            with_blob += 1
            assert blob.read_bytes() == data and gateway.blobs.announced(blob.as_uri())
            assert (uid, hashlib.sha256(data).hexdigest()) in set(announced)
    assert with_blob == stored, "every file answered as stored is in the blob store, and no other"


# ---------------------------------------------------------------- Kafka unavailable


def test_kafka_unavailable_answers_out_of_resources_and_announces_nothing(local_stack, tmp_path: Path) -> None:
    env = {
        "MEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": NO_BROKER,
        "MEDSTREAM_DICOM_PUBLISH_TIMEOUT_MS": "1500",
        "MEDSTREAM_DICOM_DIMSE_PORT": str(DOWN_DIMSE_PORT),
        "MEDSTREAM_DICOM_BLOB_DIR": str(tmp_path / "blobs"),
    }
    proc = ServiceProcess("imaging-gateway", DOWN_HTTP_PORT, local_stack.state_dir / "logs", env).start()
    try:
        wait_for(proc.alive, 60, what="gateway without a broker alive")
        assert not proc.ready(), "/readyz reports the missing broker"
        file = tmp_path / "ct.dcm"
        file.write_bytes(fresh_ct())
        result = subprocess.run(
            [dcmtk("storescu"), "-v", "-aec", "MEDSTREAM", "127.0.0.1", str(DOWN_DIMSE_PORT), str(file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Received Store Response (Refused: OutOfResources)" in result.stdout + result.stderr
        resp = stow([file.read_bytes()], port_url=f"http://127.0.0.1:{DOWN_HTTP_PORT}/dicomweb/studies")
        assert resp.status_code == 503 and resp.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        assert not list((tmp_path / "blobs").rglob("*.announced")), "nothing announced as stored"
    finally:
        proc.stop()
