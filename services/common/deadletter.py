"""The one dead-letter path: undecodable or invalid records go to the dead-letter topic with a reason."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, deadletter_pb2

from services.common.kafka import SCHEMA_HEADER
from services.common.telemetry import (
    CONSUMED,
    DEAD_LETTERED,
    child_traceparent,
    current_traceparent,
    traceparent_from_headers,
)
from services.common.topics import DEAD_LETTERS

log = logging.getLogger(__name__)
M = TypeVar("M", bound=ProtoMessage)
Reason = deadletter_pb2.DeadLetterReason
DECODE_ERROR = deadletter_pb2.DEAD_LETTER_REASON_DECODE_ERROR
VALIDATION_ERROR = deadletter_pb2.DEAD_LETTER_REASON_VALIDATION_ERROR
UNSUPPORTED = deadletter_pb2.DEAD_LETTER_REASON_UNSUPPORTED
PROCESSING_ERROR = deadletter_pb2.DEAD_LETTER_REASON_PROCESSING_ERROR


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A consumed record, whichever client read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_faust(cls, event: Any) -> SourceRecord:
        msg = event.message
        return cls(
            msg.topic, msg.partition, msg.offset, _as_bytes(msg.key), _as_bytes(msg.value), _header_map(msg.headers)
        )

    @classmethod
    def from_confluent(cls, msg: Any) -> SourceRecord:
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), _header_map(msg.headers()))

    def provenance(self, producer: str, source_event_id: str) -> common_pb2.Provenance:
        """Where an output came from: this record's topic, partition and offset, and the source event's id."""
        return common_pb2.Provenance(
            producer=producer,
            source_event_id=source_event_id,
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=self.offset,
        )


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _header_map(headers: Any) -> dict[str, bytes]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (v or b"") for k, v in items}


class InvalidRecord(Exception):
    """A record that must not be processed; carries the dead-letter reason."""

    def __init__(self, reason: int, problems: Sequence[str] | str) -> None:
        self.reason = reason
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def decode(record: SourceRecord, message_type: type[M]) -> M:
    """Parse the value as `message_type`, refusing records whose schema header names another type."""
    expected = message_type.DESCRIPTOR.full_name
    declared = record.headers.get(SCHEMA_HEADER)
    if declared is not None and declared.decode("utf-8", "replace") != expected:
        raise InvalidRecord(DECODE_ERROR, f"schema header {declared!r} is not {expected}")
    if not record.value:
        raise InvalidRecord(DECODE_ERROR, "empty value")
    try:
        return message_type.FromString(record.value)
    except (DecodeError, RuntimeError) as exc:
        raise InvalidRecord(DECODE_ERROR, f"not a {expected}: {exc}") from exc


def to_dead_letter(record: SourceRecord, reason: int, error_text: str, consumer: str) -> deadletter_pb2.DeadLetter:
    failed_at = Timestamp()
    failed_at.GetCurrentTime()
    return deadletter_pb2.DeadLetter(
        original_value=record.value or b"",
        original_key=record.key or b"",
        original_headers=dict(record.headers),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        reason=reason,  # type: ignore[arg-type]
        error_text=error_text[:4000],
        consumer=consumer,
        failed_at=failed_at,
    )


SendFn = Callable[[bytes | None, deadletter_pb2.DeadLetter], Awaitable[Any]]


class DeadLetters:
    """Publishes dead letters through whichever producer the consumer already has; waits for the ack."""

    def __init__(self, service: str, send: SendFn) -> None:
        self.service = service
        self._send = send

    async def publish(self, record: SourceRecord, reason: int, error_text: str) -> None:
        letter = to_dead_letter(record, reason, error_text, self.service)
        await self._send(record.key, letter)
        reason_name = Reason.Name(reason)  # type: ignore[arg-type]
        DEAD_LETTERED.labels(self.service, record.topic, reason_name).inc()
        # error_text can quote input: the log formatter scrubs it, and the full text is only on the topic.
        log.warning(
            "dead-lettered record",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason_name,
            },
        )

    async def accept(self, record: SourceRecord, message_type: type[M], validate: Callable[[M], list[str]]) -> M | None:
        """The consumer's front door: count the record, continue its trace, decode and validate it; a record that
        fails either is dead-lettered with its reason and None comes back."""
        CONSUMED.labels(self.service, record.topic).inc()
        current_traceparent.set(child_traceparent(traceparent_from_headers(record.headers)))
        message = await self.decode_or_dead_letter(record, message_type)
        if message is None:
            return None
        problems = validate(message)
        if problems:
            await self.publish(record, VALIDATION_ERROR, "; ".join(problems))
            return None
        return message

    async def decode_or_dead_letter(self, record: SourceRecord, message_type: type[M]) -> M | None:
        try:
            return decode(record, message_type)
        except InvalidRecord as exc:
            await self.publish(record, exc.reason, str(exc))
            return None


def confluent_sender(producer: Any) -> SendFn:
    """SendFn over an `EventProducer`."""

    async def send(key: bytes | None, letter: deadletter_pb2.DeadLetter) -> Any:
        return await producer.send(DEAD_LETTERS.name, key, letter)

    return send
