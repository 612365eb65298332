"""The consumer shell of the confluent-kafka services: poll, skip client errors, handle, commit once outputs are
durable, time and report lag.

`consume` is the loop's logic with the I/O passed in (tested with plain values in tests/common/test_consumer_loop.py);
`subscribed`, `dead_letter_producer` and `lag_reporter` are the Kafka ends a service wires it to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.common.config import Settings
from services.common.deadletter import DeadLetters, SourceRecord, confluent_sender
from services.common.kafka import EventProducer
from services.common.telemetry import PROCESSING_SECONDS, record_lag

log = logging.getLogger(__name__)

Poll = Callable[[], Sequence[Message]]
Handle = Callable[[list[SourceRecord]], Awaitable[object]]
Commit = Callable[[], object]
Lag = Callable[[Sequence[SourceRecord]], None]
OnAssign = Callable[[Consumer, list[TopicPartition]], None]


async def consume(
    poll: Poll,
    handle: Handle,
    commit: Commit,
    *,
    service: str,
    topic: str,
    stop: asyncio.Event | None = None,
    lag: Lag | None = None,
) -> None:
    """Poll, handle and commit batch after batch until `stop` is set (None: until cancelled). `poll` and `commit`
    block, so they run in a thread; whatever `handle` raises propagates with its batch uncommitted."""
    while stop is None or not stop.is_set():
        records = polled(await asyncio.to_thread(poll))
        if not records:
            continue
        started = time.perf_counter()
        await handle(records)
        # Outputs are durable (written, or dead-lettered and acknowledged): now the offsets may move.
        await asyncio.to_thread(commit)
        PROCESSING_SECONDS.labels(service, topic).observe((time.perf_counter() - started) / len(records))
        if lag is not None:
            lag(records)


def polled(messages: Sequence[Message]) -> list[SourceRecord]:
    """The records of one poll. A client error (a broker away, say) is logged and skipped: it carries no record."""
    records = []
    for m in messages:
        if m.error():
            log.warning("consumer error", extra={"error": str(m.error())})
        else:
            records.append(SourceRecord.from_confluent(m))
    return records


@contextmanager
def subscribed(
    settings: Settings,
    group: str,
    topics: Sequence[str],
    *,
    config: Mapping[str, Any] | None = None,
    on_assign: OnAssign | None = None,
) -> Iterator[Consumer]:
    """A consumer in `group` that commits only when told to and skips aborted transactions, closed on exit;
    `config` adds or overrides librdkafka properties."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "isolation.level": "read_committed",
            **(config or {}),
        }
    )
    try:
        if on_assign is None:  # the client refuses on_assign=None
            consumer.subscribe(list(topics))
        else:
            consumer.subscribe(list(topics), on_assign=on_assign)
        yield consumer
    finally:
        consumer.close()


@contextmanager
def dead_letter_producer(settings: Settings, service: str) -> Iterator[DeadLetters]:
    """The service's dead letters, sent through an idempotent producer that is flushed and closed on exit."""
    producer = EventProducer(settings, service)
    try:
        yield DeadLetters(service, confluent_sender(producer))
    finally:
        producer.close()


def lag_reporter(consumer: Consumer, service: str) -> Lag:
    """Reports how far each partition of a committed batch is behind its high watermark (librdkafka's cached one,
    so no broker round trip in the loop)."""

    def report(records: Sequence[SourceRecord]) -> None:
        last = {(r.topic, r.partition): r.offset for r in records}
        for (topic, partition), offset in last.items():
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=1.0, cached=True)
            except KafkaException:
                continue
            record_lag(service, topic, partition, high, offset + 1)

    return report
