"""The local stack itself: status tells the truth, restarts keep Kafka and Neo4j data."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from confluent_kafka import Consumer, TopicPartition
from medstream.events.v1 import finding_pb2

from services.cli import stack
from services.common.graph import Graph, Node
from services.common.kafka import EventProducer
from services.common.topics import FINDINGS
from tests.conftest import unique, wait_for

pytestmark = pytest.mark.integration


def test_status_reports_every_component_ready(local_stack, paths):
    for c in stack.COMPONENTS:
        s = stack.status(c, paths, local_stack)
        assert s.running and s.ready and s.pid, s


@pytest.mark.restarts_stack
def test_status_tells_the_truth_after_a_crash(local_stack, paths):
    triton = stack.component("triton")
    pid = stack.read_pid(paths, "triton")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not stack.alive(pid, triton.marker), 30, what="triton gone")
    s = stack.status(triton, paths, local_stack)
    assert not s.running and not s.ready and "dead" in s.note
    stack.start(triton, paths, local_stack)
    assert stack.status(triton, paths, local_stack).ready


@pytest.mark.restarts_stack
def test_restart_keeps_kafka_and_neo4j_data(local_stack, paths):
    key, node_id = unique("restart").encode(), unique("restart-pt")
    producer = EventProducer(local_stack, "test")

    async def write() -> tuple[int, int]:
        graph = Graph.connect(local_stack)
        try:
            await graph.upsert([Node("Patient", node_id, {"marker": 1})])
        finally:
            await graph.close()
        return await producer.send(FINDINGS.name, key, finding_pb2.Finding(finding_id=key.decode()))

    partition, offset = asyncio.run(write())
    producer.close()

    for name in ("neo4j", "kafka"):
        assert stack.stop(stack.component(name), paths)
    for name in ("kafka", "neo4j"):
        stack.start(stack.component(name), paths, local_stack)

    consumer = Consumer({**local_stack.kafka_client_config(), "group.id": unique("restart")})
    consumer.assign([TopicPartition(FINDINGS.name, partition, offset)])
    msg = wait_for(lambda: consumer.poll(1.0), 30, what="record after restart")
    consumer.close()
    assert msg.key() == key

    async def read() -> int:
        graph = Graph.connect(local_stack)
        try:
            records, _, _ = await graph.driver.execute_query(
                "MATCH (p:Patient {id: $id}) RETURN p.marker AS m", id=node_id
            )
            return records[0]["m"]
        finally:
            await graph.close()

    assert asyncio.run(read()) == 1
