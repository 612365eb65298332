"""The gateway against real Kafka: acknowledged means durable, retries neither lose nor duplicate, gRPC and HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from medstream.events.v1 import wearable_pb2
from medstream.ingest.v1 import wearables_pb2, wearables_pb2_grpc

from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import WEARABLE_SAMPLES
from tests.conftest import ServiceProcess, unique, wait_for

pytestmark = pytest.mark.integration
HTTP_PORT, GRPC_PORT = 18090, 18091
AUTH = {"Authorization": "Bearer dev-acme-token"}


@pytest.fixture(scope="module")
def gateway(local_stack) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        "wearables-gateway",
        HTTP_PORT,
        local_stack.state_dir / "logs",
        {"MEDSTREAM_WEARABLES_GRPC_PORT": str(GRPC_PORT)},
    ).start()
    wait_for(proc.ready, 60, what="gateway ready")
    yield proc
    proc.stop()


def readings(device: str, n: int, start_ms: int | None = None) -> list[dict]:
    start = start_ms or int(datetime.now(UTC).timestamp() * 1000) - n * 1000
    return [{"device": device, "ts": start + 1000 * i, "hr": 60 + i % 30} for i in range(n)]


def samples_for(settings, patient: str, since) -> list[wearable_pb2.WearableSample]:
    return [
        s
        for b in read_messages(settings, WEARABLE_SAMPLES.name, wearable_pb2.WearableSampleBatch, since)
        for s in b.samples
        if s.patient_id == patient
    ]


def post(batch: dict) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{HTTP_PORT}/v1/wearables/batches", json=batch, headers=AUTH, timeout=30)


def test_http_batch_is_in_kafka_when_acknowledged(local_stack, gateway):
    run = unique("gw")
    before = end_offsets(local_stack, WEARABLE_SAMPLES.name)
    batch = {"idempotency_key": run, "device_type": "acme-band-2", "readings": readings("acme-sim-" + run, 50)}
    answer = post(batch).json()
    assert answer["accepted"] == 50 and answer["rejected"] == []
    # no waiting: the 200 was sent after acks=all
    got = samples_for(local_stack, "sim-pt-" + run, before)
    assert len(got) == 50 and {s.metric for s in got} == {"heart_rate"} and got[0].loinc_code == "8867-4"


def test_retry_after_gateway_restart_is_not_published_twice(local_stack, gateway):
    run = unique("gw")
    before = end_offsets(local_stack, WEARABLE_SAMPLES.name)
    batch = {"idempotency_key": run, "device_type": "acme-band-2", "readings": readings("acme-sim-" + run, 20)}
    assert post(batch).json()["accepted"] == 20
    gateway.kill()  # the vendor timed out and retries, meanwhile the gateway crashed and came back
    gateway.start()
    wait_for(gateway.ready, 60, what="gateway back")
    again = post(batch).json()
    assert again["duplicate"] is True and again["accepted"] == 20
    assert len(samples_for(local_stack, "sim-pt-" + run, before)) == 20


def test_grpc_client_streaming(local_stack, gateway):
    run = unique("grpc")
    before = end_offsets(local_stack, WEARABLE_SAMPLES.name)

    def request(key: str, rows: list[dict]) -> wearables_pb2.StreamBatchesRequest:
        structs = []
        for r in rows:
            s = struct_pb2.Struct()
            s.update(r)
            structs.append(s)
        return wearables_pb2.StreamBatchesRequest(idempotency_key=key, device_type="acme-band-2", readings=structs)

    async def stream(token: str) -> wearables_pb2.StreamBatchesResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
            stub = wearables_pb2_grpc.WearableIngestServiceStub(channel)
            rows = readings("acme-sim-" + run, 30)
            bad = [{"device": "acme-sim-" + run, "ts": rows[0]["ts"], "hr": 900}]

            async def batches():
                yield request(f"{run}-1", rows[:15])
                yield request(f"{run}-2", rows[15:] + bad)
                yield request(f"{run}-1", rows[:15])  # a retried batch inside the stream

            return await stub.StreamBatches(batches(), metadata=(("authorization", f"Bearer {token}"),))

    response = asyncio.run(stream("dev-acme-token"))
    assert [(r.accepted, r.duplicate) for r in response.results] == [(15, False), (15, False), (15, True)]
    assert "outside" in response.results[1].rejections[0].reason
    assert len(samples_for(local_stack, "sim-pt-" + run, before)) == 30
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        asyncio.run(stream("wrong-token"))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
