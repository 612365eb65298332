"""STOW-RS (DICOM PS3.18 10.5) without I/O: split a multipart/related body, build the dicom+json answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from pydicom.dataset import Dataset

from services.imaging_gateway.instances import OUT_OF_RESOURCES, Instance, Refusal

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"


class BadRequest(ValueError):
    """The request as a whole cannot be read (not one failed instance): HTTP 400 or 415."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True, slots=True)
class Part:
    content_type: str
    data: bytes


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    msg = Message()
    msg["Content-Type"] = value
    params = {k.lower(): str(v) for k, v in msg.get_params(failobj=[])[1:]}
    return msg.get_content_type(), params


def split_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a `multipart/related; type="application/dicom"; boundary=...` body (RFC 2046 / RFC 2387)."""
    media, params = _parse_content_type(content_type)
    if media != "multipart/related":
        raise BadRequest(415, 'Content-Type must be multipart/related; type="application/dicom"')
    if params.get("type", DICOM).lower() != DICOM:
        raise BadRequest(415, f"multipart type {params.get('type')!r} is not supported; send {DICOM}")
    boundary = params.get("boundary", "")
    if not boundary:
        raise BadRequest(400, "multipart boundary is missing")
    delimiter = b"--" + boundary.encode("latin-1")
    # Prefixing CRLF makes the first delimiter look like every other one.
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    if len(chunks) < 3:
        raise BadRequest(400, "no multipart parts found")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, "a multipart part has no header/body separator")
        headers = Message()
        for line in head.split(b"\r\n")[1:]:  # [0] is the rest of the delimiter line (transport padding)
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                headers[name.strip()] = value.strip()
        part_type = headers.get_content_type() if headers.get("Content-Type") else DICOM
        parts.append(Part(part_type, data))
    else:
        raise BadRequest(400, "the multipart body has no close delimiter")
    return parts


@dataclass(frozen=True, slots=True)
class Stored:
    instance: Instance
    duplicate: bool = False


Outcome = Stored | Refusal


def http_status(outcomes: Sequence[Outcome]) -> int:
    """200: all stored; 202: some failed; 409: all failed; 503: all failed and a storage dependency was down."""
    stored = sum(isinstance(o, Stored) for o in outcomes)
    if stored == len(outcomes) and outcomes:
        return 200
    if stored:
        return 202
    if any(isinstance(o, Refusal) and o.status == OUT_OF_RESOURCES for o in outcomes):
        return 503
    return 409


def response_body(outcomes: Sequence[Outcome], base_url: str, study: str | None = None) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) as DICOM JSON."""
    ds = Dataset()
    if study:
        ds.RetrieveURL = f"{base_url}/studies/{study}"
    referenced, failed = [], []
    for o in outcomes:
        item = Dataset()
        if isinstance(o, Stored):
            i = o.instance
            item.ReferencedSOPClassUID = i.sop_class_uid
            item.ReferencedSOPInstanceUID = i.sop_instance_uid
            item.RetrieveURL = (
                f"{base_url}/studies/{i.study_instance_uid}/series/{i.series_instance_uid}"
                f"/instances/{i.sop_instance_uid}"
            )
            referenced.append(item)
        else:
            if o.sop_class_uid:
                item.ReferencedSOPClassUID = o.sop_class_uid
            if o.sop_instance_uid:
                item.ReferencedSOPInstanceUID = o.sop_instance_uid
            item.FailureReason = o.status
            failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    return ds.to_json_dict()
