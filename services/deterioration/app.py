"""Deterioration-risk service: vital-sign snapshots in; findings, alerts and graph mutations out.

medstream.vitals.snapshots.v1 --> decode/validate --(bad)--> medstream.deadletter.v1
                               --> Triton deterioration_risk (batched)
                               --> medstream.findings.v1, medstream.alerts.v1, medstream.graph.mutations.v1
"""

from __future__ import annotations

import time

import numpy as np
from google.protobuf.message import Message
from medstream.events.v1 import common_pb2, vitals_pb2
from tritonclient.utils import InferenceServerException

from services.common.config import get_settings
from services.common.deadletter import PROCESSING_ERROR, DeadLetters, SourceRecord
from services.common.kafka import FaustOutputs, make_faust_app, run_faust_worker
from services.common.service import retry_until_done
from services.common.telemetry import (
    PROCESSING_SECONDS,
    child_traceparent,
    current_traceparent,
    traceparent_from_headers,
)
from services.common.topics import ALERTS, DEAD_LETTERS, FINDINGS, GRAPH_MUTATIONS, VITALS_SNAPSHOTS
from services.common.triton import TritonUnavailable, triton_client
from services.deterioration.assess import assess, to_vitals, validate
from services.deterioration.news2 import features
from services.deterioration.training import MODEL_NAME

SERVICE = "deterioration"
BATCH_MAX, BATCH_WITHIN_S = 64, 0.05

settings = get_settings()
app = make_faust_app(SERVICE, settings)
vitals_in = app.topic(VITALS_SNAPSHOTS.name, key_serializer="raw", value_serializer="raw")
outputs = FaustOutputs(app, SERVICE, (FINDINGS, ALERTS, GRAPH_MUTATIONS, DEAD_LETTERS))
triton = triton_client(settings, SERVICE)


dead_letters = DeadLetters(SERVICE, lambda key, letter: outputs.send(DEAD_LETTERS.name, key, letter))


async def score(batch: list[vitals_pb2.VitalSignsSnapshot]) -> tuple[np.ndarray, common_pb2.ModelRef]:
    x = np.stack([features(to_vitals(s)) for s in batch])

    async def call() -> tuple[np.ndarray, common_pb2.ModelRef]:
        risk, version = await triton.infer_rows(MODEL_NAME, "VITALS", x, "RISK")
        return risk[:, 0], common_pb2.ModelRef(name=MODEL_NAME, version=version)

    return await retry_until_done(call, "triton", retry_on=(TritonUnavailable, OSError))


@app.agent(vitals_in)
async def score_vitals(stream):  # type: ignore[no-untyped-def]
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        started = time.perf_counter()
        accepted: list[tuple[SourceRecord, vitals_pb2.VitalSignsSnapshot]] = []
        for event in events:
            record = SourceRecord.from_faust(event)
            snapshot = await dead_letters.accept(record, vitals_pb2.VitalSignsSnapshot, validate)
            if snapshot is not None:
                accepted.append((record, snapshot))
        if not accepted:
            continue
        try:
            risks, model = await score([s for _, s in accepted])
        except InferenceServerException as exc:
            # Triton refused the request itself (model/config mismatch): no retry can fix it, so the inputs go
            # to the dead-letter topic for a replay once the model is fixed.
            for record, _ in accepted:
                await dead_letters.publish(record, PROCESSING_ERROR, f"{MODEL_NAME} refused: {exc.message()}")
            continue
        results: list[tuple[str, bytes | None, Message]] = []
        for (record, snapshot), risk in zip(accepted, risks, strict=True):
            current_traceparent.set(child_traceparent(traceparent_from_headers(record.headers)))
            provenance = common_pb2.Provenance(
                producer=SERVICE,
                source_event_id=snapshot.snapshot_id,
                source_topic=record.topic,
                source_partition=record.partition,
                source_offset=record.offset,
            )
            result = assess(snapshot, float(risk), model, provenance)
            key = snapshot.patient_id.encode()
            results.append((FINDINGS.name, key, result.finding))
            if result.alert is not None:
                results.append((ALERTS.name, key, result.alert))
            results.append((GRAPH_MUTATIONS.name, key, result.mutation))
        await outputs.send_all(results)
        PROCESSING_SECONDS.labels(SERVICE, VITALS_SNAPSHOTS.name).observe((time.perf_counter() - started) / len(events))


def main() -> None:
    run_faust_worker(app, SERVICE, settings, {"triton": lambda: triton.ready(MODEL_NAME)})
