"""`medstream trials`: publish protocols to the trials topic and the coordinator's view of candidates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import research_pb2

from services.common.config import Settings
from services.common.graph import Graph
from services.common.topics import TRIAL_PROTOCOLS

PROTOCOLS = Path(__file__).resolve().parents[1] / "research" / "trials" / "protocols.json"


def load_protocols(path: Path = PROTOCOLS) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    return list(doc["trials"] if isinstance(doc, dict) else doc)


def publish(settings: Settings, protocols: Iterable[Mapping[str, Any]], partitions: int | None = None) -> int:
    """Write each protocol to every partition of the trials topic (each matcher instance re-matches the patients of
    the partitions it holds); the number of protocols written."""
    count = settings.kafka_topic_partitions if partitions is None else partitions
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True, "acks": "all"})
    now = Timestamp()
    now.FromNanoseconds(time.time_ns())
    written = 0
    for protocol in protocols:
        msg = research_pb2.TrialProtocol(
            trial_id=str(protocol["id"]),
            version=int(protocol.get("version", 1)),
            protocol_json=json.dumps(protocol, separators=(",", ":")).encode(),
            published_at=now,
        )
        for partition in range(count):
            producer.produce(
                TRIAL_PROTOCOLS.name, msg.SerializeToString(), key=msg.trial_id.encode(), partition=partition
            )
        written += 1
    if producer.flush(30):
        raise RuntimeError("Kafka did not acknowledge every protocol within 30 s")
    return written


@dataclass(frozen=True, slots=True)
class Candidate:
    patient_id: str
    score: float
    unknown: int
    eligible: bool
    still_unknown: str  # the criteria no data decides yet, for the coordinator to check


CANDIDATES = """
MATCH (p:Patient)-[r:ELIGIBLE_FOR]->(t:Trial {id: $trial})
WHERE r.candidate
RETURN p.id AS patient_id, r.score AS score, r.unknown AS unknown, r.eligible AS eligible,
       r.open_criteria AS open_criteria
ORDER BY r.eligible DESC, r.score DESC, r.unknown ASC, p.id
LIMIT $limit
"""


async def candidates(settings: Settings, trial_id: str, limit: int = 50) -> list[Candidate]:
    """The coordinator's list for one trial: candidates (no criterion rules them out), eligible ones first, then by
    score and by how much is still unknown."""
    graph = Graph.connect(settings)
    try:
        async with graph.driver.session(database=graph.database) as session:
            result = await session.run(CANDIDATES, trial=trial_id, limit=limit)
            rows = [r async for r in result]
    finally:
        await graph.close()
    return [
        Candidate(
            r["patient_id"], float(r["score"]), int(r["unknown"]), bool(r["eligible"]), str(r["open_criteria"] or "")
        )
        for r in rows
    ]
