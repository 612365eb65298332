"""Synthetic chest CT: determinism, HU per tissue, nodule ground truth against the label mask, DICOM round trip."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from training.imaging.synthetic_ct import (
    HU_MAX,
    HU_MIN,
    SyntheticCT,
    Tissue,
    generate_ct,
    generate_followup,
    main,
    nodule_truth,
    read_series,
    write_series,
)

pytestmark = pytest.mark.unit
SEED = 3


@pytest.fixture(scope="module")
def baseline() -> SyntheticCT:
    return generate_ct(SEED, n_nodules=3)


@pytest.fixture(scope="module")
def followup() -> SyntheticCT:
    return generate_followup(SEED, n_nodules=3)


@pytest.fixture(scope="module")
def written(baseline: SyntheticCT, followup: SyntheticCT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("series")
    for ct in (baseline, followup):
        write_series(ct, root / ct.phase)
    return root


def test_same_seed_same_study_other_seed_other_study(baseline: SyntheticCT):
    again = generate_ct(SEED, n_nodules=3)
    assert np.array_equal(again.volume_hu, baseline.volume_hu)
    assert np.array_equal(again.labels, baseline.labels) and np.array_equal(again.tissue, baseline.tissue)
    assert again.nodules == baseline.nodules and again.series_instance_uid == baseline.series_instance_uid
    assert nodule_truth(SEED, n_nodules=3) == baseline.nodules
    other = generate_ct(SEED + 1, n_nodules=3)
    assert not np.array_equal(other.volume_hu, baseline.volume_hu) and other.nodules != baseline.nodules
    assert other.series_instance_uid != baseline.series_instance_uid


def test_default_geometry_is_a_chest_ct_sized_for_small_machines(baseline: SyntheticCT):
    g = baseline.geometry
    assert g.shape == (80, 256, 256) and g.pixel_spacing_mm == (1.4, 1.4) and g.slice_spacing_mm == 2.5
    assert baseline.volume_hu.dtype == np.int16 and baseline.volume_hu.shape == g.shape
    assert baseline.labels.shape == baseline.tissue.shape == g.shape
    corner = g.index_to_lps([[0, 0, 0], [79, 255, 255]])
    assert np.allclose(g.lps_to_index(corner), [[0, 0, 0], [79, 255, 255]])


@pytest.mark.parametrize(
    ("tissue", "low", "high"),
    [
        (Tissue.OUTSIDE_AIR, -1010, -990),
        (Tissue.FAT, -120, -80),
        (Tissue.SOFT_TISSUE, 20, 70),
        (Tissue.BONE, 400, 1000),
        (Tissue.LUNG, -900, -800),
        (Tissue.VESSEL, 0, 60),
        (Tissue.AIRWAY, -1010, -900),
    ],
)
def test_median_hu_per_tissue(baseline: SyntheticCT, tissue: Tissue, low: float, high: float):
    values = baseline.volume_hu[baseline.tissue == tissue]
    assert values.size > 1000
    assert low <= np.median(values) <= high


def test_image_has_anatomy_and_stays_in_the_stored_range(baseline: SyntheticCT):
    vol, tissue = baseline.volume_hu, baseline.tissue
    assert HU_MIN <= vol.min() and vol.max() <= HU_MAX
    fractions = {t: float(np.mean(tissue == t)) for t in Tissue}
    assert 0.1 < fractions[Tissue.LUNG] < 0.3 and 0.1 < fractions[Tissue.SOFT_TISSUE] < 0.35
    assert fractions[Tissue.BONE] > 0.01 and fractions[Tissue.VESSEL] > 0.001
    # Cortical bone is present, and the lungs are denser posteriorly (+y in LPS) than anteriorly.
    assert np.percentile(vol[tissue == Tissue.BONE], 90) > 850
    lung = tissue == Tissue.LUNG
    rows = np.broadcast_to(np.arange(vol.shape[1])[None, :, None], vol.shape)
    anterior, posterior = lung & (rows < 110), lung & (rows > 150)
    assert vol[posterior].mean() > vol[anterior].mean() + 20


def _measured(ct: SyntheticCT, label: int) -> tuple[float, np.ndarray]:
    mask = ct.labels == label
    volume_ml = mask.sum() * ct.geometry.voxel_volume_mm3 / 1000
    return volume_ml, ct.geometry.index_to_lps(np.argwhere(mask).mean(axis=0))


@pytest.mark.parametrize("seed", [1, 2, 4, 5])
def test_label_mask_matches_nodule_truth_within_voxel_tolerance(seed: int):
    ct = generate_ct(seed, n_nodules=3)
    assert [n.label for n in ct.nodules] == [1, 2, 3]
    assert set(np.unique(ct.labels)) == {0, 1, 2, 3}
    for n in ct.nodules:
        volume_ml, centroid = _measured(ct, n.label)
        equivalent_d = (6 * volume_ml * 1000 / math.pi) ** (1 / 3)
        assert abs(equivalent_d - n.diameter_mm) <= 0.5, n  # a fifth of the slice spacing
        if n.diameter_mm >= 10:
            assert volume_ml == pytest.approx(n.volume_ml, rel=0.05), n
        assert n.volume_ml == pytest.approx(math.pi / 6 * n.diameter_mm**3 / 1000, rel=1e-3)
        assert np.linalg.norm(centroid - n.centre_lps_mm) <= 1.0, n
        assert (ct.tissue[ct.labels == n.label] == Tissue.NODULE).mean() > 0.9


def test_nodule_intensities_follow_their_kind(baseline: SyntheticCT, followup: SyntheticCT):
    seen = set()
    for ct in (baseline, followup, generate_ct(4, n_nodules=3), generate_ct(9, n_nodules=3)):
        for n in ct.nodules:
            if n.diameter_mm < 6:
                continue  # partial volume owns most voxels of a 3-5 mm nodule at 2.5 mm slices
            core = ct.volume_hu[ct.labels == n.label]
            seen.add(n.kind)
            if n.kind == "solid":
                assert 0 < np.median(core) < 80, n
            elif n.kind == "ground-glass":
                assert -500 < np.median(core) < -300, n
            else:
                assert np.percentile(core, 90) > 0 and np.percentile(core, 10) < -300, n
    assert seen == {"solid", "part-solid", "ground-glass"}


def test_juxta_pleural_nodules_touch_the_chest_wall_and_juxta_vascular_ones_a_vessel():
    wanted = Counter({"juxta-pleural": 3, "juxta-vascular": 3})
    for seed in range(1, 60):
        if not any(wanted[n.location] > 0 for n in nodule_truth(seed)):
            continue
        ct = generate_ct(seed)
        for n in ct.nodules:
            mask = ct.labels == n.label
            ring = ct.tissue[ndimage.binary_dilation(mask, iterations=2) & ~mask]  # within two voxels
            if n.location == "juxta-pleural":
                assert np.isin(ring, [Tissue.SOFT_TISSUE, Tissue.BONE, Tissue.FAT, Tissue.AIRWAY]).any(), n
            elif n.location == "juxta-vascular":
                assert (ring == Tissue.VESSEL).any(), n
            wanted[n.location] -= 1
        if max(wanted.values()) <= 0:
            return
    pytest.fail(f"too few juxta nodules in 60 seeds: {wanted}")


def test_nodule_population_covers_kinds_margins_locations_and_sizes():
    per_seed = [nodule_truth(seed) for seed in range(40)]
    nodules = [n for truth in per_seed for n in truth]
    counts = Counter(len(truth) for truth in per_seed)
    assert set(counts) <= {0, 1, 2, 3} and len(counts) >= 3
    assert {n.kind for n in nodules} == {"solid", "part-solid", "ground-glass"}
    assert {n.margin for n in nodules} == {"smooth", "lobulated", "spiculated"}
    assert {n.location for n in nodules} == {"central", "juxta-pleural", "juxta-vascular"}
    assert all(n.irregular == (n.margin != "smooth") for n in nodules)
    assert all(3 <= n.diameter_mm <= 30 for n in nodules)
    assert min(n.diameter_mm for n in nodules) < 6 and max(n.diameter_mm for n in nodules) > 20
    for n in nodules:
        expected = {"solid": n.diameter_mm, "ground-glass": 0.0}.get(n.kind)
        if expected is None:
            assert 0 < n.solid_diameter_mm < n.diameter_mm
        else:
            assert n.solid_diameter_mm == pytest.approx(expected)


def test_followup_grows_each_nodule_by_its_known_factor_and_moves_the_patient(
    baseline: SyntheticCT, followup: SyntheticCT
):
    assert followup.patient_id == baseline.patient_id
    assert (
        followup.study_date - baseline.study_date == dt.timedelta(days=followup.days_since_baseline) > dt.timedelta(0)
    )
    t = followup.transform
    assert 0 < abs(t.rotation_deg) <= 3 and max(abs(v) for v in t.translation_mm) <= 6
    assert nodule_truth(SEED, n_nodules=3, followup=True) == followup.nodules
    assert len(followup.nodules) == len(baseline.nodules)
    for before, after in zip(baseline.nodules, followup.nodules, strict=True):
        factor = after.volume_growth_factor
        assert 1.0 <= factor <= 2.5 and before.volume_growth_factor == 1.0
        assert after.volume_ml == pytest.approx(before.volume_ml * factor, rel=1e-4)
        assert after.diameter_mm == pytest.approx(before.diameter_mm * factor ** (1 / 3), abs=2e-3)
        moved = t.apply(before.centre_lps_mm, baseline.volume_centre_lps_mm)
        assert np.allclose(moved, after.centre_lps_mm, atol=0.01)
        measured_before, _ = _measured(baseline, before.label)
        measured_after, centroid = _measured(followup, after.label)
        if before.diameter_mm >= 10:
            assert measured_after / measured_before == pytest.approx(factor, rel=0.08)
        assert np.linalg.norm(centroid - after.centre_lps_mm) <= 1.0
    # The anatomy moved with the patient: the same body point (the spine) sits where the transform says.
    spine_before = _centroid_of(baseline, Tissue.BONE, rows=(140, 256), cols=(110, 146))
    spine_after = _centroid_of(followup, Tissue.BONE, rows=(140, 256), cols=(100, 156))
    expected = t.apply(spine_before, baseline.volume_centre_lps_mm)
    assert np.allclose(spine_after[:2], expected[:2], atol=2.5)


def _centroid_of(ct: SyntheticCT, tissue: Tissue, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    # Middle slices only, so that the (z-invariant) spine does not run off the ends after the shift.
    box = ct.tissue[20:60, rows[0] : rows[1], cols[0] : cols[1]] == tissue
    index = np.argwhere(box).mean(axis=0) + np.array([20, rows[0], cols[0]])
    return ct.geometry.index_to_lps(index)


def test_dicom_round_trip_reproduces_the_volume_and_geometry(baseline: SyntheticCT, written: Path):
    volume, geometry, datasets = read_series(written / "baseline")
    assert np.array_equal(volume, baseline.volume_hu)
    assert geometry.shape == baseline.geometry.shape
    assert np.allclose(geometry.origin, baseline.geometry.origin)
    assert geometry.pixel_spacing_mm == baseline.geometry.pixel_spacing_mm
    assert geometry.slice_spacing_mm == pytest.approx(baseline.geometry.slice_spacing_mm)
    for k, ds in enumerate(datasets):
        position = [float(v) for v in ds.ImagePositionPatient]
        assert np.allclose(position, baseline.geometry.index_to_lps([k, 0, 0]), atol=1e-4)
        assert float(ds.SliceLocation) == pytest.approx(position[2])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.SpacingBetweenSlices) == float(ds.SliceThickness) == 2.5
        assert ds.InstanceNumber == k + 1


def test_every_file_is_a_valid_ct_image_storage_instance(baseline: SyntheticCT, written: Path):
    paths = sorted((written / "baseline").glob("*.dcm"))
    assert len(paths) == baseline.geometry.shape[0]
    for path in paths:
        ds = pydicom.dcmread(path)  # no force: preamble, DICM prefix and file meta must be there
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
        assert ds.PatientID == f"SYN-{SEED}" and str(ds.PatientName) == "Synthetic^Phantom"
        assert "SYNTHETIC" in ds.ImageComments and ds.StudyDate == baseline.study_date.strftime("%Y%m%d")
        assert (ds.RescaleSlope, ds.RescaleIntercept, ds.BitsStored, ds.PixelRepresentation) == (1, -1024, 16, 0)
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (256, 256)


def test_uids_are_valid_unique_per_instance_and_shared_per_series(
    baseline: SyntheticCT, followup: SyntheticCT, written: Path
):
    series = {phase: read_series(written / phase)[2] for phase in ("baseline", "followup")}
    sops = [ds.SOPInstanceUID for datasets in series.values() for ds in datasets]
    assert len(set(sops)) == len(sops) == 160
    for ct in (baseline, followup):
        datasets = series[ct.phase]
        assert {ds.StudyInstanceUID for ds in datasets} == {ct.study_instance_uid}
        assert {ds.SeriesInstanceUID for ds in datasets} == {ct.series_instance_uid}
        assert {ds.FrameOfReferenceUID for ds in datasets} == {ct.frame_of_reference_uid}
    uids = [*sops, *(u for ct in (baseline, followup) for u in (ct.study_instance_uid, ct.series_instance_uid))]
    assert all(UID(u).is_valid for u in uids)
    assert baseline.study_instance_uid != followup.study_instance_uid
    assert baseline.series_instance_uid != followup.series_instance_uid
    truth = json.loads((written / "followup" / "ground_truth.json").read_text())
    assert truth["series_instance_uid"] == followup.series_instance_uid and truth["synthetic"] is True
    assert [n["volume_ml"] for n in truth["nodules"]] == [n.volume_ml for n in followup.nodules]
    assert truth["transform_from_baseline"]["rotation_deg_about_s"] == followup.transform.rotation_deg


def test_cli_writes_series_with_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    main(["--out", str(tmp_path), "--n", "1", "--seed", "11", "--followup"])
    for phase in ("baseline", "followup"):
        folder = tmp_path / f"SYN-11_{phase}"
        assert len(list(folder.glob("*.dcm"))) == 80
        assert json.loads((folder / "ground_truth.json").read_text())["phase"] == phase
    assert "SYN-11_followup" in capsys.readouterr().out
