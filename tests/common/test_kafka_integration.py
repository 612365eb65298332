import asyncio

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from medstream.events.v1 import finding_pb2

from services.common.kafka import SCHEMA_HEADER, EventProducer, ensure_topics
from services.common.topic_reader import end_offsets, read_records
from services.common.topics import CATALOG, DEAD_LETTERS, FINDINGS
from tests.conftest import unique

pytestmark = pytest.mark.integration


def test_catalog_topics_exist_with_their_configuration(local_stack):
    assert ensure_topics(local_stack) == []  # idempotent: everything exists already
    admin = AdminClient(local_stack.kafka_client_config())
    md = admin.list_topics(timeout=10)
    for spec in CATALOG:
        assert spec.name in md.topics
        expected = spec.partitions or local_stack.kafka_topic_partitions
        assert len(md.topics[spec.name].partitions) == expected
    configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, DEAD_LETTERS.name)])
    entries = next(iter(configs.values())).result()
    assert entries["retention.ms"].value == str(DEAD_LETTERS.retention_ms)


def test_idempotent_producer_waits_for_ack_and_sets_headers(local_stack):
    before = end_offsets(local_stack, FINDINGS.name)
    producer = EventProducer(local_stack, "test")
    finding = finding_pb2.Finding(finding_id=unique("f"), patient_id=unique("p"))

    async def send() -> tuple[int, int]:
        return await producer.send(FINDINGS.name, finding.patient_id.encode(), finding)

    partition, offset = asyncio.run(send())
    producer.close()
    assert offset >= before.get(partition, 0)
    records = read_records(local_stack, FINDINGS.name, before)
    mine = [(v, h) for k, v, h in records if k == finding.patient_id.encode()]
    assert len(mine) == 1
    value, headers = mine[0]
    assert finding_pb2.Finding.FromString(value) == finding
    assert headers[SCHEMA_HEADER] == b"medstream.events.v1.Finding"
    assert headers["traceparent"].startswith(b"00-")
