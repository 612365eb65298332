"""Read what a topic holds (for the CLI, the demo, benchmarks and tests), without joining a consumer group."""

from __future__ import annotations

import logging
import time
from typing import TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import Message

from services.common.config import Settings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "medstream-inspect"})
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in md.partitions
        }
    finally:
        consumer.close()


def read_records(
    settings: Settings, topic: str, since: dict[int, int] | None = None, timeout_s: float = 30.0
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """(key, value, headers) of every committed record after `since` (default: from the beginning) up to the end
    the topic had when called (see `_read`)."""
    out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    for msg in _read(settings, topic, since, timeout_s):
        headers = cast(list[tuple[str, bytes | None]], msg.headers() or [])
        out.append((cast(bytes | None, msg.key()), cast(bytes, msg.value() or b""), {k: v or b"" for k, v in headers}))
    return out


def record_positions(
    settings: Settings, topic: str, since: dict[int, int] | None = None, timeout_s: float = 30.0
) -> list[tuple[int, int, bytes | None]]:
    """(partition, offset, key) of the same records as `read_records`: where each one sits."""
    return [
        (cast(int, m.partition()), cast(int, m.offset()), cast(bytes | None, m.key()))
        for m in _read(settings, topic, since, timeout_s)
    ]


def committed_offsets(settings: Settings, group: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The consumer group's committed offset per partition of `topic` (negative where it has committed none)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in end_offsets(settings, topic, timeout_s)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
    finally:
        consumer.close()


def _read(settings: Settings, topic: str, since: dict[int, int] | None, timeout_s: float) -> list[KafkaMessage]:
    """The records after `since` up to the end the topic had when called.

    Done when the consumer's position reaches that end on each partition, not when the last record is seen:
    transaction markers occupy offsets too, and records of a transaction whose commit has returned become
    readable (read_committed) only once the coordinator has written its markers, which lags the commit. The
    timeout only matters when that never happens (a transaction left open); it is logged then."""
    until = end_offsets(settings, topic, timeout_s)
    start = since or {}
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": "medstream-inspect", "enable.auto.commit": False}
    )
    out: list[KafkaMessage] = []
    try:
        todo = {p: end for p, end in until.items() if end > start.get(p, 0)}
        if not todo:
            return out
        consumer.assign([TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error() and cast(int, msg.offset()) < until[cast(int, msg.partition())]:
                out.append(msg)
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
        if todo:
            log.warning(
                "topic not read to its end before the timeout (an open transaction holds it back?)",
                extra={"topic": topic, "partitions": sorted(todo), "timeout_s": timeout_s},
            )
        return out
    finally:
        consumer.close()


def read_messages(
    settings: Settings, topic: str, message_type: type[M], since: dict[int, int] | None = None, timeout_s: float = 30.0
) -> list[M]:
    return [message_type.FromString(value) for _, value, _ in read_records(settings, topic, since, timeout_s)]
