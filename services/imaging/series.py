"""Series assembly (pure): DICOM instance arrivals grouped by SeriesInstanceUID until the series is complete.

A series is complete when the sender's announced instance count is reached, or when no new instance arrived
for a quiet period (mercure's series-completion timeout). An instance that arrives after completion opens a
new revision of the series: it is collected with the earlier instances and completes again (as revision 2, 3,
...), so late slices lead to a re-analysis instead of a crash or a silently partial result. A repeated
instance (same SOPInstanceUID and content hash) changes nothing.

The state is plain data (JSON) so the faust worker can keep it in a table and recover it after a restart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

COLLECTING, COMPLETE = "collecting", "complete"


@dataclass(slots=True)
class Instance:
    sop_instance_uid: str
    blob_uri: str
    sha256: str
    instance_number: int
    received_at: float  # unix seconds


@dataclass
class SeriesState:
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    modality: str = ""
    body_part: str = ""
    sop_class_uid: str = ""
    expected: int = 0  # instances the sender announced; 0 when unknown
    instances: dict[str, Instance] = field(default_factory=dict)  # SOPInstanceUID -> latest version
    first_seen: float = 0.0
    last_seen: float = 0.0
    status: str = COLLECTING
    revision: int = 0  # completions so far; the next completion publishes revision + 1
    completed_counts: list[int] = field(default_factory=list)  # instance count at each completion

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> SeriesState:
        if not text:
            return cls()
        raw = json.loads(text)
        raw["instances"] = {k: Instance(**v) for k, v in raw["instances"].items()}
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class Arrival:
    """The fields of a DicomInstanceArrival that assembly needs."""

    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str
    modality: str
    body_part: str
    instance_number: int
    blob_uri: str
    sha256: str
    received_at: float
    expected: int = 0


@dataclass(frozen=True, slots=True)
class Completed:
    """A series ready for analysis: which revision, and its instances in instance-number order."""

    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    body_part: str
    revision: int
    instances: tuple[Instance, ...]
    reason: str  # "expected-count" or "quiet-period"


def add(state: SeriesState, arrival: Arrival) -> bool:
    """Fold one arrival into its series' state; False when it changed nothing (a repeat)."""
    known = state.instances.get(arrival.sop_instance_uid)
    if known is not None and known.sha256 == arrival.sha256:
        return False
    if not state.series_instance_uid:
        state.series_instance_uid = arrival.series_instance_uid
        state.study_instance_uid = arrival.study_instance_uid
        state.patient_id = arrival.patient_id
        state.modality = arrival.modality
        state.body_part = arrival.body_part
        state.sop_class_uid = arrival.sop_class_uid
        state.first_seen = arrival.received_at
    state.instances[arrival.sop_instance_uid] = Instance(
        arrival.sop_instance_uid, arrival.blob_uri, arrival.sha256, arrival.instance_number, arrival.received_at
    )
    state.expected = max(state.expected, arrival.expected)
    state.last_seen = max(state.last_seen, arrival.received_at)
    if state.status == COMPLETE:
        state.status = COLLECTING  # a late instance: a new revision collects from here
    return True


def due(state: SeriesState, now: float, quiet_s: float) -> str | None:
    """Why the series completes now ("expected-count" / "quiet-period"), or None while it is still collecting."""
    if state.status != COLLECTING or not state.instances:
        return None
    if state.expected and len(state.instances) >= state.expected:
        return "expected-count"
    if now - state.last_seen >= quiet_s:
        return "quiet-period"
    return None


def expired(state: SeriesState, now: float, retention_s: float) -> bool:
    """A completed series whose instance list is past retention (see `compact`)."""
    return state.status == COMPLETE and bool(state.instances) and now - state.last_seen >= retention_s


def compact(state: SeriesState) -> None:
    """Forget a completed series' instances, keep its identity and revision count: the table stays small, and an
    instance arriving later still opens the next revision (with only the instances sent since)."""
    state.instances = {}
    state.expected = 0


def complete(state: SeriesState, reason: str) -> Completed:
    """Mark the series complete and describe the revision to analyse."""
    state.status = COMPLETE
    state.revision += 1
    state.completed_counts.append(len(state.instances))
    ordered = sorted(state.instances.values(), key=lambda i: (i.instance_number, i.sop_instance_uid))
    return Completed(
        state.series_instance_uid,
        state.study_instance_uid,
        state.patient_id,
        state.modality,
        state.body_part,
        state.revision,
        tuple(ordered),
        reason,
    )
