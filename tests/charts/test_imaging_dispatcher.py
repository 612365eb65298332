"""The imaging dispatcher in the chart: off by default, its destinations rendered for the service, a consumer group
per destination for KEDA, the STOW-RS token only from a Secret, and egress to the PACS and archives for it alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.topics import FHIR_WRITEBACK
from tests.charts.tools import (
    DISPATCHER_ON,
    PRODUCTION,
    VARIANTS,
    by_kind,
    component,
    render,
    render_error,
    render_variant,
)

pytestmark = pytest.mark.unit
NAME = "imaging-dispatcher"
D = f"services.{NAME}"
TOKEN = "MEDSTREAM_DISPATCH_STOW_TOKEN"
BAD_NAME = "use up to 40 lower-case letters, digits and '-'"
# The production example's destinations and the egress rules it gives them.
PRODUCTION_DESTINATIONS = [
    "pacs=dicom://PACS@pacs.hospital.example:104",
    "archive=https://archive.hospital.example/dicomweb",
]
PRODUCTION_EGRESS = [
    {"ports": [{"port": 104, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.30.0.10/32"}}]},
    {"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.30.1.0/28"}}]},
]


def of(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        component(m): m for m in by_kind(manifests, kind) if "app.kubernetes.io/component" in m["metadata"]["labels"]
    }


def settings(manifests: list[dict[str, Any]]) -> dict[str, str]:
    return of(manifests, "ConfigMap")[NAME]["data"]


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = of(manifests, "Deployment")[NAME]["spec"]["template"]["spec"]["containers"]
    return c


def egress(manifests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {name: p["spec"]["egress"] for name, p in of(manifests, "NetworkPolicy").items()}


def test_off_by_default() -> None:
    assert not [m for m in render() if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == NAME]


def test_production_sends_to_a_pacs_and_an_archive() -> None:
    manifests = render((PRODUCTION,))
    env = settings(manifests)
    assert json.loads(env["MEDSTREAM_DISPATCH_DESTINATIONS"]) == PRODUCTION_DESTINATIONS
    assert env["MEDSTREAM_DISPATCH_START"] == "latest"
    assert env["MEDSTREAM_DICOM_AE_TITLE"] == "MEDSTREAM"
    c = container(manifests)
    assert c["args"] == ["run", NAME]
    assert [p["name"] for p in c["ports"]] == ["http"], "a worker: no port but health and metrics"
    (svc,) = [s for s in by_kind(manifests, "Service") if component(s) == NAME]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]


def test_one_consumer_group_per_destination() -> None:
    triggers = of(render((PRODUCTION,)), "ScaledObject")[NAME]["spec"]["triggers"]
    assert [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers] == [
        (f"medstream-{NAME}-pacs", FHIR_WRITEBACK.name),
        (f"medstream-{NAME}-archive", FHIR_WRITEBACK.name),
    ]
    assert {t["metadata"]["offsetResetPolicy"] for t in triggers} == {"latest"}, "as the groups start"
    earliest = of(render_variant("volume-mtls-keda"), "ScaledObject")[NAME]["spec"]["triggers"]
    assert [t["metadata"]["offsetResetPolicy"] for t in earliest] == ["earliest"]
    assert settings(render_variant("volume-mtls-keda"))["MEDSTREAM_DISPATCH_START"] == "earliest"


def test_stow_token_comes_only_from_a_secret() -> None:
    env = {e["name"]: e for e in container(render((PRODUCTION,)))["env"]}
    assert env[TOKEN] == {
        "name": TOKEN,
        "valueFrom": {"secretKeyRef": {"name": "medstream-dicomweb-archive", "key": "token"}},
    }
    assert TOKEN not in {e["name"] for e in container(render(sets=DISPATCHER_ON)).get("env", [])}, "no Secret named"
    for variant in VARIANTS:
        for cm in by_kind(render_variant(variant), "ConfigMap"):
            assert TOKEN not in cm.get("data", {}), f"{variant}: {cm['metadata']['name']}"
        for d in by_kind(render_variant(variant), "Deployment"):
            for e in d["spec"]["template"]["spec"]["containers"][0].get("env", []):
                if e["name"] == TOKEN:
                    assert component(d) == NAME and "secretKeyRef" in e["valueFrom"], variant


def test_egress_to_the_destinations_only_from_the_dispatcher() -> None:
    rules = egress(render((PRODUCTION,)))
    assert rules[NAME][-2:] == PRODUCTION_EGRESS
    for name, own in rules.items():
        if name != NAME:
            assert not [r for r in own if r in PRODUCTION_EGRESS], name
            assert 104 not in {p["port"] for r in own for p in r["ports"]}, name


def test_egress_defaults_to_the_destination_ports() -> None:
    sets = (
        f"{D}.enabled=true",
        f"{D}.dispatch.destinations[0].name=pacs",
        f"{D}.dispatch.destinations[0].url=dicom://PACS@[fd00::10]:11112",
        f"{D}.dispatch.destinations[1].name=archive",
        f"{D}.dispatch.destinations[1].url=https://archive.example/dicomweb",
        f"{D}.dispatch.destinations[2].name=orthanc",
        f"{D}.dispatch.destinations[2].url=http://orthanc.imaging:8042/dicom-web",
        f"{D}.dispatch.destinations[3].name=research",
        f"{D}.dispatch.destinations[3].url=https://research.example/stow",
    )
    manifests = render(sets=sets)
    assert egress(manifests)[NAME][-1] == {"ports": [{"port": p, "protocol": "TCP"} for p in (11112, 443, 8042)]}
    assert len(json.loads(settings(manifests)["MEDSTREAM_DISPATCH_DESTINATIONS"])) == 4


def test_no_network_policy_no_egress_rules() -> None:
    manifests = render((PRODUCTION,), ("networkPolicy.enabled=false",))
    assert not by_kind(manifests, "NetworkPolicy")
    assert settings(manifests)["MEDSTREAM_DISPATCH_DESTINATIONS"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ((f"{D}.enabled=true",), "at least one destination is required"),
        ((*DISPATCHER_ON, f"{D}.dispatch.destinations[0].name=PACS"), BAD_NAME),
        ((*DISPATCHER_ON, f"{D}.dispatch.destinations[0].name=pacs/1"), BAD_NAME),
        (
            (
                *DISPATCHER_ON,
                f"{D}.dispatch.destinations[1].name=pacs",
                f"{D}.dispatch.destinations[1].url=https://pacs.example/dicomweb",
            ),
            'the name "pacs" is used twice',
        ),
        (
            (*DISPATCHER_ON, f"{D}.dispatch.destinations[0].url=dicom://pacs.example:104"),
            "is neither dicom://CALLED_AE@host:port",
        ),
        (
            (*DISPATCHER_ON, f"{D}.dispatch.destinations[0].url=dicom://AN_AE_TITLE_TOO_LONG@pacs.example:104"),
            "is neither dicom://CALLED_AE@host:port",
        ),
        (
            (*DISPATCHER_ON, f"{D}.dispatch.destinations[0].url=ftp://pacs.example/in"),
            "is neither dicom://CALLED_AE@host:port",
        ),
        ((*DISPATCHER_ON, f"{D}.dispatch.start=now"), "is not one of latest, earliest"),
        ((*DISPATCHER_ON, f"{D}.dispatch.egress[0].to[0].ipBlock.cidr=10.0.0.0/8"), "egress[0].ports is required"),
        ((*DISPATCHER_ON, f"{D}.env.{TOKEN}=abc"), "is a credential"),
        (("serviceDefaults.env.MEDSTREAM_NEO4J_PASSWORD=abc",), "is a credential"),
    ],
)
def test_incomplete_or_unsafe_values_are_refused(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(sets=sets)
