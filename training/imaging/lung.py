"""Lung-nodule model: preprocessing, training on synthetic chest CT phantoms, held-out evaluation, export.

Everything is synthetic (training/imaging/synthetic_ct.py): no chest CT data exists offline. Training volumes
come straight from the phantom generator; the held-out test series are written as multi-file DICOM and read
back through the service's own path (pydicom -> load_series -> rescale -> this preprocessing), so evaluation
exercises what production runs. `python -m training.imaging.lung` trains, evaluates and exports to
model_repository/lung_nodule/1/ (`make eval-imaging` prints the figures; the change-against-prior ones come from
change_eval.py).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
import torch

from services.imaging.preprocess import Volume, load_series, resample, rescale
from services.imaging.routes.lung_nodule import LUNG_NODULE, PATCH, ROUTE, SPACING, STRIDE, WINDOW, has_lung, prepare
from training.imaging.synthetic_ct import Geometry, SyntheticCT, generate_ct, write_series
from training.imaging.training import (
    Lesion,
    LesionMetrics,
    Sample,
    calibrate,
    choose_operating_point,
    cli,
    evaluate,
    export,
    predict_volume,
    train,
)

MODEL_NAME = LUNG_NODULE.name
THRESHOLD, MIN_VOLUME_MM3 = ROUTE.threshold, ROUTE.min_volume_mm3
CHANNELS = (4, 16, 32)  # few full-resolution channels: they dominate the cost on CPU


TRAIN_SEEDS = range(1000, 1048)
VALIDATION_SEEDS = range(3000, 3008)
TEST_SEEDS = range(5000, 5016)
CHANGE_SEEDS = range(6000, 6010)  # baseline + follow-up pairs for the change-against-prior figures (change_eval.py)
MAX_FP_PER_SCAN = 2.0  # the operating point: best sensitivity at <= 2 false positives per scan on validation
REPO = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME


def phantom_volume(ct: SyntheticCT) -> Volume:
    """The phantom as a Volume in HU with its LPS affine (what load_series + rescale yield for its DICOM)."""
    return Volume(
        ct.volume_hu.astype(np.float32),
        geometry_affine(ct.geometry),
        geometry_spacing(ct.geometry),
        "CT",
        "MONOCHROME2",
    )


def geometry_affine(g: Geometry) -> np.ndarray:
    ox, oy, oz = g.origin
    sx, sy, sz = g.spacing_xyz
    return np.array([[0, 0, sx, ox], [0, sy, 0, oy], [sz, 0, 0, oz], [0, 0, 0, 1]], dtype=np.float64)


def geometry_spacing(g: Geometry) -> tuple[float, float, float]:
    sx, sy, sz = g.spacing_xyz
    return (sz, sy, sx)


def lesions_on(grid: Volume, ct: SyntheticCT) -> list[Lesion]:
    inverse = np.linalg.inv(grid.affine)
    out = []
    for n in ct.nodules:
        zyx = (inverse @ np.array([*n.centre_lps_mm, 1.0]))[:3]
        out.append(Lesion((float(zyx[0]), float(zyx[1]), float(zyx[2])), n.diameter_mm, n.kind))
    return out


def training_sample(ct: SyntheticCT) -> Sample:
    grid = prepare(phantom_volume(ct))
    labels = Volume(
        (ct.labels > 0).astype(np.float32), geometry_affine(ct.geometry), geometry_spacing(ct.geometry), "SEG", ""
    )
    mask = resample(labels, SPACING, order=1, fill=0.0).array >= 0.5
    return Sample(grid.array, mask.astype(np.float32), lesions_on(grid, ct), grid.spacing, grid.affine)


def dicom_sample(ct: SyntheticCT, directory: Path) -> Sample:
    """Write the phantom as a DICOM series and read it back the way the imaging service does."""
    files = write_series(ct, directory)
    datasets = [pydicom.dcmread(f) for f in files]
    grid = prepare(rescale(load_series(datasets)))
    return Sample(grid.array, np.zeros_like(grid.array), lesions_on(grid, ct), grid.spacing, grid.affine)


def predictor(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    return lambda s: predict_volume(model, s.volume, PATCH, STRIDE, keep=has_lung)


def run(out_dir: Path, steps: int, seed: int = 0, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    train_samples = [training_sample(generate_ct(s, n_nodules=3)) for s in TRAIN_SEEDS]
    built = time.perf_counter() - started
    log(f"{len(train_samples)} training phantoms in {built:.0f} s; training {steps} steps")
    model, report = train(
        train_samples,
        patch=PATCH,
        steps=steps,
        batch=4,
        seed=seed,
        channels=CHANNELS,
        lr=3e-3,
        positive_share=0.5,
        negative_keep=has_lung,
        log=log,
    )
    with tempfile.TemporaryDirectory() as tmp:
        validation = [dicom_sample(generate_ct(s), Path(tmp) / str(s)) for s in VALIDATION_SEEDS]
        t0 = time.perf_counter()
        test = [dicom_sample(generate_ct(s), Path(tmp) / str(s)) for s in TEST_SEEDS]
        read_s = (time.perf_counter() - t0) / len(test)
    predict = predictor(model)
    threshold, table = choose_operating_point(
        [predict(s) for s in validation], validation, MAX_FP_PER_SCAN, MIN_VOLUME_MM3
    )
    calibrate(model, threshold)
    log(f"operating point {threshold} (validation sensitivity, FP/scan by threshold: {table})")
    t0 = time.perf_counter()
    metrics: LesionMetrics = evaluate(predict, test, THRESHOLD, MIN_VOLUME_MM3)
    infer_s = (time.perf_counter() - t0) / len(test)
    evaluation: dict[str, object] = {
        "model": MODEL_NAME,
        "data": "synthetic chest CT phantoms (training/imaging/synthetic_ct.py); no real CT",
        "train_scans": len(train_samples),
        "train_nodules": sum(len(s.lesions) for s in train_samples),
        "test_scans": len(test),
        "grid_mm": SPACING,
        "patch": PATCH,
        "validation_scans": len(validation),
        "operating_point": {
            "threshold_before_calibration": threshold,
            "max_fp_per_scan": MAX_FP_PER_SCAN,
            "validation": {str(t): {"sensitivity": v[0], "fp_per_scan": v[1]} for t, v in table.items()},
        },
        "training": {"steps": report.steps, "seconds": round(report.seconds, 1), "final_loss": report.final_loss},
        "test": asdict(metrics),
        "seconds_per_test_series": {"dicom_read_and_preprocess": round(read_s, 2), "inference_cpu": round(infer_s, 2)},
    }
    export(
        model, LUNG_NODULE, out_dir / "1", {"name": MODEL_NAME, "patch": PATCH, "grid_mm": SPACING, "window": WINDOW}
    )
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    return evaluation


DEFAULT_STEPS = 1000


def train_for_repository(target: Path) -> dict[str, object]:
    """What `medstream stack up` / `models train` call when the weights are missing (a few minutes on 2 cores;
    the change-against-prior figures come from change_eval.py, which `make eval-imaging` runs next)."""
    return run(target, DEFAULT_STEPS)


def main() -> None:
    cli(__doc__, run, REPO, DEFAULT_STEPS)


if __name__ == "__main__":
    main()
