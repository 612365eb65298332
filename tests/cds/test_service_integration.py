"""Decision support on the real stack: FHIR gateway -> decision-support worker (Triton, HPO) -> CDS Hooks cards on
the suggestions topic and patient data in Neo4j; a worker crash loses no patient state; the CDS Hooks service
answers from the same engine; aborted gateway transactions are never read."""

from __future__ import annotations

import base64
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from medstream.events.v1 import deadletter_pb2, fhir_pb2

from services.cds.knowledge.loader import drug_dictionary, medication_rows
from services.cds.knowledge.phenotypes import extract_phenotypes
from services.common.kafka import EventProducer, record_headers
from services.common.topic_reader import end_offsets, read_messages, read_records
from services.common.topics import CDS_SUGGESTIONS, DEAD_LETTERS, FHIR_EVENTS
from services.fhir_gateway.validation import resolve_references
from tests.conftest import ServiceProcess, graph_query, running, wait_for
from training.cds.samples import PROFILES, case_bundle, patient_id

pytestmark = pytest.mark.integration
GATEWAY, WORKER, HOOKS, WRITER = 18086, 18087, 18088, 18089
FHIR_AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": "application/fhir+json"}
HOOKS_AUTH = {"Authorization": "Bearer dev-cds-hooks-token"}
SERVICE_URL = f"http://127.0.0.1:{HOOKS}/cds-services/medstream-differential-diagnosis"
REPO = Path(__file__).resolve().parents[2] / "model_repository" / "cds_multimodal"


@pytest.fixture(scope="module")
def services(local_stack) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    procs = {
        "fhir-gateway": ServiceProcess("fhir-gateway", GATEWAY, logs),
        "decision-support": ServiceProcess("decision-support", WORKER, logs),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs),
        "cds-hooks": ServiceProcess("cds-hooks", HOOKS, logs),
    }
    with running(procs, 120):
        yield procs


@pytest.fixture(scope="module")
def seed() -> int:
    return random.randrange(1, 2**31)  # carebundle's ids follow the seed: a fresh set of patients per run


def suggestions(settings, since: dict[int, int], patients: set[str]) -> list[dict]:
    out = []
    for key, value, headers in read_records(settings, CDS_SUGGESTIONS.name, since):
        if key and key.decode().removeprefix("Patient/") in patients:
            assert headers["medstream-schema"].startswith(b"cds-hooks.response"), headers
            out.append(json.loads(value))
    return out


def post(bundle: dict) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{GATEWAY}/fhir/r4", content=json.dumps(bundle), headers=FHIR_AUTH, timeout=30)


def note_phenotypes(bundle: dict) -> int:
    """Distinct phenotypes stated present in the bundle's note, as the worker's extraction finds them."""
    [note] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    return len({m.hpo_id for m in extract_phenotypes(text) if m.present})


GRAPH_SHAPE = """
MATCH (p:Patient {id: $patient})
OPTIONAL MATCH (p)-[o:HAS_OBSERVATION]->(:Observation)
WITH p, count(o) AS observations
OPTIONAL MATCH (p)-[c:HAS_CONDITION]->(:Condition)
WITH p, observations, count(c) AS conditions
OPTIONAL MATCH (p)-[m:PRESCRIBED]->(med:Medication)
WITH p, observations, conditions, count(m) AS medications, collect(med.id) AS medication_ids
OPTIONAL MATCH (p)-[:HAD_ENCOUNTER]->(e:Encounter)
WITH p, observations, conditions, medications, medication_ids, count(e) AS encounters
OPTIONAL MATCH (p)-[x:EXHIBITS]->(:Phenotype)
RETURN observations, conditions, medications, medication_ids, encounters, count(x) AS note_phenotypes
"""


def test_five_carebundle_profiles_end_to_end(local_stack, services, seed):
    bundles = [case_bundle(profile, seed=seed, index=i) for i, profile in enumerate(PROFILES)]
    patients = {patient_id(b) for b in bundles}
    before = end_offsets(local_stack, CDS_SUGGESTIONS.name)
    for b in bundles:
        assert post(b).status_code == 200

    def latest() -> dict[str, dict]:
        # A bundle's resources can span consumer batches: a patient may be evaluated on part of it first and
        # again when the rest (e.g. the note) arrives. The latest suggestion reflects the whole bundle.
        out = {s["patient"]: s for s in suggestions(local_stack, before, patients)}
        return out if all(s["inputs"]["counts"]["notes"] == 1 for s in out.values()) else {}

    wanted = {f"Patient/{p}" for p in patients}
    wait_for(lambda: set(latest()) >= wanted, 120, what="a suggestion with the note for each of the five profiles")
    for body in latest().values():
        assert body["model"]["name"] == "cds_multimodal" and body["model"]["version"].isdigit()
        assert body["inputs"]["counts"]["notes"] == 1 and body["inputs"]["counts"]["labs"] >= 20
        assert 1 <= len(body["cards"]) <= 3
        top = body["cards"][0]
        assert {"uuid", "summary", "detail", "indicator", "source", "suggestions"} <= set(top)
        explanation = top["extension"]["medstream"]
        assert explanation["model"] == body["model"]
        model_top = (
            next(c for c in body["cards"] if c["extension"]["medstream"]["labAttributions"])
            if any(c["extension"]["medstream"]["labAttributions"] for c in body["cards"])
            else None
        )
        if model_top is not None:
            assert all(
                isinstance(a["contribution"], float) for a in model_top["extension"]["medstream"]["labAttributions"]
            )

    # The graph holds each patient's data, joined to the knowledge nodes, once.
    def shapes() -> dict[str, dict]:
        return {p: (graph_query(local_stack, GRAPH_SHAPE, patient=p) or [{}])[0] for p in patients}

    wait_for(
        lambda: all(s.get("observations", 0) >= 30 for s in shapes().values()),
        60,
        what="patients and observations in Neo4j",
    )
    # Each phenotype present in a patient's note is one EXHIBITS edge. How many a note has follows carebundle's seed
    # (some have none), so the expectation comes from the notes sent, not from a fixed count.
    expected = {patient_id(b): note_phenotypes(b) for b in bundles}
    wait_for(lambda: {p: s["note_phenotypes"] for p, s in shapes().items()} == expected, 30, what="note phenotypes")
    first = shapes()
    medications = [m for shape in first.values() for m in shape["medication_ids"]]
    known = {n.key for n in medication_rows(drug_dictionary()).nodes}  # the Medication nodes `kg load` creates
    assert medications and set(medications) <= known, set(medications) - known
    for shape in first.values():
        assert shape["observations"] >= 30 and shape["encounters"] == 1, shape

    # Re-sending the same bundles is not a relevant change: no new evaluation, no new graph element.
    mid = end_offsets(local_stack, CDS_SUGGESTIONS.name)
    for b in bundles:
        assert post(b).status_code == 200
    time.sleep(5)
    assert suggestions(local_stack, mid, patients) == []
    assert shapes() == first


def test_worker_crash_loses_no_patient_state(local_stack, services, seed):
    bundle = case_bundle("anaemia", seed=seed + 1, index=0)
    patient = patient_id(bundle)
    before = end_offsets(local_stack, CDS_SUGGESTIONS.name)
    assert post(bundle).status_code == 200

    def whole_bundle() -> list[dict]:
        return [s for s in suggestions(local_stack, before, {patient}) if s["inputs"]["counts"]["notes"] == 1]

    wait_for(whole_bundle, 90, what="a suggestion from the whole bundle")
    labs_before = whole_bundle()[-1]["inputs"]["counts"]["labs"]

    services["decision-support"].kill()  # SIGKILL: the table must come back from its changelog
    follow_up = {
        "resourceType": "Observation",
        "id": f"hb-{seed}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-02-01T09:00:00Z",
        "valueQuantity": {"value": 6.9, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }
    after_crash = end_offsets(local_stack, CDS_SUGGESTIONS.name)
    r = httpx.post(f"http://127.0.0.1:{GATEWAY}/fhir/r4/Observation", content=json.dumps(follow_up), headers=FHIR_AUTH)
    assert r.status_code == 201
    services["decision-support"].start()
    wait_for(services["decision-support"].ready, 120, what="worker back")
    wait_for(lambda: suggestions(local_stack, after_crash, {patient}), 120, what="suggestion after restart")
    latest = suggestions(local_stack, after_crash, {patient})[-1]
    # The note and every earlier lab are still there: state survived; the new haemoglobin replaced the old one.
    assert latest["inputs"]["counts"]["notes"] == 1
    assert latest["inputs"]["counts"]["labs"] == labs_before
    assert {"hpo": "HP:0001903", "source": "lab"} in latest["inputs"]["phenotypes"]  # anaemia from Hb 6.9


def test_cds_hooks_patient_view_answers_from_the_same_engine(local_stack, services, seed):
    discovery = httpx.get(f"http://127.0.0.1:{HOOKS}/cds-services").json()
    [service] = discovery["services"]
    assert service["hook"] == "patient-view" and "observations" in service["prefetch"]

    bundle = resolve_references(case_bundle("ckd_stage3", seed=seed + 2, index=0))
    patient = patient_id(bundle)
    resources = [e["resource"] for e in bundle["entry"]]

    def by_type(t: str) -> dict[str, object]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] == t],
        }

    request = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/x", "patientId": patient},
        "prefetch": {
            "patient": next(r for r in resources if r["resourceType"] == "Patient"),
            "observations": by_type("Observation"),
            "conditions": by_type("Condition"),
            "medications": by_type("MedicationRequest"),
            "notes": by_type("DocumentReference"),
        },
    }
    r = httpx.post(SERVICE_URL, json=request, headers=HOOKS_AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"cards"} and body["cards"]
    assert body["cards"][0]["extension"]["medstream"]["model"]["name"] == "cds_multimodal"
    assert "not for clinical use" in body["cards"][0]["detail"]

    assert httpx.post(SERVICE_URL, json=request).status_code == 401
    assert httpx.post(SERVICE_URL, json={**request, "hook": "order-sign"}, headers=HOOKS_AUTH).status_code == 400
    no_prefetch = {k: v for k, v in request.items() if k != "prefetch"}
    assert httpx.post(SERVICE_URL, json=no_prefetch, headers=HOOKS_AUTH).status_code == 412
    other = f"http://127.0.0.1:{HOOKS}/cds-services/unknown"
    assert httpx.post(other, json=request, headers=HOOKS_AUTH).status_code == 404
    outcome = {"card": body["cards"][0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    feedback = {"feedback": [outcome]}
    assert httpx.post(SERVICE_URL + "/feedback", json=feedback, headers=HOOKS_AUTH).status_code == 200


def test_aborted_transactions_and_malformed_events(local_stack, services, seed):
    """A gateway transaction that aborted is never read (read_committed); a malformed event is dead-lettered."""
    aborted_bundle = resolve_references(case_bundle("type2_diabetes", seed=seed + 3, index=0))
    aborted_patient = patient_id(aborted_bundle)
    committed_bundle = case_bundle("hypertension", seed=seed + 4, index=0)
    committed_patient = patient_id(committed_bundle)
    before = end_offsets(local_stack, CDS_SUGGESTIONS.name)
    dead_before = end_offsets(local_stack, DEAD_LETTERS.name)

    producer = Producer({**local_stack.kafka_client_config(), "transactional.id": f"test-abort-{seed}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for entry in aborted_bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Patient", "Observation", "DocumentReference"):
            event = fhir_pb2.FhirResourceEvent(
                event_id=f"abort-{resource['id']}",
                resource_type=resource["resourceType"],
                resource_id=resource["id"],
                patient_reference=f"Patient/{aborted_patient}",
                resource_json=json.dumps(resource).encode(),
            )
            producer.produce(
                FHIR_EVENTS.name,
                event.SerializeToString(),
                f"Patient/{aborted_patient}".encode(),
                headers=record_headers(event),
            )
    producer.flush()
    producer.abort_transaction()

    bad = EventProducer(local_stack, "test")
    bad.send_sync(FHIR_EVENTS.name, f"Patient/{committed_patient}".encode(), b"\x08not a protobuf")
    mismatch = fhir_pb2.FhirResourceEvent(
        event_id=f"bad-{seed}",
        resource_type="Observation",
        resource_id="x",
        patient_reference=f"Patient/{committed_patient}",
        resource_json=b'{"resourceType": "Patient", "id": "x"}',
    )
    bad.send_sync(FHIR_EVENTS.name, f"Patient/{committed_patient}".encode(), mismatch)
    bad.close()
    assert post(committed_bundle).status_code == 200
    wait_for(lambda: suggestions(local_stack, before, {committed_patient}), 90, what="the committed patient")
    assert suggestions(local_stack, before, {aborted_patient}) == []
    letters = [
        d
        for d in read_messages(local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, dead_before)
        if d.consumer == "decision-support"
    ]
    assert len(letters) >= 2, letters
    assert any("resource_type" in d.error_text for d in letters)


def test_new_model_version_is_picked_up_without_restart(local_stack, services, seed):
    """Dropping version 2 into model_repository/ (Triton polls it) changes the version suggestions name, with no
    restart of the worker; removing it goes back to version 1."""
    source, new = REPO / "1", REPO / "2"
    assert not new.exists(), "a stray model_repository/cds_multimodal/2"
    # Staged next to the repository and renamed into place: Triton polls every 5 s and must never see a half-copied
    # version (it would fail to load it and report the model not ready).
    staging = Path(tempfile.mkdtemp(dir=REPO.parents[1], prefix=".staging-"))
    shutil.copytree(source, staging / "2", ignore=shutil.ignore_patterns("__pycache__"))
    (staging / "2").rename(new)
    try:
        patient = patient_id(case_bundle("hypertension", seed=seed + 5, index=0))

        def version_after_note(n: int) -> str | None:
            note = case_bundle("hypertension", seed=seed + 5, index=0)
            before = end_offsets(local_stack, CDS_SUGGESTIONS.name)
            note["entry"][-1]["resource"]["date"] = f"2026-03-{n:02d}T10:00:00Z"
            note["entry"][-1]["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
            note["entry"][-1]["resource"]["content"][0]["attachment"]["data"] = base64.b64encode(
                f"Follow-up visit {n}. Reports headache and dizziness.".encode()
            ).decode()
            assert post(note).status_code == 200
            wait_for(lambda: suggestions(local_stack, before, {patient}), 60, what="suggestion")
            return suggestions(local_stack, before, {patient})[-1]["model"]["version"]

        deadline, version, n = time.monotonic() + 60, None, 1
        while version != "2" and time.monotonic() < deadline:
            version = version_after_note(n)
            n += 1
        assert version == "2"
        assert services["decision-support"].alive()
    finally:
        if new.exists():
            new.rename(staging / "2")  # gone at once for Triton, then deleted
        shutil.rmtree(staging, ignore_errors=True)
    time.sleep(12)  # two poll periods: Triton unloads version 2 and serves version 1 again
