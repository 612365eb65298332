"""Change against the patient's prior study: found through the graph, registered, then measured.

The prior is the patient's most recent earlier study (by StudyDate) with a series that the same analysis route
already analysed; its lesions are the Finding nodes of that series' analysed revision and model. The follow-up is
rigidly registered onto the prior (services/imaging/preprocess.py `register_rigid`) on the model's input grid, the
current lesion centres are mapped into the prior's frame, and `postprocess.compare` matches them and measures growth
and volume doubling time.

A prior is visible once the graph writer has applied its analysis: a follow-up analysed before that (both studies
sent within seconds) is reported without comparison, never with a wrong one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.graph import Graph
from services.imaging.postprocess import Candidate, Change, compare
from services.imaging.preprocess import Volume, register_rigid

# Latest earlier study of the patient whose series this route analysed, with that series' instances and the
# findings of its analysed revision (same model as recorded on the series).
PRIOR_QUERY = """
MATCH (:Patient {id: $patient})-[:HAS_STUDY]->(st:Study)-[:HAS_SERIES]->(se:Series {route: $route})
WHERE st.study_instance_uid <> $study AND st.study_date IS NOT NULL AND st.study_date < $date
  AND se.analysed_revision IS NOT NULL
WITH st, se ORDER BY st.study_date DESC, se.series_instance_uid LIMIT 1
OPTIONAL MATCH (se)-[:HAS_FINDING]->(f:Finding)
  WHERE f.revision = se.analysed_revision AND f.model = se.analysed_model
WITH st, se, collect(f {.finding_id, .centre_x, .centre_y, .centre_z, .volume, .diameter}) AS findings
MATCH (se)-[:HAS_INSTANCE]->(i:Instance)
WHERE i.blob_uri IS NOT NULL
RETURN st.study_instance_uid AS study, st.study_date AS date, se.series_instance_uid AS series, findings,
       collect(i.blob_uri) AS blobs
"""


@dataclass(frozen=True)
class PriorFinding:
    finding_id: str
    candidate: Candidate  # centre in the prior's patient frame; volume and diameter as measured then


@dataclass(frozen=True)
class PriorStudy:
    study_instance_uid: str
    series_instance_uid: str
    study_date: dt.date
    blob_uris: tuple[str, ...]
    findings: tuple[PriorFinding, ...]


@dataclass(frozen=True)
class Comparison:
    prior: PriorStudy
    days: float
    changes: list[Change]  # one per current lesion, in the current findings' order
    prior_ids: list[str | None]  # the matched prior finding per change, None when new
    registration_metric: float
    translation_mm: tuple[float, float, float]


def study_date(value: str | None) -> dt.date | None:
    """DICOM DA (YYYYMMDD) -> date; None when absent or malformed."""
    try:
        return dt.datetime.strptime((value or "").strip(), "%Y%m%d").date()
    except ValueError:
        return None


async def find_prior(
    graph: Graph, patient_id: str, study_instance_uid: str, date: dt.date, route: str
) -> PriorStudy | None:
    records, _, _ = await graph.driver.execute_query(
        PRIOR_QUERY,
        patient=patient_id,
        study=study_instance_uid,
        date=date.isoformat(),
        route=route,
        database_=graph.database,
        routing_="r",
    )
    if not records:
        return None
    row = records[0]
    findings = tuple(
        PriorFinding(f["finding_id"], _prior_candidate(f))
        for f in row["findings"]
        if f and None not in (f["centre_x"], f["centre_y"], f["centre_z"], f["volume"])
    )
    return PriorStudy(
        row["study"], row["series"], dt.date.fromisoformat(row["date"]), tuple(sorted(row["blobs"])), findings
    )


def _prior_candidate(f: dict[str, float]) -> Candidate:
    volume = float(f["volume"])
    return Candidate(
        centre_mm=(float(f["centre_x"]), float(f["centre_y"]), float(f["centre_z"])),
        centre_voxel=(0.0, 0.0, 0.0),
        volume_ml=volume,
        diameter_mm=float(f.get("diameter") or 0.0),
        max_extent_mm=0.0,
        confidence=1.0,
        voxels=0,
    )


def measure_change(
    current_grid: Volume,
    prior_grid: Volume,
    found: Sequence[Candidate],
    prior: PriorStudy,
    days: float,
    max_distance_mm: float = 10.0,
) -> Comparison:
    """Register the follow-up onto the prior (both on the model's input grid), map the current lesions into the
    prior's frame and match them to the prior's lesions (pure; seconds of CPU for a chest CT)."""
    result = register_rigid(prior_grid, current_grid)
    to_prior = np.linalg.inv(result.matrix)  # result.matrix maps prior-frame points onto follow-up points
    moved = [_moved(c, to_prior) for c in found]
    priors = [p.candidate for p in prior.findings]
    by_centre = {p.candidate.centre_mm: p.finding_id for p in prior.findings}
    by_lesion = {id(change.current): change for change in compare(moved, priors, days, max_distance_mm)}
    changes, prior_ids = [], []
    for original, in_prior in zip(found, moved, strict=True):
        change = by_lesion[id(in_prior)]  # compare() orders by volume; report in the findings' order
        changes.append(
            Change(original, change.prior, change.distance_mm, change.volume_change_pct, change.doubling_time_days)
        )
        prior_ids.append(by_centre.get(change.prior.centre_mm) if change.prior else None)
    return Comparison(prior, days, changes, prior_ids, result.metric, result.translation_mm)


def _moved(c: Candidate, to_prior: np.ndarray) -> Candidate:
    point = to_prior @ np.array([*c.centre_mm, 1.0])
    return Candidate(
        (float(point[0]), float(point[1]), float(point[2])),
        c.centre_voxel,
        c.volume_ml,
        c.diameter_mm,
        c.max_extent_mm,
        c.confidence,
        c.voxels,
    )
