import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.graph import (
    NODE_KEYS,
    Node,
    Relationship,
    migrations,
    node_batches,
    node_statement,
    relationship_batches,
    relationship_statement,
)
from services.common.graph_events import from_mutation, to_mutation

pytestmark = pytest.mark.unit


def test_every_label_has_a_uniqueness_constraint():
    statements = migrations()
    for label, key in NODE_KEYS.items():
        assert any(f"(n:{label}) REQUIRE n.{key} IS UNIQUE" in s for s in statements)
    assert all("IF NOT EXISTS" in s for s in statements)


def test_statements_merge_on_natural_keys():
    assert node_statement("Patient", "id") == "UNWIND $rows AS row MERGE (n:Patient {id: row.key}) SET n += row.props"
    rel = relationship_statement("Patient", "HAS_FINDING", "Finding")
    assert "MERGE (a:Patient {id: row.start})" in rel and "MERGE (b:Finding {finding_id: row.end})" in rel
    assert "MERGE (a)-[r:HAS_FINDING]->(b)" in rel and "CREATE" not in rel


@pytest.mark.parametrize("bad", ["Patient) DETACH DELETE (n", "a b", "1abc", ""])
def test_identifiers_cannot_inject_cypher(bad):
    with pytest.raises(ValueError):
        node_statement(bad, "id")


def test_batches_group_rows_by_statement():
    p1, p2, f = Node("Patient", "p1"), Node("Patient", "p2"), Node("Finding", "f1", {"score": 0.5})
    groups = node_batches([p1, p2, f])
    assert [r["key"] for r in groups[("Patient", "id")]] == ["p1", "p2"]
    rels = relationship_batches([Relationship(p1, "HAS_FINDING", f), Relationship(p2, "HAS_FINDING", f)])
    assert len(rels[("Patient", "HAS_FINDING", "Finding")]) == 2


props = st.dictionaries(
    st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True),
    st.one_of(st.text(max_size=20), st.integers(-(2**62), 2**62), st.booleans(), st.floats(allow_nan=False)),
    max_size=4,
)


@given(st.text(min_size=1, max_size=30), props, st.text(min_size=1, max_size=30), props)
def test_mutation_round_trip(patient, patient_props, finding, finding_props):
    p, f = Node("Patient", patient, patient_props), Node("Finding", finding, finding_props)
    msg = to_mutation("m1", nodes=[p], relationships=[Relationship(p, "HAS_FINDING", f, {"w": 1})])
    nodes, rels = from_mutation(type(msg).FromString(msg.SerializeToString()))
    assert nodes == [p] and rels == [Relationship(p, "HAS_FINDING", f, {"w": 1})]


@pytest.mark.parametrize(
    "label, key_property, key, rel_type",
    [
        ("Nurse", "id", "x", "HAS"),  # label outside the schema
        ("Patient", "name", "x", "HAS"),  # wrong natural key
        ("Patient", "id", "", "HAS"),  # empty key
        ("Patient", "id", "x", "has-x"),  # relationship type not UPPER_SNAKE
    ],
)
def test_mutations_outside_the_schema_are_rejected(label, key_property, key, rel_type):
    msg = to_mutation("m", relationships=[Relationship(Node("Patient", "p"), "HAS", Node("Finding", "f"))])
    msg.relationships[0].type = rel_type
    msg.relationships[0].from_node.label = label
    msg.relationships[0].from_node.key_property = key_property
    msg.relationships[0].from_node.key_value = key
    with pytest.raises(ValueError):
        from_mutation(msg)
