"""The FHIR gateway's answers: valid resources and Bundles published once, 20+ malformed inputs refused with an
OperationOutcome and nothing published (recording publisher; Kafka is covered in the integration test)."""

from __future__ import annotations

import copy
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.auth import load_clients
from services.common.config import Settings
from services.fhir_gateway.app import DEV_CLIENTS, FHIR_JSON, fhir_app

pytestmark = pytest.mark.unit
AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": FHIR_JSON}

PATIENT = {"resourceType": "Patient", "id": "pt-1", "gender": "female", "birthDate": "1961-04-02"}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
    "subject": {"reference": "Patient/pt-1"},
    "valueQuantity": {"value": 9.1, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
}
CONDITION = {
    "resourceType": "Condition",
    "subject": {"reference": "Patient/pt-1"},
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D50.9"}]},
}


def bundle(*resources, kind="transaction"):
    return {
        "resourceType": "Bundle",
        "id": "b-1",
        "type": kind,
        "entry": [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources],
    }


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []

    async def publish(self, accepted, bundle_id="", client_id=""):
        self.published += [(a.resource_type, a.patient_reference, bundle_id) for a in accepted]
        return True


@pytest.fixture
async def client():
    settings = Settings(fhir_max_body_bytes=32 * 1024, fhir_max_resource_bytes=8 * 1024)
    publisher = RecordingPublisher()
    async with TestClient(TestServer(fhir_app(settings, load_clients(DEV_CLIENTS), publisher))) as c:
        c.publisher = publisher
        yield c


async def test_single_resource_is_created(client):
    resp = await client.post("/fhir/r4/Observation", data=json.dumps(OBSERVATION), headers=AUTH)
    assert resp.status == 201 and resp.headers["Location"].startswith("Observation/")
    body = await resp.json()
    assert body["id"] and client.publisher.published == [("Observation", "Patient/pt-1", "")]


async def test_transaction_bundle_is_published_whole(client):
    resp = await client.post("/fhir/r4", data=json.dumps(bundle(PATIENT, OBSERVATION, CONDITION)), headers=AUTH)
    assert resp.status == 200
    assert [e["response"]["status"] for e in (await resp.json())["entry"]] == ["201 Created"] * 3
    assert [p[0] for p in client.publisher.published] == ["Patient", "Observation", "Condition"]
    assert {p[2] for p in client.publisher.published} == {"b-1"}


async def test_every_r4_resource_type_is_accepted_and_keyed_by_its_patient(client):
    claim = {
        "resourceType": "Claim",
        "status": "active",
        "type": {"text": "professional"},
        "use": "claim",
        "patient": {"reference": "Patient/pt-1"},
        "created": "2026-01-01",
        "provider": {"display": "x"},
        "priority": {"text": "normal"},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "c"}}],
    }
    basic = {"resourceType": "Basic", "code": {"text": "note to self"}}
    location = {"resourceType": "Location", "name": "Ward 7"}
    no_subject = _with(OBSERVATION, subject=None)  # valid FHIR; nobody's record, keyed by its own reference
    group = _with(OBSERVATION, subject={"reference": "Group/g-1"})
    coverage = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": {"reference": "Patient/pt-1"},
        "payor": [{"display": "payer"}],
    }
    resp = await client.post(
        "/fhir/r4", data=json.dumps(bundle(PATIENT, claim, basic, location, coverage, no_subject, group)), headers=AUTH
    )
    assert resp.status == 200, await resp.text()
    keyed = [(p[0], p[1]) for p in client.publisher.published]
    assert keyed == [
        ("Patient", "Patient/pt-1"),
        ("Claim", "Patient/pt-1"),
        ("Basic", ""),
        ("Location", ""),
        ("Coverage", "Patient/pt-1"),
        ("Observation", ""),
        ("Observation", ""),
    ]


def test_a_resent_resource_gets_the_same_event_id_and_a_changed_one_a_new_id():
    from services.fhir_gateway.validation import check_resource, to_event

    first, _ = check_resource({**OBSERVATION, "id": "o-1"})
    again, _ = check_resource({**OBSERVATION, "id": "o-1"})
    changed, _ = check_resource({**OBSERVATION, "id": "o-1", "status": "amended"})
    assert first and again and changed
    assert to_event(first, 1).event_id == to_event(again, 2).event_id != to_event(changed, 1).event_id


async def test_subscription_notification(client):
    note = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": OBSERVATION}]}
    resp = await client.post("/fhir/r4/subscription-notification", data=json.dumps(note), headers=AUTH)
    assert resp.status == 200 and client.publisher.published[0][0] == "Observation"


def _with(resource, **changes):
    r = copy.deepcopy(resource)
    for k, v in changes.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    return r


MALFORMED = [
    # (name, path, body, headers, status, issue code)
    ("no token", "/fhir/r4/Observation", OBSERVATION, {"Content-Type": FHIR_JSON}, 401, "login"),
    ("wrong token", "/fhir/r4/Observation", OBSERVATION, {**AUTH, "Authorization": "Bearer nope"}, 401, "login"),
    ("basic auth", "/fhir/r4/Observation", OBSERVATION, {**AUTH, "Authorization": "Basic ZGV2"}, 401, "login"),
    (
        "wrong content type",
        "/fhir/r4/Observation",
        OBSERVATION,
        {**AUTH, "Content-Type": "text/plain"},
        415,
        "not-supported",
    ),
    (
        "xml content type",
        "/fhir/r4/Observation",
        OBSERVATION,
        {**AUTH, "Content-Type": "application/fhir+xml"},
        415,
        "not-supported",
    ),
    ("broken json", "/fhir/r4/Observation", '{"resourceType": "Observation",', AUTH, 400, "structure"),
    ("not utf-8", "/fhir/r4/Observation", b"\xff\xfe\x00", AUTH, 400, "structure"),
    ("json array", "/fhir/r4/Observation", [OBSERVATION], AUTH, 422, "structure"),
    ("no resourceType", "/fhir/r4/Observation", _with(OBSERVATION, resourceType=None), AUTH, 422, "required"),
    (
        "one resource over the Kafka record limit",
        "/fhir/r4/Observation",
        {**OBSERVATION, "note": [{"text": "x" * 10_000}]},
        AUTH,
        422,
        "too-costly",
    ),
    ("unknown type", "/fhir/r4/Thing", {"resourceType": "Thing"}, AUTH, 422, "not-supported"),
    ("type differs from URL", "/fhir/r4/Condition", OBSERVATION, AUTH, 422, "invalid"),
    ("missing required code", "/fhir/r4/Observation", _with(OBSERVATION, code=None), AUTH, 422, "required"),
    ("null element", "/fhir/r4/Observation", {**OBSERVATION, "code": None}, AUTH, 422, "structure"),
    ("missing status", "/fhir/r4/Observation", _with(OBSERVATION, status=None), AUTH, 422, "required"),
    (
        "wrong type for value",
        "/fhir/r4/Observation",
        _with(OBSERVATION, valueQuantity={"value": "nine", "unit": "g/dL"}),
        AUTH,
        422,
        "invalid",
    ),
    ("unknown element", "/fhir/r4/Observation", _with(OBSERVATION, colour="red"), AUTH, 422, "invalid"),
    ("bad birthDate", "/fhir/r4/Patient", _with(PATIENT, birthDate="02/04/1961"), AUTH, 422, "invalid"),
    ("bad id", "/fhir/r4/Patient", _with(PATIENT, id="pt 1/../x"), AUTH, 422, "value"),
    (
        "absolute reference",
        "/fhir/r4/Observation",
        _with(OBSERVATION, subject={"reference": "http://elsewhere/Patient/1"}),
        AUTH,
        422,
        "value",
    ),
    ("bundle bad type", "/fhir/r4", _with(bundle(OBSERVATION), type="searchset"), AUTH, 422, "value"),
    ("bundle no entries", "/fhir/r4", _with(bundle(OBSERVATION), entry=[]), AUTH, 422, "required"),
    (
        "bundle entry without resource",
        "/fhir/r4",
        _with(bundle(OBSERVATION), entry=[{"request": {}}]),
        AUTH,
        422,
        "required",
    ),
    (
        "bundle with one bad entry",
        "/fhir/r4",
        bundle(PATIENT, _with(OBSERVATION, code=None), CONDITION),
        AUTH,
        422,
        "required",
    ),
    (
        "oversized body",
        "/fhir/r4/Observation",
        _with(OBSERVATION, note=[{"text": "x" * 40_000}]),
        AUTH,
        413,
        "too-costly",
    ),
]


@pytest.mark.parametrize("name, path, body, headers, status, code", MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_inputs_get_an_operation_outcome_and_publish_nothing(
    client, name, path, body, headers, status, code
):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    resp = await client.post(path, data=data, headers=headers)
    assert resp.status == status, await resp.text()
    outcome = await resp.json(content_type=None)
    assert outcome["resourceType"] == "OperationOutcome"
    assert code in {i["code"] for i in outcome["issue"]} and all(i["diagnostics"] for i in outcome["issue"])
    assert client.publisher.published == []


def test_there_are_at_least_twenty_malformed_cases():
    assert len(MALFORMED) >= 20


async def test_bundle_errors_name_the_entry(client):
    resp = await client.post("/fhir/r4", data=json.dumps(bundle(PATIENT, _with(OBSERVATION, code=None))), headers=AUTH)
    issues = (await resp.json())["issue"]
    assert any(
        "Bundle.entry[1]" in i.get("expression", [""])[0] or i["expression"][0].startswith("Observation")
        for i in issues
    )


async def test_carebundle_transactions_resolve_urn_uuid_references():
    """carebundle's Bundles (every profile) use urn:uuid fullUrls: the gateway takes each UUID as the id and
    rewrites the references, so every resource lands under its patient, and a re-sent bundle keeps its ids."""
    from carebundle import generate_bundle, to_json

    publisher = RecordingPublisher()
    async with TestClient(TestServer(fhir_app(Settings(), load_clients(DEV_CLIENTS), publisher))) as client:
        for profile in ("healthy", "type2_diabetes", "hypertension", "ckd_stage3", "anaemia"):
            doc = json.loads(to_json(generate_bundle(profile=profile, seed=11)))
            patient = next(e for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")["fullUrl"][9:]
            publisher.published.clear()
            r = await client.post("/fhir/r4", data=json.dumps(doc), headers=AUTH)
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert answer["type"] == "transaction-response"
            assert len(answer["entry"]) == len(doc["entry"])
            refs = {ref for _, ref, _ in publisher.published}
            assert refs == {f"Patient/{patient}", ""}, refs  # "" for the Practitioner: keyed by its own id
            again = await client.post("/fhir/r4", data=json.dumps(doc), headers=AUTH)
            locations = [e["response"]["location"] for e in (await again.json())["entry"]]
            assert locations == [e["response"]["location"] for e in answer["entry"]]


def test_resolve_references_rewrites_only_bundle_entries():
    from services.fhir_gateway.validation import resolve_references

    doc = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b1c2d3e-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "http://ehr.example/fhir/Encounter/e-9",
                "resource": {"resourceType": "Encounter", "id": "e-9"},
                "request": {"method": "PUT", "url": "Encounter/e-9"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "subject": {"reference": "urn:uuid:0b1c2d3e-0000-4000-8000-000000000001"},
                    "encounter": {"reference": "http://ehr.example/fhir/Encounter/e-9"},
                    "performer": [{"reference": "urn:uuid:ffffffff-0000-4000-8000-000000000000"}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    out = resolve_references(doc)
    assert out["entry"][0]["resource"]["id"] == "0b1c2d3e-0000-4000-8000-000000000001"
    obs = out["entry"][2]["resource"]
    assert obs["subject"]["reference"] == "Patient/0b1c2d3e-0000-4000-8000-000000000001"
    assert obs["encounter"]["reference"] == "Encounter/e-9"
    assert obs["performer"][0]["reference"] == "urn:uuid:ffffffff-0000-4000-8000-000000000000"  # not in the bundle
    assert out is doc, "rewritten in place: a large bundle is not copied"
