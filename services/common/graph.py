"""Neo4j adapter: schema migrations and batched, idempotent upserts (UNWIND ... MERGE on natural keys)."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncManagedTransaction
from neo4j.exceptions import ServiceUnavailable, SessionExpired, TransientError

from services.common.config import Settings

log = logging.getLogger(__name__)

# Natural keys of every node label the services write; a uniqueness constraint backs each one.
NODE_KEYS: dict[str, str] = {
    "Patient": "id",
    "Encounter": "id",
    "Study": "study_instance_uid",
    "Series": "series_instance_uid",
    "Instance": "sop_instance_uid",
    "Finding": "finding_id",
    "Alert": "alert_id",
    "Condition": "code",
    "Observation": "id",
    "Medication": "id",
    "Phenotype": "hpo_id",
    "Disease": "id",
    "Model": "key",
    "Device": "id",
    "Trial": "id",
    "Compound": "inchikey",
    "Target": "id",
    "Assay": "id",
}
# Relationship types of which two nodes may hold several, told apart by this property (MERGEd on it).
RELATIONSHIP_KEYS: dict[str, str] = {"AT_RISK_OF": "reaction"}
INDEXES: dict[str, tuple[str, ...]] = {"Finding": ("kind",), "Alert": ("kind",)}

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _ident(name: str) -> str:
    """Labels, types and property names cannot be query parameters: allow only plain identifiers."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe Cypher identifier: {name!r}")
    return name


def migrations() -> list[str]:
    statements = [
        f"CREATE CONSTRAINT {label.lower()}_{key}_unique IF NOT EXISTS FOR (n:{label}) REQUIRE n.{key} IS UNIQUE"
        for label, key in NODE_KEYS.items()
    ]
    statements += [
        f"CREATE INDEX {label.lower()}_{prop}_idx IF NOT EXISTS FOR (n:{label}) ON (n.{prop})"
        for label, props in INDEXES.items()
        for prop in props
    ]
    return statements


@dataclass(frozen=True, slots=True)
class Node:
    label: str
    key: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Relationship:
    start: Node
    type: str
    end: Node
    properties: dict[str, Any] = field(default_factory=dict)


def node_batches(nodes: Iterable[Node]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rows grouped by (label, key property): one UNWIND statement per group."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for node in nodes:
        groups[(node.label, NODE_KEYS[node.label])].append({"key": node.key, "props": node.properties})
    return groups


def relationship_batches(rels: Iterable[Relationship]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rel in rels:
        groups[(rel.start.label, rel.type, rel.end.label)].append(
            {
                "start": rel.start.key,
                "end": rel.end.key,
                "props": rel.properties,
                "start_props": rel.start.properties,
                "end_props": rel.end.properties,
            }
        )
    return groups


def node_statement(label: str, key: str) -> str:
    return f"UNWIND $rows AS row MERGE (n:{_ident(label)} {{{_ident(key)}: row.key}}) SET n += row.props"


def relationship_statement(start_label: str, rel_type: str, end_label: str) -> str:
    a, b = _ident(start_label), _ident(end_label)
    key = RELATIONSHIP_KEYS.get(rel_type)
    merge_on = f" {{{_ident(key)}: row.props.{_ident(key)}}}" if key else ""
    return (
        f"UNWIND $rows AS row "
        f"MERGE (a:{a} {{{NODE_KEYS[a]}: row.start}}) SET a += row.start_props "
        f"MERGE (b:{b} {{{NODE_KEYS[b]}: row.end}}) SET b += row.end_props "
        f"MERGE (a)-[r:{_ident(rel_type)}{merge_on}]->(b) SET r += row.props"
    )


class Graph:
    """Async Neo4j access for services; every write is a retried managed transaction."""

    def __init__(self, driver: AsyncDriver, database: str) -> None:
        self.driver = driver
        self.database = database

    @classmethod
    def connect(cls, settings: Settings) -> Graph:
        auth = (settings.neo4j_user, settings.neo4j_password.get_secret_value()) if settings.neo4j_password else None
        driver = AsyncGraphDatabase.driver(
            settings.neo4j_uri, auth=auth, max_transaction_retry_time=30.0, notifications_min_severity="OFF"
        )
        return cls(driver, settings.neo4j_database)

    async def close(self) -> None:
        await self.driver.close()

    async def ready(self) -> bool:
        # A plain session run: execute_query would retry a refused connection for up to 30 s.
        try:
            async with self.driver.session(database=self.database) as session:
                record = await (await session.run("RETURN 1 AS ok")).single()
                return bool(record and record["ok"] == 1)
        except (ServiceUnavailable, SessionExpired, OSError):
            return False

    async def migrate(self) -> None:
        for statement in migrations():
            await self.driver.execute_query(statement, database_=self.database)

    async def upsert(self, nodes: Sequence[Node] = (), relationships: Sequence[Relationship] = ()) -> int:
        """MERGE all nodes then relationships in one transaction; safe to repeat. Returns rows written."""
        node_groups = node_batches(nodes)
        rel_groups = relationship_batches(relationships)

        async def work(tx: AsyncManagedTransaction) -> int:
            written = 0
            for (label, key), rows in node_groups.items():
                await (await tx.run(node_statement(label, key), rows=rows)).consume()
                written += len(rows)
            for (a, rel_type, b), rows in rel_groups.items():
                await (await tx.run(relationship_statement(a, rel_type, b), rows=rows)).consume()
                written += len(rows)
            return written

        async with self.driver.session(database=self.database) as session:
            # execute_write retries TransientError / ServiceUnavailable with backoff (max_transaction_retry_time).
            return await session.execute_write(work)


TRANSIENT_ERRORS = (TransientError, ServiceUnavailable, SessionExpired)
