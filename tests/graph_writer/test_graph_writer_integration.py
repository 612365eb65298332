"""The graph writer on the real stack: GraphMutation records land in Neo4j, a garbage record is dead-lettered with
its reason, and a SIGKILL followed by the same mutations again duplicates nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.message import Message as ProtoMessage
from medstream.events.v1 import deadletter_pb2, graph_pb2
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import Settings
from services.common.graph import Graph, Node, Relationship
from services.common.graph_events import to_mutation
from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import DEAD_LETTERS, GRAPH_MUTATIONS
from services.graph_writer.app import SERVICE
from tests.conftest import ServiceProcess, running, unique, wait_for

pytestmark = pytest.mark.integration
WRITER = 18220
GROUP = f"medstream-{SERVICE}"
GARBAGE = b"\xff\x00 not a GraphMutation \x01"
EXPECTED = {"patients": 3, "findings": 6, "rels": 6}
ROWS_PER_PASS = 15  # what one pass upserts: 9 nodes and 6 relationships
COUNTS = {
    "patients": "MATCH (p:Patient) WHERE p.id STARTS WITH $run RETURN count(p) AS n",
    "findings": "MATCH (f:Finding) WHERE f.finding_id STARTS WITH $run RETURN count(f) AS n",
    "rels": "MATCH (:Patient)-[r:HAS_FINDING]->(f:Finding) WHERE f.finding_id STARTS WITH $run RETURN count(r) AS n",
}


@pytest.fixture(scope="module")
def writer(local_stack: Settings) -> Iterator[ServiceProcess]:
    procs = {"graph-writer": ServiceProcess("graph-writer", WRITER, local_stack.state_dir / "logs")}
    with running(procs, 90):
        yield procs["graph-writer"]


def mutations(run: str) -> list[graph_pb2.GraphMutation]:
    """Three patients with two findings each, one mutation per patient."""
    out = []
    for i in range(3):
        patient = Node("Patient", f"{run}-p{i}")
        findings = [Node("Finding", f"{run}-f{i}-{j}", {"kind": "nodule", "score": j / 2}) for j in range(2)]
        rels = [Relationship(patient, "HAS_FINDING", f) for f in findings]
        out.append(to_mutation(f"{run}-m{i}", [patient, *findings], rels))
    return out


def publish(settings: Settings, records: Sequence[tuple[bytes, ProtoMessage | bytes]]) -> None:
    producer = EventProducer(settings, "test")
    for key, value in records:
        producer.send_sync(GRAPH_MUTATIONS.name, key, value)
    producer.close()


def graph_counts(settings: Settings, run: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        graph = Graph.connect(settings)
        try:
            counts = {}
            for name, query in COUNTS.items():
                records, _, _ = await graph.driver.execute_query(query, run=f"{run}-", database_=graph.database)
                counts[name] = records[0]["n"]
            return counts
        finally:
            await graph.close()

    return asyncio.run(go())


def finding_score(settings: Settings, finding_id: str) -> float | None:
    async def go() -> float | None:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(
                "MATCH (f:Finding {finding_id: $id}) RETURN f.score AS score", id=finding_id, database_=graph.database
            )
            return records[0]["score"] if records else None
        finally:
            await graph.close()

    return asyncio.run(go())


def caught_up(settings: Settings) -> bool:
    """The writer's group has committed every partition of the mutations topic up to its end."""
    topic = GRAPH_MUTATIONS.name
    consumer = Consumer({**settings.kafka_client_config(), "group.id": GROUP, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            if low < high and tp.offset < high:  # a partition with nothing to read is never committed
                return False
        return True
    finally:
        consumer.close()


def rows_written(proc: ServiceProcess) -> float:
    """What this writer process has upserted since it started (its `medstream_graph_rows_total`)."""
    text = httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5.0).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "medstream_graph_rows_total" and s.labels.get("service") == SERVICE
    )


def test_mutations_land_once_through_a_crash_and_garbage_is_dead_lettered(local_stack, writer):
    run = unique("gw")
    dead_before = end_offsets(local_stack, DEAD_LETTERS.name)
    batch = [(m.mutation_id.encode(), m) for m in mutations(run)]
    publish(local_stack, [*batch[:2], (f"{run}-garbage".encode(), GARBAGE), *batch[2:]])

    wait_for(lambda: (c := graph_counts(local_stack, run)) == EXPECTED and c, 90, what="the mutations in Neo4j")
    assert finding_score(local_stack, f"{run}-f1-1") == 0.5

    def letters() -> list[deadletter_pb2.DeadLetter]:
        return [
            d
            for d in read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, dead_before)
            if d.original_key == f"{run}-garbage".encode()
        ]

    [letter] = wait_for(letters, 60, what="the garbage record dead-lettered")
    assert letter.reason == deadletter_pb2.DEAD_LETTER_REASON_DECODE_ERROR
    assert (letter.original_value, letter.source_topic, letter.consumer) == (GARBAGE, GRAPH_MUTATIONS.name, SERVICE)
    assert "GraphMutation" in letter.error_text

    writer.kill()  # SIGKILL: whatever it had not committed is delivered again
    publish(local_stack, batch)  # the same mutations again, e.g. a producer's retry, while the writer is down
    writer.start()
    wait_for(writer.ready, 90, what="graph writer back")
    # The republished records lie past every offset the killed writer could have committed: caught up means the
    # new writer applied them (it commits only after the write).
    wait_for(lambda: caught_up(local_stack), 120, what="graph writer caught up")
    assert rows_written(writer) >= ROWS_PER_PASS  # the second pass was written again, not skipped
    assert graph_counts(local_stack, run) == EXPECTED
