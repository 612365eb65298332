import asyncio

import pytest

from services.common.graph import NODE_KEYS, Graph, Node, Relationship
from tests.conftest import unique

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


async def _with_graph(settings, fn):
    graph = Graph.connect(settings)
    try:
        return await fn(graph)
    finally:
        await graph.close()


def test_migrations_create_constraints_and_are_idempotent(local_stack):
    async def go(graph: Graph):
        await graph.migrate()
        await graph.migrate()
        records, _, _ = await graph.driver.execute_query("SHOW CONSTRAINTS YIELD labelsOrTypes, properties")
        return {(r["labelsOrTypes"][0], r["properties"][0]) for r in records}

    constraints = run(_with_graph(local_stack, go))
    assert set(NODE_KEYS.items()) <= constraints


def test_batched_upsert_is_idempotent(local_stack):
    patient = unique("pt")
    findings = [Node("Finding", unique("f"), {"score": i / 10}) for i in range(50)]
    rels = [Relationship(Node("Patient", patient), "HAS_FINDING", f) for f in findings]

    async def go(graph: Graph):
        await graph.migrate()
        first = await graph.upsert(findings, rels)
        await graph.upsert(findings, rels)  # a redelivered batch
        records, _, _ = await graph.driver.execute_query(
            "MATCH (p:Patient {id: $p}) OPTIONAL MATCH (p)-[r:HAS_FINDING]->(f:Finding) "
            "RETURN count(DISTINCT p) AS patients, count(r) AS rels, count(DISTINCT f) AS findings",
            p=patient,
        )
        return first, records[0]

    first, counts = run(_with_graph(local_stack, go))
    assert first == 100
    assert (counts["patients"], counts["rels"], counts["findings"]) == (1, 50, 50)
