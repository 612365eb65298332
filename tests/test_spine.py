"""The spine end to end on the real stack: Kafka -> faust agent -> Triton -> findings topic + Neo4j,
with malformed records dead-lettered while good ones flow, and no duplicates after replays or a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, deadletter_pb2, finding_pb2, vitals_pb2

from services.common.config import Settings
from services.common.graph import Graph
from services.common.kafka import EventProducer, record_headers
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import ALERTS, DEAD_LETTERS, FINDINGS, GRAPH_MUTATIONS, VITALS_SNAPSHOTS
from tests.conftest import ServiceProcess, unique, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(local_stack: Settings) -> Iterator[dict[str, ServiceProcess]]:
    log_dir = local_stack.state_dir / "logs"
    procs = {
        "deterioration": ServiceProcess("deterioration", 18081, log_dir).start(),
        "graph-writer": ServiceProcess("graph-writer", 18082, log_dir).start(),
    }
    try:
        for p in procs.values():
            wait_for(p.ready, 90, what=f"{p.name} /readyz")
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def snapshots(run: str, n: int, patients: int = 5) -> list[vitals_pb2.VitalSignsSnapshot]:
    out = []
    for i in range(n):
        sick = i % 4 == 0
        out.append(
            vitals_pb2.VitalSignsSnapshot(
                snapshot_id=f"{run}-s{i}",
                patient_id=f"{run}-p{i % patients}",
                encounter_id=f"{run}-e{i % patients}",
                effective_time=Timestamp(seconds=1_790_000_000 + 60 * i),
                respiratory_rate=27 if sick else 15,
                oxygen_saturation=89 if sick else 97,
                on_supplemental_oxygen=sick,
                body_temperature=39.4 if sick else 36.9,
                systolic_blood_pressure=88 if sick else 124,
                heart_rate=128 if sick else 74,
                consciousness=vitals_pb2.CONSCIOUSNESS_VOICE if sick else vitals_pb2.CONSCIOUSNESS_ALERT,
            )
        )
    return out


def publish(
    settings: Settings,
    records: list[tuple[bytes, bytes | vitals_pb2.VitalSignsSnapshot]],
    topic: str = VITALS_SNAPSHOTS.name,
) -> None:
    producer = EventProducer(settings, "test")
    for key, value in records:
        producer.send_sync(topic, key, value)
    producer.close()


def graph_counts(settings: Settings, run: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(
                "MATCH (p:Patient) WHERE p.id STARTS WITH $run "
                "OPTIONAL MATCH (p)-[r:HAS_FINDING]->(f:Finding) "
                "RETURN count(DISTINCT p) AS patients, count(r) AS rels, count(DISTINCT f) AS findings",
                run=run + "-",
                database_=graph.database,
            )
            return dict(records[0])
        finally:
            await graph.close()

    return asyncio.run(go())


def findings_for(settings: Settings, run: str, since: dict[int, int]) -> list[finding_pb2.Finding]:
    return [
        f
        for f in read_messages(settings, FINDINGS.name, finding_pb2.Finding, since)
        if f.patient_id.startswith(run + "-")
    ]


def test_spine_end_to_end_with_dead_letters(local_stack, services):
    run = unique("spine")
    before = {t: end_offsets(local_stack, t) for t in (FINDINGS.name, ALERTS.name, DEAD_LETTERS.name)}
    good = snapshots(run, 20)
    invalid = vitals_pb2.VitalSignsSnapshot(snapshot_id=f"{run}-bad", patient_id=f"{run}-p0", heart_rate=900)
    garbage = b"\xff\x00 not a protobuf \x01"
    publish(
        local_stack,
        [(s.patient_id.encode(), s) for s in good[:10]]
        + [(f"{run}-garbage".encode(), garbage), (invalid.patient_id.encode(), invalid)]
        + [(s.patient_id.encode(), s) for s in good[10:]],
    )
    # a mutation outside the graph schema reaches the graph writer's dead-letter path too
    bad_mutation = b"\x0a\x03abc\x12\x05\x0a\x05Nurse"
    producer = EventProducer(local_stack, "test")
    producer.send_sync(
        GRAPH_MUTATIONS.name,
        f"{run}-mut".encode(),
        bad_mutation,
        [("medstream-schema", b"medstream.events.v1.GraphMutation")],
    )
    producer.close()

    found = wait_for(
        lambda: (
            len(findings_for(local_stack, run, before[FINDINGS.name])) >= 20
            and findings_for(local_stack, run, before[FINDINGS.name])
        ),
        90,
        what="20 findings",
    )
    assert {f.provenance.source_event_id for f in found} == {s.snapshot_id for s in good}
    assert all(f.model.name == "deterioration_risk" and f.model.version == "1" for f in found)
    sick = {s.snapshot_id for i, s in enumerate(good) if i % 4 == 0}
    assert {f.provenance.source_event_id for f in found if f.score >= 0.5} == sick

    def my_letters() -> list[deadletter_pb2.DeadLetter]:
        return [
            d
            for d in read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, before[DEAD_LETTERS.name])
            if d.original_key.decode(errors="replace").startswith(run)
        ]

    letters = wait_for(lambda: len(my_letters()) >= 3 and my_letters(), 60, what="3 dead letters")
    by_key = {d.original_key.decode(): d for d in letters}
    assert by_key[f"{run}-garbage"].reason == deadletter_pb2.DEAD_LETTER_REASON_DECODE_ERROR
    assert by_key[f"{run}-garbage"].original_value == garbage
    assert by_key[f"{run}-garbage"].source_topic == VITALS_SNAPSHOTS.name
    assert by_key[f"{run}-p0"].reason == deadletter_pb2.DEAD_LETTER_REASON_VALIDATION_ERROR
    assert "heart_rate=900" in by_key[f"{run}-p0"].error_text
    assert by_key[f"{run}-mut"].consumer == "graph-writer"

    alerts = [
        a
        for a in read_messages(local_stack, ALERTS.name, alert_pb2.Alert, before[ALERTS.name])
        if a.patient_id.startswith(run)
    ]
    assert len(alerts) == len(sick) and all(a.finding_id for a in alerts)

    counts = wait_for(lambda: (c := graph_counts(local_stack, run))["findings"] == 20 and c, 60, what="graph")
    assert counts == {"patients": 5, "rels": 20, "findings": 20}


def test_replayed_snapshots_duplicate_nothing_in_the_graph(local_stack, services):
    run = unique("replay")
    before = end_offsets(local_stack, FINDINGS.name)
    batch = [(s.patient_id.encode(), s) for s in snapshots(run, 12, patients=3)]
    publish(local_stack, batch)
    wait_for(lambda: graph_counts(local_stack, run)["findings"] == 12, 90, what="first pass in graph")
    publish(local_stack, batch)  # the same events again, e.g. an upstream retry
    wait_for(lambda: len(findings_for(local_stack, run, before)) >= 24, 90, what="second pass processed")
    ids = [f.finding_id for f in findings_for(local_stack, run, before)]
    assert len(set(ids)) == 12  # same ids for the same events
    # the graph writer has consumed everything produced so far
    wait_for(lambda: _graph_writer_caught_up(local_stack), 60, what="graph writer caught up")
    assert graph_counts(local_stack, run) == {"patients": 3, "rels": 12, "findings": 12}


def _graph_writer_caught_up(settings: Settings) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": "medstream-graph-writer"})
    try:
        ends = end_offsets(settings, GRAPH_MUTATIONS.name)
        committed = consumer.committed([TopicPartition(GRAPH_MUTATIONS.name, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in committed)
    finally:
        consumer.close()


def test_worker_killed_mid_stream_loses_and_duplicates_nothing(local_stack, services):
    run = unique("crash")
    before = end_offsets(local_stack, FINDINGS.name)
    worker = services["deterioration"]
    batch = [(s.patient_id.encode(), s) for s in snapshots(run, 400, patients=20)]
    publish(local_stack, batch[:200])
    wait_for(lambda: len(findings_for(local_stack, run, before)) > 0, 90, what="some findings")
    worker.kill()  # SIGKILL: no clean shutdown, no final commit
    publish(local_stack, batch[200:])  # accepted while the worker is down
    worker.start()
    wait_for(worker.ready, 90, what="worker back")
    wait_for(lambda: graph_counts(local_stack, run)["findings"] == 400, 180, what="all 400 findings in graph")
    wait_for(lambda: _graph_writer_caught_up(local_stack), 60, what="graph writer caught up")
    assert graph_counts(local_stack, run) == {"patients": 20, "rels": 400, "findings": 400}
    assert len({f.finding_id for f in findings_for(local_stack, run, before)}) == 400


def test_headers_of_outputs_name_their_schema(local_stack, services):
    # Outputs are self-describing: consumers can refuse a record of the wrong type by header alone.
    run = unique("hdr")
    before = end_offsets(local_stack, FINDINGS.name)
    s = snapshots(run, 1)[0]
    publish(local_stack, [(s.patient_id.encode(), s)])
    from services.common.topic_reader import read_records

    def mine():
        return [h for k, _, h in read_records(local_stack, FINDINGS.name, before) if k == s.patient_id.encode()]

    headers = wait_for(mine, 60, what="finding")[0]
    assert headers["medstream-schema"] == b"medstream.events.v1.Finding"
    assert dict(record_headers(finding_pb2.Finding()))["medstream-schema"] == headers["medstream-schema"]
