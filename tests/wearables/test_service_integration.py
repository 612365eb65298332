"""The wearables service on the real stack: windows, rules and write-back, through a worker crash."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, fhir_pb2, wearable_pb2

from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import ALERTS, FHIR_WRITEBACK, WEARABLE_SAMPLES
from services.wearables.pipeline import PatientState, step
from tests.conftest import ServiceProcess, unique, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(local_stack) -> Iterator[ServiceProcess]:
    proc = ServiceProcess("wearables", 18083, local_stack.state_dir / "logs").start()
    wait_for(proc.ready, 90, what="wearables /readyz")
    yield proc
    proc.stop()


def heart_stream(patient: str, start: float, minutes: int, tachy: tuple[int, int]) -> list[wearable_pb2.WearableSample]:
    out = []
    for i in range(0, minutes * 60, 10):
        minute = i // 60
        hr = 135.0 if tachy[0] <= minute < tachy[1] else 70.0 + (i % 50) / 10
        ts = Timestamp()
        ts.FromNanoseconds(int((start + i) * 1e9))
        out.append(
            wearable_pb2.WearableSample(
                device_id=f"{patient}-band",
                patient_id=patient,
                metric="heart_rate",
                loinc_code="8867-4",
                unit="/min",
                value=hr,
                effective_time=ts,
            )
        )
    return out


def expected(streams: dict[str, list[wearable_pb2.WearableSample]]) -> tuple[set[str], set[str]]:
    """What the pure pipeline yields for the same samples in one pass: the oracle for the service."""
    observations, alerts = set(), set()
    for patient, samples in streams.items():
        out = step(PatientState(), patient, samples, time.time())
        observations |= {o.resource_id for o in out.observations}
        alerts |= {a.alert_id for a in out.alerts}
    return observations, alerts


def publish(settings, streams: dict[str, list[wearable_pb2.WearableSample]], chunk: int, part: slice) -> None:
    producer = EventProducer(settings, "test")
    for patient, samples in streams.items():
        mine = samples[part]
        for i in range(0, len(mine), chunk):
            batch = wearable_pb2.WearableSampleBatch(
                vendor_id="acme", idempotency_key=f"{patient}-{i}", samples=mine[i : i + chunk]
            )
            producer.send_sync(WEARABLE_SAMPLES.name, patient.encode(), batch)
    producer.close()


def test_worker_crash_loses_no_window_and_raises_no_alert_twice(local_stack, worker):
    run = unique("wear")
    start = (time.time() // 3600 - 4) * 3600  # four hours ago, on the hour
    streams = {f"{run}-p{i}": heart_stream(f"{run}-p{i}", start, 150, (30 + 10 * i, 75 + 10 * i)) for i in range(4)}
    want_obs, want_alerts = expected(streams)
    assert want_obs and len(want_alerts) == 8  # an alert and an escalation per patient

    before = {t: end_offsets(local_stack, t) for t in (ALERTS.name, FHIR_WRITEBACK.name)}

    def observations() -> list[fhir_pb2.FhirResourceEvent]:
        return [
            o
            for o in read_messages(
                local_stack, FHIR_WRITEBACK.name, fhir_pb2.FhirResourceEvent, before[FHIR_WRITEBACK.name]
            )
            if o.patient_reference.startswith(f"Patient/{run}")
        ]

    def alerts() -> list[alert_pb2.Alert]:
        return [
            a
            for a in read_messages(local_stack, ALERTS.name, alert_pb2.Alert, before[ALERTS.name])
            if a.patient_id.startswith(run)
        ]

    half = len(next(iter(streams.values()))) // 2
    publish(local_stack, streams, 30, slice(0, half))
    wait_for(lambda: len(observations()) > 0, 90, what="first hourly observations")
    worker.kill()  # SIGKILL mid-stream
    publish(local_stack, streams, 30, slice(half, None))
    worker.start()
    wait_for(worker.ready, 90, what="worker back")
    wait_for(lambda: {o.resource_id for o in observations()} >= want_obs, 180, what="every hourly window")

    got_obs = observations()
    assert {o.resource_id for o in got_obs} == want_obs  # no window lost, none invented
    resource = json.loads(got_obs[0].resource_json)
    assert resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] == "8867-4"
    got_alerts = alerts()
    assert {a.alert_id for a in got_alerts} == want_alerts
    assert len(got_alerts) == len(want_alerts), "an alert was published twice"
    assert {a.kind for a in got_alerts} == {"tachycardia"}
