"""Lesion candidates from a probability map, and change against a prior study (pure).

Positions are in patient coordinates (DICOM LPS, mm) through the volume's affine (voxel index (z, y, x) ->
LPS), sizes in mm and mL. Growth against a prior is measured only after the follow-up was registered to the
prior (services/imaging/preprocess.py), so matched lesions are compared in one coordinate frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True, slots=True)
class Candidate:
    centre_mm: tuple[float, float, float]  # patient LPS
    centre_voxel: tuple[float, float, float]  # (z, y, x), probability-weighted
    volume_ml: float
    diameter_mm: float  # of the sphere with the same volume
    max_extent_mm: float  # longest bounding-box side
    confidence: float  # highest probability inside the component
    voxels: int


@dataclass(frozen=True, slots=True)
class Change:
    current: Candidate
    prior: Candidate | None  # None: new since the prior study
    distance_mm: float | None
    volume_change_pct: float | None
    doubling_time_days: float | None  # None when it did not grow, or no prior


def voxel_to_patient(affine: np.ndarray, zyx: Sequence[float]) -> tuple[float, float, float]:
    point = affine @ np.array([*zyx, 1.0])
    return (float(point[0]), float(point[1]), float(point[2]))


def candidates(
    prob: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    threshold: float = 0.5,
    min_volume_mm3: float = 8.0,
) -> list[Candidate]:
    """Connected components (26-neighbourhood) of `prob >= threshold`, largest confidence first."""
    return labelled_candidates(prob, affine, spacing, threshold, min_volume_mm3)[0]


def labelled_candidates(
    prob: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    threshold: float = 0.5,
    min_volume_mm3: float = 8.0,
) -> tuple[list[Candidate], np.ndarray]:
    """`candidates`, plus a label map on the same grid in which candidate k (1-based, in the returned order) is
    label k and everything else 0: the masks behind a DICOM SEG and a key image."""
    mask = prob >= threshold
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_mm3 = float(np.prod(spacing))
    found: list[tuple[Candidate, int]] = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        component = labels[region] == index
        voxels = int(component.sum())
        volume_mm3 = voxels * voxel_mm3
        if volume_mm3 < min_volume_mm3:
            continue
        weights = prob[region] * component
        grid = np.indices(component.shape).reshape(3, -1)
        centre = tuple(float((grid[a] * weights.ravel()).sum() / weights.sum() + region[a].start) for a in range(3))
        extent = max((s.stop - s.start) * float(spacing[a]) for a, s in enumerate(region))
        candidate = Candidate(
            centre_mm=voxel_to_patient(affine, centre),
            centre_voxel=(centre[0], centre[1], centre[2]),
            volume_ml=volume_mm3 / 1000.0,
            diameter_mm=(6 * volume_mm3 / math.pi) ** (1 / 3),
            max_extent_mm=extent,
            confidence=float(prob[region][component].max()),
            voxels=voxels,
        )
        found.append((candidate, index))
    found.sort(key=lambda pair: (-pair[0].confidence, -pair[0].volume_ml))
    relabel = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(found) < 255 else np.uint16)
    for rank, (_, index) in enumerate(found, start=1):
        relabel[index] = rank
    return [c for c, _ in found], relabel[labels]


def doubling_time(v_prior_ml: float, v_now_ml: float, days: float) -> float | None:
    """Volume doubling time in days (Schwartz): days * ln 2 / ln(V2 / V1); None unless the lesion grew."""
    if v_prior_ml <= 0 or v_now_ml <= v_prior_ml or days <= 0:
        return None
    return days * math.log(2) / math.log(v_now_ml / v_prior_ml)


def compare(
    current: Sequence[Candidate], prior: Sequence[Candidate], days: float, max_distance_mm: float = 10.0
) -> list[Change]:
    """Match each current lesion to the nearest unmatched prior one within `max_distance_mm` (both in the prior's
    frame after registration) and measure growth."""
    remaining = list(prior)
    changes = []
    for lesion in sorted(current, key=lambda c: -c.volume_ml):
        best = min(remaining, key=lambda p: math.dist(p.centre_mm, lesion.centre_mm), default=None)
        if best is not None and math.dist(best.centre_mm, lesion.centre_mm) <= max_distance_mm:
            remaining.remove(best)
            pct = 100.0 * (lesion.volume_ml - best.volume_ml) / best.volume_ml if best.volume_ml else None
            changes.append(
                Change(
                    lesion,
                    best,
                    math.dist(best.centre_mm, lesion.centre_mm),
                    pct,
                    doubling_time(best.volume_ml, lesion.volume_ml, days),
                )
            )
        else:
            changes.append(Change(lesion, None, None, None, None))
    return changes
