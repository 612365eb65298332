"""Destinations of the imaging dispatcher: how they are configured, the STOW-RS request they send, and which
answers mean 'wait' and which mean 'never'."""

from __future__ import annotations

import json

import pytest
from medstream.events.v1 import fhir_pb2
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.imaging.evidence import dicom_bytes
from services.imaging_dispatcher.app import dicom_objects
from services.imaging_dispatcher.destinations import (
    DimseDestination,
    Refused,
    StowDestination,
    Unreachable,
    multipart_related,
    parse_destination,
    parse_destinations,
    read_dataset,
    stow_failures,
)
from services.imaging_gateway.stow import split_multipart

pytestmark = pytest.mark.unit
OPTS = {"calling_ae": "MEDSTREAM", "timeout_s": 5.0, "stow_token": "t0ken"}


def sr_bytes() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dicom_bytes(ds)


def test_destinations_parse_from_name_equals_url():
    pacs = parse_destination("pacs=dicom://ORTHANC@10.0.0.5:4242", **OPTS)
    assert pacs == DimseDestination("pacs", "10.0.0.5", 4242, "ORTHANC", "MEDSTREAM", 5.0)
    assert pacs.describe() == "dicom://ORTHANC@10.0.0.5:4242"
    archive = parse_destination("archive=https://vna.example.org/dicomweb/", **OPTS)
    assert archive == StowDestination("archive", "https://vna.example.org/dicomweb", "t0ken", 5.0)
    assert "t0ken" not in archive.describe() and "t0ken" not in repr(archive.describe())


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("dicom://PACS@host:104", "name=url"),
        ("PACS=dicom://PACS@host:104", "lower-case"),
        ("pacs=dicom://host:104", "CALLED_AE@host:port"),
        ("pacs=dicom://PACS@host", "CALLED_AE@host:port"),
        ("pacs=dicom://SEVENTEEN_CHARS_AE@host:104", "16 characters"),
        ("pacs=ftp://host/x", "scheme"),
    ],
)
def test_a_wrong_destination_is_refused_at_start_with_what_is_wrong(entry, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_destination(entry, **OPTS)


def test_destination_names_are_unique_because_each_names_a_consumer_group():
    with pytest.raises(ValueError, match="unique"):
        parse_destinations(["a=dicom://A@h:1", "a=http://h/x"], **OPTS)


def test_stow_body_is_multipart_related_the_gateway_reads_back():
    objects = [sr_bytes(), sr_bytes()]
    content_type, body = multipart_related(objects, boundary="b0undary")
    assert content_type == 'multipart/related; type="application/dicom"; boundary=b0undary'
    parts = split_multipart(content_type, body)
    assert [p.data for p in parts] == objects and {p.content_type for p in parts} == {"application/dicom"}


def test_stow_failed_sop_sequence_becomes_reasons():
    response = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0x0122]}},
                {"00081155": {"vr": "UI", "Value": ["1.2.4"]}, "00081197": {"vr": "US", "Value": [0xA900]}},
            ],
        }
    }
    assert stow_failures(response) == ["1.2.3: failure reason 0x0122", "1.2.4: failure reason 0xA900"]
    assert stow_failures({}) == []


def test_a_stored_object_that_is_not_dicom_is_refused_before_sending():
    assert read_dataset(sr_bytes()).Modality == "SR"
    with pytest.raises(Refused, match="not a readable DICOM file"):
        read_dataset(b"%PDF-1.7 not dicom")


def test_a_closed_port_is_unreachable_not_refused():
    # Nothing listens on port 1 here: the dispatcher must wait for it, never dead-letter the report.
    with pytest.raises(Unreachable):
        DimseDestination("pacs", "127.0.0.1", 1, "PACS", "MEDSTREAM", 2.0).send([sr_bytes()])
    with pytest.raises(Unreachable):
        StowDestination("archive", "http://127.0.0.1:1/dicomweb", None, 2.0).send([sr_bytes()])


def test_only_a_reports_dicom_objects_are_dispatched():
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r",
        "presentedForm": [
            {"contentType": "application/dicom", "url": "file:///b/seg.dcm", "title": "dicom-seg"},
            {"contentType": "application/dicom", "url": "s3://bucket/o/sr.dcm", "title": "dicom-sr"},
            {"contentType": "image/png", "url": "file:///b/key-image-1.png", "title": "key-image"},
        ],
    }
    event = fhir_pb2.FhirResourceEvent(resource_type="DiagnosticReport", resource_json=json.dumps(report).encode())
    assert dicom_objects(event) == ["file:///b/seg.dcm", "s3://bucket/o/sr.dcm"]
    observation = fhir_pb2.FhirResourceEvent(resource_type="Observation", resource_json=b"{}")
    assert dicom_objects(observation) == []
    no_evidence = fhir_pb2.FhirResourceEvent(resource_type="DiagnosticReport", resource_json=b'{"id": "r"}')
    assert dicom_objects(no_evidence) == []
    with pytest.raises(ValueError):
        dicom_objects(fhir_pb2.FhirResourceEvent(resource_type="DiagnosticReport", resource_json=b"{not json"))
