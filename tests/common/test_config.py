import pytest

from services.common.config import Settings

pytestmark = pytest.mark.unit


def test_defaults_are_the_local_stack():
    s = Settings()
    assert s.kafka_client_config() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert s.neo4j_uri == "bolt://127.0.0.1:7687" and s.triton_grpc_url == "127.0.0.1:8001"


def test_external_cluster_with_sasl_scram_and_tls(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    monkeypatch.setenv("MEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "kafka-0.kafka:9093,kafka-1.kafka:9093")
    monkeypatch.setenv("MEDSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MEDSTREAM_KAFKA_SASL_USERNAME", "medstream")
    monkeypatch.setenv("MEDSTREAM_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("MEDSTREAM_KAFKA_SSL_CAFILE", str(ca))
    monkeypatch.setenv("MEDSTREAM_NEO4J_URI", "neo4j+s://graph.example:7687")
    monkeypatch.setenv("MEDSTREAM_TRITON_GRPC_URL", "triton:8001")
    s = Settings()
    conf = s.kafka_client_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == str(ca) and conf["bootstrap.servers"].count(",") == 1
    assert "s3cret" not in repr(s)  # secrets never print
    assert s.neo4j_uri.startswith("neo4j+s://") and s.triton_grpc_url == "triton:8001"
