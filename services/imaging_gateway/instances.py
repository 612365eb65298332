"""What one received DICOM instance is: its header read from PS3.10 bytes, or a refusal with a DICOM status."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset

# DICOM statuses (PS3.4 Annex B C-STORE, PS3.18 FailureReason (0008,1197)); names follow the standard.
SUCCESS = 0x0000
REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
REFUSED_NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True, slots=True)
class Instance:
    """The key attributes of a readable instance; `data` is the PS3.10 file as received."""

    data: bytes
    sha256: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    body_part_examined: str = ""
    patient_id: str = ""
    accession_number: str = ""
    instance_number: int = 0
    # Images in Acquisition (0020,1002) when the sender sets it: the series assembler completes at this count
    # instead of waiting for its quiet period (a series of several acquisitions then completes early, and the
    # later acquisitions open a revision).
    expected_instances: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an instance was not stored; `sop_*` are set when the header was readable enough to name them."""

    status: int
    reason: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def parse_instance(
    data: bytes,
    accepted_sop_classes: frozenset[str] | None = None,
    expected_sop_class: str | None = None,
    expected_study: str | None = None,
) -> Instance | Refusal:
    """Read the header of a PS3.10 file (stopping before the pixel data); refuse what cannot be stored.

    `expected_sop_class`: the DIMSE presentation context's abstract syntax; `expected_study`: the STOW-RS URL's study.
    """
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        meta = ds.file_meta
        uids = {k: _text(ds, k) for k in REQUIRED_UIDS}
        transfer_syntax = _text(meta, "TransferSyntaxUID")
        header = {
            "modality": _text(ds, "Modality"),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "patient_id": _text(ds, "PatientID"),
            "accession_number": _text(ds, "AccessionNumber"),
            "instance_number": _int(ds, "InstanceNumber"),
            "expected_instances": _int(ds, "ImagesInAcquisition"),
        }
    except Exception as exc:  # pydicom raises many types for malformed input; every one is a refusal
        return Refusal(CANNOT_UNDERSTAND, f"unreadable DICOM file: {type(exc).__name__}")
    sop_class, sop_instance = uids["SOPClassUID"], uids["SOPInstanceUID"]
    if not transfer_syntax:
        return Refusal(CANNOT_UNDERSTAND, "file meta has no TransferSyntaxUID", sop_class, sop_instance)
    missing = [k for k, v in uids.items() if not v]
    if missing:
        return Refusal(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"missing {', '.join(missing)}", sop_class, sop_instance)
    if expected_sop_class and sop_class != expected_sop_class:
        return Refusal(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the negotiated one", sop_class, sop_instance
        )
    if accepted_sop_classes is not None and sop_class not in accepted_sop_classes:
        return Refusal(REFUSED_SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted here", sop_class, sop_instance)
    if expected_study and uids["StudyInstanceUID"] != expected_study:
        return Refusal(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID differs from the request's", sop_class, sop_instance
        )
    return Instance(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        sop_instance_uid=sop_instance,
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        **header,  # type: ignore[arg-type]
    )
