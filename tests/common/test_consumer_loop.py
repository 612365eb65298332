"""The confluent-kafka consumer shell with its I/O faked: what is committed when, what is skipped, what is reported."""

from __future__ import annotations

import asyncio
import logging

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import REGISTRY

from services.common.consumer_loop import consume, lag_reporter
from services.common.deadletter import SourceRecord

pytestmark = pytest.mark.unit
SERVICE, TOPIC = "consumer-loop-test", "medstream.test.v1"


def message(offset: int, partition: int = 0) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=f"v{offset}".encode())


def client_error() -> Message:
    return Message(error=KafkaError(KafkaError._TRANSPORT))


class Fakes:
    """A poll that hands out its batches and then stops the loop; a handle and a commit that note when they ran."""

    def __init__(self, *batches: list[Message]) -> None:
        self.batches = list(batches)
        self.events: list[str] = []
        self.handled: list[list[SourceRecord]] = []
        self.stop = asyncio.Event()

    def poll(self) -> list[Message]:
        if self.batches:
            return self.batches.pop(0)
        self.loop.call_soon_threadsafe(self.stop.set)  # poll runs in a thread
        return []

    async def handle(self, records: list[SourceRecord]) -> None:
        self.events.append("handle")
        await asyncio.sleep(0)  # a commit that did not wait for handle would slip in here
        self.handled.append(records)
        self.events.append("handled")

    def commit(self) -> None:
        self.events.append("commit")

    async def run(self, handle=None, lag=None) -> None:
        self.loop = asyncio.get_running_loop()
        loop = consume(
            self.poll, handle or self.handle, self.commit, service=SERVICE, topic=TOPIC, stop=self.stop, lag=lag
        )
        await asyncio.wait_for(loop, 10)


async def test_each_batch_is_committed_only_after_its_handle_returned():
    fakes = Fakes([message(0), message(1)], [message(2, partition=1)])
    await fakes.run()
    assert fakes.events == ["handle", "handled", "commit"] * 2
    assert fakes.handled == [
        [SourceRecord(TOPIC, 0, 0, b"k", b"v0"), SourceRecord(TOPIC, 0, 1, b"k", b"v1")],
        [SourceRecord(TOPIC, 1, 2, b"k", b"v2")],
    ]


async def test_client_errors_are_logged_and_skipped(caplog):
    fakes = Fakes([client_error(), message(7), client_error()], [client_error()])
    with caplog.at_level(logging.WARNING, logger="services.common.consumer_loop"):
        await fakes.run()
    assert fakes.handled == [[SourceRecord(TOPIC, 0, 7, b"k", b"v7")]]
    assert fakes.events == ["handle", "handled", "commit"]  # a poll of errors only is neither handled nor committed
    errors = [r for r in caplog.records if r.getMessage() == "consumer error"]
    assert len(errors) == 3 and all("_TRANSPORT" in r.error for r in errors)  # type: ignore[attr-defined]


async def test_empty_polls_neither_handle_nor_commit():
    fakes = Fakes([], [], [])
    await fakes.run()
    assert fakes.events == [] and fakes.batches == []


async def test_a_handle_that_raises_commits_nothing_and_stops_the_loop():
    fakes = Fakes([message(0)], [message(1)])

    async def fail(records: list[SourceRecord]) -> None:
        raise RuntimeError("downstream refused")

    with pytest.raises(RuntimeError, match="downstream refused"):
        await fakes.run(handle=fail)
    assert "commit" not in fakes.events
    assert len(fakes.batches) == 1  # nothing polled after the failure


async def test_a_set_stop_ends_the_loop_before_it_polls():
    fakes = Fakes([message(0)])
    fakes.stop.set()
    await fakes.run()
    assert len(fakes.batches) == 1 and fakes.events == []


async def test_without_stop_the_loop_runs_until_cancelled():
    loop, polled_thrice, polls = asyncio.get_running_loop(), asyncio.Event(), 0

    def poll() -> list[Message]:
        nonlocal polls
        polls += 1
        if polls == 3:
            loop.call_soon_threadsafe(polled_thrice.set)
        return []

    async def handle(records: list[SourceRecord]) -> None:
        raise AssertionError("nothing to handle")

    task = asyncio.create_task(consume(poll, handle, lambda: None, service=SERVICE, topic=TOPIC))
    await asyncio.wait_for(polled_thrice.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timing_is_per_record_and_lag_is_reported_after_the_commit():
    labels = {"service": SERVICE, "topic": TOPIC}
    before = REGISTRY.get_sample_value("medstream_processing_seconds_count", labels) or 0.0
    fakes = Fakes([message(0), message(1)], [message(2)])
    lagged: list[list[int]] = []

    def lag(records) -> None:
        assert fakes.events[-1] == "commit"
        lagged.append([r.offset for r in records])

    await fakes.run(lag=lag)
    assert lagged == [[0, 1], [2]]
    assert REGISTRY.get_sample_value("medstream_processing_seconds_count", labels) == before + 2


def test_lag_is_each_partitions_high_watermark_past_its_last_offset():
    class Watermarks:
        def get_watermark_offsets(self, tp, timeout, cached):
            assert cached  # no broker round trip in the loop
            if tp.partition == 2:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            return 0, {0: 10, 1: 5}[tp.partition]

    service = "consumer-loop-lag-test"
    records = [SourceRecord(TOPIC, p, o, None, b"") for p, o in [(0, 3), (0, 6), (1, 4), (2, 9)]]
    lag_reporter(Watermarks(), service)(records)  # type: ignore[arg-type]

    def lag(partition: int) -> float | None:
        labels = {"service": service, "topic": TOPIC, "partition": str(partition)}
        return REGISTRY.get_sample_value("medstream_consumer_lag", labels)

    assert (lag(0), lag(1), lag(2)) == (3.0, 0.0, None)
