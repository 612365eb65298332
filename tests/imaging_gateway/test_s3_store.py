"""The gateway on the S3 blob store (a real S3-compatible server, tools/s3server) with an in-memory producer:
claim checks carry s3:// URIs the worker can read, duplicates are announced once, S3 down answers 0xA700."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid

from services.common.blobs import blob_store, read_blob
from services.imaging_gateway.app import Gateway
from services.imaging_gateway.instances import OUT_OF_RESOURCES, Refusal
from services.imaging_gateway.stow import Stored
from tests.imaging_gateway.test_units import FakeProducer, ct_bytes, receive
from tests.s3server import S3Server

pytestmark = pytest.mark.unit
S3_PORT, DEAD_PORT = 18204, 18209


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(S3_PORT, tmp_path_factory.mktemp("s3") / "data").start()
    yield server
    server.stop()


def test_claim_checks_carry_s3_uris_readable_by_the_worker(s3: S3Server) -> None:
    settings = s3.settings(s3_prefix="dicom")
    producer = FakeProducer()
    gateway = Gateway(settings, blob_store(settings), producer)
    uid = generate_uid()
    first = ct_bytes(SOPInstanceUID=uid)
    assert isinstance(receive(gateway, first), Stored)
    again = receive(gateway, first)
    assert isinstance(again, Stored) and again.duplicate
    assert isinstance(receive(gateway, ct_bytes(SOPInstanceUID=uid, InstanceNumber=99)), Stored)
    assert [e.instance_number for e in producer.sent] == [1, 99]
    (claim, _) = producer.sent
    assert claim.blob_uri.startswith(f"s3://{s3.bucket}/dicom/") and claim.blob_uri.endswith(f"{claim.sha256}.dcm")
    # the worker: configured for the local store or S3 alike, it reads by URI
    assert read_blob(claim.blob_uri, s3.settings(blob_store="local")) == first


def test_s3_down_means_out_of_resources_and_a_later_send_announces(s3: S3Server) -> None:
    data = ct_bytes(SOPInstanceUID=generate_uid())
    producer = FakeProducer()
    down = s3.settings(s3_endpoint_url=f"http://127.0.0.1:{DEAD_PORT}")
    refused = receive(Gateway(down, blob_store(down), producer), data)
    assert isinstance(refused, Refusal) and refused.status == OUT_OF_RESOURCES and not producer.sent
    assert isinstance(receive(Gateway(s3.settings(), blob_store(s3.settings()), producer), data), Stored)
    assert len(producer.sent) == 1
