"""Lung nodules on chest CT: HU on a 2.5 mm grid in the lung window, 32^3 patches holding lung, the lung_nodule
3D U-Net (trained on synthetic phantoms by training/imaging/lung.py), nodules of at least 16 mm^3."""

from __future__ import annotations

import numpy as np
from medstream.events.v1 import finding_pb2
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from services.imaging.dicom_outputs import Kind
from services.imaging.postprocess import Candidate
from services.imaging.preprocess import WINDOWS, Volume, resample, window
from services.imaging.routes import Coding, Route, patch_contract

SPACING = (2.5, 2.5, 2.5)  # mm (z, y, x): the model's grid (CPU budget: nodules < 5 mm are 1-2 voxels)
PATCH, STRIDE = 32, 28
WINDOW = WINDOWS["lung"]  # -1350 .. 150 HU -> 0 .. 1
LUNG_RANGE = (0.15, 0.55)  # lung parenchyma in the lung window (-1125 .. -525 HU)

LUNG_NODULE = patch_contract("lung_nodule", PATCH)


def prepare(hu: Volume) -> Volume:
    """HU volume -> SPACING grid -> lung window, 0..1 float32: the model's input space."""
    grid = resample(hu, SPACING, order=1, fill=-1024.0)
    return Volume(window(grid.array, *WINDOW).astype(np.float32), grid.affine, grid.spacing, "CT", "MONOCHROME2")


def has_lung(patch: np.ndarray) -> bool:
    """Whether a patch holds lung (at least 1 % of its voxels in the parenchyma range): others are skipped."""
    inside = (patch > LUNG_RANGE[0]) & (patch < LUNG_RANGE[1])
    return bool(inside.mean() >= 0.01)


def severity(c: Candidate) -> int:
    return int(finding_pb2.SEVERITY_MEDIUM if c.diameter_mm >= 8.0 else finding_pb2.SEVERITY_LOW)


ROUTE = Route(
    name="lung-nodule",
    modality="CT",
    body_parts=("CHEST", "LUNG", "THORAX"),
    contract=LUNG_NODULE,
    patch=PATCH,
    stride=STRIDE,
    prepare=prepare,
    keep=has_lung,
    threshold=0.5,  # training calibrates the model so that its operating point is 0.5
    min_volume_mm3=16.0,
    kind="lung-nodule",
    code=Coding("http://hl7.org/fhir/sid/icd-10-cm", "R91.1", "Solitary pulmonary nodule"),
    report_code=Coding("http://loinc.org", "24627-2", "Chest CT"),
    evidence=Kind("lung nodule", codes.SCT.Nodule, codes.SCT.Lung, {"CT": Code("24627-2", "LN", "CT Chest")}),
    severity=severity,
    alert=None,
    display_window=lambda _volume: WINDOW,
)
