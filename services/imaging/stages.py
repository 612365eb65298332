"""The imaging worker's two stages over the shell: assembly (instances -> completed series revisions) and analysis
(a routed series -> findings, report, alert, graph). Their pure cores are series.py and analysis.py."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from functools import partial

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import dicom_pb2
from prometheus_client import Counter, Histogram
from tritonclient.utils import InferenceServerException

from services.common.deadletter import PROCESSING_ERROR, SourceRecord
from services.common.graph import TRANSIENT_ERRORS, Node, Relationship
from services.common.graph_events import to_mutation
from services.common.topics import ALERTS, DICOM_SERIES, FHIR_WRITEBACK, FINDINGS, GRAPH_MUTATIONS
from services.common.triton import TritonUnavailable
from services.common.worker import Accepted, Output, Shell, Step
from services.imaging.analysis import Dependencies, SeriesUnreadable, analyse
from services.imaging.routes import ROUTES, select
from services.imaging.series import COLLECTING, Arrival, Completed, SeriesState, add, compact, complete, due, expired

SERVICE = "imaging"
COMPLETIONS = Counter("medstream_imaging_series_completed_total", "Series completed", ["service", "reason", "route"])
ANALYSIS_SECONDS = Histogram(
    "medstream_imaging_analysis_seconds", "Series analysis time by stage", ["service", "route", "stage"]
)
REQUIRED = ("sop_instance_uid", "series_instance_uid", "study_instance_uid", "sop_class_uid", "blob_uri", "sha256")


def validate_arrival(msg: dicom_pb2.DicomInstanceArrival) -> list[str]:
    missing = [name for name in REQUIRED if not getattr(msg, name)]
    return [f"{', '.join(missing)} required"] if missing else []


def to_arrival(msg: dicom_pb2.DicomInstanceArrival) -> Arrival:
    received = msg.received_at.ToNanoseconds() / 1e9 if msg.HasField("received_at") else time.time()
    return Arrival(
        msg.series_instance_uid,
        msg.study_instance_uid,
        msg.sop_instance_uid,
        msg.sop_class_uid,
        msg.patient_id,
        msg.modality,
        msg.body_part_examined.upper(),
        msg.instance_number,
        msg.blob_uri,
        msg.sha256,
        received,
        msg.expected_instances_in_series,
    )


def graph_upserts(arrival: Arrival) -> list[Relationship]:
    """Patient-Study-Series-Instance, keyed by the patient id and the DICOM UIDs: a re-sent series adds nothing."""
    study = Node("Study", arrival.study_instance_uid)
    series = Node("Series", arrival.series_instance_uid, {"modality": arrival.modality, "body_part": arrival.body_part})
    instance = Node(
        "Instance",
        arrival.sop_instance_uid,
        {
            "instance_number": arrival.instance_number,
            "sop_class_uid": arrival.sop_class_uid,
            "blob_uri": arrival.blob_uri,
        },
    )
    rels = [Relationship(study, "HAS_SERIES", series), Relationship(series, "HAS_INSTANCE", instance)]
    if arrival.patient_id:
        rels.insert(0, Relationship(Node("Patient", arrival.patient_id), "HAS_STUDY", study))
    return rels


def completion_record(done: Completed) -> Output:
    now = Timestamp()
    now.GetCurrentTime()
    msg = dicom_pb2.DicomSeriesComplete(
        series_instance_uid=done.series_instance_uid,
        study_instance_uid=done.study_instance_uid,
        patient_id=done.patient_id,
        modality=done.modality,
        body_part_examined=done.body_part,
        revision=done.revision,
        instances=[
            dicom_pb2.DicomInstanceRef(
                sop_instance_uid=i.sop_instance_uid,
                blob_uri=i.blob_uri,
                sha256=i.sha256,
                instance_number=i.instance_number,
            )
            for i in done.instances
        ],
        completion_reason=done.reason,
        route=select(done.modality, done.body_part) or "",
        completed_at=now,
    )
    COMPLETIONS.labels(SERVICE, done.reason, msg.route or "none").inc()
    return DICOM_SERIES.name, done.series_instance_uid.encode(), msg


class Assembly:
    """Instances -> per-series state (table) -> a DicomSeriesComplete per revision, at the expected count or after
    the quiet period; Patient-Study-Series-Instance graph upserts on the way."""

    SWEEP_EVERY_S = 60.0

    def __init__(self, shell: Shell, table: MutableMapping[str, str], quiet_s: float, retention_s: float) -> None:
        self.shell, self.table, self.quiet_s, self.retention_s = shell, table, quiet_s, retention_s
        # The agent and the timer both read-modify-write series states across awaits: one at a time.
        self.lock = asyncio.Lock()
        # Series of this worker still collecting -> when it last consumed one of their instances (unix s; see
        # `track`): the quiet-period timer checks only these. Rebuilt from the table by a periodic sweep (after
        # recovery or a rebalance), kept current by the agent.
        self.collecting: dict[str, float] = {}
        self.last_sweep = 0.0

    async def handle(self, accepted: list[Accepted[dicom_pb2.DicomInstanceArrival]]) -> Step:
        states: dict[str, SeriesState] = {}
        step = Step()
        for a in accepted:
            arrival = to_arrival(a.message)
            uid = arrival.series_instance_uid
            state = states.get(uid) or SeriesState.from_json(self.table.get(uid))
            if add(state, arrival):
                mutation = to_mutation(
                    f"{SERVICE}:{arrival.sop_instance_uid}:{arrival.sha256}",
                    (),
                    graph_upserts(arrival),
                    a.record.provenance(SERVICE, arrival.sop_instance_uid),
                )
                step.outputs.append((GRAPH_MUTATIONS.name, uid.encode(), mutation))
            states[uid] = state
        now = time.time()
        step.outputs += self.complete_due(states, now)  # an expected count can complete at once
        step.state = {uid: state.to_json() for uid, state in states.items()}
        for uid, state in states.items():
            self.track(uid, state, now)
        return step

    def complete_due(self, states: dict[str, SeriesState], now: float) -> list[Output]:
        return [
            completion_record(complete(s, reason))
            for s in states.values()
            if (reason := due(s, now, self.quiet_s)) is not None
        ]

    def track(self, uid: str, state: SeriesState, consumed_at: float) -> None:
        """Index a series still collecting by when this worker last consumed an instance of it: after a restart or
        a rebalance the backlog of its instances is read before its quiet period can end (the senders' timestamps
        alone would count the downtime as quiet)."""
        if state.status == COLLECTING and state.instances:
            self.collecting[uid] = max(state.last_seen, consumed_at)
        else:
            self.collecting.pop(uid, None)

    async def complete_quiet(self) -> None:
        """Complete the series whose quiet period has passed (the table holds this worker's partitions only)."""
        now = time.time()
        if now - self.last_sweep >= self.SWEEP_EVERY_S:
            self.last_sweep = now
            self.sweep(now)
        states = {}
        for uid in [uid for uid, seen in self.collecting.items() if now - seen >= self.quiet_s]:
            state = SeriesState.from_json(self.table.get(uid))
            if state.status == COLLECTING and state.instances:
                states[uid] = state
            else:
                self.collecting.pop(uid, None)  # completed elsewhere, or its partition moved to another worker
        outputs = self.complete_due(states, now)
        if not outputs:
            return
        done = {(key or b"").decode() for _, key, _ in outputs}
        await self.shell.publish(Step(outputs, {uid: states[uid].to_json() for uid in done}), self.table)
        for uid in done:
            self.track(uid, states[uid], now)

    def sweep(self, now: float) -> None:
        """Rebuild the collecting index from the table (this worker's partitions, after recovery or a rebalance)
        and compact completed series past retention. A series first seen here gets a full quiet period."""
        known = dict(self.collecting)
        self.collecting.clear()
        for uid, text in list(self.table.items()):
            state = SeriesState.from_json(text)
            if expired(state, now, self.retention_s):
                compact(state)
                self.table[uid] = state.to_json()
            self.track(uid, state, known.get(uid, now))


def validate_series(msg: dicom_pb2.DicomSeriesComplete) -> list[str]:
    problems = []
    if not msg.series_instance_uid or not msg.instances:
        problems.append("series_instance_uid and instances are required")
    if msg.route and msg.route not in ROUTES:
        problems.append(f"unknown route {msg.route!r}")
    return problems


class Analysis:
    """A routed series revision -> its route's analysis -> findings, alert, report and graph upserts, published
    once per revision by this process."""

    PUBLISHED_MEMORY = 4096

    def __init__(self, shell: Shell, deps: Dependencies) -> None:
        self.shell, self.deps = shell, deps
        # A rebalance while an analysis waits for Triton or Neo4j redelivers its record (to this or another
        # actor): without these the same outputs would be published twice (same ids, so the graph would not
        # change, but subscribers would see repeats). Across processes delivery stays at-least-once with
        # deterministic ids.
        self.in_flight: dict[tuple[str, int], asyncio.Future[None]] = {}
        self.published: OrderedDict[tuple[str, int], None] = OrderedDict()

    async def handle(self, accepted: list[Accepted[dicom_pb2.DicomSeriesComplete]]) -> Step:
        for a in accepted:
            if a.message.route:  # no route (e.g. an abdominal CT): assembled and recorded in the graph only
                await self.once(a.record, a.message)
        return Step()  # published in `once`, before the revision counts as done

    async def once(self, record: SourceRecord, msg: dicom_pb2.DicomSeriesComplete) -> None:
        revision = (msg.series_instance_uid, msg.revision)
        if revision in self.published:
            return  # redelivered after a rebalance, already published by this process
        if revision in self.in_flight:
            # Redelivered while this process is still analysing it: the first analysis publishes; this one waits
            # for it so that its offset is not committed before.
            await asyncio.shield(self.in_flight[revision])
            return
        self.in_flight[revision] = asyncio.get_running_loop().create_future()
        try:
            await self.shell.publish(await self.analyse(record, msg))
            self.published[revision] = None
            while len(self.published) > self.PUBLISHED_MEMORY:
                self.published.popitem(last=False)
        finally:
            self.in_flight.pop(revision).set_result(None)

    async def analyse(self, record: SourceRecord, msg: dicom_pb2.DicomSeriesComplete) -> Step:
        try:
            # Triton, Neo4j or the blob store down: wait and retry; nothing is committed meanwhile.
            result, timings = await self.shell.call(
                partial(analyse, self.deps, msg),
                "triton/neo4j/blobs",
                retry_on=(TritonUnavailable, *TRANSIENT_ERRORS, OSError),
            )
        except SeriesUnreadable as exc:
            await self.shell.dead_letters.publish(record, PROCESSING_ERROR, f"series unreadable: {exc}")
            return Step()
        except InferenceServerException as exc:
            await self.shell.refuse([record], f"{msg.route} model", exc)
            return Step()
        for stage, seconds in timings.items():
            if stage != "patches":
                ANALYSIS_SECONDS.labels(SERVICE, msg.route, stage).observe(seconds)
        key = (msg.patient_id or msg.series_instance_uid).encode()
        outputs: list[Output] = [(FINDINGS.name, key, f) for f in result.findings]
        outputs += [(ALERTS.name, key, a) for a in result.alerts]
        outputs += [(FHIR_WRITEBACK.name, result.report.patient_reference.encode(), result.report)]
        outputs += [(GRAPH_MUTATIONS.name, key, result.mutation)]
        return Step(outputs)
