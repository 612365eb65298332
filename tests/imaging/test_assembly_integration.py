"""Series assembly on the real stack: a series completes once per revision through a worker crash; a re-sent
series adds nothing to the graph; late instances open a revision; broken claim checks are dead-lettered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import deadletter_pb2, dicom_pb2

from services.common.graph import Graph
from services.common.kafka import EventProducer
from services.common.topic_reader import end_offsets, read_messages
from services.common.topics import DEAD_LETTERS, DICOM_INSTANCES, DICOM_SERIES
from tests.conftest import ServiceProcess, running, unique, wait_for

pytestmark = pytest.mark.integration
WORKER, WRITER = 18098, 18099
QUIET_S = 3


@pytest.fixture(scope="module")
def services(local_stack) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    procs = {
        "imaging": ServiceProcess("imaging", WORKER, logs, {"MEDSTREAM_IMAGING_QUIET_S": str(QUIET_S)}),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs),
    }
    with running(procs, 90):
        yield procs


def arrivals(series: str, numbers: range, expected: int = 0) -> list[dicom_pb2.DicomInstanceArrival]:
    now = Timestamp()
    now.GetCurrentTime()
    return [
        dicom_pb2.DicomInstanceArrival(
            sop_instance_uid=f"{series}.{n}",
            series_instance_uid=series,
            study_instance_uid=f"{series}.0",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            modality="CT",
            body_part_examined="CHEST",
            patient_id=f"SYN-{series[-8:]}",
            instance_number=n,
            blob_uri=f"file:///blobs/{series}/{n}.dcm",
            sha256=f"{n:064x}",
            size_bytes=1000,
            received_at=now,
            expected_instances_in_series=expected,
        )
        for n in numbers
    ]


def send(settings, records: list[dicom_pb2.DicomInstanceArrival]) -> None:
    producer = EventProducer(settings, "test")
    for r in records:
        producer.send_sync(DICOM_INSTANCES.name, r.series_instance_uid.encode(), r)
    producer.close()


def completions(settings, since, series: str) -> list[dicom_pb2.DicomSeriesComplete]:
    got = read_messages(settings, DICOM_SERIES.name, dicom_pb2.DicomSeriesComplete, since)
    return [c for c in got if c.series_instance_uid == series]


def graph_shape(settings, series: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        graph = Graph.connect(settings)
        try:
            records, _, _ = await graph.driver.execute_query(
                "MATCH (p:Patient)-[a:HAS_STUDY]->(st:Study)-[b:HAS_SERIES]->(s:Series {series_instance_uid: $s}) "
                "OPTIONAL MATCH (s)-[c:HAS_INSTANCE]->(i:Instance) "
                "RETURN count(DISTINCT p) AS patients, count(DISTINCT a) + count(DISTINCT b) AS upper, "
                "count(DISTINCT c) AS rels, count(DISTINCT i) AS instances",
                s=series,
                database_=graph.database,
            )
            return dict(records[0])
        finally:
            await graph.close()

    return asyncio.run(go())


def test_quiet_period_revision_and_crash(local_stack, services):
    series = "1.2.826.0.1.3680043.10." + unique("s").replace("-", "").replace("s", "9")[-12:]
    before = end_offsets(local_stack, DICOM_SERIES.name)
    send(local_stack, arrivals(series, range(1, 11)))
    services["imaging"].kill()  # SIGKILL before the quiet period ends: state must come back
    send(local_stack, arrivals(series, range(11, 21)))
    send(local_stack, arrivals(series, range(1, 21)))  # the whole series again: repeats change nothing
    services["imaging"].start()
    wait_for(services["imaging"].ready, 90, what="imaging back")
    wait_for(lambda: completions(local_stack, before, series), 60, what="series complete")
    time.sleep(QUIET_S + 2)
    got = completions(local_stack, before, series)
    assert len(got) == 1, [
        (c.revision, len(c.instances), c.completion_reason, c.completed_at.ToJsonString()) for c in got
    ]
    [first] = got
    assert first.revision == 1 and first.completion_reason == "quiet-period" and first.route == "lung-nodule"
    assert [i.instance_number for i in first.instances] == list(range(1, 21))

    send(local_stack, arrivals(series, range(21, 23)))  # late slices
    wait_for(lambda: len(completions(local_stack, before, series)) == 2, 60, what="revision 2")
    second = completions(local_stack, before, series)[1]
    assert second.revision == 2 and len(second.instances) == 22

    wait_for(lambda: graph_shape(local_stack, series)["instances"] == 22, 60, what="graph")
    assert graph_shape(local_stack, series) == {"patients": 1, "upper": 2, "rels": 22, "instances": 22}


def test_expected_count_and_dead_letters(local_stack, services):
    series = "1.2.826.0.1.3680043.10." + str(int(time.time() * 1000))
    before = end_offsets(local_stack, DICOM_SERIES.name)
    dead_before = end_offsets(local_stack, DEAD_LETTERS.name)
    send(local_stack, arrivals(series, range(1, 6), expected=5))
    broken = arrivals(series + ".9", range(1, 2))[0]
    broken.ClearField("blob_uri")
    send(local_stack, [broken])
    producer = EventProducer(local_stack, "test")
    producer.send_sync(DICOM_INSTANCES.name, b"garbage", b"\x08\xff not an arrival")
    producer.close()
    wait_for(lambda: completions(local_stack, before, series), 30, what="complete at the expected count")
    assert completions(local_stack, before, series)[0].completion_reason == "expected-count"

    def letters() -> list[deadletter_pb2.DeadLetter]:
        got = read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, dead_before)
        return [d for d in got if d.consumer == "imaging"]

    wait_for(lambda: len(letters()) >= 2, 30, what="dead letters")
    assert any("blob_uri" in d.error_text for d in letters())
