"""A simulated fleet of 1,000 devices through the whole path: vendor HTTP -> gateway -> Kafka -> wearables."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from medstream.events.v1 import fhir_pb2

from services.cli.fleet import run_fleet
from services.common.graph import Graph
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import FHIR_WRITEBACK, WEARABLE_SAMPLES
from tests.conftest import ServiceProcess, wait_for

pytestmark = pytest.mark.integration
GATEWAY_PORT, WORKER_PORT = 18094, 18095


@pytest.fixture(scope="module")
def path(local_stack) -> Iterator[None]:
    logs = local_stack.state_dir / "logs"
    gateway = ServiceProcess("wearables-gateway", GATEWAY_PORT, logs, {"MEDSTREAM_WEARABLES_GRPC_PORT": "18096"})
    worker = ServiceProcess("wearables", WORKER_PORT, logs)
    writer = ServiceProcess("graph-writer", WORKER_PORT + 10, logs)
    procs = [gateway.start(), worker.start(), writer.start()]
    try:
        for p in procs:
            wait_for(p.ready, 90, what=f"{p.name} ready")
        yield
    finally:
        for p in procs:
            p.stop()


def caught_up(settings, group: str, topic: str) -> bool:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group})
    try:
        ends = end_offsets(settings, topic)
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in committed)
    finally:
        consumer.close()


@pytest.mark.timeout(900)
def test_thousand_device_fleet_flows_end_to_end(local_stack, path):
    before = end_offsets(local_stack, FHIR_WRITEBACK.name)
    report = asyncio.run(run_fleet(f"http://127.0.0.1:{GATEWAY_PORT}", devices=1000, minutes=2, cgm_hours=2.5))
    assert report.devices == 1000 and report.rejected == 0 and report.accepted > 100_000
    wait_for(
        lambda: caught_up(local_stack, "medstream-wearables", WEARABLE_SAMPLES.name),
        300,
        what="wearables worker consumed every batch",
    )
    cgm_patients = {f"Patient/{p}" for p in report.patients[500:]}

    def glucose_observations() -> set[str]:
        return {
            o.patient_reference
            for o in read_messages(local_stack, FHIR_WRITEBACK.name, fhir_pb2.FhirResourceEvent, before)
            if o.patient_reference in cgm_patients
        }

    # each CGM's 2.5 h backfill closes at least one hourly window
    assert wait_for(lambda: glucose_observations() == cgm_patients, 120, what="hourly CGM observations")

    # risk and CGM summaries reach the patients in the graph (through the graph writer)
    def scored_in_graph() -> int:
        async def go() -> int:
            graph = Graph.connect(local_stack)
            try:
                records, _, _ = await graph.driver.execute_query(
                    "MATCH (p:Patient) WHERE p.id IN $ids AND p.hypoglycaemia_risk IS NOT NULL "
                    "AND p.cgm_7d_tir_percent IS NOT NULL RETURN count(p) AS n",
                    ids=report.patients[500:],
                )
                return int(records[0]["n"])
            finally:
                await graph.close()

        return asyncio.run(go())

    assert wait_for(lambda: scored_in_graph() == 500, 120, what="CGM patients scored in the graph")
