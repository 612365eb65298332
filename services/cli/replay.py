"""Replays: recorded vital-sign snapshots into Kafka, and dead letters back to their source topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf import json_format
from medstream.events.v1 import deadletter_pb2, vitals_pb2
from rich.console import Console

from services.common.config import Settings
from services.common.kafka import EventProducer
from services.common.topic_reader import read_messages
from services.common.topics import DEAD_LETTERS, VITALS_SNAPSHOTS

SAMPLE_VITALS = Path(__file__).resolve().parents[2] / "samples" / "vitals_snapshots.jsonl"


def parse_vitals(lines: list[str]) -> list[vitals_pb2.VitalSignsSnapshot]:
    """Protobuf-JSON snapshots, one per line; raises ValueError naming the first bad line."""
    snapshots = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            snapshots.append(json_format.Parse(line, vitals_pb2.VitalSignsSnapshot()))
        except json_format.ParseError as exc:
            raise ValueError(f"line {n}: {exc}") from exc
    return snapshots


def replay_vitals(settings: Settings, path: Path, console: Console) -> int:
    snapshots = parse_vitals(path.read_text().splitlines())
    producer = EventProducer(settings, "replay")
    for s in snapshots:
        producer.send_sync(VITALS_SNAPSHOTS.name, s.patient_id.encode(), s)
    producer.close()
    return len(snapshots)


def replay_dead_letters(settings: Settings, reason: str | None, console: Console) -> int:
    """Send dead letters' original bytes back to their source topic (after the cause was fixed)."""
    wanted = deadletter_pb2.DeadLetterReason.Value(f"DEAD_LETTER_REASON_{reason}") if reason else None
    letters = [
        d
        for d in read_messages(settings, DEAD_LETTERS.name, deadletter_pb2.DeadLetter)
        if wanted is None or d.reason == wanted
    ]
    producer = EventProducer(settings, "replay")

    async def send_all() -> None:
        for d in letters:
            headers = list(d.original_headers.items())
            await producer.send(d.source_topic, d.original_key or None, d.original_value, headers)

    asyncio.run(send_all())
    producer.close()
    return len(letters)
