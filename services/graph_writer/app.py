"""Graph writer: applies GraphMutation events to Neo4j in batches; offsets are committed after the write.

    medstream.graph.mutations.v1 --> decode/validate --(bad)--> medstream.deadletter.v1
                                  --> UNWIND ... MERGE batches in one Neo4j transaction --> commit offsets

Every statement MERGEs on natural keys, so a redelivered batch (crash before the commit) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from medstream.events.v1 import graph_pb2
from neo4j.exceptions import Neo4jError

from services.common.config import Settings, get_settings
from services.common.deadletter import VALIDATION_ERROR, DeadLetters, SourceRecord, confluent_sender
from services.common.graph import TRANSIENT_ERRORS, Graph, Node, Relationship
from services.common.graph_events import from_mutation
from services.common.kafka import EventProducer
from services.common.service import retry_until_done, run_until_signalled
from services.common.telemetry import (
    CONSUMED,
    GRAPH_ROWS,
    PROCESSING_SECONDS,
    configure_logging,
    record_lag,
    start_health_server,
)
from services.common.topics import GRAPH_MUTATIONS

SERVICE = "graph-writer"
BATCH_MAX, POLL_TIMEOUT_S = 500, 0.5
log = logging.getLogger(__name__)


def make_consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"medstream-{SERVICE}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "isolation.level": "read_committed",
        }
    )


async def process_batch(messages: list, graph: Graph, dead_letters: DeadLetters) -> int:  # type: ignore[type-arg]
    """Decode, validate and upsert one polled batch; returns rows written."""
    nodes: list[Node] = []
    rels: list[Relationship] = []
    for msg in messages:
        record = SourceRecord.from_confluent(msg)
        CONSUMED.labels(SERVICE, record.topic).inc()
        mutation = await dead_letters.decode_or_dead_letter(record, graph_pb2.GraphMutation)
        if mutation is None:
            continue
        try:
            n, r = from_mutation(mutation)
        except ValueError as exc:
            await dead_letters.publish(record, VALIDATION_ERROR, str(exc))
            continue
        nodes += n
        rels += r
    if not nodes and not rels:
        return 0
    written = await retry_until_done(lambda: graph.upsert(nodes, rels), "neo4j", retry_on=(*TRANSIENT_ERRORS, OSError))
    GRAPH_ROWS.labels(SERVICE, "rows").inc(written)
    return written


async def run(settings: Settings, stop: asyncio.Event) -> None:
    graph = Graph.connect(settings)
    await retry_until_done(graph.migrate, "neo4j migrations", retry_on=(*TRANSIENT_ERRORS, OSError, Neo4jError))
    producer = EventProducer(settings, SERVICE)
    dead_letters = DeadLetters(SERVICE, confluent_sender(producer))
    consumer = make_consumer(settings)
    consumer.subscribe([GRAPH_MUTATIONS.name])
    health = await start_health_server(settings.http_host, settings.http_port, {"neo4j": graph.ready})
    try:
        while not stop.is_set():
            messages = await asyncio.to_thread(consumer.consume, BATCH_MAX, POLL_TIMEOUT_S)
            errors = [m for m in messages if m.error()]
            for m in errors:
                log.warning("consumer error", extra={"error": str(m.error())})
            messages = [m for m in messages if not m.error()]
            if not messages:
                continue
            started = time.perf_counter()
            await process_batch(messages, graph, dead_letters)
            # Outputs are durable (Neo4j committed, dead letters acked): now the offsets may move.
            await asyncio.to_thread(consumer.commit, asynchronous=False)
            PROCESSING_SECONDS.labels(SERVICE, GRAPH_MUTATIONS.name).observe(
                (time.perf_counter() - started) / len(messages)
            )
            _report_lag(consumer, messages)
    finally:
        consumer.close()
        producer.close()
        await graph.close()
        await health.cleanup()


def _report_lag(consumer: Consumer, messages: list) -> None:  # type: ignore[type-arg]
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic(), m.partition())] = m.offset()
    for (topic, partition), offset in last.items():
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=1.0, cached=True)
        except KafkaException:
            continue
        record_lag(SERVICE, topic, partition, high, offset + 1)


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: run(settings, stop))
