"""Trial-matching service: every patient event may change who is eligible for which trial.

medstream.fhir.events.v1 --> per-patient timeline (faust table) --> re-evaluate only the criteria the event touched,
    for every trial --> where a patient-trial verdict changed:
        medstream.trials.matches.v1 (per-criterion verdicts with evidence, score, unmet, unknown)
        medstream.graph.mutations.v1 ((:Patient)-[:ELIGIBLE_FOR {score, unmet, unknown}]->(:Trial))
        medstream.fhir.writeback.v1 (a FHIR ResearchSubject, status candidate, for the coordinator's EHR)
medstream.trials.protocols.v1 (new or amended protocol, one copy per partition) --> parse its criteria once per
    version --> re-match the patients of that partition against it

Protocols are few: every instance reads the whole protocols topic at start and keeps the parsed trials in memory.
A protocol record arrives on every partition, so the instance that holds a partition's patients re-matches them
after an amendment; the record is committed only after their new state is written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import fhir_pb2, research_pb2
from prometheus_client import Counter, Histogram

from services.common.config import Settings, get_settings
from services.common.deadletter import VALIDATION_ERROR
from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.kafka import JsonDocument
from services.common.topic_reader import read_messages
from services.common.topics import FHIR_EVENTS, FHIR_WRITEBACK, GRAPH_MUTATIONS, TRIAL_MATCHES, TRIAL_PROTOCOLS
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step
from services.research.timeline import Timeline, event_resource, pack, unpack
from services.research.trials.criteria import ParsedTrial, parse_trial
from services.research.trials.matching import Match, match

SERVICE = "trial-matching"
MATCH_SCHEMA = "medstream.trials.match.v1"
MODEL = "trial-matcher"
_NAMESPACE = uuid.UUID("6f1d3c1e-4f9a-4b59-9a55-3b1f2f8b7d10")
log = logging.getLogger(__name__)
MATCHES = Counter("medstream_trial_matches_total", "Patient-trial verdicts published", ["service", "status"])
REMATCH_SECONDS = Histogram(
    "medstream_trial_rematch_seconds", "Re-matching one partition's patients after a protocol change", ["service"]
)


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`: the one its events and state live in."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


class Matches(MutableMapping[str, Match]):
    """Per trial, the last verdicts; a stored one is decoded only when read (an amendment reads one of ~40)."""

    def __init__(self, raw: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Match | Mapping[str, Any]] = dict(raw or {})

    def __getitem__(self, trial_id: str) -> Match:
        item = self._items[trial_id]
        if not isinstance(item, Match):
            item = self._items[trial_id] = Match.from_raw(item)
        return item

    def __setitem__(self, trial_id: str, match: Match) -> None:
        self._items[trial_id] = match

    def __delitem__(self, trial_id: str) -> None:
        del self._items[trial_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def to_raw(self) -> dict[str, Any]:
        return {k: m.to_raw() if isinstance(m, Match) else m for k, m in self._items.items()}


@dataclass
class PatientTrials:
    """What the service keeps per patient: the timeline and, per trial, the last verdicts published."""

    timeline: Timeline = field(default_factory=Timeline)
    matches: Matches = field(default_factory=Matches)
    listed: set[str] = field(default_factory=set)  # trials this patient was a candidate for (graph edge written)

    def to_json(self) -> str:
        raw = {"timeline": self.timeline.to_raw(), "matches": self.matches.to_raw(), "listed": sorted(self.listed)}
        return pack(json.dumps(raw, separators=(",", ":")))

    @classmethod
    def from_json(cls, stored: str | None) -> PatientTrials:
        text = unpack(stored)
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(Timeline.from_raw(raw["timeline"]), Matches(raw["matches"]), set(raw.get("listed", [])))


class Trials:
    """The parsed protocols, latest version of each; parsing (MiniLM concept lookup) happens once per version."""

    def __init__(self) -> None:
        self.parsed: dict[str, ParsedTrial] = {}

    def update(self, protocol: Mapping[str, Any]) -> ParsedTrial | None:
        """The parsed trial when `protocol` is new or newer than the one held, else None."""
        held = self.parsed.get(str(protocol["id"]))
        if held is not None and held.version >= int(protocol.get("version", 1)):
            return None
        parsed = parse_trial(protocol)
        self.parsed[parsed.trial_id] = parsed
        return parsed

    def load(self, messages: Iterable[research_pb2.TrialProtocol]) -> int:
        for msg in messages:
            self.update(json.loads(msg.protocol_json))
        return len(self.parsed)


def signature(m: Match) -> tuple[Any, ...]:
    """What a published verdict says; the same signature again is not republished."""
    return (m.version, m.eligible, round(m.score, 4), tuple(m.unmet), tuple(m.unknown), m.statuses())


def research_subject(patient_id: str, trial: ParsedTrial, status: str, now_ns: int) -> fhir_pb2.FhirResourceEvent:
    """A FHIR R4 ResearchSubject for the coordinator's EHR: `candidate`, or `ineligible` once excluded."""
    subject_id = str(uuid.uuid5(_NAMESPACE, f"{patient_id}|{trial.trial_id}"))
    resource = {
        "resourceType": "ResearchSubject",
        "id": subject_id,
        "status": status,
        "study": {"reference": f"ResearchStudy/{trial.trial_id}", "display": trial.title},
        "individual": {"reference": f"Patient/{patient_id}"},
    }
    body = json.dumps(resource, separators=(",", ":")).encode()
    received = Timestamp()
    received.FromNanoseconds(now_ns)
    return fhir_pb2.FhirResourceEvent(
        event_id=str(uuid.uuid5(_NAMESPACE, f"{subject_id}|{status}|{trial.version}")),
        resource_type="ResearchSubject",
        resource_id=subject_id,
        patient_reference=f"Patient/{patient_id}",
        operation=fhir_pb2.FHIR_OPERATION_UPDATE,
        resource_json=body,
        received_at=received,
    )


def match_document(patient_id: str, trial: ParsedTrial, m: Match) -> dict[str, Any]:
    """The match record's body: the verdicts with each criterion's section, type and source sentence, so a
    subscriber needs no copy of the parsed protocol."""
    body = m.document(patient_id)
    body["title"] = trial.title
    criteria = {c.id: c for c in trial.criteria}
    for verdict in body["verdicts"]:
        criterion = criteria.get(verdict["criterion_id"])
        if criterion is not None:
            verdict.update(section=criterion.section, type=criterion.type, text=criterion.text)
    return body


def match_outputs(patient_id: str, trial: ParsedTrial, m: Match, state: PatientTrials, now_ns: int) -> list[Output]:
    """While the patient is, or has been, a candidate (nothing rules them out): the match record, the graph edge and
    the ResearchSubject. A patient who never was one publishes nothing (most patient-trial pairs)."""
    key = patient_id.encode()
    candidate = not m.unmet
    out: list[Output] = []
    if candidate or trial.trial_id in state.listed:
        out.append((TRIAL_MATCHES.name, key, JsonDocument(MATCH_SCHEMA, match_document(patient_id, trial, m))))
        edge = Relationship(
            Node("Patient", patient_id),
            "ELIGIBLE_FOR",
            Node("Trial", trial.trial_id, {"title": trial.title, "version": trial.version}),
            {
                "score": round(m.score, 4),
                "unmet": len(m.unmet),
                "unknown": len(m.unknown),
                "open_criteria": "; ".join(m.unknown),
                "eligible": m.eligible,
                "candidate": candidate,
                "version": trial.version,
                "model": MODEL,
            },
        )
        mutation_id = str(uuid.uuid5(_NAMESPACE, f"{patient_id}|{trial.trial_id}|{signature(m)}"))
        out.append((GRAPH_MUTATIONS.name, key, to_mutation(mutation_id, [edge.end], [edge])))
        if candidate and trial.trial_id not in state.listed:
            out.append(
                (
                    FHIR_WRITEBACK.name,
                    f"Patient/{patient_id}".encode(),
                    research_subject(patient_id, trial, "candidate", now_ns),
                )
            )
            state.listed.add(trial.trial_id)
        elif not candidate:
            out.append(
                (
                    FHIR_WRITEBACK.name,
                    f"Patient/{patient_id}".encode(),
                    research_subject(patient_id, trial, "ineligible", now_ns),
                )
            )
            state.listed.discard(trial.trial_id)
    if out:
        MATCHES.labels(SERVICE, "candidate" if candidate else "excluded").inc()
    return out


def rematch(
    patient_id: str,
    state: PatientTrials,
    trials: Iterable[ParsedTrial],
    touched: frozenset[str] | None,
    now_ns: int,
) -> list[Output]:
    """Re-evaluate `state` against `trials`: only the touched criteria when the verdicts are for the same protocol
    version (None: everything); outputs for the patient-trial pairs whose verdict changed."""
    out: list[Output] = []
    for trial in trials:
        previous = state.matches.get(trial.trial_id)
        same_version = previous is not None and previous.version == trial.version
        m = match(trial, state.timeline, previous if same_version else None, touched if same_version else None)
        if previous is not None and signature(previous) == signature(m):
            state.matches[trial.trial_id] = m
            continue
        state.matches[trial.trial_id] = m
        out += match_outputs(patient_id, trial, m, state, now_ns)
    return out


def handle_patient_events(
    events: list[Accepted[fhir_pb2.FhirResourceEvent]],
    table: Mapping[str, str],
    trials: Trials,
) -> tuple[Step, list[tuple[Accepted[fhir_pb2.FhirResourceEvent], str]]]:
    """Fold a batch into the patients' timelines and re-match what it touched; also the events to dead-letter."""
    step, invalid = Step(), []
    by_patient: dict[str, list[tuple[fhir_pb2.FhirResourceEvent, dict[str, Any]]]] = defaultdict(list)
    for a in events:
        resource, problem = event_resource(a.message.resource_json, a.message.resource_type)
        if resource is None:
            invalid.append((a, problem))
        elif a.message.patient_reference:
            by_patient[a.message.patient_reference].append((a.message, resource))
    now = time.time_ns()
    for reference, items in by_patient.items():
        state = PatientTrials.from_json(table.get(reference))
        patient_id = reference.split("/", 1)[1]
        state.timeline.patient_id = state.timeline.patient_id or patient_id
        touched: set[str] = set()
        for msg, resource in items:
            touched |= state.timeline.fold(msg.resource_type, resource, msg.operation == fhir_pb2.FHIR_OPERATION_DELETE)
        if not touched and state.matches:
            continue  # a Claim, an Encounter, a repeat: nothing the trials read
        step.outputs += rematch(patient_id, state, trials.parsed.values(), frozenset(touched), now)
        step.state[reference] = state.to_json()
    return step, invalid


def handle_protocols(
    events: list[Accepted[research_pb2.TrialProtocol]],
    table: Mapping[str, str],
    trials: Trials,
    partitions: int,
) -> Step:
    """New or amended protocols: re-match the patients held for the partition each copy arrived on."""
    step = Step()
    for a in events:
        parsed = trials.update(json.loads(a.message.protocol_json))
        current = trials.parsed.get(a.message.trial_id)
        if current is None:
            continue
        if parsed is None and current.version > a.message.version:
            continue  # an older copy (a replay) of a protocol amended since
        started = time.perf_counter()
        now = time.time_ns()
        for reference, value in list(table.items()):
            if partition_of(reference, partitions) != a.record.partition:
                continue
            state = PatientTrials.from_json(value)
            previous = state.matches.get(current.trial_id)
            if previous is not None and previous.version == current.version:
                continue  # already matched against this version (a replayed record)
            step.outputs += rematch(reference.split("/", 1)[1], state, [current], None, now)
            step.state[reference] = state.to_json()
        REMATCH_SECONDS.labels(SERVICE).observe(time.perf_counter() - started)
    return step


def validate_protocol(msg: research_pb2.TrialProtocol) -> list[str]:
    try:
        doc = json.loads(msg.protocol_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"protocol_json is not JSON: {exc}"]
    problems = []
    if not isinstance(doc, dict) or doc.get("id") != msg.trial_id:
        problems.append("protocol_json.id must equal trial_id")
    elif not isinstance(doc.get("inclusion"), list) or not isinstance(doc.get("exclusion"), list):
        problems.append("protocol_json needs inclusion and exclusion lists of criteria")
    elif int(doc.get("version", 1)) != msg.version:
        problems.append("protocol_json.version must equal version")
    return problems


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (TRIAL_MATCHES, GRAPH_MUTATIONS, FHIR_WRITEBACK), read_committed=True)
    patients: MutableMapping[str, str] = worker.table("trial-patient-state")  # keyed "Patient/<id>"
    trials = Trials()
    lock = asyncio.Lock()  # both agents write the patients' state: one batch at a time, outputs and state together

    async def on_events(events: list[Accepted[fhir_pb2.FhirResourceEvent]]) -> Step:
        step, invalid = handle_patient_events(events, patients, trials)
        for a, problem in invalid:
            await worker.shell.dead_letters.publish(a.record, VALIDATION_ERROR, problem)
        return step

    async def on_protocols(events: list[Accepted[research_pb2.TrialProtocol]]) -> Step:
        return handle_protocols(events, patients, trials, settings.kafka_topic_partitions)

    worker.batches(
        FHIR_EVENTS,
        Intake(fhir_pb2.FhirResourceEvent),
        on_events,
        batch_max=512,
        within_s=0.05,
        table=patients,
        around=lambda: lock,
    )
    worker.batches(
        TRIAL_PROTOCOLS,
        Intake(research_pb2.TrialProtocol, validate_protocol),
        on_protocols,
        batch_max=8,
        within_s=0.05,
        table=patients,
        around=lambda: lock,
    )

    def load_protocols() -> None:
        loaded = trials.load(read_messages(settings, TRIAL_PROTOCOLS.name, research_pb2.TrialProtocol, timeout_s=30))
        log.info("trial protocols loaded", extra={"trials": loaded})

    worker.before_run.append(load_protocols)
    return worker


def main() -> None:
    build(get_settings()).run({})
