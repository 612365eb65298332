"""DICOM outputs of an analysed series: a Segmentation whose segments lie on the lesions, a TID 1500 SR whose
measurements equal the inputs and reference the SEG, both readable by pydicom and dcmtk and identical on replay;
a key-image PNG outlining the lesion in red with a caption free of PHI."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)

from services.imaging.dicom_outputs import (
    PriorComparison,
    SegmentedFinding,
    key_image_caption,
    key_image_png,
    labels_on_sources,
    labels_on_volume,
    measurement_report,
    segmentation,
)
from services.imaging.postprocess import Candidate, Change
from services.imaging.preprocess import Volume, load_series, resample, rescale
from services.imaging.routes import lung_nodule, stroke

LUNG, STROKE = lung_nodule.ROUTE.evidence, stroke.ROUTE.evidence

pytestmark = pytest.mark.unit

DCMDUMP, DSRDUMP = "/usr/bin/dcmdump", "/usr/bin/dsrdump"  # dcmtk; the venv's bin has same-named pynetdicom apps
NOW = dt.datetime(2026, 11, 27, 12, 0, 0)
SEED = "1.2.3.4|2|lung_nodule|1"
ALGORITHM = {"algorithm_name": "lung_nodule", "algorithm_version": "1"}
SLICES, ROWS, COLS, PIXEL_MM, SLICE_MM = 20, 64, 64, 1.5, 2.0
ORIGIN = (-47.25, -47.25, -120.0)  # LPS of the first voxel centre
LESIONS = [((10.0, 5.0, -100.0), 6.0), ((-20.0, -15.0, -95.0), 4.0)]  # (centre LPS mm, radius mm)
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PHI-4711"


def _series() -> tuple[list[Dataset], np.ndarray]:
    """A small axial CT series (HU -850 lung, +40 lesions) and its truth labels on the source grid."""
    z, y, x = np.meshgrid(
        np.arange(SLICES) * SLICE_MM + ORIGIN[2],
        np.arange(ROWS) * PIXEL_MM + ORIGIN[1],
        np.arange(COLS) * PIXEL_MM + ORIGIN[0],
        indexing="ij",
    )
    truth = np.zeros((SLICES, ROWS, COLS), dtype=np.uint8)
    for label, ((cx, cy, cz), r) in enumerate(LESIONS, start=1):
        truth[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r] = label
    stored = np.where(truth > 0, 40 + 1024, -850 + 1024).astype(np.uint16)
    study, series, frame_of_reference = (generate_uid(entropy_srcs=["test dicom outputs", p]) for p in "abc")
    datasets = []
    for k in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "090000", "ACC1", "1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "test", 1, k + 1
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.set_pixel_data(
            stored[k], photometric_interpretation="MONOCHROME2", bits_stored=16, generate_instance_uid=False
        )
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        datasets.append(ds)
    return datasets, truth


SOURCES, TRUTH = _series()
VOLUME = rescale(load_series(SOURCES))
# The label map as the model grid would hold it: the truth resampled to lung's 2.5 mm grid.
_GRID = resample(
    Volume(TRUTH.astype(np.float32), VOLUME.affine, VOLUME.spacing, "CT", "MONOCHROME2"),
    (2.5, 2.5, 2.5),
    order=0,
    fill=0.0,
)
GRID_LABELS, GRID_AFFINE = np.rint(_GRID.array).astype(np.uint8), _GRID.affine
FINDINGS = [
    SegmentedFinding(1, 12.34, 0.9512, LESIONS[0][0], 0.95, PriorComparison(0.5, 90.24, 123.4)),
    SegmentedFinding(2, 8.1, 0.2701, LESIONS[1][0], 0.71),
]


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _outputs(seed: str = SEED, findings: list[SegmentedFinding] = FINDINGS) -> tuple[Dataset | None, Dataset]:
    on_source = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES)
    seg = segmentation(SOURCES, on_source, findings, kind=LUNG, seed=seed, now=NOW, **ALGORITHM)
    sr = measurement_report(SOURCES, seg, findings, kind=LUNG, seed=seed, now=NOW, **ALGORITHM)
    return seg, sr


def _dcmtk(tool: str, data: bytes, tmp_path: Path) -> str:
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
    return done.stdout


def test_labels_on_sources_follow_the_lesions_and_the_source_order():
    on_source = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES)
    assert on_source.shape == TRUTH.shape
    # 2.5 mm nearest-neighbour labels against 1.5 x 1.5 x 2 mm truth: only boundary pixels may differ.
    assert set(np.unique(on_source)) == {0, 1, 2} and (on_source == TRUTH).mean() > 0.99
    reversed_sources = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES[::-1])
    np.testing.assert_array_equal(reversed_sources, on_source[::-1])
    on_volume = labels_on_volume(GRID_LABELS, GRID_AFFINE, VOLUME.affine, VOLUME.array.shape)
    np.testing.assert_array_equal(on_volume, on_source)  # sources are already in volume (inferior->superior) order

    multi = Dataset()
    multi.NumberOfFrames, multi.SOPInstanceUID = 3, "1.2.3"
    with pytest.raises(ValueError, match="multi-frame"):
        labels_on_sources(GRID_LABELS, GRID_AFFINE, [multi])


def test_segmentation_reads_back_with_segments_on_the_lesions(tmp_path):
    seg, _ = _outputs()
    assert seg is not None
    data = _bytes(seg)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["lung nodule 1", "lung nodule 2"]
    first = ds.SegmentSequence[0]
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert first.SegmentAlgorithmType == "AUTOMATIC" and first.SegmentAlgorithmName == "lung_nodule"
    assert first.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SOURCES[0].SeriesInstanceUID
    assert ds.PatientID == PATIENT_ID and ds.FrameOfReferenceUID == SOURCES[0].FrameOfReferenceUID

    on_source = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES)
    slice_of = {str(s.SOPInstanceUID): k for k, s in enumerate(SOURCES)}
    expected_frames = sum(int((on_source == label).any(axis=(1, 2)).sum()) for label in (1, 2))
    assert int(ds.NumberOfFrames) == expected_frames
    rebuilt = np.zeros_like(on_source)
    pixels = ds.pixel_array.reshape(expected_frames, ROWS, COLS)
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        rebuilt[slice_of[source_uid]][frame > 0] = segment
    np.testing.assert_array_equal(rebuilt, on_source)
    # Segment 1's centroid in patient coordinates is the first lesion's centre (within one grid voxel).
    k, j, i = (float(a.mean()) for a in np.nonzero(rebuilt == 1))
    centroid = VOLUME.affine @ np.array([k, j, i, 1.0])
    assert np.linalg.norm(centroid[:3] - np.array(LESIONS[0][0])) < 2.5

    assert "lung nodule 2" in _dcmtk(DCMDUMP, data, tmp_path)


def test_report_holds_the_measurements_and_references_the_segmentation(tmp_path):
    seg, sr = _outputs()
    assert seg is not None
    data = _bytes(sr)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == Comprehensive3DSRStorage and ds.CompletionFlag == "COMPLETE"
    evidence = {
        s.SeriesInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    }
    assert evidence == {SOURCES[0].SeriesInstanceUID, seg.SeriesInstanceUID}
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDSTREAM"

    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, finding in zip(groups, FINDINGS, strict=True):
        assert group.referenced_segment is not None
        assert group.referenced_segment.referenced_segment_numbers == [finding.label]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.finding_type.value == "27925004"
        values = {(m.name.value, m.unit.value): m.value for m in group.get_measurements()}
        assert values[("81827009", "mm")] == pytest.approx(finding.diameter_mm, abs=0.005)
        assert values[("118565006", "ml")] == pytest.approx(finding.volume_ml, abs=5e-5)
        assert values[("111012", "1")] == pytest.approx(finding.confidence)
        if finding.prior is not None:
            assert values[("PRIORVOL", "ml")] == pytest.approx(finding.prior.prior_volume_ml)
            assert values[("VOLCHG", "%")] == pytest.approx(finding.prior.volume_change_pct)
            assert values[("VDT", "d")] == pytest.approx(123.4)
        else:
            assert not {name for name, _ in values} & {"PRIORVOL", "VOLCHG", "VDT"}

    text = _dcmtk(DSRDUMP, data, tmp_path)
    assert '"Diameter")="12.34"' in text and "Device Observer Name" in text and '"lung_nodule"' in text


def test_replay_writes_identical_objects_and_another_seed_new_uids():
    seg_a, sr_a = _outputs()
    seg_b, sr_b = _outputs()
    assert seg_a is not None and seg_b is not None
    assert _bytes(seg_a) == _bytes(seg_b) and _bytes(sr_a) == _bytes(sr_b)
    seg_c, sr_c = _outputs(seed=SEED.replace("|2|", "|3|"))
    assert seg_c is not None
    for a, c in ((seg_a, seg_c), (sr_a, sr_c)):
        assert a.SeriesInstanceUID != c.SeriesInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID
    assert seg_a.SOPInstanceUID != sr_a.SOPInstanceUID and seg_a.SeriesInstanceUID != sr_a.SeriesInstanceUID


def test_no_findings_no_segmentation_and_a_report_that_says_absent(tmp_path):
    seg, sr = _outputs(findings=[])
    assert seg is None
    ds = pydicom.dcmread(io.BytesIO(_bytes(sr)))
    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert report.content.get_volumetric_roi_measurement_groups() == []
    text = _dcmtk(DSRDUMP, _bytes(sr), tmp_path)
    assert '(,,"Nodule")=(272519000,SCT,"Absent")' in text


def test_stroke_segments_are_infarcts():
    on_source = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES)
    seg = segmentation(SOURCES, on_source, FINDINGS, kind=STROKE, seed=SEED, **ALGORITHM)
    assert seg is not None
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "55641003"
    assert seg.SegmentSequence[0].AnatomicRegionSequence[0].CodeValue == "12738006"


def test_bad_inputs_are_refused():
    on_source = labels_on_sources(GRID_LABELS, GRID_AFFINE, SOURCES)
    with pytest.raises(ValueError, match="labels must be"):
        segmentation(SOURCES, on_source, FINDINGS[::-1], kind=LUNG, seed=SEED, **ALGORITHM)
    with pytest.raises(ValueError, match="shape"):
        segmentation(SOURCES, on_source[1:], FINDINGS, kind=LUNG, seed=SEED, **ALGORITHM)
    with pytest.raises(ValueError, match="reference"):
        measurement_report(SOURCES, None, FINDINGS, kind=LUNG, seed=SEED, **ALGORITHM)


def test_key_image_outlines_the_lesion_in_red_without_phi():
    on_volume = labels_on_volume(GRID_LABELS, GRID_AFFINE, VOLUME.affine, VOLUME.array.shape)
    caption = key_image_caption(FINDINGS[0], kind=LUNG, **ALGORITHM)
    assert caption.startswith("lung nodule 1: 12.3 mm, 0.95 mL") and "not for clinical use" in caption
    assert PATIENT_NAME not in caption and PATIENT_ID not in caption and "Doe" not in caption
    png = key_image_png(VOLUME.array, on_volume, 1, window=(-600.0, 1500.0), caption=caption)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and not {"Comment", "Description", "Author"} & set(image.info)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    scale = image.width // COLS  # small matrices are enlarged by a whole factor
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 50) & (rgb[..., 2] < 50)
    rows, cols = np.nonzero(red)
    assert len(rows) > 0 and rows.max() < ROWS * scale  # outline in the image, none in the caption bar
    (cx, cy, _), radius = LESIONS[0]
    centre_row, centre_col = (cy - ORIGIN[1]) / PIXEL_MM, (cx - ORIGIN[0]) / PIXEL_MM
    distance = np.hypot((rows + 0.5) / scale - 0.5 - centre_row, (cols + 0.5) / scale - 0.5 - centre_col) * PIXEL_MM
    assert distance.max() < radius + 2.5  # every red pixel hugs lesion 1
    assert rgb[ROWS * scale :].max() == 255  # caption text drawn in white on the bar
    with pytest.raises(ValueError, match="not in the label map"):
        key_image_png(VOLUME.array, on_volume, 7, window=(-600.0, 1500.0), caption=caption)


def test_a_segment_no_source_pixel_reaches_is_still_described_and_measured(tmp_path):
    tiny = SegmentedFinding(3, 2.0, 0.004, (0.0, 0.0, -110.0), 0.6)  # label 3 is not in the label map
    seg, sr = _outputs(findings=[*FINDINGS, tiny])
    assert seg is not None and len(seg.SegmentSequence) == 3
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(_bytes(sr))))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[1], [2], [3]]
    _dcmtk(DCMDUMP, _bytes(seg), tmp_path)
    _dcmtk(DSRDUMP, _bytes(sr), tmp_path)


def test_finding_from_a_candidate_and_its_change():
    current = Candidate((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 1.2, 13.2, 15.0, 0.9, 77)
    prior = Candidate((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.6, 10.5, 12.0, 0.8, 38)
    finding = SegmentedFinding.from_candidate(1, current, Change(current, prior, 0.5, 100.0, 90.0))
    assert finding == SegmentedFinding(1, 13.2, 1.2, (1.0, 2.0, 3.0), 0.9, PriorComparison(0.6, 100.0, 90.0))
    assert SegmentedFinding.from_candidate(2, current, Change(current, None, None, None, None)).prior is None
