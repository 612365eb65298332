"""The graph writer's batch step with a fake graph and a fake dead-letter sender: what is written, what is
dead-lettered and why, and that a Neo4j outage is waited out before anything is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest
from confluent_kafka import Message
from medstream.events.v1 import deadletter_pb2, graph_pb2
from neo4j.exceptions import ConstraintError, ServiceUnavailable, TransientError

from services.common.consumer_loop import consume
from services.common.deadletter import DECODE_ERROR, VALIDATION_ERROR, DeadLetters, SourceRecord
from services.common.graph import Graph, Node, Relationship
from services.common.graph_events import to_mutation
from services.common.kafka import SCHEMA_HEADER
from services.common.topics import GRAPH_MUTATIONS
from services.graph_writer.app import SERVICE, process_batch

pytestmark = pytest.mark.unit
SCHEMA = {SCHEMA_HEADER: graph_pb2.GraphMutation.DESCRIPTOR.full_name.encode()}
GARBAGE = b"\xff\x00 not a protobuf \x01"


class FakeGraph:
    """`Graph.upsert` that fails with the given errors first, then records what it was asked to write."""

    def __init__(self, *failures: Exception, events: list[str] | None = None) -> None:
        self.failures = list(failures)
        self.events = events if events is not None else []
        self.upserts: list[tuple[list[Node], list[Relationship]]] = []

    async def upsert(self, nodes: Sequence[Node] = (), relationships: Sequence[Relationship] = ()) -> int:
        if self.failures:
            error = self.failures.pop(0)
            self.events.append(f"upsert failed: {type(error).__name__}")
            raise error
        self.events.append("upserted")
        self.upserts.append((list(nodes), list(relationships)))
        return len(nodes) + len(relationships)


class FakeSender:
    """The dead-letter producer: keeps each letter, acknowledged at once."""

    def __init__(self) -> None:
        self.letters: list[deadletter_pb2.DeadLetter] = []

    async def __call__(self, key: bytes | None, letter: deadletter_pb2.DeadLetter) -> None:
        self.letters.append(letter)


async def write(batch: list[SourceRecord], graph: FakeGraph, sender: FakeSender) -> int:
    return await process_batch(batch, cast(Graph, graph), DeadLetters(SERVICE, sender))


def patient_with_findings(i: int) -> tuple[list[Node], list[Relationship]]:
    patient = Node("Patient", f"p{i}")
    findings = [Node("Finding", f"f{i}-{j}", {"kind": "nodule", "score": j / 4, "confirmed": j == 1}) for j in (0, 1)]
    return [patient, *findings], [Relationship(patient, "HAS_FINDING", f, {"rank": j}) for j, f in enumerate(findings)]


def record(offset: int, value: bytes, key: bytes = b"k") -> SourceRecord:
    return SourceRecord(GRAPH_MUTATIONS.name, 0, offset, key, value, SCHEMA)


def mutation_record(offset: int, i: int) -> SourceRecord:
    nodes, rels = patient_with_findings(i)
    return record(offset, to_mutation(f"m{i}", nodes, rels).SerializeToString())


def invalid(node: graph_pb2.NodeUpsert | None = None, rel_type: str = "HAS_FINDING") -> bytes:
    patient = graph_pb2.NodeUpsert(label="Patient", key_property="id", key_value="p9")
    finding = graph_pb2.NodeUpsert(label="Finding", key_property="finding_id", key_value="f9")
    rel = graph_pb2.RelationshipUpsert(from_node=patient, type=rel_type, to_node=finding)
    return graph_pb2.GraphMutation(mutation_id="bad", nodes=[node or patient], relationships=[rel]).SerializeToString()


async def test_valid_mutations_become_one_upsert_with_all_nodes_and_relationships():
    graph, sender = FakeGraph(), FakeSender()
    written = await write([mutation_record(0, 0), mutation_record(1, 1)], graph, sender)
    (n0, r0), (n1, r1) = patient_with_findings(0), patient_with_findings(1)
    assert graph.upserts == [(n0 + n1, r0 + r1)]
    assert written == 10 and sender.letters == []


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (invalid(graph_pb2.NodeUpsert(label="Nurse", key_property="id", key_value="n1")), "unknown node label 'Nurse'"),
        (invalid(graph_pb2.NodeUpsert(label="Patient", key_property="mrn", key_value="x")), "Patient is keyed by id"),
        (invalid(graph_pb2.NodeUpsert(label="Patient", key_property="id")), "Patient node without a key value"),
        (invalid(rel_type="has_finding"), "'has_finding' is not UPPER_SNAKE_CASE"),
    ],
)
async def test_bad_records_are_dead_lettered_with_their_reason_and_the_rest_is_written(value, complaint):
    graph, sender = FakeGraph(), FakeSender()
    batch = [mutation_record(0, 0), record(1, GARBAGE, b"garbage"), record(2, value, b"invalid"), mutation_record(3, 1)]
    await write(batch, graph, sender)

    (n0, r0), (n1, r1) = patient_with_findings(0), patient_with_findings(1)
    assert graph.upserts == [(n0 + n1, r0 + r1)]
    garbage, refused = sender.letters
    assert (garbage.reason, garbage.original_key, garbage.original_value) == (DECODE_ERROR, b"garbage", GARBAGE)
    assert (refused.reason, refused.original_key, refused.original_value) == (VALIDATION_ERROR, b"invalid", value)
    assert complaint in refused.error_text
    assert [(d.source_topic, d.source_offset, d.consumer) for d in sender.letters] == [
        (GRAPH_MUTATIONS.name, 1, SERVICE),
        (GRAPH_MUTATIONS.name, 2, SERVICE),
    ]


@pytest.mark.parametrize(
    "batch",
    [
        [],
        [record(0, GARBAGE)],
        [record(0, to_mutation("empty").SerializeToString())],
    ],
    ids=["empty batch", "only dead letters", "empty mutation"],
)
async def test_a_batch_with_nothing_to_write_writes_nothing(batch):
    graph = FakeGraph()
    assert await write(batch, graph, FakeSender()) == 0
    assert graph.events == []


def polling(*records: SourceRecord) -> list[Message]:
    return [
        Message(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            key=r.key,
            value=r.value,
            headers=list(r.headers.items()),
        )
        for r in records
    ]


async def run_writer(graph: FakeGraph, batch: list[Message]) -> None:
    """The writer's loop over one batch, with the fake graph and a commit that notes when it ran."""
    stop = asyncio.Event()

    async def handle(records: list[SourceRecord]) -> None:
        await write(records, graph, FakeSender())
        stop.set()

    await asyncio.wait_for(
        consume(
            lambda: batch,
            handle,
            lambda: graph.events.append("commit"),
            service=SERVICE,
            topic=GRAPH_MUTATIONS.name,
            stop=stop,
        ),
        30,
    )


async def test_a_transient_neo4j_error_is_retried_until_it_succeeds_and_nothing_is_committed_before():
    graph = FakeGraph(TransientError("deadlock"), ServiceUnavailable("leader away"))
    await run_writer(graph, polling(mutation_record(0, 0)))
    assert graph.events == [
        "upsert failed: TransientError",
        "upsert failed: ServiceUnavailable",
        "upserted",
        "commit",
    ]
    assert graph.upserts == [patient_with_findings(0)]


async def test_a_neo4j_error_that_is_not_transient_stops_the_writer_with_nothing_committed():
    graph = FakeGraph(ConstraintError("duplicate key"))
    with pytest.raises(ConstraintError):
        await run_writer(graph, polling(mutation_record(0, 0)))
    assert graph.events == ["upsert failed: ConstraintError"]
