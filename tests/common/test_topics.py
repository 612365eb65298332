from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from medstream.events.v1 import (  # noqa: F401  (registers every message type in the pool)
    alert_pb2,
    deadletter_pb2,
    dicom_pb2,
    drug_pb2,
    fhir_pb2,
    finding_pb2,
    graph_pb2,
    research_pb2,
    vitals_pb2,
    wearable_pb2,
)

from services.common.topics import CATALOG, markdown_table

pytestmark = pytest.mark.unit
DOCS = Path(__file__).resolve().parents[2] / "docs" / "TOPICS.md"


def test_every_topic_value_is_a_proto_message_or_a_named_json_standard():
    pool = descriptor_pool.Default()
    for spec in CATALOG:
        if spec.value_type.startswith("JSON: "):
            assert len(spec.value_type) > len("JSON: "), spec.name
            continue
        assert pool.FindMessageTypeByName(spec.value_type), spec.name


def test_topic_names_are_unique_and_versioned():
    names = [t.name for t in CATALOG]
    assert len(names) == len(set(names))
    assert all(n.startswith("medstream.") and n.endswith(".v1") for n in names)


def test_docs_table_is_generated_from_the_catalog():
    assert markdown_table() in DOCS.read_text(), "regenerate with: medstream topics list"
