"""Graph writer: applies GraphMutation events to Neo4j in batches; offsets are committed after the write.

    medstream.graph.mutations.v1 --> decode/validate --(bad)--> medstream.deadletter.v1
                                  --> UNWIND ... MERGE batches in one Neo4j transaction --> commit offsets

Every statement MERGEs on natural keys, so a redelivered batch (crash before the commit) changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from medstream.events.v1 import graph_pb2
from neo4j.exceptions import Neo4jError

from services.common.config import Settings, get_settings
from services.common.consumer_loop import consume, dead_letter_producer, lag_reporter, subscribed
from services.common.deadletter import VALIDATION_ERROR, DeadLetters, SourceRecord
from services.common.graph import TRANSIENT_ERRORS, Graph, Node, Relationship
from services.common.graph_events import from_mutation
from services.common.service import retry_until_done, run_until_signalled
from services.common.telemetry import CONSUMED, GRAPH_ROWS, configure_logging, health_app, http_server
from services.common.topics import GRAPH_MUTATIONS

SERVICE = "graph-writer"
BATCH_MAX, POLL_TIMEOUT_S = 500, 0.5


async def process_batch(records: Sequence[SourceRecord], graph: Graph, dead_letters: DeadLetters) -> int:
    """Decode, validate and upsert one polled batch; returns rows written."""
    nodes: list[Node] = []
    rels: list[Relationship] = []
    for record in records:
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
    try:
        await retry_until_done(graph.migrate, "neo4j migrations", retry_on=(*TRANSIENT_ERRORS, OSError, Neo4jError))
        with (
            dead_letter_producer(settings, SERVICE) as dead_letters,
            subscribed(settings, f"medstream-{SERVICE}", [GRAPH_MUTATIONS.name]) as consumer,
        ):
            async with http_server(health_app({"neo4j": graph.ready}), settings.http_host, settings.http_port):
                await consume(
                    lambda: consumer.consume(BATCH_MAX, POLL_TIMEOUT_S),
                    lambda records: process_batch(records, graph, dead_letters),
                    lambda: consumer.commit(asynchronous=False),
                    service=SERVICE,
                    topic=GRAPH_MUTATIONS.name,
                    stop=stop,
                    lag=lag_reporter(consumer, SERVICE),
                )
    finally:
        await graph.close()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: run(settings, stop))
