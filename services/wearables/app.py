"""Wearables service: normalised samples in; alerts, hourly FHIR Observations and graph updates out.

medstream.wearables.samples.v1 --> per-patient state (faust table) --> 1-min / 1-h / 7-day windows
    --> rules (tachy/brady/desaturation/hypo/hyperglycaemia) and glycaemia_risk on Triton
    --> medstream.alerts.v1, medstream.fhir.writeback.v1, medstream.graph.mutations.v1, dead letters
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from google.protobuf.message import Message
from medstream.events.v1 import common_pb2, wearable_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.common.config import get_settings
from services.common.deadletter import DeadLetters, SourceRecord
from services.common.kafka import FaustOutputs, make_faust_app, run_faust_worker
from services.common.service import retry_until_done
from services.common.telemetry import (
    PROCESSING_SECONDS,
)
from services.common.topics import ALERTS, DEAD_LETTERS, FHIR_WRITEBACK, GRAPH_MUTATIONS, WEARABLE_SAMPLES
from services.common.triton import TritonUnavailable, triton_client
from services.wearables.pipeline import PatientState, ScoreRequest, StepOutput, apply_risk, step

SERVICE = "wearables"
log = logging.getLogger(__name__)
MODEL_FAILURES = Counter("medstream_model_failures_total", "Inference requests Triton refused", ["service", "model"])
MODEL_NAME = "glycaemia_risk"
BATCH_MAX, BATCH_WITHIN_S = 256, 0.2

settings = get_settings()
app = make_faust_app(SERVICE, settings)
samples_in = app.topic(WEARABLE_SAMPLES.name, key_serializer="raw", value_serializer="raw")
outputs = FaustOutputs(app, SERVICE, (ALERTS, FHIR_WRITEBACK, GRAPH_MUTATIONS, DEAD_LETTERS))
# Per-patient window, feature and episode state; recovered from its changelog topic after a restart.
# Written after each batch (outside per-event iteration), so the changelog partition comes from the key's
# partitioner: murmur2 like the producers of the samples topic, which keeps state and input co-partitioned.
patients = app.Table("wearables-patient-state", key_type=str, value_type=str, use_partitioner=True)
triton = triton_client(settings, SERVICE)


dead_letters = DeadLetters(SERVICE, lambda key, letter: outputs.send(DEAD_LETTERS.name, key, letter))


def validate(batch: wearable_pb2.WearableSampleBatch) -> list[str]:
    problems = []
    if not batch.samples:
        problems.append("batch has no samples")
    for i, s in enumerate(batch.samples):
        if not s.patient_id or not s.metric or not s.HasField("effective_time"):
            problems.append(f"sample {i}: patient_id, metric and effective_time are required")
            break
    if len({s.patient_id for s in batch.samples}) > 1:
        problems.append("samples of more than one patient in one batch")
    return problems


async def score(requests: list[tuple[str, ScoreRequest]]) -> tuple[list[float], common_pb2.ModelRef]:
    import numpy as np

    x = np.array([r.glucose for _, r in requests], dtype=np.float32)

    async def call() -> tuple[list[float], common_pb2.ModelRef]:
        risk, version = await triton.infer_rows(MODEL_NAME, "CGM", x, "RISK")
        return [float(v) for v in risk[:, 0]], common_pb2.ModelRef(name=MODEL_NAME, version=version)

    return await retry_until_done(call, "triton", retry_on=(TritonUnavailable, OSError))


def collect(out: StepOutput, key: bytes, records: list[tuple[str, bytes | None, Message]]) -> None:
    records += [(ALERTS.name, key, a) for a in out.alerts]
    records += [(FHIR_WRITEBACK.name, o.patient_reference.encode(), o) for o in out.observations]
    records += [(GRAPH_MUTATIONS.name, key, m) for m in out.mutations]


@app.agent(samples_in)
async def process(stream):  # type: ignore[no-untyped-def]
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        started = time.perf_counter()
        per_patient: dict[str, list[wearable_pb2.WearableSample]] = defaultdict(list)
        for event in events:
            batch = await dead_letters.accept(
                SourceRecord.from_faust(event), wearable_pb2.WearableSampleBatch, validate
            )
            if batch is not None:
                per_patient[batch.samples[0].patient_id].extend(batch.samples)
        now = time.time()
        records: list[tuple[str, bytes | None, Message]] = []
        pending_scores: list[tuple[str, ScoreRequest]] = []
        states: dict[str, PatientState] = {}
        for patient_id, samples in per_patient.items():
            state = PatientState.from_json(patients.get(patient_id))
            out = step(state, patient_id, samples, now)
            collect(out, patient_id.encode(), records)
            pending_scores += [(patient_id, r) for r in out.score_requests]
            states[patient_id] = state
        if pending_scores:
            try:
                risks, model = await score(pending_scores)
            except InferenceServerException as exc:
                # The request itself is wrong (a model/config mismatch): no retry can fix it. Rules still ran;
                # the model's alerts are skipped for this batch and the failure is counted and logged.
                MODEL_FAILURES.labels(SERVICE, MODEL_NAME).inc()
                log.error("model request refused", extra={"model": MODEL_NAME, "error": str(exc.message())[:300]})
                pending_scores, risks, model = [], [], common_pb2.ModelRef()
            for (patient_id, request), risk in zip(pending_scores, risks, strict=True):
                collect(
                    apply_risk(states[patient_id], patient_id, request, risk, model, now), patient_id.encode(), records
                )
        await outputs.send_all(records)
        for patient_id, state in states.items():
            patients[patient_id] = state.to_json()
        if events:
            PROCESSING_SECONDS.labels(SERVICE, WEARABLE_SAMPLES.name).observe(
                (time.perf_counter() - started) / len(events)
            )


def main() -> None:
    run_faust_worker(app, SERVICE, settings, {"triton": lambda: triton.ready(MODEL_NAME)})
