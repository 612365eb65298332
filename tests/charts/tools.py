"""Tools for the chart and image checks (helm, hadolint, offline schemas), where install-chart-tools.sh puts them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.topics import (
    DICOM_INSTANCES,
    DICOM_SERIES,
    DRUG_GENERATION_REQUESTS,
    DRUG_LIBRARY,
    FHIR_EVENTS,
    FHIR_WRITEBACK,
    GRAPH_MUTATIONS,
    TRIAL_PROTOCOLS,
    VITALS_SNAPSHOTS,
    WEARABLE_SAMPLES,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medstream"
EXAMPLES = CHART / "examples"
INSTALL_HINT = "run scripts/install-chart-tools.sh (make chart-test does)"
# helm's own default (v1.20) is below the chart's kubeVersion; schemas are checked for this version and
# for the newest one the schema package ships (tests/charts/test_chart.py).
KUBE_VERSION = "1.27.0"
RELEASE, NAMESPACE = "medstream", "medstream"

# Where each service reads from: the consumer group (faust app id / group.id) and the topics KEDA watches.
CONSUMES: dict[str, tuple[str, ...]] = {
    "deterioration": (VITALS_SNAPSHOTS.name,),
    "graph-writer": (GRAPH_MUTATIONS.name,),
    "wearables": (WEARABLE_SAMPLES.name,),
    "decision-support": (FHIR_EVENTS.name,),
    "imaging": (DICOM_INSTANCES.name, DICOM_SERIES.name),  # assembly, then analysis of its own completed series
    "imaging-dispatcher": (FHIR_WRITEBACK.name,),
    "trial-matching": (FHIR_EVENTS.name, TRIAL_PROTOCOLS.name),
    "adverse-drug-reactions": (FHIR_EVENTS.name,),
    "virtual-screening": (DRUG_LIBRARY.name,),
    "molecule-generation": (DRUG_GENERATION_REQUESTS.name,),
}
# Which dependency each service calls besides Kafka (its /readyz checks it).
DEPENDS: dict[str, tuple[str, ...]] = {
    "deterioration": ("triton",),
    "graph-writer": ("neo4j",),
    "wearables": ("triton",),
    "wearables-gateway": (),
    "fhir-gateway": (),
    "decision-support": ("triton",),
    "cds-hooks": ("triton",),
    "imaging-gateway": (),
    "imaging": ("triton", "neo4j"),
    "imaging-dispatcher": (),
    "trial-matching": (),
    "adverse-drug-reactions": ("triton",),
    "virtual-screening": ("triton",),
    "molecule-generation": ("triton",),
}
# Outside traffic; the gRPC port, if any.
GATEWAYS: dict[str, int | None] = {
    "wearables-gateway": 50051,
    "fhir-gateway": None,
    "cds-hooks": None,
    "imaging-gateway": 11112,
}
# The name of that port where it is not gRPC.
GATEWAY_PORT_NAMES = {"imaging-gateway": "dimse"}
# Services that never touch Kafka (no bootstrap servers, credentials or broker egress).
WITHOUT_KAFKA = {"cds-hooks"}
# Services that read or write the imaging blob store (blobStore: true): its settings, S3 credentials and egress.
BLOB_SERVICES = {"imaging-gateway", "imaging", "imaging-dispatcher"}
# Off in values.yaml (useless without configuration); the variants below turn them on.
DISABLED_BY_DEFAULT = {"imaging-dispatcher"}
# Services with one consumer group per destination, <consumerGroup>-<destination name>, instead of one group.
DISPATCHERS = {"imaging-dispatcher"}
# The imaging dispatcher switched on with one C-STORE destination (--set values).
DISPATCHER_ON = (
    "services.imaging-dispatcher.enabled=true",
    "services.imaging-dispatcher.dispatch.destinations[0].name=pacs",
    "services.imaging-dispatcher.dispatch.destinations[0].url=dicom://PACS@pacs.hospital.example:104",
)


def find_tool(name: str) -> str:
    """A tool on PATH, in the venv or in Go's bin directory; a missing one fails the test with how to install it."""
    candidates = [
        shutil.which(name),
        str(Path(sys.executable).parent / name),
        str(Path(os.environ.get("GOBIN", "")) / name) if os.environ.get("GOBIN") else None,
        str(Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / name),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@cache
def _helm_template(values_files: tuple[str, ...], sets: tuple[str, ...]) -> tuple[int, str, str]:
    args = [
        find_tool("helm"),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]
    for f in values_files:
        args += ["-f", f]
    for s in sets:
        args += ["--set", s]
    result = run(args)
    return result.returncode, result.stdout, result.stderr


def render(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` with these values; the manifests as dicts (cached per argument set)."""
    code, out, err = _helm_template(values_files, sets)
    assert code == 0, f"helm template failed:\n{err}"
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> str:
    """`helm template` that must fail; its error text."""
    code, _, err = _helm_template(values_files, sets)
    assert code != 0, f"helm template accepted values it should refuse: {values_files} {sets}"
    return err


# Value sets every check runs against: the defaults, the production example, the Strimzi + Neo4j examples and
# variants that exercise the other branches of the templates.
PRODUCTION = str(EXAMPLES / "values-production.yaml")
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "production": ((PRODUCTION,), ()),
    "strimzi-neo4j": (
        (str(EXAMPLES / "strimzi" / "values-strimzi.yaml"), str(EXAMPLES / "neo4j" / "values-medstream.yaml")),
        (),
    ),
    "hpa-s3-cpu": (
        (),
        (
            "autoscaling.mode=hpa",
            "autoscaling.consumers.hpa.lagMetric=medstream_consumer_lag",
            "autoscaling.triton.hpa.queueMetric=triton_queue_time_per_request_us",
            "triton.modelRepository.source=s3",
            "triton.modelRepository.bucket=models",
            "triton.modelRepository.prefix=medstream",
            "objectStorage.endpoint=https://minio.storage:9000",
            "objectStorage.existingSecret=medstream-models",
            "objectStorage.port=9000",
            "triton.gpu.count=0",
            "kafka.sasl.usernameKey=user",
            # the dispatcher with a STOW-RS archive and a token, egress derived from the URLs' ports
            *DISPATCHER_ON,
            "services.imaging-dispatcher.dispatch.destinations[1].name=archive",
            "services.imaging-dispatcher.dispatch.destinations[1].url=https://archive.example/dicomweb",
            "services.imaging-dispatcher.dispatch.stowToken.existingSecret=medstream-dicomweb-archive",
        ),
    ),
    "plaintext-external-triton": (
        (),
        (
            "kafka.securityProtocol=PLAINTEXT",
            "kafka.bootstrapServers=kafka:9092",
            "triton.enabled=false",
            "triton.externalGrpcUrl=triton.ml:8001",
            "autoscaling.mode=none",
            "neo4j.existingSecret=",
            "monitoring.serviceMonitor.enabled=false",
            "monitoring.prometheusRule.enabled=false",
            "monitoring.grafanaDashboard.enabled=false",
            *DISPATCHER_ON,
        ),
    ),
    "volume-mtls-keda": (
        (),
        (
            "triton.modelRepository.source=volume",
            "triton.modelRepository.existingClaim=models",
            "kafka.securityProtocol=SSL",
            "kafka.tls.clientSecret=medstream-kafka-client",
            *DISPATCHER_ON,
            "services.imaging-dispatcher.dispatch.start=earliest",
            "services.imaging-dispatcher.dispatch.egress[0].ports={104}",
            "services.imaging-dispatcher.dispatch.egress[0].to[0].ipBlock.cidr=10.30.0.10/32",
        ),
    ),
}


def render_variant(name: str) -> list[dict[str, Any]]:
    values_files, sets = VARIANTS[name]
    return render(values_files, sets)


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def component(manifest: dict[str, Any]) -> str:
    return manifest["metadata"]["labels"]["app.kubernetes.io/component"]
