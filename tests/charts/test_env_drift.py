"""No drift between the chart and the code: every MEDSTREAM_* variable the chart sets is a setting the services
read (services/common/config.py), every setting a deployment needs is set, and each value parses."""

from __future__ import annotations

import os
from typing import Any

import pytest

from services.common.config import Settings
from services.imaging_dispatcher.destinations import parse_destinations
from tests.charts.tools import BLOB_SERVICES, DEPENDS, VARIANTS, WITHOUT_KAFKA, by_kind, component, render_variant

pytestmark = pytest.mark.unit

SETTINGS = {f"MEDSTREAM_{name.upper()}" for name in Settings.model_fields}
# Without these a service runs against the local-stack defaults (127.0.0.1) or cannot be reached or write.
REQUIRED_ALL = {"MEDSTREAM_HTTP_HOST", "MEDSTREAM_HTTP_PORT", "MEDSTREAM_STATE_DIR"}
REQUIRED_KAFKA = {"MEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "MEDSTREAM_KAFKA_SECURITY_PROTOCOL"}
REQUIRED_BY_DEPENDENCY = {
    "triton": {"MEDSTREAM_TRITON_GRPC_URL"},
    "neo4j": {"MEDSTREAM_NEO4J_URI", "MEDSTREAM_NEO4J_USER", "MEDSTREAM_NEO4J_DATABASE"},
}
# Without these a service has nothing to read or nowhere to send.
REQUIRED_BY_SERVICE = {"imaging-dispatcher": {"MEDSTREAM_DISPATCH_DESTINATIONS", "MEDSTREAM_DICOM_AE_TITLE"}}


def service_env(manifests: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Per medstream service: literal env (its ConfigMap and `value`s) and the container spec."""
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in by_kind(manifests, "ConfigMap")}
    out = {}
    for d in by_kind(manifests, "Deployment"):
        if component(d) == "triton":
            continue
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for e in c.get("env", []):
            env[e["name"]] = e.get("value", "<from secret>")
        out[component(d)] = (env, c)
    return out


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, tuple[dict[str, str], dict[str, Any]]]]:
    return request.param, service_env(render_variant(request.param))


def test_chart_sets_only_settings_the_services_read(rendered):
    variant, services = rendered
    for name, (env, _) in services.items():
        unknown = set(env) - SETTINGS
        assert not unknown, f"{variant}/{name}: the chart sets {sorted(unknown)}, which Settings does not read"


def test_chart_sets_every_required_setting(rendered):
    variant, services = rendered
    for name, (env, _) in services.items():
        needed = REQUIRED_ALL.union(*(REQUIRED_BY_DEPENDENCY.get(d, set()) for d in DEPENDS[name]))
        needed |= REQUIRED_BY_SERVICE.get(name, set())
        if name in BLOB_SERVICES:
            needed |= {"MEDSTREAM_BLOB_STORE"}
        if name in WITHOUT_KAFKA:
            kafka = sorted(k for k in env if k.startswith("MEDSTREAM_KAFKA_"))
            assert not kafka, f"{variant}/{name}: never touches Kafka, yet the chart sets {kafka}"
        else:
            needed |= REQUIRED_KAFKA
            protocol = env["MEDSTREAM_KAFKA_SECURITY_PROTOCOL"]
            if protocol.startswith("SASL"):
                needed |= {f"MEDSTREAM_KAFKA_SASL_{k}" for k in ("MECHANISM", "USERNAME", "PASSWORD")}
            if protocol.endswith("SSL"):
                needed |= {"MEDSTREAM_KAFKA_SSL_CAFILE"}
        missing = needed - set(env)
        assert not missing, f"{variant}/{name}: {sorted(missing)} not set"


def test_values_parse_as_settings(rendered, monkeypatch: pytest.MonkeyPatch):
    """The literal values validate against Settings (types, Literal choices) and file settings point at mounts."""
    variant, services = rendered
    for name, (env, container) in services.items():
        for key in [k for k in os.environ if k.startswith("MEDSTREAM_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, "secret-from-kubernetes" if value == "<from secret>" else value)
        settings = Settings()
        assert settings.http_host == "0.0.0.0", f"{variant}/{name}: must listen on the pod IP for probes"
        # the dispatcher's own parser takes the destinations (names, URL shapes, AE titles)
        parse_destinations(
            settings.dispatch_destinations,
            calling_ae=settings.dicom_ae_title,
            timeout_s=settings.dispatch_timeout_s,
            stow_token=None,
        )
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for path in (
            settings.kafka_ssl_cafile,
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile,
            settings.wearables_registry,
            settings.fhir_clients,
            settings.cds_hooks_clients,
            settings.dicom_stow_clients,
            settings.dicom_blob_dir,
            settings.state_dir,
        ):
            if path is not None:
                assert any(str(path).startswith(m) for m in mounts), f"{variant}/{name}: {path} is not mounted"
