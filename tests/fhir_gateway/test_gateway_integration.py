"""The FHIR gateway against real Kafka: a request's resources are committed in one transaction, keyed by patient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from medstream.events.v1 import fhir_pb2

from services.cli.population import generate, renumber_patients, replay
from services.common.topic_reader import end_offsets, read_records
from services.common.topics import FHIR_EVENTS
from tests.conftest import ServiceProcess, unique, wait_for
from tests.fhir_gateway.test_http import AUTH, CONDITION, OBSERVATION, bundle

pytestmark = pytest.mark.integration
PORT = 18097
OTHER_TOKEN = "dev-subscription-token"  # samples/fhir_clients.yaml: a second caller


@pytest.fixture(scope="module")
def gateway(local_stack) -> Iterator[ServiceProcess]:
    proc = ServiceProcess("fhir-gateway", PORT, local_stack.state_dir / "logs").start()
    wait_for(proc.ready, 60, what="fhir gateway ready")
    yield proc
    proc.stop()


def test_bundle_is_durable_and_keyed_by_patient_when_answered(local_stack, gateway):
    patient = unique("pt")
    ref = {"reference": f"Patient/{patient}"}
    resources = [
        {"resourceType": "Patient", "id": patient},
        {**OBSERVATION, "subject": ref},
        {**CONDITION, "subject": ref},
    ]
    before = end_offsets(local_stack, FHIR_EVENTS.name)
    resp = httpx.post(f"http://127.0.0.1:{PORT}/fhir/r4", content=json.dumps(bundle(*resources)), headers=AUTH)
    assert resp.status_code == 200
    records = [
        (k, fhir_pb2.FhirResourceEvent.FromString(v)) for k, v, _ in read_records(local_stack, FHIR_EVENTS.name, before)
    ]
    mine = [e for k, e in records if k == f"Patient/{patient}".encode()]
    assert [e.resource_type for e in mine] == ["Patient", "Observation", "Condition"]  # one partition, in order
    assert json.loads(mine[1].resource_json)["subject"] == ref and mine[1].bundle_id == "b-1"


def test_invalid_bundle_publishes_nothing(local_stack, gateway):
    patient = unique("pt")
    bad = {**OBSERVATION, "subject": {"reference": f"Patient/{patient}"}, "code": None}
    before = end_offsets(local_stack, FHIR_EVENTS.name)
    resp = httpx.post(
        f"http://127.0.0.1:{PORT}/fhir/r4",
        content=json.dumps(bundle({"resourceType": "Patient", "id": patient}, bad)),
        headers=AUTH,
    )
    assert resp.status_code == 422
    assert not [
        k for k, _, _ in read_records(local_stack, FHIR_EVENTS.name, before) if k == f"Patient/{patient}".encode()
    ]


def test_a_synthea_population_replays_whole_and_a_resent_bundle_is_not_published_again(local_stack, gateway, tmp_path):
    """Synthea patients' records (every R4 resource type they hold, thousands of entries per bundle) are accepted
    whole, one record per resource; sending them again (a client retry) is answered the same and publishes nothing,
    also after the gateway restarted (it reads the receipts committed with the resources)."""
    paths = renumber_patients(generate(2, seed=7, out_dir=tmp_path))
    entries = sum(len(json.loads(p.read_bytes())["entry"]) for p in paths)
    url = f"http://127.0.0.1:{PORT}"

    def published(since: dict[int, int]) -> list[fhir_pb2.FhirResourceEvent]:
        return [
            fhir_pb2.FhirResourceEvent.FromString(v) for _, v, _ in read_records(local_stack, FHIR_EVENTS.name, since)
        ]

    before = end_offsets(local_stack, FHIR_EVENTS.name)
    first = asyncio.run(replay(paths, url))
    assert first.refused == [] and first.bundles == 2 and first.accepted == entries > 1000
    assert {"Claim", "ExplanationOfBenefit", "Immunization", "Encounter"} <= set(first.resource_types)
    between = end_offsets(local_stack, FHIR_EVENTS.name)
    events = published(before)
    assert len(events) == entries
    # an id names one content: resources both bundles hold identically (a shared Organization) share their id
    contents: dict[str, set[bytes]] = {}
    for e in events:
        contents.setdefault(e.event_id, set()).add(e.resource_json)
    assert all(len(c) == 1 for c in contents.values())
    again = asyncio.run(replay(paths, url))
    assert again.refused == [] and again.accepted == entries
    gateway.stop()
    gateway.start()
    wait_for(gateway.ready, 60, what="fhir gateway ready after restart")
    after_restart = asyncio.run(replay(paths[:1], url))
    assert after_restart.refused == [] and after_restart.bundles == 1
    assert published(between) == []
    # a different caller sending the same bundle is a different request: it is published
    other = asyncio.run(replay(paths[:1], url, token=OTHER_TOKEN))
    assert other.refused == [] and len(published(between)) == len(json.loads(paths[0].read_bytes())["entry"])
