"""Service configuration from `MEDSTREAM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a service needs to find its servers; defaults are the local stack."""

    model_config = SettingsConfigDict(env_prefix="MEDSTREAM_", env_file=None, extra="ignore")

    service_name: str = "medstream"
    state_dir: Path = Field(default_factory=lambda: Path.home() / ".medstream")

    # Kafka: PLAINTEXT locally; SASL_SSL with SCRAM or SSL (mTLS) against a hospital cluster.
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_topic_partitions: int = 3
    kafka_replication_factor: int = 1

    neo4j_uri: str = "bolt://127.0.0.1:7687"
    neo4j_user: str = "neo4j"
    neo4j_password: SecretStr | None = None
    neo4j_database: str = "neo4j"

    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = 10.0
    triton_max_concurrency: int = 16
    triton_retries: int = 4

    # Wearables ingestion gateway
    wearables_registry: Path | None = None  # vendors, token hashes, devices; default: the bundled dev registry
    wearables_templates_dir: Path | None = None  # device mapping templates; default: the bundled ones
    wearables_grpc_port: int = 50051
    wearables_max_body_bytes: int = 8 * 1024 * 1024

    # FHIR ingestion gateway: callers and their token hashes (YAML); default: the bundled dev file
    fhir_clients: Path | None = None
    fhir_max_body_bytes: int = 64 * 1024 * 1024  # a Synthea patient's whole record is a few MB, some tens of MB
    fhir_max_resource_bytes: int = 900_000  # one Kafka record per resource, below the broker's 1 MiB default

    # Imaging (DICOM) gateway: DIMSE Storage SCP and DICOMweb STOW-RS
    dicom_ae_title: str = "MEDSTREAM"
    dicom_dimse_port: int = 11112
    dicom_blob_dir: Path | None = None  # the local blob store's folder; default: <state_dir>/blobs
    dicom_stow_clients: Path | None = None  # STOW-RS callers' token hashes; default: the bundled dev file
    dicom_max_body_bytes: int = 512 * 1024 * 1024
    dicom_sop_classes: list[str] = []  # accepted SOP class UIDs; empty: pynetdicom's storage classes
    dicom_transfer_syntaxes: list[str] = []  # empty: every transfer syntax pydicom knows
    dicom_publish_timeout_ms: int = 15_000  # how long a sender waits for Kafka before 0xA700 / 503
    # Complete a series at its Images in Acquisition (0020,1002) count instead of the quiet period. Off by default:
    # only for senders known to fill it with the series' instance count (one acquisition per series).
    dicom_trust_images_in_acquisition: bool = False

    # Blob store for DICOM instances and imaging outputs (services/common/blobs.py): "local" (dicom_blob_dir,
    # file:// URIs) or "s3" (s3:// URIs, readable from any pod). No access key: boto3's own chain (IRSA, env).
    blob_store: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # an S3-compatible server (MinIO, Ceph); None: AWS S3
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_timeout_s: float = 10.0

    # Imaging service: a series is complete after this long without a new instance (or at the announced count)
    imaging_quiet_s: float = 10.0
    # Completed series keep their instance list this long (late instances join a revision with the earlier ones);
    # after it only the revision count is kept, and a later instance starts a revision of its own.
    imaging_state_retention_s: float = 6 * 3600.0

    # Imaging dispatcher: where DICOM SEG/SR go after an analysis (services/imaging_dispatcher). Each entry is
    # "name=url": dicom://CALLED_AE@host:port (DIMSE C-STORE) or http(s)://host/dicomweb (STOW-RS to <url>/studies).
    # Each destination has its own consumer group, so one that is down does not hold up the others.
    dispatch_destinations: list[str] = []
    dispatch_stow_token: SecretStr | None = None  # bearer token for the STOW-RS destinations
    dispatch_timeout_s: float = 30.0  # per association / request
    dispatch_start: Literal["latest", "earliest"] = "latest"  # where a new destination's group starts

    # Decision support: weight of the model against the HPO phenotype match, cards per patient
    cds_alpha: float = 0.7
    cds_top: int = 3
    # Virtual screening: a scored molecule is a hit when its predicted activity minus one ensemble spread reaches
    # this (pIC50-like units of the activity model's training series; 7 is 100 nM)
    screening_hit_threshold: float = 7.0

    # CDS Hooks service: callers (EHRs) and their token hashes, same YAML shape as fhir_clients
    cds_hooks_clients: Path | None = None

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_level: str = "INFO"
    # Lower than Kafka's default so a restarted worker rejoins its group quickly.
    kafka_session_timeout_ms: int = 10_000

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka (confluent-kafka) connection properties."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            conf["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        return conf


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
