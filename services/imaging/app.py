"""Imaging service, first stage: DICOM instance arrivals in; completed, routed series and graph updates out.

medstream.dicom.instances.v1 --> per-series state (faust table) --(expected count reached, or quiet period)-->
    medstream.dicom.series.v1 (one record per revision), medstream.graph.mutations.v1
    (Patient-Study-Series-Instance, MERGEd on UIDs), dead letters for undecodable or incomplete claim checks.
The analysis stages (preprocessing, the 3D models on Triton, findings, reports) consume the series topic.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, dicom_pb2
from prometheus_client import Counter

from services.common.config import get_settings
from services.common.deadletter import DeadLetters, SourceRecord
from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.kafka import FaustOutputs, Record, make_faust_app, run_faust_worker
from services.common.telemetry import PROCESSING_SECONDS
from services.common.topics import DEAD_LETTERS, DICOM_INSTANCES, DICOM_SERIES, GRAPH_MUTATIONS
from services.imaging.series import Arrival, Completed, SeriesState, add, complete, due, route

SERVICE = "imaging"
BATCH_MAX, BATCH_WITHIN_S = 256, 0.2
COMPLETIONS = Counter("medstream_imaging_series_completed_total", "Series completed", ["service", "reason", "route"])

settings = get_settings()
app = make_faust_app(SERVICE, settings)
arrivals_in = app.topic(DICOM_INSTANCES.name, key_serializer="raw", value_serializer="raw")
outputs = FaustOutputs(app, SERVICE, (DICOM_SERIES, GRAPH_MUTATIONS, DEAD_LETTERS))
# Per-series assembly state, recovered from its changelog after a restart; keyed like the input topic.
series_table = app.Table("imaging-series-state", key_type=str, value_type=str, use_partitioner=True)
dead_letters = DeadLetters(SERVICE, lambda key, letter: outputs.send(DEAD_LETTERS.name, key, letter))
# The agent and the timer both read-modify-write series states across awaits: one at a time.
state_lock = asyncio.Lock()
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
    instance = Node("Instance", arrival.sop_instance_uid,
                    {"instance_number": arrival.instance_number, "sop_class_uid": arrival.sop_class_uid})  # fmt: skip
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
    if events:
        PROCESSING_SECONDS.labels(SERVICE, DICOM_INSTANCES.name).observe((time.perf_counter() - started) / len(events))


@app.timer(interval=1.0)
async def quiet_periods() -> None:
    """Complete the series whose quiet period has passed (the table holds this worker's partitions only)."""
    async with state_lock:
        await complete_quiet()


async def complete_quiet() -> None:
    collecting = {uid: SeriesState.from_json(text) for uid, text in list(series_table.items())}
    records = await complete_due(collecting, time.time())
    if not records:
        return
    await outputs.send_all(records)  # outputs first: a crash here republishes the same (series, revision)
    for _, key, _ in records:
        uid = (key or b"").decode()
        series_table[uid] = collecting[uid].to_json()


def main() -> None:
    run_faust_worker(app, SERVICE, settings, {})
