"""`make bench-wearables`: ingestion (HTTP vs gRPC), worker throughput vs a bare confluent-kafka consumer,
and sample-accepted-to-alert latency. Starts its own gateway and worker against the running local stack."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import grpc
import httpx
import numpy as np
from confluent_kafka import Consumer, TopicPartition
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, wearable_pb2
from medstream.ingest.v1 import wearables_pb2, wearables_pb2_grpc

from services.cli import stack
from services.common.config import Settings
from services.common.kafka import EventProducer, ensure_topics
from services.common.topic_reader import end_offsets
from services.common.topics import ALERTS, WEARABLE_SAMPLES

HTTP_PORT, GRPC_PORT, WORKER_PORT = 18180, 18181, 18182
AUTH = "Bearer dev-acme-token"


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name} | {value} | {note} |", flush=True)


def start(name: str, port: int, settings: Settings, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(settings.state_dir / "logs" / f"bench-{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", name],
        env={**os.environ, "MEDSTREAM_HTTP_PORT": str(port), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready; see {log.name}")


def stack_up() -> Settings:
    """The local stack started (what is already running stays) and every topic created: a bench's first step."""
    settings = Settings()
    paths = stack.Paths(settings.state_dir)
    for c in stack.COMPONENTS:
        c.install(paths)
        stack.start(c, paths, settings)
    ensure_topics(settings)
    return settings


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def readings(device: str, n: int, start_ms: int, hr: float = 70.0) -> list[dict]:
    return [{"device": device, "ts": start_ms + 1000 * i, "hr": hr, "spo2": 0.97} for i in range(n)]


async def bench_http(batches: int, per_batch: int, concurrency: int = 8) -> float:
    start_ms = int(datetime.now(UTC).timestamp() * 1000) - per_batch * 1000
    run = uuid.uuid4().hex[:6]
    accepted = 0

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        nonlocal accepted
        for b in range(k, batches, concurrency):
            body = {
                "idempotency_key": f"{run}-{b}",
                "device_type": "acme-band-2",
                "readings": readings(f"acme-sim-bh{run}-{b % 100}", per_batch, start_ms),
            }
            resp = await client.post(
                f"http://127.0.0.1:{HTTP_PORT}/v1/wearables/batches", json=body, headers={"Authorization": AUTH}
            )
            accepted += resp.json()["accepted"]

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(k, client) for k in range(concurrency)))
    return accepted / (time.perf_counter() - started)


async def bench_grpc(batches: int, per_batch: int, streams: int = 8) -> float:
    start_ms = int(datetime.now(UTC).timestamp() * 1000) - per_batch * 1000
    run = uuid.uuid4().hex[:6]
    accepted = 0

    def request(b: int) -> wearables_pb2.StreamBatchesRequest:
        structs = []
        for r in readings(f"acme-sim-bg{run}-{b % 100}", per_batch, start_ms):
            s = struct_pb2.Struct()
            s.update(r)
            structs.append(s)
        return wearables_pb2.StreamBatchesRequest(
            idempotency_key=f"{run}-{b}", device_type="acme-band-2", readings=structs
        )

    requests = [request(b) for b in range(batches)]

    async def one(k: int, stub: wearables_pb2_grpc.WearableIngestServiceStub) -> None:
        nonlocal accepted

        async def gen():
            for b in range(k, batches, streams):
                yield requests[b]

        response = await stub.StreamBatches(gen(), metadata=(("authorization", AUTH),))
        accepted += sum(r.accepted for r in response.results)

    started = time.perf_counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = wearables_pb2_grpc.WearableIngestServiceStub(channel)
        await asyncio.gather(*(one(k, stub) for k in range(streams)))
    return accepted / (time.perf_counter() - started)


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group})
    try:
        parts = end_offsets(settings, topic)
        return {
            tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        }
    finally:
        consumer.close()


def wait_caught_up(settings: Settings, until: dict[int, int] | None = None) -> None:
    until = until or end_offsets(settings, WEARABLE_SAMPLES.name)
    while True:
        done = committed(settings, "medstream-wearables", WEARABLE_SAMPLES.name)
        if all(done.get(p, -1) >= until[p] for p in until):
            return
        time.sleep(0.2)


def bench_worker(settings: Settings, patients: int = 200, minutes: int = 20) -> None:
    """Produce HR batches straight to the samples topic while the worker runs; time until it has committed all."""
    run = uuid.uuid4().hex[:6]
    start = time.time() - minutes * 60
    wait_caught_up(settings)  # earlier stages (and earlier runs) left a backlog: measure only our records
    before = end_offsets(settings, WEARABLE_SAMPLES.name)
    producer = EventProducer(settings, "bench")
    total = 0
    started = time.perf_counter()
    for m in range(minutes):
        for p in range(patients):
            samples = []
            for s in range(0, 60, 2):
                ts = Timestamp()
                ts.FromNanoseconds(int((start + m * 60 + s) * 1e9))
                samples.append(
                    wearable_pb2.WearableSample(
                        device_id=f"d{p}",
                        patient_id=f"bench-{run}-{p}",
                        metric="heart_rate",
                        value=70.0 + (s % 7),
                        effective_time=ts,
                        loinc_code="8867-4",
                        unit="/min",
                    )
                )
            producer.send_sync(
                WEARABLE_SAMPLES.name,
                f"bench-{run}-{p}".encode(),
                wearable_pb2.WearableSampleBatch(vendor_id="bench", samples=samples),
            )
            total += len(samples)
    producer.flush()
    after = end_offsets(settings, WEARABLE_SAMPLES.name)
    records = sum(after[p] - before.get(p, 0) for p in after)
    wait_caught_up(settings, after)
    worker_s = time.perf_counter() - started
    row(
        "wearables worker: topic to windows/features/rules",
        f"{total / worker_s:,.0f} samples/s",
        f"{records:,} batches of 30 HR samples; until committed (faust commits every 2.8 s), one worker",
    )

    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-{run}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(WEARABLE_SAMPLES.name, p, before.get(p, 0)) for p in after])
    seen, first = 0, 0.0
    while seen < records:
        for msg in consumer.consume(1000, 1.0):
            if msg.error():
                continue
            if seen == 0:
                first = time.perf_counter()
            wearable_pb2.WearableSampleBatch.FromString(msg.value())
            seen += 1
    base_s = time.perf_counter() - first
    consumer.close()
    row(
        "baseline: confluent-kafka consume + protobuf decode, same records",
        f"{total / base_s:,.0f} samples/s",
        f"{records:,} batches",
    )


def bench_alert_latency(settings: Settings, patients: int = 60) -> None:
    """Each batch completes a sustained tachycardia; latency = alert record time - HTTP 200 time."""
    run = uuid.uuid4().hex[:6]
    before = end_offsets(settings, ALERTS.name)
    acked: dict[str, float] = {}
    now_ms = int(time.time() * 1000)
    with httpx.Client(timeout=30) as client:
        for p in range(patients):
            device = f"acme-sim-lat{run}-{p}"
            body = {
                "idempotency_key": f"{run}-{p}",
                "device_type": "acme-band-2",
                "readings": readings(device, 14 * 60, now_ms - 15 * 60_000, hr=135.0)[::5],
            }
            client.post(
                f"http://127.0.0.1:{HTTP_PORT}/v1/wearables/batches", json=body, headers={"Authorization": AUTH}
            ).raise_for_status()
            acked[f"sim-pt-lat{run}-{p}"] = time.time()
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"bench-{run}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(ALERTS.name, p, o) for p, o in before.items()])
    latencies: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(latencies) < patients and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        alert = alert_pb2.Alert.FromString(msg.value())
        if alert.patient_id in acked and alert.patient_id not in latencies:
            latencies[alert.patient_id] = msg.timestamp()[1] / 1000.0 - acked[alert.patient_id]
    consumer.close()
    values = np.array(sorted(latencies.values())) * 1000
    row(
        "sample accepted (HTTP 200) to alert published",
        f"p50 {np.percentile(values, 50):.0f} ms, p99 {np.percentile(values, 99):.0f} ms",
        f"{len(values)} tachycardia alerts, one per batch",
    )


def main() -> None:
    settings = stack_up()
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    gateway = start("wearables-gateway", HTTP_PORT, settings, {"MEDSTREAM_WEARABLES_GRPC_PORT": str(GRPC_PORT)})
    try:
        http_rate = asyncio.run(bench_http(400, 100))
        row("ingestion over HTTP batches (8 clients)", f"{http_rate:,.0f} samples/s", "100 readings x 2 values a batch")
        grpc_rate = asyncio.run(bench_grpc(400, 100))
        row("ingestion over gRPC client streaming (8 streams)", f"{grpc_rate:,.0f} samples/s", "same batches")
        worker = start("wearables", WORKER_PORT, settings)
        try:
            wait_caught_up(settings)  # the ingestion stages left a backlog for the worker
            bench_alert_latency(settings)
            bench_worker(settings)
        finally:
            stop(worker)
    finally:
        stop(gateway)


if __name__ == "__main__":
    main()
