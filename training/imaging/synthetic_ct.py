"""Synthetic chest CT volumes with ground-truth nodules, written as multi-file DICOM CT series.

No chest CT series installs offline (no PyPI, npm or Debian package ships one), so the lung-nodule model is
trained and evaluated on these phantoms: everything here is synthetic and says so in the DICOM (ImageComments,
PatientName). A volume is a pure function of its seed: an analytic thorax (fat, muscle, ribs, spine,
mediastinum, heart, aorta, liver dome, trachea and main bronchi, textured lungs with branching vessel trees)
plus 0-3 nodules of known centre,
diameter and volume (solid, part-solid or ground-glass; smooth, lobulated or spiculated; central,
juxta-pleural or juxta-vascular). A follow-up study of the same patient regrows each nodule by a known
volume factor and repositions the patient by a known rigid transform.

Default geometry: 256 x 256 pixels at 1.4 mm (358 mm field of view), 80 axial slices at 2.5 mm (200 mm),
slice k at z = origin_z + 2.5 k (inferior to superior), image rows along +y (posterior), columns along +x
(patient left): DICOM LPS, ImageOrientationPatient 1\\0\\0\\0\\1\\0. Volumes are indexed [slice, row, column].
Nodules lie within NODULE_Z_HALF_RANGE_MM of the volume centre, so a custom geometry should cover that.

Nodule truth: the label volume holds each nodule's core; diameter_mm is the core's volume-equivalent sphere
diameter, volume_ml its analytic volume, centre_lps_mm its centroid (spicules are drawn but not labelled).
DICOM: one CT Image Storage file per slice, explicit VR little endian, uint16 stored = HU + 1024.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import ArrayLike, NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

__all__ = [
    "HU",
    "Geometry",
    "Nodule",
    "RigidTransform",
    "SyntheticCT",
    "Tissue",
    "generate_ct",
    "generate_followup",
    "main",
    "nodule_truth",
    "read_series",
    "slice_datasets",
    "write_series",
]

F32 = NDArray[np.float32]
Point = Sequence[float] | NDArray[Any]
RESCALE_INTERCEPT = -1024
HU_MIN, HU_MAX = -1024, 3071  # what uint16 stored values with intercept -1024 (12-bit CT range) can carry
ENTROPY_ROOT = "medstream synthetic chest CT v1"

# Mean HU per tissue; the image adds noise (NOISE_SD) and the lungs a texture and a gravity gradient.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "mediastinum": 40.0,
    "blood": 40.0,  # heart, aorta, pulmonary vessels (non-contrast)
    "liver": 60.0,
    "lung": -850.0,
    "cancellous_bone": 450.0,
    "cortical_bone": 950.0,
    "solid_nodule": 40.0,
    "ground_glass": -400.0,
}
NOISE_SD = 12.0
LUNG_TEXTURE_SD = 22.0
LUNG_GRAVITY_HU = 35.0  # dependent (posterior) lung is denser by up to this much


class Tissue(IntEnum):
    """Values of the tissue map that comes with each volume (the voxel's dominant tissue)."""

    OUTSIDE_AIR = 0
    FAT = 1
    SOFT_TISSUE = 2
    BONE = 3
    LUNG = 4
    VESSEL = 5
    AIRWAY = 6
    NODULE = 7


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in patient LPS millimetres; axial slices, volume indexed [slice, row, column]."""

    shape: tuple[int, int, int] = (80, 256, 256)
    pixel_spacing_mm: tuple[float, float] = (1.4, 1.4)  # DICOM PixelSpacing order: (between rows, between columns)
    slice_spacing_mm: float = 2.5
    origin_lps_mm: tuple[float, float, float] | None = None  # centre of voxel [0,0,0]; None: volume centred

    @property
    def origin(self) -> tuple[float, float, float]:
        if self.origin_lps_mm is not None:
            return self.origin_lps_mm
        d, h, w = self.shape
        return (
            -(w - 1) / 2 * self.pixel_spacing_mm[1],
            -(h - 1) / 2 * self.pixel_spacing_mm[0],
            TABLE_Z_MM - (d - 1) / 2 * self.slice_spacing_mm,
        )

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return (self.pixel_spacing_mm[1], self.pixel_spacing_mm[0], self.slice_spacing_mm)

    @property
    def voxel_volume_mm3(self) -> float:
        sx, sy, sz = self.spacing_xyz
        return sx * sy * sz

    def index_to_lps(self, index: ArrayLike) -> NDArray[np.float64]:
        """(..., 3) [slice, row, column] indices -> (..., 3) LPS millimetres."""
        kji = np.asarray(index, dtype=np.float64)
        ox, oy, oz = self.origin
        sx, sy, sz = self.spacing_xyz
        return np.stack([ox + kji[..., 2] * sx, oy + kji[..., 1] * sy, oz + kji[..., 0] * sz], axis=-1)

    def lps_to_index(self, lps: ArrayLike) -> NDArray[np.float64]:
        p = np.asarray(lps, dtype=np.float64)
        ox, oy, oz = self.origin
        sx, sy, sz = self.spacing_xyz
        return np.stack([(p[..., 2] - oz) / sz, (p[..., 1] - oy) / sy, (p[..., 0] - ox) / sx], axis=-1)


TABLE_Z_MM = -150.0  # patient z of the default volume centre (any value works; a non-zero one catches sign slips)


@dataclass(frozen=True)
class RigidTransform:
    """Patient repositioning: rotation about the S axis (through the volume centre), then a translation."""

    rotation_deg: float = 0.0
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> NDArray[np.float64]:
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def apply(self, lps: Sequence[float] | NDArray[np.float64], centre: Sequence[float]) -> NDArray[np.float64]:
        """Where a baseline point (..., 3) lies in the follow-up: R (p - centre) + centre + t."""
        c = np.asarray(centre, dtype=np.float64)
        return (np.asarray(lps, dtype=np.float64) - c) @ self.matrix().T + c + np.asarray(self.translation_mm)


@dataclass(frozen=True)
class Nodule:
    """Ground truth for one nodule; `label` is its value in the label volume."""

    label: int
    centre_lps_mm: tuple[float, float, float]  # centroid of the labelled core
    diameter_mm: float  # volume-equivalent sphere diameter of the labelled core (spicules excluded)
    volume_ml: float  # analytic volume of the labelled core
    kind: str  # "solid" | "part-solid" | "ground-glass"
    irregular: bool
    margin: str  # "smooth" | "lobulated" | "spiculated"
    location: str  # "central" | "juxta-pleural" | "juxta-vascular"
    solid_diameter_mm: float  # diameter of the solid component (0 for ground-glass, = diameter for solid)
    volume_growth_factor: float = 1.0  # volume relative to the baseline study (1.0 on the baseline)


@dataclass(frozen=True)
class SyntheticCT:
    """One rendered study: HU volume, nodule labels, tissue map and the ground truth behind them."""

    seed: int
    phase: str  # "baseline" | "followup"
    volume_hu: NDArray[np.int16]
    labels: NDArray[np.uint8]  # 0 background, Nodule.label inside nodule i
    tissue: NDArray[np.uint8]  # Tissue values
    geometry: Geometry
    nodules: tuple[Nodule, ...]
    transform: RigidTransform  # body -> this study's patient frame, relative to the baseline position
    study_date: dt.date
    days_since_baseline: int = 0

    @property
    def patient_id(self) -> str:
        return f"SYN-{self.seed}"

    def uid(self, *parts: str) -> UID:
        return UID(generate_uid(entropy_srcs=[ENTROPY_ROOT, str(self.seed), self.phase, *parts]))

    @property
    def study_instance_uid(self) -> UID:
        return self.uid("study")

    @property
    def series_instance_uid(self) -> UID:
        return self.uid("series")

    @property
    def frame_of_reference_uid(self) -> UID:
        return self.uid("frame-of-reference")

    @property
    def volume_centre_lps_mm(self) -> tuple[float, float, float]:
        """The point the follow-up's rotation turns about."""
        return _volume_centre(self.geometry)

    def ground_truth(self) -> dict[str, object]:
        """JSON-ready ground truth for this series."""
        g = self.geometry
        return {
            "synthetic": True,
            "seed": self.seed,
            "phase": self.phase,
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "study_date": self.study_date.isoformat(),
            "days_since_baseline": self.days_since_baseline,
            "geometry": {
                "shape": list(g.shape),
                "pixel_spacing_mm": list(g.pixel_spacing_mm),
                "slice_spacing_mm": g.slice_spacing_mm,
                "origin_lps_mm": list(g.origin),
            },
            "transform_from_baseline": {
                "rotation_deg_about_s": self.transform.rotation_deg,
                "translation_mm": list(self.transform.translation_mm),
                "rotation_centre_lps_mm": list(_volume_centre(g)),
            },
            "nodules": [asdict(n) for n in self.nodules],
        }


# ---------------------------------------------------------------------------------------------------------
# Phantom: the patient's anatomy in a body frame (mm, origin at the baseline volume centre), sampled once
# per seed and shared by the baseline and follow-up renders.


@dataclass(frozen=True)
class _Segment:
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    r0: float
    r1: float
    generation: int


@dataclass(frozen=True)
class _NoduleSpec:
    centre: tuple[float, float, float]  # body frame
    diameter_mm: float
    kind: str
    margin: str
    location: str
    solid_fraction: float  # solid core diameter / diameter
    lobes: tuple[tuple[float, float, float, float], ...]  # (dx, dy, dz, weight) radial bumps
    spicules: tuple[tuple[float, float, float, float], ...]  # (dx, dy, dz, length mm)
    growth: float  # follow-up volume factor
    reach: float  # mm from the centre that the nodule, spicules included, can reach at its largest


@dataclass(frozen=True)
class _Phantom:
    scale: float  # patient size factor
    vessels: tuple[_Segment, ...]
    nodules: tuple[_NoduleSpec, ...] = field(default=())


_SPHERE_DIRS: NDArray[np.float64]


def _fibonacci_sphere(n: int) -> NDArray[np.float64]:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


_SPHERE_DIRS = _fibonacci_sphere(2000)


def _radial(u: NDArray[np.float64], lobes: Sequence[tuple[float, float, float, float]]) -> NDArray[np.float64]:
    """Unit-radius shape function r(u) >= 1 for unit directions u (..., 3): smooth bumps make lobulation."""
    r = np.ones(u.shape[:-1])
    for dx, dy, dz, w in lobes:
        c = np.clip(u[..., 0] * dx + u[..., 1] * dy + u[..., 2] * dz, 0.0, None)
        r = r + w * c**4
    return r


def _centroid_offset(lobes: Sequence[tuple[float, float, float, float]]) -> NDArray[np.float64]:
    """Centroid of the unit-radius shape: (3/4) mean(u r^4) / mean(r^3) (lobes pull it off the origin)."""
    r = _radial(_SPHERE_DIRS, lobes)
    return 0.75 * (_SPHERE_DIRS * (r**4)[:, None]).mean(axis=0) / float(np.mean(r**3))


def _radius_for_volume(lobes: Sequence[tuple[float, float, float, float]], volume_mm3: float) -> float:
    # V = R^3 / 3 * integral of r(u)^3 over the sphere; Fibonacci quadrature is exact enough (<0.1%).
    mean_r3 = float(np.mean(_radial(_SPHERE_DIRS, lobes) ** 3))
    return float((volume_mm3 / (4 / 3 * math.pi * mean_r3)) ** (1 / 3))


# Anatomy, as signed distances (mm, negative inside; approximate away from the surface) in the body frame.
# Every function broadcasts, so the same rules rasterise the volume and test candidate nodule positions.


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1) * min(a, b)


def _ellipsoid_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray, c: Sequence[float], s: Sequence[float]) -> np.ndarray:
    q = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2
    return (np.sqrt(q + ((z - c[2]) / s[2]) ** 2) - 1) * min(s)


class _Anatomy:
    """Thorax dimensions for one patient size."""

    def __init__(self, scale: float) -> None:
        k = scale
        self.body = (0.0, 0.0, 165 * k, 122 * k)
        self.muscle = (0.0, 0.0, 150 * k, 108 * k)
        self.cavity = (0.0, -5 * k, 135 * k, 90 * k)
        self.lungs = [((s * 75 * k, 0.0, 10.0), (60 * k, 85 * k, 130.0)) for s in (-1, 1)]
        self.heart = ((15 * k, -30 * k, -55.0), (62 * k, 52 * k, 60.0))
        self.liver = ((-35 * k, 0.0, -175.0), (105 * k, 95 * k, 90.0))
        self.aorta = (25 * k, 52 * k, 12 * k)
        self.spine = (0.0, 70 * k, 16 * k)
        self.canal = (0.0, 95 * k, 8 * k)
        self.spinous = (0.0, 110 * k, 5 * k, 11 * k)
        self.sternum = (0.0, -95 * k, 14 * k, 6 * k)
        self.esophagus = (-4 * k, 42 * k, 7 * k)
        self.carina = (0.0, 22 * k, 25.0)
        self.trachea_r = 9 * k
        self.hila = [(s * 42 * k, 5 * k, 10.0) for s in (-1, 1)]
        self.mediastinal_half_width = 22 * k

    def lung_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Both lungs: ellipsoids inside the pleural cavity, minus the mediastinum, heart, aorta, spine, liver."""
        lung = np.minimum(*(_ellipsoid_sd(x, y, z, c, s) for c, s in self.lungs))
        cx, cy, a, b = self.cavity
        lung = np.maximum(lung, _ellipse_sd(x, y, cx, cy, a - 4, b - 4))
        lung = np.maximum(lung, self.mediastinal_half_width - np.abs(x))
        lung = np.maximum(lung, 3 - _ellipsoid_sd(x, y, z, *self.heart))
        lung = np.maximum(lung, 3 - _ellipsoid_sd(x, y, z, *self.liver))
        ax, ay, ar = self.aorta
        lung = np.maximum(lung, ar + 4 - np.hypot(x - ax, y - ay))
        sx, sy, sr = self.spine
        return np.maximum(lung, sr + 10 - np.hypot(x - sx, y - sy))


def _segment_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray, seg: _Segment) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(seg.a), np.asarray(seg.b)
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d), 0.0, 1.0)
    dist = np.sqrt((x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2)
    return dist - (seg.r0 + t * (seg.r1 - seg.r0)), t


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / np.linalg.norm(v)


def _vessel_tree(rng: np.random.Generator, anatomy: _Anatomy) -> list[_Segment]:
    segments: list[_Segment] = []
    for side, hilum in zip((-1, 1), anatomy.hila, strict=True):
        # Six trunks per lung fanning out from the hilum, each a binary tree of tapering tubes; a branch
        # that leaves the lung stops dividing.
        for dz in (1.1, 0.6, 0.15, -0.3, -0.7, -1.1):
            direction = _unit(np.array([side * 1.0, rng.uniform(-0.6, 0.6), dz + rng.uniform(-0.2, 0.2)]))
            stack = [(np.array(hilum), direction, 5.0 * anatomy.spine[2] / 16, 0)]
            while stack:
                start, direction, radius, gen = stack.pop()
                length = rng.uniform(0.8, 1.2) * 28 * 0.82**gen
                end = start + direction * length
                r_end = radius * 0.8
                segments.append(_Segment(tuple(start), tuple(end), radius, r_end, gen))  # type: ignore[arg-type]
                inside = float(anatomy.lung_sd(end[0], end[1], end[2])) < 0
                if gen >= 7 or r_end < 0.8 or (gen > 0 and not inside):
                    continue
                axis = _unit(np.cross(direction, rng.normal(size=3)))
                for sign in (-1, 1):
                    angle = math.radians(rng.uniform(15, 35))
                    child = _unit(direction * math.cos(angle) + sign * axis * math.sin(angle))
                    stack.append((end, child, r_end * rng.uniform(0.8, 0.95), gen + 1))
    return segments


_KINDS = ("solid", "solid", "solid", "part-solid", "ground-glass")
_MARGINS = ("smooth", "smooth", "lobulated", "spiculated")
_LOCATIONS = ("central", "juxta-pleural", "juxta-vascular")
_MAX_GROWTH = 2.5
# Nodules stay inside the default 200 mm of slices, after growth and the follow-up shift (<= 6 mm).
NODULE_Z_HALF_RANGE_MM = 92.0
_PROBE = _SPHERE_DIRS[::10]


class _Placer:
    """Finds centres (body frame) where a nodule of a given reach lies wholly in the lungs and the volume."""

    def __init__(self, rng: np.random.Generator, anatomy: _Anatomy, vessels: Sequence[_Segment]) -> None:
        self.rng, self.anatomy = rng, anatomy
        self.vessels = [s for s in vessels if 1 <= s.generation <= 3]

    def in_lung(self, c: NDArray[np.float64], reach: float) -> bool:
        pts = c + _PROBE * (reach + 1.5)
        return bool((self.anatomy.lung_sd(pts[:, 0], pts[:, 1], pts[:, 2]) < 0).all())

    def fits(self, c: NDArray[np.float64], reach: float) -> bool:
        return abs(float(c[2])) + reach <= NODULE_Z_HALF_RANGE_MM and self.in_lung(c, reach)

    def central(self, reach: float) -> NDArray[np.float64] | None:
        for _ in range(200):
            c, size = self.anatomy.lungs[int(self.rng.integers(0, 2))]
            p = np.asarray(c) + self.rng.uniform(-1, 1, size=3) * np.asarray(size)
            if self.fits(p, reach):
                return p
        return None

    def juxta_pleural(self, reach: float, surface: NDArray[np.float64]) -> NDArray[np.float64] | None:
        # Walk outwards from a central point until the baseline core's surface (points relative to its centroid)
        # touches the pleura; growth and spicules may then reach into the chest wall, as they do.
        p = self.central(reach)
        if p is None:
            return None
        direction = _unit(self.rng.normal(size=3) * np.array([1.0, 1.0, 0.3]))
        for _ in range(400):
            nxt = p + direction * 0.5
            pts = nxt + surface
            if not (self.anatomy.lung_sd(pts[:, 0], pts[:, 1], pts[:, 2]) < 0).all():
                return p if abs(float(p[2])) + reach <= NODULE_Z_HALF_RANGE_MM else None
            p = nxt
        return None

    def juxta_vascular(self, reach: float, core_radius: float) -> NDArray[np.float64] | None:
        # Beside a mid-sized vessel, overlapping its wall.
        for _ in range(100):
            seg = self.vessels[int(self.rng.integers(0, len(self.vessels)))]
            t = self.rng.uniform(0.2, 0.8)
            a, b = np.asarray(seg.a), np.asarray(seg.b)
            side = _unit(np.cross(b - a, self.rng.normal(size=3)))
            p = a + t * (b - a) + side * (seg.r0 + 0.8 * core_radius)
            if self.fits(p, reach):
                return p
        return None


def _sample_nodules(
    rng: np.random.Generator, anatomy: _Anatomy, vessels: Sequence[_Segment], count: int
) -> list[_NoduleSpec]:
    specs: list[_NoduleSpec] = []
    placer = _Placer(rng, anatomy, vessels)
    for _ in range(count):
        for _attempt in range(60):
            kind = str(rng.choice(_KINDS))
            low = {"solid": 3.0, "part-solid": 8.0, "ground-glass": 5.0}[kind]
            diameter = float(math.exp(rng.uniform(math.log(low), math.log(30.0))))
            margin = str(rng.choice(_MARGINS)) if diameter >= 6 else "smooth"
            lobes: tuple[tuple[float, float, float, float], ...] = ()
            spicules: tuple[tuple[float, float, float, float], ...] = ()
            if margin != "smooth":
                dirs = rng.normal(size=(int(rng.integers(4, 8)), 3))
                weight = 0.35 if margin == "lobulated" else 0.15
                lobes = tuple((*_unit(d), weight * rng.uniform(0.6, 1.0)) for d in dirs)  # type: ignore[misc]
            if margin == "spiculated":
                dirs = rng.normal(size=(int(rng.integers(5, 10)), 3))
                spicules = tuple((*_unit(d), rng.uniform(0.3, 0.6) * diameter) for d in dirs)  # type: ignore[misc]
            growth = 1.0 if rng.random() < 0.25 else float(rng.uniform(1.15, _MAX_GROWTH))
            k = growth ** (1 / 3)
            radius = _radius_for_volume(lobes, math.pi / 6 * diameter**3) * k  # at its largest (follow-up)
            reach = radius * float(_radial(_SPHERE_DIRS, lobes).max()) + max((s[3] * k for s in spicules), default=0)
            reach += float(np.linalg.norm(_centroid_offset(lobes))) * radius
            base_radius = radius / k
            surface = base_radius * (_radial(_SPHERE_DIRS, lobes)[:, None] * _SPHERE_DIRS - _centroid_offset(lobes))
            location = str(rng.choice(_LOCATIONS))
            if location == "central":
                centre = placer.central(reach)
            elif location == "juxta-pleural":
                centre = placer.juxta_pleural(reach, surface)
            else:
                centre = placer.juxta_vascular(reach, base_radius)
            if centre is None or any(
                np.linalg.norm(centre - np.asarray(s.centre)) < reach + s.reach + 3 for s in specs
            ):
                continue
            specs.append(
                _NoduleSpec(
                    centre=(float(centre[0]), float(centre[1]), float(centre[2])),
                    diameter_mm=diameter,
                    kind=kind,
                    margin=margin,
                    location=location,
                    solid_fraction={"solid": 1.0, "ground-glass": 0.0}.get(kind, float(rng.uniform(0.3, 0.6))),
                    lobes=lobes,
                    spicules=spicules,
                    growth=growth,
                    reach=reach,
                )
            )
            break
    return specs


def _sample_phantom(seed: int, n_nodules: int | None) -> _Phantom:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5C7]))
    scale = float(rng.uniform(0.93, 1.05))
    anatomy = _Anatomy(scale)
    vessels = _vessel_tree(rng, anatomy)
    count = int(rng.integers(0, 4)) if n_nodules is None else n_nodules
    return _Phantom(scale, tuple(vessels), tuple(_sample_nodules(rng, anatomy, vessels, count)))


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _volume_centre(g: Geometry) -> tuple[float, float, float]:
    return tuple(float(v) for v in g.index_to_lps([(s - 1) / 2 for s in g.shape]))  # type: ignore[return-value]


class _Canvas:
    """HU, tissue and label volumes plus the body-frame coordinates of any box of voxels."""

    def __init__(self, geometry: Geometry, transform: RigidTransform) -> None:
        self.g = geometry
        self.vol = np.full(geometry.shape, HU["air"], dtype=np.float32)
        self.tissue = np.zeros(geometry.shape, dtype=np.uint8)
        self.labels = np.zeros(geometry.shape, dtype=np.uint8)
        self.rot = transform.matrix()
        self.shift = np.asarray(_volume_centre(geometry)) + np.asarray(transform.translation_mm)
        self.edge = min(geometry.spacing_xyz)
        self.to_patient = self.body_to_patient(geometry, transform)

    @staticmethod
    def body_to_patient(
        geometry: Geometry, transform: RigidTransform
    ) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
        """Body frame (origin at the baseline volume centre) -> this study's LPS: R b + centre + t."""
        rot = transform.matrix()
        shift = np.asarray(_volume_centre(geometry)) + np.asarray(transform.translation_mm)
        return lambda body: body @ rot.T + shift

    def box(self, lo: Point, hi: Point) -> tuple[tuple[slice, ...], F32, F32, F32] | None:
        """Voxels whose body-frame position may lie in [lo, hi]: (slices, X (h,w), Y (h,w), Z (d,1,1))."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.g.lps_to_index(self.to_patient(corners))
        start = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.g.shape)
        if (stop <= start).any():
            return None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        rows, cols = np.meshgrid(np.arange(sl[1].start, sl[1].stop), np.arange(sl[2].start, sl[2].stop), indexing="ij")
        # Rotation is about S only, so x,y depend on (row, column) and z on the slice alone.
        ox, oy, oz = self.g.origin
        sx, sy, sz = self.g.spacing_xyz
        px, py = ox + cols * sx - self.shift[0], oy + rows * sy - self.shift[1]
        xy = np.stack([px, py], axis=-1) @ self.rot[:2, :2]
        zb = (oz + np.arange(sl[0].start, sl[0].stop) * sz - self.shift[2]).astype(np.float32)[:, None, None]
        return sl, xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32), zb

    def whole(self) -> tuple[tuple[slice, ...], F32, F32, F32]:
        big = 1e4
        out = self.box((-big, -big, -big), (big, big, big))
        assert out is not None
        return out

    def coverage(self, sd: np.ndarray) -> F32:
        return np.clip(0.5 - sd / self.edge, 0.0, 1.0).astype(np.float32)

    def paint(self, sl: tuple[slice, ...], cov: np.ndarray, value: float | np.ndarray, tissue: Tissue) -> None:
        v = self.vol[sl]
        v += cov * (value - v)
        self.tissue[sl][np.broadcast_to(cov > 0.5, v.shape)] = tissue


def _render(
    seed: int, phantom: _Phantom, geometry: Geometry, transform: RigidTransform, followup: bool
) -> tuple[NDArray[np.int16], NDArray[np.uint8], NDArray[np.uint8], list[Nodule]]:
    an = _Anatomy(phantom.scale)
    cv = _Canvas(geometry, transform)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x401, 1 if followup else 0]))
    _, X, Y, Z = cv.whole()

    # Everything that does not change along z is drawn once on one slice and copied to all of them.
    img = np.full(X.shape, HU["air"], dtype=np.float32)
    tis = np.zeros(X.shape, dtype=np.uint8)

    def paint2d(sd: np.ndarray, value: float | np.ndarray, tissue: Tissue) -> None:
        cov = cv.coverage(sd)
        img[...] += cov * (value - img)
        tis[cov > 0.5] = tissue

    def bone(sd: np.ndarray) -> np.ndarray:
        # Cortex within 1.5 mm of the surface, cancellous bone inside.
        return np.where(sd > -1.5, HU["cortical_bone"], HU["cancellous_bone"]).astype(np.float32)

    paint2d(_ellipse_sd(X, Y, *an.body), HU["fat"], Tissue.FAT)
    paint2d(_ellipse_sd(X, Y, *an.muscle), HU["muscle"], Tissue.SOFT_TISSUE)
    cav_sd = _ellipse_sd(X, Y, *an.cavity)
    paint2d(cav_sd, HU["mediastinum"], Tissue.SOFT_TISSUE)
    for cx, cy, r in (an.aorta, an.esophagus):
        paint2d(np.hypot(X - cx, Y - cy) - r, HU["blood"], Tissue.SOFT_TISSUE)
    cx, cy, r = an.spine
    paint2d(sd := np.hypot(X - cx, Y - cy) - r, bone(sd), Tissue.BONE)
    cx, cy, r = an.canal
    radial = np.hypot(X - cx, Y - cy)
    arch = np.maximum(np.maximum(radial - r - 5, r + 1 - radial), cy - Y)  # neural arch behind the canal
    paint2d(arch, bone(arch), Tissue.BONE)
    paint2d(radial - r, 15.0, Tissue.SOFT_TISSUE)
    for cx, cy, a, b in (an.spinous, an.sternum):
        paint2d(sd := _ellipse_sd(X, Y, cx, cy, a, b), bone(sd), Tissue.BONE)
    cv.vol[...] = img[None]
    cv.tissue[...] = tis[None]

    # Solid organs and the anterior mediastinal fat pad.
    fat_pad = ((0.0, -70 * phantom.scale, 20.0), (30.0, 14.0, 60.0), HU["fat"], Tissue.FAT)
    heart = (an.heart[0], an.heart[1], HU["blood"], Tissue.SOFT_TISSUE)
    liver = (an.liver[0], an.liver[1], HU["liver"], Tissue.SOFT_TISSUE)
    for centre, size, hu, tissue in (fat_pad, heart, liver):
        box = cv.box(np.subtract(centre, size), np.add(centre, size))
        if box:
            s, x, y, z = box
            cv.paint(s, cv.coverage(_ellipsoid_sd(x[None], y[None], z, centre, size)), hu, tissue)

    # Lungs: textured parenchyma, denser posteriorly (gravity).
    lo = [min(c[i] - h[i] for c, h in an.lungs) for i in range(3)]
    hi = [max(c[i] + h[i] for c, h in an.lungs) for i in range(3)]
    box = cv.box(lo, hi)
    if box:
        s, x, y, z = box
        texture = _lung_texture(rng, geometry.shape)[s]
        lung_hu = HU["lung"] + texture + LUNG_GRAVITY_HU * np.clip(y / (85 * phantom.scale), -1, 1)[None]
        cv.paint(s, cv.coverage(an.lung_sd(x[None], y[None], z)), lung_hu, Tissue.LUNG)

    # Pulmonary vessels, drawn only over lung so they never cut through the chest wall.
    for seg in phantom.vessels:
        pad = seg.r0 + 2
        box = cv.box(np.minimum(seg.a, seg.b) - pad, np.maximum(seg.a, seg.b) + pad)
        if box is None:
            continue
        s, x, y, z = box
        sd, _ = _segment_sd(x[None], y[None], z, seg)
        t = cv.tissue[s]
        cov = cv.coverage(sd) * ((t == Tissue.LUNG) | (t == Tissue.VESSEL))
        cv.paint(s, cov, HU["blood"], Tissue.VESSEL)

    # Airways: trachea above the carina, main bronchi to the hila (wall, then lumen).
    cx, cy, cz = an.carina
    r = an.trachea_r + 3
    box = cv.box((cx - r, cy - r, cz - 2), (cx + r, cy + r, 1e4))
    if box:
        s, x, y, z = box
        trachea = np.maximum(np.hypot(x - cx, y - cy)[None] - an.trachea_r, cz - z)
        cv.paint(s, cv.coverage(trachea - 2), HU["mediastinum"], Tissue.SOFT_TISSUE)
        cv.paint(s, cv.coverage(trachea), HU["air"], Tissue.AIRWAY)
    for hilum in an.hila:
        for wall, hu, tissue in ((2.0, HU["mediastinum"], Tissue.SOFT_TISSUE), (0.0, HU["air"], Tissue.AIRWAY)):
            seg = _Segment(an.carina, hilum, an.trachea_r * 0.75 + wall, an.trachea_r * 0.55 + wall, 0)
            box = cv.box(np.minimum(seg.a, seg.b) - 12, np.maximum(seg.a, seg.b) + 12)
            if box:
                s, x, y, z = box
                cv.paint(s, cv.coverage(_segment_sd(x[None], y[None], z, seg)[0]), hu, tissue)

    _paint_ribs(cv, X, Y, Z, cav_sd, bone)
    nodules = [_paint_nodule(cv, spec, i + 1, followup) for i, spec in enumerate(phantom.nodules)]

    vol = cv.vol
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(NOISE_SD)
    volume_hu = np.clip(np.rint(vol), HU_MIN, HU_MAX).astype(np.int16)
    return volume_hu, cv.labels, cv.tissue, nodules


def _lung_texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> F32:
    # Correlated noise at half in-plane resolution, doubled with a two-tap average (cheap bilinear upsampling).
    d, h, w = shape
    noise = rng.standard_normal((d, h // 2 + 1, w // 2 + 1), dtype=np.float32)
    coarse = ndimage.gaussian_filter(noise, (0.7, 1.0, 1.0))
    coarse *= np.float32(LUNG_TEXTURE_SD / coarse.std())
    up = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    up = (up[:, 1:, :] + up[:, :-1, :]) * np.float32(0.5)
    up = (up[:, :, 1:] + up[:, :, :-1]) * np.float32(0.5)
    return np.ascontiguousarray(up[:, :h, :w])


def _paint_ribs(cv: _Canvas, X: F32, Y: F32, Z: F32, cav_sd: np.ndarray, bone: object) -> None:
    """Ribs: a 9 mm shell outside the pleura cut into bands that slope down anteriorly; none at the sternum."""
    assert callable(bone)
    shell = np.minimum(cav_sd, 9.0 - cav_sd)  # depth inside the shell, > 0 inside
    anterior = (1 - Y / np.hypot(X, Y).clip(1e-3)) / 2  # 0 posterior .. 1 anterior
    rows, cols = np.nonzero((shell > -1) & (anterior < 0.85))
    phase = np.mod(Z[:, 0, 0][:, None] + 45 * anterior[rows, cols][None], 28.0)  # position in a 28 mm period
    depth = np.minimum(shell[rows, cols][None], np.minimum(phase, 10.0 - phase))  # ribs 10 mm tall
    cov = np.clip(0.5 + depth / cv.edge, 0, 1).astype(np.float32)
    v = cv.vol[:, rows, cols]
    cv.vol[:, rows, cols] = v + cov * (bone(-depth) - v)
    cv.tissue[:, rows, cols] = np.where(cov > 0.5, np.uint8(Tissue.BONE), cv.tissue[:, rows, cols])


def _nodule_size(spec: _NoduleSpec, followup: bool) -> tuple[float, float, float]:
    """(volume mm3, shape radius mm, linear growth) of the labelled core in one study."""
    growth = spec.growth if followup else 1.0
    volume = math.pi / 6 * spec.diameter_mm**3 * growth
    return volume, _radius_for_volume(spec.lobes, volume), growth ** (1 / 3)


def _nodule_truth(
    spec: _NoduleSpec, label: int, followup: bool, to_patient: Callable[[NDArray[np.float64]], NDArray[np.float64]]
) -> Nodule:
    volume, _, k = _nodule_size(spec, followup)
    centre = to_patient(np.asarray(spec.centre)[None])[0]
    return Nodule(
        label=label,
        centre_lps_mm=(round(float(centre[0]), 3), round(float(centre[1]), 3), round(float(centre[2]), 3)),
        diameter_mm=round(spec.diameter_mm * k, 3),
        volume_ml=round(volume / 1000, 6),
        kind=spec.kind,
        irregular=spec.margin != "smooth",
        margin=spec.margin,
        location=spec.location,
        solid_diameter_mm=round(spec.diameter_mm * k * spec.solid_fraction, 3),
        volume_growth_factor=round(spec.growth if followup else 1.0, 6),
    )


def _paint_nodule(cv: _Canvas, spec: _NoduleSpec, label: int, followup: bool) -> Nodule:
    _, radius, k = _nodule_size(spec, followup)
    reach = radius * float(_radial(_SPHERE_DIRS, spec.lobes).max()) + max((s[3] * k for s in spec.spicules), default=0)
    # spec.centre is the core's centroid; lobes pull the shape's own origin off it, and growth keeps the centroid.
    c = np.asarray(spec.centre) - radius * _centroid_offset(spec.lobes)
    box = cv.box(c - reach - 2, c + reach + 2)
    if box is not None:
        s, x, y, z = box
        dx, dy, dz = (x - c[0])[None], (y - c[1])[None], z - c[2]
        rho = np.sqrt(dx * dx + dy * dy + dz * dz)
        u = np.stack(np.broadcast_arrays(dx, dy, dz), axis=-1) / np.maximum(rho, 1e-6)[..., None]
        surface = radius * _radial(u, spec.lobes)
        sd = rho - surface
        solid, ggo = HU["solid_nodule"], HU["ground_glass"]
        inner: np.ndarray | float = solid if spec.kind == "solid" else ggo
        if spec.kind == "part-solid":
            core = np.clip(0.5 - (rho - spec.solid_fraction * surface) / cv.edge, 0, 1)
            inner = ggo + core * (solid - ggo)
        cov = cv.coverage(sd)
        for ux, uy, uz, length in spec.spicules:
            tip = (radius + length * k) * np.array([ux, uy, uz])
            seg = _Segment((0.0, 0.0, 0.0), (float(tip[0]), float(tip[1]), float(tip[2])), 1.0, 0.35, 0)
            cov = np.maximum(cov, cv.coverage(_segment_sd(dx, dy, dz, seg)[0]))
        cv.paint(s, cov, inner, Tissue.NODULE)
        cv.labels[s][sd < 0] = label
    return _nodule_truth(spec, label, followup, cv.to_patient)


BASE_DATE = dt.date(2025, 1, 6)
FOLLOWUP_DAYS = 90


def _followup_transform(seed: int) -> RigidTransform:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0]))
    return RigidTransform(
        rotation_deg=round(float(rng.uniform(-3, 3)), 3),
        translation_mm=tuple(round(float(v), 3) for v in rng.uniform(-6, 6, size=3)),  # type: ignore[arg-type]
    )


def generate_ct(seed: int, geometry: Geometry | None = None, n_nodules: int | None = None) -> SyntheticCT:
    """The baseline chest CT of synthetic patient SYN-<seed> (0-3 nodules unless n_nodules says otherwise)."""
    g = geometry or Geometry()
    phantom = _sample_phantom(seed, n_nodules)
    transform = RigidTransform()
    hu, labels, tissue, nodules = _render(seed, phantom, g, transform, followup=False)
    date = BASE_DATE + dt.timedelta(days=seed % 365)
    return SyntheticCT(seed, "baseline", hu, labels, tissue, g, tuple(nodules), transform, date)


def generate_followup(seed: int, geometry: Geometry | None = None, n_nodules: int | None = None) -> SyntheticCT:
    """The same patient FOLLOWUP_DAYS later: nodules grown by known volume factors, patient slightly moved."""
    g = geometry or Geometry()
    phantom = _sample_phantom(seed, n_nodules)
    transform = _followup_transform(seed)
    hu, labels, tissue, nodules = _render(seed, phantom, g, transform, followup=True)
    date = BASE_DATE + dt.timedelta(days=seed % 365 + FOLLOWUP_DAYS)
    return SyntheticCT(seed, "followup", hu, labels, tissue, g, tuple(nodules), transform, date, FOLLOWUP_DAYS)


def nodule_truth(
    seed: int, geometry: Geometry | None = None, n_nodules: int | None = None, followup: bool = False
) -> tuple[Nodule, ...]:
    """The nodules generate_ct / generate_followup would draw, without rendering (~50 ms: for choosing seeds)."""
    g = geometry or Geometry()
    phantom = _sample_phantom(seed, n_nodules)
    to_patient = _Canvas.body_to_patient(g, _followup_transform(seed) if followup else RigidTransform())
    return tuple(_nodule_truth(spec, i + 1, followup, to_patient) for i, spec in enumerate(phantom.nodules))


# ---------------------------------------------------------------------------------------------------------
# DICOM


def _ds_str(v: float) -> str:
    return f"{v:.6g}"


def slice_datasets(ct: SyntheticCT) -> list[Dataset]:
    """One CT Image Storage dataset per slice (explicit VR little endian, stored = HU + 1024 as uint16)."""
    g = ct.geometry
    stored = (ct.volume_hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    date = ct.study_date.strftime("%Y%m%d")
    out = []
    for k in range(g.shape[0]):
        sop_uid = ct.uid("instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
        ds.AccessionNumber = f"SYN{ct.seed}{'F' if ct.phase == 'followup' else 'B'}"
        ds.Modality = "CT"
        ds.Manufacturer = "medstream synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST (SYNTHETIC)"
        ds.SeriesDescription = f"Synthetic chest CT, {ct.phase}"
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = ct.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds_str(g.slice_spacing_mm)
        ds.SpacingBetweenSlices = _ds_str(g.slice_spacing_mm)
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = ct.study_instance_uid
        ds.SeriesInstanceUID = ct.series_instance_uid
        ds.StudyID = ds.AccessionNumber
        ds.SeriesNumber = 1 if ct.phase == "baseline" else 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagesInAcquisition = g.shape[0]  # one acquisition: the receiver knows when the series is complete
        ds.ImagePositionPatient = [_ds_str(v) for v in g.index_to_lps([k, 0, 0])]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = ct.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds_str(float(g.index_to_lps([k, 0, 0])[2]))
        ds.ImageComments = "SYNTHETIC PHANTOM: not a patient image; generated by medstream synthetic_ct"
        ds.PixelSpacing = [_ds_str(v) for v in g.pixel_spacing_mm]
        ds.set_pixel_data(
            stored[k], photometric_interpretation="MONOCHROME2", bits_stored=16, generate_instance_uid=False
        )
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.BurnedInAnnotation = "NO"
        out.append(ds)
    return out


def write_series(ct: SyntheticCT, directory: Path) -> list[Path]:
    """Write one DICOM file per slice plus ground_truth.json into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in slice_datasets(ct):
        path = directory / f"CT{int(ds.InstanceNumber):04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    (directory / "ground_truth.json").write_text(json.dumps(ct.ground_truth(), indent=2))
    return paths


def read_series(directory: Path) -> tuple[NDArray[np.int16], Geometry, list[Dataset]]:
    """Read a written series back (files sorted along the slice normal) into HU, for validation."""
    datasets: list[Dataset] = [pydicom.dcmread(p) for p in sorted(directory.glob("*.dcm"))]
    if not datasets:
        raise ValueError(f"no DICOM files in {directory}")
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    if len({ds.SeriesInstanceUID for ds in datasets}) != 1:
        raise ValueError("files belong to more than one series")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    steps = np.diff(positions[:, 2])
    if len(steps) and not np.allclose(steps, steps[0], atol=1e-3):
        raise ValueError("slices are not evenly spaced")
    first = datasets[0]
    geometry = Geometry(
        shape=(len(datasets), int(first.Rows), int(first.Columns)),
        pixel_spacing_mm=(float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        slice_spacing_mm=float(steps[0]) if len(steps) else float(first.SliceThickness),
        origin_lps_mm=(float(positions[0, 0]), float(positions[0, 1]), float(positions[0, 2])),
    )
    volume = np.stack(
        [ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept) for ds in datasets]
    )
    return volume.astype(np.int16), geometry, datasets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=5, help="patients (seeds seed .. seed+n-1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--followup", action="store_true", help="also write each patient's follow-up study")
    args = parser.parse_args(argv)
    for seed in range(args.seed, args.seed + args.n):
        studies = [generate_ct(seed)] + ([generate_followup(seed)] if args.followup else [])
        for ct in studies:
            target = args.out / f"{ct.patient_id}_{ct.phase}"
            write_series(ct, target)
            print(f"{target}: {ct.geometry.shape[0]} slices, {len(ct.nodules)} nodules")


if __name__ == "__main__":
    main()
