"""The imaging blob store in the chart: S3 settings and credentials reach exactly the imaging gateway, the imaging
worker and the imaging dispatcher."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.tools import BLOB_SERVICES, DISPATCHER_ON, PRODUCTION, by_kind, component, render, render_error

pytestmark = pytest.mark.unit
S3 = (
    *DISPATCHER_ON,  # off by default
    "blobStore.type=s3",
    "blobStore.bucket=dicom",
    "blobStore.prefix=site-a",
    "objectStorage.endpoint=http://minio.storage:9000",
    "objectStorage.existingSecret=medstream-s3",
    "objectStorage.port=9000",
)


def config(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        component(cm): cm.get("data", {})
        for cm in by_kind(manifests, "ConfigMap")
        if "MEDSTREAM_HTTP_PORT" in cm.get("data", {})
    }


def secret_env(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for d in by_kind(manifests, "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        out[component(d)] = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
    return out


def egress_ports(manifests: list[dict[str, Any]]) -> dict[str, set[Any]]:
    return {
        component(p): {port["port"] for rule in p["spec"]["egress"] for port in rule["ports"]}
        for p in by_kind(manifests, "NetworkPolicy")
    }


def test_default_is_the_local_store_without_object_storage() -> None:
    manifests = render(sets=DISPATCHER_ON)
    assert BLOB_SERVICES <= set(config(manifests))
    for name, data in config(manifests).items():
        blob_keys = {k for k in data if k.startswith(("MEDSTREAM_S3_", "MEDSTREAM_BLOB_STORE"))}
        assert blob_keys == ({"MEDSTREAM_BLOB_STORE"} if name in BLOB_SERVICES else set()), name
        if name in BLOB_SERVICES:
            assert data["MEDSTREAM_BLOB_STORE"] == "local"
    assert all(443 not in ports for name, ports in egress_ports(manifests).items() if name != "triton")


def test_s3_settings_credentials_and_egress_reach_only_the_imaging_services() -> None:
    manifests = render(sets=S3)
    env, secrets, egress = config(manifests), secret_env(manifests), egress_ports(manifests)
    for name in BLOB_SERVICES:
        assert {k: v for k, v in env[name].items() if k.startswith(("MEDSTREAM_S3_", "MEDSTREAM_BLOB_"))} == {
            "MEDSTREAM_BLOB_STORE": "s3",
            "MEDSTREAM_S3_BUCKET": "dicom",
            "MEDSTREAM_S3_PREFIX": "site-a",
            "MEDSTREAM_S3_REGION": "us-east-1",
            "MEDSTREAM_S3_ENDPOINT_URL": "http://minio.storage:9000",
        }
        assert secrets[name]["MEDSTREAM_S3_ACCESS_KEY_ID"] == {"name": "medstream-s3", "key": "AWS_ACCESS_KEY_ID"}
        assert secrets[name]["MEDSTREAM_S3_SECRET_ACCESS_KEY"] == {
            "name": "medstream-s3",
            "key": "AWS_SECRET_ACCESS_KEY",
        }
        assert 9000 in egress[name]
    for name in set(env) - BLOB_SERVICES:
        assert not any(k.startswith(("MEDSTREAM_S3_", "MEDSTREAM_BLOB_")) for k in env[name]), name
        assert not any(k.startswith("MEDSTREAM_S3_") for k in secrets.get(name, {})), name
        assert 9000 not in egress.get(name, set()), name


def test_s3_without_a_secret_leaves_credentials_to_the_pod_identity() -> None:
    manifests = render(sets=(*S3, "objectStorage.existingSecret="))
    for name in BLOB_SERVICES:
        assert not any(k.startswith("MEDSTREAM_S3_") for k in secret_env(manifests)[name]), name


def test_production_example_uses_s3() -> None:
    env = config(render((PRODUCTION,)))
    assert {env[name]["MEDSTREAM_BLOB_STORE"] for name in BLOB_SERVICES} == {"s3"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("blobStore.type=s3",), "blobStore.bucket is required"),
        (("blobStore.type=nfs",), "is not one of local, s3"),
    ],
)
def test_incomplete_blob_store_values_are_refused(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(sets=sets)
