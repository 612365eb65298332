"""Imaging routes: which series an analysis takes, how it prepares them, which model it calls, and what its
findings are called, coded and alerted as. One module per route; `ROUTES` lists them.

Adding a route: a module that builds a `Route` (see lung_nodule.py), its model in model_repository/, and one line
below. The assembly stage routes completed series with `select`; the analysis stage runs `ROUTES[name]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from services.common.model_contract import ModelContract, TensorSpec
from services.imaging.dicom_outputs import Kind
from services.imaging.postprocess import Candidate
from services.imaging.preprocess import Volume


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class AlertRule:
    """An alert raised for the top finding when a series has any: its kind and severity."""

    kind: str
    severity: int
    summary: str  # prefix of the alert's summary, e.g. "Suspected acute stroke lesion"


@dataclass(frozen=True)
class Route:
    name: str  # DicomSeriesComplete.route
    # selection: the modality and any of the words in BodyPartExamined (or the series description)
    modality: str
    body_parts: tuple[str, ...]
    # the model: its contract, the grid patches are cut on, and which patches are worth sending
    contract: ModelContract
    patch: int
    stride: int
    prepare: Callable[[Volume], Volume]  # rescaled volume -> the model's input grid
    keep: Callable[[np.ndarray], bool] | None
    # post-processing: lesions are connected components above `threshold` of at least `min_volume_mm3`
    threshold: float
    min_volume_mm3: float
    # what the findings are
    kind: str  # Finding.kind
    code: Coding  # a found lesion (ICD-10-CM)
    report_code: Coding  # the DiagnosticReport (LOINC)
    evidence: Kind  # SEG/SR names and codes
    severity: Callable[[Candidate], int]
    alert: AlertRule | None
    display_window: Callable[[Volume], tuple[float, float]]  # key-image window (centre, width)

    def __post_init__(self) -> None:
        if self.contract.inputs[0].dims != (1, self.patch, self.patch, self.patch):
            raise ValueError(f"route {self.name}: its contract does not take {self.patch}^3 patches")

    def selects(self, modality: str, text: str) -> bool:
        return modality == self.modality and any(word in text for word in self.body_parts)


def patch_contract(name: str, patch: int, max_batch_size: int = 32) -> ModelContract:
    """The contract every segmentation route's model has: one-channel cubes in, a probability per voxel out."""
    cube = TensorSpec("PATCH", "float32", (1, patch, patch, patch))
    return ModelContract(
        name, inputs=(cube,), outputs=(TensorSpec("PROB", "float32", cube.dims),), max_batch_size=max_batch_size
    )


def _registry(routes: Iterable[Route]) -> dict[str, Route]:
    return {r.name: r for r in routes}


def _builtin() -> dict[str, Route]:
    from services.imaging.routes import lung_nodule, stroke

    return _registry([lung_nodule.ROUTE, stroke.ROUTE])


ROUTES: dict[str, Route] = _builtin()


def register(route: Route) -> None:
    """Add a route (a plug-in outside this package, or a test's); a name can be registered once."""
    if route.name in ROUTES:
        raise ValueError(f"route {route.name!r} is already registered")
    ROUTES[route.name] = route


def select(modality: str, body_part: str, description: str = "") -> str | None:
    """Which route a completed series goes to (the first registered that selects it), or None."""
    text = f"{body_part} {description}".upper()
    return next((r.name for r in ROUTES.values() if r.selects(modality, text)), None)
