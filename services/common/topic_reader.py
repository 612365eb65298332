"""Read what a topic holds (for the CLI, the demo, benchmarks and tests), without joining a consumer group."""

from __future__ import annotations

import time
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from google.protobuf.message import Message

from services.common.config import Settings

M = TypeVar("M", bound=Message)


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "medstream-inspect"})
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in md.partitions}
    finally:
        consumer.close()


def read_records(settings: Settings, topic: str, since: dict[int, int] | None = None,
                 timeout_s: float = 10.0) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """(key, value, headers) of every record after `since` (default: from the beginning) up to the current end."""
    until = end_offsets(settings, topic, timeout_s)
    start = since or {}
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "medstream-inspect",
                         "enable.auto.commit": False})
    out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    try:
        todo = {p: end for p, end in until.items() if end > start.get(p, 0)}
        if not todo:
            return out
        consumer.assign([TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key(), msg.value(), {k: v or b"" for k, v in (msg.headers() or [])}))
            if msg.offset() >= todo.get(msg.partition(), 0) - 1:
                todo.pop(msg.partition(), None)
        return out
    finally:
        consumer.close()


def read_messages(settings: Settings, topic: str, message_type: type[M], since: dict[int, int] | None = None,
                  timeout_s: float = 10.0) -> list[M]:
    return [message_type.FromString(value) for _, value, _ in read_records(settings, topic, since, timeout_s)]
