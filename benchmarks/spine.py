"""`make bench-spine`: start-up of each stack component, Kafka with and without faust, Neo4j batched vs.
single upserts, Triton throughput and server batch size with 1 and 16 clients. Prints a table."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.cli import stack
from services.common.config import Settings
from services.common.graph import Graph, Node
from services.common.triton import TritonClient

N_MESSAGES = 200_000
VALUE = b"x" * 200  # about a small protobuf event


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name} | {value} | {note} |", flush=True)


def bench_startup(settings: Settings, paths: stack.Paths) -> None:
    for c in reversed(stack.COMPONENTS):
        stack.stop(c, paths)
    for c in stack.COMPONENTS:
        c.install(paths)
        seconds = stack.start(c, paths, settings)
        row(f"start-up {c.name} (process start to ready)", f"{seconds:.1f} s", c.describe())


def bench_kafka(settings: Settings) -> None:
    topic = f"medstream.bench.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka_client_config())
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    try:
        producer = Producer(
            {
                **settings.kafka_client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        started = time.perf_counter()
        for i in range(N_MESSAGES):
            while True:
                try:
                    producer.produce(topic, VALUE, key=str(i % 1000).encode())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush(60)
        seconds = time.perf_counter() - started
        row(
            "produce, confluent-kafka idempotent acks=all",
            f"{N_MESSAGES / seconds:,.0f} msg/s",
            f"{N_MESSAGES:,} x {len(VALUE)} B",
        )

        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
            }
        )
        consumer.subscribe([topic])
        n, first = 0, 0.0
        while n < N_MESSAGES:
            for msg in consumer.consume(1000, 1.0):
                if msg.error():
                    continue
                if n == 0:
                    first = time.perf_counter()
                n += 1
        seconds = time.perf_counter() - first
        consumer.close()
        row(
            "consume, confluent-kafka alone (baseline)",
            f"{N_MESSAGES / seconds:,.0f} msg/s",
            "first record to last, one consumer",
        )

        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.faust_counter",
                    topic,
                    str(N_MESSAGES),
                    out.name,
                    "worker",
                    "--without-web",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            text = Path(out.name).read_text()
            if not text:
                raise RuntimeError(f"faust bench failed: {proc.stderr[-2000:]}")
            result = json.loads(text)
        row(
            "consume, faust agent (one worker)",
            f"{N_MESSAGES / result['seconds']:,.0f} msg/s",
            "first record to last, `async for` over the stream",
        )
    finally:
        admin.delete_topics([topic])


async def bench_neo4j(settings: Settings) -> None:
    graph = Graph.connect(settings)
    await graph.migrate()
    run = uuid.uuid4().hex[:8]
    try:
        n_batched, batch = 20_000, 500
        nodes = [
            Node("Observation", f"bench-{run}-b{i}", {"value": float(i), "code": "8867-4"}) for i in range(n_batched)
        ]
        started = time.perf_counter()
        for i in range(0, n_batched, batch):
            await graph.upsert(nodes[i : i + batch])
        batched = n_batched / (time.perf_counter() - started)
        row("Neo4j upsert, UNWIND batches of 500", f"{batched:,.0f} rows/s", f"{n_batched:,} rows, MERGE on key")

        n_single = 1_000
        started = time.perf_counter()
        async with graph.driver.session(database=graph.database) as session:
            for i in range(n_single):
                await session.execute_write(
                    lambda tx, i=i: tx.run(
                        "MERGE (n:Observation {id: $id}) SET n.value = $v, n.code = $c",
                        id=f"bench-{run}-s{i}",
                        v=float(i),
                        c="8867-4",
                    )
                )
        single = n_single / (time.perf_counter() - started)
        row(
            "Neo4j upsert, one MERGE per transaction",
            f"{single:,.0f} rows/s",
            f"{n_single:,} rows; batched is {batched / single:.0f}x",
        )
        await graph.driver.execute_query(
            "MATCH (n:Observation) WHERE n.id STARTS WITH $p DETACH DELETE n", p=f"bench-{run}"
        )
    finally:
        await graph.close()


def triton_counters(model: str) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.TRITON_METRICS_PORT}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["nv_inference_count"], values["nv_inference_exec_count"]


async def bench_triton(settings: Settings) -> None:
    model = "deterioration_risk"
    x = np.array([[15, 97, 0, 36.8, 125, 72, 0]], dtype=np.float32)
    for clients in (1, 16):
        client = TritonClient(settings.triton_grpc_url, "bench", max_concurrency=clients)
        n = 3_000
        await asyncio.gather(*(client.infer(model, {"VITALS": x}, ["RISK"]) for _ in range(50)))  # warm-up
        count0, exec0 = triton_counters(model)
        started = time.perf_counter()

        async def worker(k: int) -> None:
            for _ in range(k):
                await client.infer(model, {"VITALS": x}, ["RISK"])

        await asyncio.gather(*(worker(n // clients) for _ in range(clients)))
        seconds = time.perf_counter() - started
        count1, exec1 = triton_counters(model)
        await client.close()
        row(
            f"Triton {model}, {clients} concurrent client(s)",
            f"{n / seconds:,.0f} req/s",
            f"mean server batch {(count1 - count0) / max(1.0, exec1 - exec0):.1f}",
        )


def main() -> None:
    settings = Settings()
    paths = stack.Paths(settings.state_dir)
    print("| measurement | result | note |\n|---|---|---|", flush=True)
    bench_startup(settings, paths)
    bench_kafka(settings)
    asyncio.run(bench_neo4j(settings))
    asyncio.run(bench_triton(settings))


if __name__ == "__main__":
    main()
