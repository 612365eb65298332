"""GraphMutation events <-> graph upserts: producers describe changes, the graph writer applies them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from medstream.events.v1 import common_pb2, graph_pb2

from services.common.graph import NODE_KEYS, Node, Relationship


def _value(v: Any) -> graph_pb2.GraphValue:
    if isinstance(v, bool):
        return graph_pb2.GraphValue(bool_value=v)
    if isinstance(v, int):
        return graph_pb2.GraphValue(int_value=v)
    if isinstance(v, float):
        return graph_pb2.GraphValue(double_value=v)
    return graph_pb2.GraphValue(string_value=str(v))


def _props(props: Mapping[str, Any]) -> dict[str, graph_pb2.GraphValue]:
    return {k: _value(v) for k, v in props.items() if v is not None}


def _node_msg(node: Node) -> graph_pb2.NodeUpsert:
    return graph_pb2.NodeUpsert(
        label=node.label, key_property=NODE_KEYS[node.label], key_value=node.key, properties=_props(node.properties)
    )


def to_mutation(
    mutation_id: str,
    nodes: Iterable[Node] = (),
    relationships: Iterable[Relationship] = (),
    provenance: common_pb2.Provenance | None = None,
) -> graph_pb2.GraphMutation:
    return graph_pb2.GraphMutation(
        mutation_id=mutation_id,
        nodes=[_node_msg(n) for n in nodes],
        relationships=[
            graph_pb2.RelationshipUpsert(
                from_node=_node_msg(r.start), type=r.type, to_node=_node_msg(r.end), properties=_props(r.properties)
            )
            for r in relationships
        ],
        provenance=provenance,
    )


def _py(v: graph_pb2.GraphValue) -> Any:
    kind = v.WhichOneof("kind")
    return getattr(v, kind) if kind else None


def _node(msg: graph_pb2.NodeUpsert) -> Node:
    if msg.label not in NODE_KEYS:
        raise ValueError(f"unknown node label {msg.label!r}")
    if msg.key_property != NODE_KEYS[msg.label]:
        raise ValueError(f"{msg.label} is keyed by {NODE_KEYS[msg.label]}, not {msg.key_property!r}")
    if not msg.key_value:
        raise ValueError(f"{msg.label} node without a key value")
    return Node(msg.label, msg.key_value, {k: _py(v) for k, v in msg.properties.items()})


def from_mutation(msg: graph_pb2.GraphMutation) -> tuple[list[Node], list[Relationship]]:
    """Validate and convert; raises ValueError on labels or keys outside the graph schema."""
    nodes = [_node(n) for n in msg.nodes]
    rels = []
    for r in msg.relationships:
        if not r.type.isidentifier() or not r.type.isupper():
            raise ValueError(f"relationship type {r.type!r} is not UPPER_SNAKE_CASE")
        rels.append(
            Relationship(_node(r.from_node), r.type, _node(r.to_node), {k: _py(v) for k, v in r.properties.items()})
        )
    return nodes, rels
