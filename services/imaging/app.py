"""Imaging service: DICOM instance arrivals in; findings, reports, alerts and graph updates out.

Assembly: medstream.dicom.instances.v1 --> per-series state (faust table) --(expected count reached, or quiet
    period)--> medstream.dicom.series.v1 (one record per revision), medstream.graph.mutations.v1
    (Patient-Study-Series-Instance, MERGEd on UIDs), dead letters for undecodable or incomplete claim checks.
Analysis: medstream.dicom.series.v1 (routed: CT chest -> lung_nodule, MR brain -> stroke_lesion) --> blobs ->
    preprocessing -> 3D U-Net on Triton (patches, dynamically batched) -> lesion candidates -->
    medstream.findings.v1, medstream.alerts.v1 (suspected stroke), medstream.fhir.writeback.v1
    (DiagnosticReport + Observations), medstream.graph.mutations.v1, dead letters for unreadable series.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, dicom_pb2
from prometheus_client import Counter, Histogram
from tritonclient.utils import InferenceServerException

from services.common.blobs import blob_store
from services.common.config import get_settings
from services.common.deadletter import PROCESSING_ERROR, DeadLetters, SourceRecord
from services.common.graph import TRANSIENT_ERRORS, Graph, Node, Relationship
from services.common.graph_events import to_mutation
from services.common.kafka import FaustOutputs, Record, make_faust_app, run_faust_worker
from services.common.service import retry_until_done
from services.common.telemetry import PROCESSING_SECONDS
from services.common.topics import (
    ALERTS,
    DEAD_LETTERS,
    DICOM_INSTANCES,
    DICOM_SERIES,
    FHIR_WRITEBACK,
    FINDINGS,
    GRAPH_MUTATIONS,
)
from services.common.triton import TritonUnavailable, triton_client
from services.imaging.analysis import ROUTES, SeriesUnreadable, Services, analyse
from services.imaging.series import (
    COLLECTING,
    Arrival,
    Completed,
    SeriesState,
    add,
    compact,
    complete,
    due,
    expired,
    route,
)

SERVICE = "imaging"
BATCH_MAX, BATCH_WITHIN_S = 256, 0.2
COMPLETIONS = Counter("medstream_imaging_series_completed_total", "Series completed", ["service", "reason", "route"])

settings = get_settings()
app = make_faust_app(SERVICE, settings)
arrivals_in = app.topic(DICOM_INSTANCES.name, key_serializer="raw", value_serializer="raw")
series_in = app.topic(DICOM_SERIES.name, key_serializer="raw", value_serializer="raw")
outputs = FaustOutputs(app, SERVICE, (DICOM_SERIES, GRAPH_MUTATIONS, DEAD_LETTERS, FINDINGS, ALERTS, FHIR_WRITEBACK))
triton = triton_client(settings, SERVICE)
graph = Graph.connect(settings)  # reads prior studies; writes go through medstream.graph.mutations.v1
analysis_services = Services(triton, graph, blob_store(settings), settings)
ANALYSIS_SECONDS = Histogram(
    "medstream_imaging_analysis_seconds", "Series analysis time by stage", ["service", "route", "stage"]
)
# Per-series assembly state, recovered from its changelog after a restart; keyed like the input topic.
series_table = app.Table("imaging-series-state", key_type=str, value_type=str, use_partitioner=True)
dead_letters = DeadLetters(SERVICE, lambda key, letter: outputs.send(DEAD_LETTERS.name, key, letter))
# The agent and the timer both read-modify-write series states across awaits: one at a time.
state_lock = asyncio.Lock()
# Series of this worker still collecting -> when it last consumed one of their instances (unix s; see `track`):
# the quiet-period timer checks only these.
# Rebuilt from the table by a periodic sweep (after recovery or a rebalance), kept current by the agent.
collecting: dict[str, float] = {}
SWEEP_EVERY_S = 60.0
last_sweep = 0.0
# Series revisions this process is analysing / has published. A rebalance while an analysis waits for Triton
# or Neo4j redelivers its record (to this or another actor): without these the same outputs would be published
# twice (same ids, so the graph would not change, but subscribers would see repeats). Across processes the
# delivery stays at-least-once with deterministic ids.
in_flight: dict[tuple[str, int], asyncio.Future[None]] = {}
published: OrderedDict[tuple[str, int], None] = OrderedDict()
PUBLISHED_MEMORY = 4096
REQUIRED = ("sop_instance_uid", "series_instance_uid", "study_instance_uid", "sop_class_uid", "blob_uri", "sha256")


def validate(msg: dicom_pb2.DicomInstanceArrival) -> list[str]:
    missing = [name for name in REQUIRED if not getattr(msg, name)]
    return [f"{', '.join(missing)} required"] if missing else []


def to_arrival(msg: dicom_pb2.DicomInstanceArrival) -> Arrival:
    received = msg.received_at.ToNanoseconds() / 1e9 if msg.HasField("received_at") else time.time()
    return Arrival(
        msg.series_instance_uid, msg.study_instance_uid, msg.sop_instance_uid, msg.sop_class_uid, msg.patient_id,
        msg.modality, msg.body_part_examined.upper(), msg.instance_number, msg.blob_uri, msg.sha256, received,
        msg.expected_instances_in_series,
    )  # fmt: skip


def graph_upserts(arrival: Arrival) -> list[Relationship]:
    """Patient-Study-Series-Instance, keyed by the patient id and the DICOM UIDs: a re-sent series adds nothing."""
    study = Node("Study", arrival.study_instance_uid)
    series = Node("Series", arrival.series_instance_uid, {"modality": arrival.modality, "body_part": arrival.body_part})
    instance = Node("Instance", arrival.sop_instance_uid, {
        "instance_number": arrival.instance_number, "sop_class_uid": arrival.sop_class_uid,
        "blob_uri": arrival.blob_uri})  # fmt: skip
    rels = [Relationship(study, "HAS_SERIES", series), Relationship(series, "HAS_INSTANCE", instance)]
    if arrival.patient_id:
        rels.insert(0, Relationship(Node("Patient", arrival.patient_id), "HAS_STUDY", study))
    return rels


def completion_record(done: Completed) -> tuple[str, bytes, Record]:
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
        route=route(done.modality, done.body_part) or "",
        completed_at=now,
    )
    COMPLETIONS.labels(SERVICE, done.reason, msg.route or "none").inc()
    return DICOM_SERIES.name, done.series_instance_uid.encode(), msg


async def complete_due(states: dict[str, SeriesState], now: float) -> list[tuple[str, bytes | None, Record]]:
    records: list[tuple[str, bytes | None, Record]] = []
    for state in states.values():
        reason = due(state, now, settings.imaging_quiet_s)
        if reason is not None:
            records.append(completion_record(complete(state, reason)))
    return records


@app.agent(arrivals_in)
async def assemble(stream):  # type: ignore[no-untyped-def]
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        async with state_lock:
            await assemble_batch(events)


async def assemble_batch(events: list[Any]) -> None:
    started = time.perf_counter()
    states: dict[str, SeriesState] = {}
    records: list[tuple[str, bytes | None, Record]] = []
    for event in events:
        record = SourceRecord.from_faust(event)
        msg = await dead_letters.accept(record, dicom_pb2.DicomInstanceArrival, validate)
        if msg is None:
            continue
        arrival = to_arrival(msg)
        uid = arrival.series_instance_uid
        state = states.get(uid) or SeriesState.from_json(series_table.get(uid))
        if add(state, arrival):
            provenance = common_pb2.Provenance(
                producer=SERVICE, source_event_id=arrival.sop_instance_uid, source_topic=record.topic,
                source_partition=record.partition, source_offset=record.offset,
            )  # fmt: skip
            mutation = to_mutation(f"{SERVICE}:{arrival.sop_instance_uid}:{arrival.sha256}", (),
                                   graph_upserts(arrival), provenance)  # fmt: skip
            records.append((GRAPH_MUTATIONS.name, uid.encode(), mutation))
        states[uid] = state
    records += await complete_due(states, time.time())  # an expected count can complete at once
    await outputs.send_all(records)
    for uid, state in states.items():
        series_table[uid] = state.to_json()
        track(uid, state, time.time())
    if events:
        PROCESSING_SECONDS.labels(SERVICE, DICOM_INSTANCES.name).observe((time.perf_counter() - started) / len(events))


@app.timer(interval=1.0)
async def quiet_periods() -> None:
    """Complete the series whose quiet period has passed (the table holds this worker's partitions only)."""
    async with state_lock:
        await complete_quiet()


def track(uid: str, state: SeriesState, consumed_at: float) -> None:
    """Index a series still collecting by when this worker last consumed an instance of it: after a restart or a
    rebalance the backlog of its instances is read before its quiet period can end (the senders' timestamps
    alone would count the downtime as quiet)."""
    if state.status == COLLECTING and state.instances:
        collecting[uid] = max(state.last_seen, consumed_at)
    else:
        collecting.pop(uid, None)


async def complete_quiet() -> None:
    global last_sweep
    now = time.time()
    if now - last_sweep >= SWEEP_EVERY_S:
        last_sweep = now
        sweep(now)
    quiet = [uid for uid, last_seen in collecting.items() if now - last_seen >= settings.imaging_quiet_s]
    states = {}
    for uid in quiet:
        state = SeriesState.from_json(series_table.get(uid))
        if state.status == COLLECTING and state.instances:
            states[uid] = state
        else:
            collecting.pop(uid, None)  # completed elsewhere, or its partition moved to another worker
    records = await complete_due(states, now)
    if not records:
        return
    await outputs.send_all(records)  # outputs first: a crash here republishes the same (series, revision)
    for _, key, _ in records:
        uid = (key or b"").decode()
        series_table[uid] = states[uid].to_json()
        track(uid, states[uid], now)


def sweep(now: float) -> None:
    """Once a minute: rebuild the collecting index from the table (this worker's partitions, after recovery or a
    rebalance) and compact completed series past retention. A series first seen here gets a full quiet period."""
    known = dict(collecting)
    collecting.clear()
    for uid, text in list(series_table.items()):
        state = SeriesState.from_json(text)
        if expired(state, now, settings.imaging_state_retention_s):
            compact(state)
            series_table[uid] = state.to_json()
        track(uid, state, known.get(uid, now))


def validate_series(msg: dicom_pb2.DicomSeriesComplete) -> list[str]:
    problems = []
    if not msg.series_instance_uid or not msg.instances:
        problems.append("series_instance_uid and instances are required")
    if msg.route and msg.route not in ROUTES:
        problems.append(f"unknown route {msg.route!r}")
    return problems


@app.agent(series_in, concurrency=2)
async def analyse_series(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        record = SourceRecord.from_faust(event)
        msg = await dead_letters.accept(record, dicom_pb2.DicomSeriesComplete, validate_series)
        if msg is None or not msg.route:
            continue  # no analysis applies (e.g. an abdominal CT): assembled and recorded in the graph only
        revision = (msg.series_instance_uid, msg.revision)
        if revision in published:
            continue  # redelivered after a rebalance, already published by this process
        if revision in in_flight:
            # Redelivered (a rebalance during a long wait) while this process is still analysing it: the first
            # analysis publishes; this one waits for it so that its offset is not committed before.
            await asyncio.shield(in_flight[revision])
            continue
        in_flight[revision] = asyncio.get_running_loop().create_future()
        try:
            await analyse_and_publish(record, msg)
            published[revision] = None
            while len(published) > PUBLISHED_MEMORY:
                published.popitem(last=False)
        finally:
            in_flight.pop(revision).set_result(None)


async def analyse_and_publish(record: SourceRecord, msg: dicom_pb2.DicomSeriesComplete) -> None:
    try:
        # Triton, Neo4j or the blob store down: wait and retry; the offset is not committed until the outputs
        # are acked.
        result, timings = await retry_until_done(
            partial(analyse, analysis_services, msg),
            "triton/neo4j/blobs",
            retry_on=(TritonUnavailable, *TRANSIENT_ERRORS, OSError),
        )
    except SeriesUnreadable as exc:
        await dead_letters.publish(record, PROCESSING_ERROR, f"series unreadable: {exc}")
        return
    except InferenceServerException as exc:
        # The model refused the request itself (missing model, shape mismatch): no retry can fix it; the
        # series goes to the dead-letter topic for a replay once the model is fixed.
        await dead_letters.publish(record, PROCESSING_ERROR, f"{msg.route} model refused: {exc.message()}")
        return
    for stage, seconds in timings.items():
        if stage != "patches":
            ANALYSIS_SECONDS.labels(SERVICE, msg.route, stage).observe(seconds)
    key = (msg.patient_id or msg.series_instance_uid).encode()
    records: list[tuple[str, bytes | None, Record]] = [(FINDINGS.name, key, f) for f in result.findings]
    records += [(ALERTS.name, key, a) for a in result.alerts]
    records += [(FHIR_WRITEBACK.name, result.report.patient_reference.encode(), result.report)]
    records += [(GRAPH_MUTATIONS.name, key, result.mutation)]
    await outputs.send_all(records)


def main() -> None:
    run_faust_worker(app, SERVICE, settings, {"triton": triton.ready, "neo4j": graph.ready})
