import pytest
from medstream.events.v1 import deadletter_pb2, finding_pb2, vitals_pb2

from services.common.deadletter import (
    DECODE_ERROR,
    DeadLetters,
    InvalidRecord,
    SourceRecord,
    decode,
    to_dead_letter,
)
from services.common.kafka import SCHEMA_HEADER

pytestmark = pytest.mark.unit


def record(value: bytes | None, headers: dict | None = None) -> SourceRecord:
    return SourceRecord("medstream.vitals.snapshots.v1", 2, 41, b"k", value, headers or {})


def test_decode_accepts_matching_schema():
    snap = vitals_pb2.VitalSignsSnapshot(snapshot_id="s1", patient_id="p1")
    rec = record(snap.SerializeToString(), {SCHEMA_HEADER: b"medstream.events.v1.VitalSignsSnapshot"})
    assert decode(rec, vitals_pb2.VitalSignsSnapshot) == snap


@pytest.mark.parametrize(
    "value, headers",
    [
        (b"", {}),
        (None, {}),
        (b"\xff\xff\xff\xff", {}),
        (
            vitals_pb2.VitalSignsSnapshot(snapshot_id="x").SerializeToString(),
            {SCHEMA_HEADER: b"medstream.events.v1.Finding"},
        ),
    ],
)
def test_decode_refuses_with_decode_error(value, headers):
    with pytest.raises(InvalidRecord) as exc:
        decode(record(value, headers), vitals_pb2.VitalSignsSnapshot)
    assert exc.value.reason == DECODE_ERROR


def test_dead_letter_keeps_everything_needed_to_replay():
    rec = record(b"\x01\x02", {"traceparent": b"00-abc"})
    letter = to_dead_letter(rec, DECODE_ERROR, "boom", "svc")
    assert (
        letter.original_value,
        letter.original_key,
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.consumer,
    ) == (b"\x01\x02", b"k", rec.topic, 2, 41, "svc")
    assert letter.original_headers["traceparent"] == b"00-abc"
    assert letter.reason == deadletter_pb2.DEAD_LETTER_REASON_DECODE_ERROR and letter.failed_at.seconds > 0


async def test_publisher_sends_and_consumer_carries_on():
    sent = []

    async def send(key, letter):
        sent.append((key, letter))

    dl = DeadLetters("svc", send)
    assert await dl.decode_or_dead_letter(record(b"\xff\xff"), finding_pb2.Finding) is None
    ok = finding_pb2.Finding(finding_id="f")
    assert await dl.decode_or_dead_letter(record(ok.SerializeToString()), finding_pb2.Finding) == ok
    assert len(sent) == 1 and sent[0][1].reason == DECODE_ERROR
