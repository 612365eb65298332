"""DICOM outputs of one analysed series (pure): a Segmentation of the findings, a TID 1500 measurement report
(Comprehensive 3D SR) that references it, and a key-image PNG per finding.

Inputs are the source datasets, the model's integer label map on its grid (0 background, k = k-th finding) with
the grid affine (voxel index (z, y, x, 1) -> patient LPS mm, as in services/imaging/preprocess.py) and the
findings' measurements. Every UID comes from the source SeriesInstanceUID and a caller-given `seed` (e.g.
"series|revision|model|version"), and `now` fixes the creation dates, so a replay writes identical objects.

Codes: segment category SCT 49755003 Morphologically abnormal structure; type SCT 27925004 Nodule (lung) or
SCT 55641003 Infarct (stroke); finding site SCT 39607008 Lung / SCT 12738006 Brain. Measurements: SCT 81827009
Diameter (mm; method 99MEDSTREAM EQSPHD: diameter of the sphere of the same volume), SCT 118565006 Volume (ml;
method DCM 126030 Sum of segmented voxel method), DCM 111012 Certainty of Finding (the model's highest voxel
probability in the lesion, 0..1, unit "1"). Against a prior: 99MEDSTREAM PRIORVOL Volume at prior study (ml),
VOLCHG Volume change since prior study (%), VDT Volume doubling time (d). A report without findings holds one
TID 1501 group whose qualitative evaluation is "<finding type> = SCT 272519000 Absent".
"""

from __future__ import annotations

import datetime as dt
import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from skimage.segmentation import find_boundaries

from services.imaging.postprocess import Candidate, Change
from services.imaging.preprocess import window as voi_window

__all__ = [
    "Kind",
    "PriorComparison",
    "SegmentedFinding",
    "key_image_caption",
    "key_image_png",
    "labels_on_sources",
    "labels_on_volume",
    "measurement_report",
    "segmentation",
]

PRIVATE_SCHEME: Final = "99MEDSTREAM"
EQUIVALENT_SPHERE_DIAMETER: Final = Code("EQSPHD", PRIVATE_SCHEME, "Volume-equivalent sphere diameter")
PRIOR_VOLUME: Final = Code("PRIORVOL", PRIVATE_SCHEME, "Volume at prior study")
VOLUME_CHANGE: Final = Code("VOLCHG", PRIVATE_SCHEME, "Volume change since prior study")
VOLUME_DOUBLING_TIME: Final = Code("VDT", PRIVATE_SCHEME, "Volume doubling time")
MILLILITER: Final = Code("ml", "UCUM", "milliliter")
ALGORITHM_FAMILY: Final = codes.DCM.ArtificialIntelligence
DISCLAIMER: Final = "synthetic-data model, not for clinical use"


@dataclass(frozen=True)
class Kind:
    """What a route's findings are called and coded as in DICOM (each route declares its own)."""

    name: str  # human label stem: "lung nodule 1"
    finding_type: Code  # SEG segmented property type, SR finding type
    site: Code  # SEG anatomic region, SR finding site
    procedures: dict[str, Code]  # Modality -> TID 1500 procedure reported


@dataclass(frozen=True)
class PriorComparison:
    prior_volume_ml: float
    volume_change_pct: float
    doubling_time_days: float | None  # None when the lesion did not grow


@dataclass(frozen=True)
class SegmentedFinding:
    """One finding: its value in the label map and its measurements (sizes of the model-grid component)."""

    label: int  # k for the k-th finding (1-based, list order)
    diameter_mm: float  # volume-equivalent sphere diameter
    volume_ml: float
    centre_mm: tuple[float, float, float]  # patient LPS
    confidence: float  # highest probability in the lesion, 0..1
    prior: PriorComparison | None = None

    @classmethod
    def from_candidate(cls, label: int, c: Candidate, change: Change | None = None) -> SegmentedFinding:
        prior = None
        if change is not None and change.prior is not None and change.volume_change_pct is not None:
            prior = PriorComparison(change.prior.volume_ml, change.volume_change_pct, change.doubling_time_days)
        return cls(label, c.diameter_mm, c.volume_ml, c.centre_mm, c.confidence, prior)


# ---------------------------------------------------------------- label maps on other grids


def _sample_plane(
    labels_grid: npt.NDArray[Any],
    to_grid: npt.NDArray[np.float64],
    origin: npt.NDArray[np.float64],
    row_step: npt.NDArray[np.float64],
    column_step: npt.NDArray[np.float64],
    rows: int,
    columns: int,
) -> npt.NDArray[Any]:
    """Nearest grid label at every pixel centre of a plane (origin + r * row_step + c * column_step, LPS mm)."""
    start = to_grid[:3, :3] @ origin + to_grid[:3, 3]
    r = np.arange(rows, dtype=np.float64)[:, None, None] * (to_grid[:3, :3] @ row_step)
    c = np.arange(columns, dtype=np.float64)[None, :, None] * (to_grid[:3, :3] @ column_step)
    index = np.rint(start + r + c).astype(np.int64)  # (rows, columns, 3) grid (z, y, x)
    inside = np.all((index >= 0) & (index < np.asarray(labels_grid.shape)), axis=-1)
    out = np.zeros((rows, columns), dtype=labels_grid.dtype)
    z, y, x = index[inside].T
    out[inside] = labels_grid[z, y, x]
    return out


def labels_on_sources(
    labels_grid: npt.NDArray[Any], grid_affine: npt.NDArray[np.float64], sources: Sequence[Dataset]
) -> npt.NDArray[Any]:
    """Grid labels at each source pixel (nearest neighbour), (frames, rows, columns) in the order of `sources`.

    Only single-frame images: geometry comes from each dataset's ImagePositionPatient, ImageOrientationPatient
    and PixelSpacing; pixels outside the grid get 0."""
    to_grid = np.linalg.inv(np.asarray(grid_affine, dtype=np.float64))
    planes = []
    for ds in sources:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"{ds.SOPInstanceUID}: multi-frame sources are not supported")
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        # IOP[0:3] is the direction along a row (column index grows), IOP[3:6] down a column (row index grows).
        planes.append(
            _sample_plane(
                labels_grid, to_grid, origin, iop[3:] * row_spacing, iop[:3] * column_spacing, ds.Rows, ds.Columns
            )
        )
    return np.stack(planes) if planes else np.zeros((0, 0, 0), dtype=labels_grid.dtype)


def labels_on_volume(
    labels_grid: npt.NDArray[Any],
    grid_affine: npt.NDArray[np.float64],
    volume_affine: npt.NDArray[np.float64],
    shape: tuple[int, int, int],
) -> npt.NDArray[Any]:
    """Grid labels at each voxel of another (z, y, x) volume (nearest neighbour; outside the grid: 0)."""
    to_grid = np.linalg.inv(np.asarray(grid_affine, dtype=np.float64))
    affine = np.asarray(volume_affine, dtype=np.float64)
    planes = [
        _sample_plane(labels_grid, to_grid, affine[:3, 0] * k + affine[:3, 3], affine[:3, 1], affine[:3, 2], *shape[1:])
        for k in range(shape[0])
    ]
    return np.stack(planes) if planes else np.zeros(shape, dtype=labels_grid.dtype)


# ---------------------------------------------------------------- deterministic identity


def _uid(sources: Sequence[Dataset], seed: str, *parts: str) -> str:
    return str(
        generate_uid(entropy_srcs=["medstream imaging outputs", str(sources[0].SeriesInstanceUID), seed, *parts])
    )


def _fix_dates(ds: Dataset, now: dt.datetime | None) -> None:
    if now is None:
        return
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for prefix in ("InstanceCreation", "Content", "Series"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    for item in ds.get("ContributingEquipmentSequence", []):  # highdicom stamps itself with the current time
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time


def _check_findings(findings: Sequence[SegmentedFinding]) -> None:
    labels = [f.label for f in findings]
    if labels != list(range(1, len(findings) + 1)):
        raise ValueError(f"finding labels must be 1..{len(findings)} in list order, got {labels}")


# ---------------------------------------------------------------- Segmentation


def segmentation(
    sources: Sequence[Dataset],
    labels_on_source: npt.NDArray[Any],
    findings: Sequence[SegmentedFinding],
    *,
    kind: Kind,
    algorithm_name: str,
    algorithm_version: str,
    seed: str,
    series_number: int = 901,
    manufacturer: str = "medstream",
    now: dt.datetime | None = None,
) -> hd.seg.Segmentation | None:
    """A BINARY Segmentation with segment k for label k, or None without findings (a SEG needs a segment).

    `labels_on_source` is `labels_on_sources(...)` for these `sources`; `seed` and `now` make it reproducible."""
    info = kind
    _check_findings(findings)
    if not findings:
        return None
    if not sources:
        raise ValueError("no source images")
    pixels = np.asarray(labels_on_source)
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if pixels.shape != expected:
        raise ValueError(f"label map of shape {pixels.shape} for sources of shape {expected}")
    if pixels.min() < 0 or pixels.max() > len(findings):
        raise ValueError(f"labels outside 0..{len(findings)}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=ALGORITHM_FAMILY, version=algorithm_version
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=f.label,
            segment_label=f"{info.name} {f.label}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=info.finding_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=_uid(sources, seed, "tracking", str(f.label)),
            tracking_id=f"{info.name} {f.label}",
            anatomic_regions=[info.site],
        )
        for f in findings
    ]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixels.astype(np.uint8 if len(findings) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=_uid(sources, seed, "SEG series"),
        series_number=series_number,
        sop_instance_uid=_uid(sources, seed, "SEG instance"),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number=f"{algorithm_name}-{algorithm_version}"[:64],  # software: no serial number
        content_label="LESIONS",
        content_description=DISCLAIMER,
        series_description=f"{info.name}s: {algorithm_name} v{algorithm_version}"[:64],
    )
    # highdicom draws a random DimensionOrganizationUID; a replay must write the same object.
    dimension_uid = _uid(sources, seed, "SEG dimension organization")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    _fix_dates(seg, now)
    return seg


# ---------------------------------------------------------------- TID 1500 measurement report


def _measurements(f: SegmentedFinding) -> list[hd.sr.Measurement]:
    out = [
        hd.sr.Measurement(
            name=codes.SCT.Diameter,
            value=round(f.diameter_mm, 2),
            unit=codes.UCUM.Millimeter,
            method=EQUIVALENT_SPHERE_DIAMETER,
        ),
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round(f.volume_ml, 4),
            unit=MILLILITER,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        ),
        hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=round(f.confidence, 4), unit=codes.UCUM.NoUnits),
    ]
    if f.prior is not None:
        p = f.prior
        out.append(hd.sr.Measurement(name=PRIOR_VOLUME, value=round(p.prior_volume_ml, 4), unit=MILLILITER))
        out.append(hd.sr.Measurement(name=VOLUME_CHANGE, value=round(p.volume_change_pct, 2), unit=codes.UCUM.Percent))
        if p.doubling_time_days is not None:
            out.append(
                hd.sr.Measurement(name=VOLUME_DOUBLING_TIME, value=round(p.doubling_time_days, 1), unit=codes.UCUM.Day)
            )
    return out


def measurement_report(
    sources: Sequence[Dataset],
    seg: Dataset | None,
    findings: Sequence[SegmentedFinding],
    *,
    kind: Kind,
    algorithm_name: str,
    algorithm_version: str,
    seed: str,
    series_number: int = 902,
    manufacturer: str = "medstream",
    now: dt.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report: one volumetric measurement group per finding, its ROI the SEG's segment `label`.

    Without findings (`seg` None) the report says the finding type is absent; codes in the module docstring."""
    info = kind
    _check_findings(findings)
    if not sources:
        raise ValueError("no source images")
    if findings and seg is None:
        raise ValueError("findings need the Segmentation their measurement groups reference")
    modality = str(sources[0].get("Modality", ""))
    procedure = info.procedures.get(modality) or next(iter(info.procedures.values()))
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name, version=algorithm_version, family=ALGORITHM_FAMILY, manufacturer=manufacturer
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid(entropy_srcs=["medstream algorithm", algorithm_name, algorithm_version])),
            name=algorithm_name,
            manufacturer_name=manufacturer,
            model_name=f"{algorithm_name} v{algorithm_version}"[:64],
        ),
    )
    sites = [hd.sr.FindingSite(anatomic_location=info.site)]
    groups: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]
    if seg is not None and findings:
        groups = [
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid(sources, seed, "tracking", str(f.label)), identifier=f"{info.name} {f.label}"
                ),
                # The source series, not per-frame images: a segment too small to reach a source pixel has no
                # frames, and from_segmentation refuses it.
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=f.label,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
                ),
                finding_type=info.finding_type,
                finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=_measurements(f),
            )
            for f in findings
        ]
    else:
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid(sources, seed, "tracking", "none"), identifier=f"no {info.name}"
                ),
                finding_type=info.finding_type,
                algorithm_id=algorithm,
                finding_sites=sites,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=info.finding_type, value=codes.SCT.Absent)],
            )
        ]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *([seg] if seg is not None else [])],
        content=content,
        series_instance_uid=_uid(sources, seed, "SR series"),
        series_number=series_number,
        sop_instance_uid=_uid(sources, seed, "SR instance"),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=f"{info.name} measurements: {algorithm_name} v{algorithm_version}"[:64],
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="medstream local codes", responsible_organization=manufacturer
            )
        ],
    )
    _fix_dates(sr, now)
    return sr


# ---------------------------------------------------------------- key image


def key_image_caption(finding: SegmentedFinding, *, kind: Kind, algorithm_name: str, algorithm_version: str) -> str:
    """Caption without PHI: finding, size, model, disclaimer."""
    info = kind
    return (
        f"{info.name} {finding.label}: {finding.diameter_mm:.1f} mm, {finding.volume_ml:.2f} mL - "
        f"{algorithm_name} v{algorithm_version}, {DISCLAIMER}"
    )


_MIN_WIDTH: Final = 512  # small matrices are enlarged so the caption stays readable


def key_image_png(
    volume_array: npt.NDArray[Any],
    labels_on_volume: npt.NDArray[Any],
    finding_label: int,
    *,
    window: tuple[float, float],
    caption: str,
) -> bytes:
    """The axial slice with most of `finding_label`'s voxels, windowed (center, width), outlined red, captioned."""
    if volume_array.shape != labels_on_volume.shape or volume_array.ndim != 3:
        raise ValueError(f"volume {volume_array.shape} and labels {labels_on_volume.shape} must be one 3D shape")
    counts = (labels_on_volume == finding_label).sum(axis=(1, 2))
    if not counts.any():
        raise ValueError(f"label {finding_label} is not in the label map")
    k = int(np.argmax(counts))
    grey = (voi_window(volume_array[k], window[0], window[1]) * 255.0 + 0.5).astype(np.uint8)
    outline = find_boundaries(labels_on_volume[k] == finding_label, mode="inner")
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[outline] = (255, 0, 0)
    image = Image.fromarray(rgb, mode="RGB")
    scale = max(1, -(-_MIN_WIDTH // image.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=14)
    chars = max(20, int(image.width / max(font.getlength("x"), 1.0)) - 2)
    lines = textwrap.wrap(caption, chars) or [""]
    line_height = 18
    out = Image.new("RGB", (image.width, image.height + line_height * len(lines) + 8), (0, 0, 0))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, image.height + 4 + i * line_height), line, fill=(255, 255, 255), font=font)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
