"""Clinical research on the real stack: Synthea patients replayed through the FHIR gateway (a retry publishes
nothing), matched against the bundled trial protocols by the trial-matching worker (match records, ELIGIBLE_FOR
edges in Neo4j, ResearchSubject candidates, the coordinator's list), re-matched after an amendment; drug starts
assessed by the adverse-drug-reactions worker with adr_risk on Triton (alerts and AT_RISK_OF edges for the high-risk
case, none for the low-risk one)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from medstream.events.v1 import alert_pb2, fhir_pb2, finding_pb2

from services.cli.population import generate, renumber_patients, replay
from services.cli.trials import candidates, load_protocols, publish
from services.common.topic_reader import end_offsets, read_records
from services.common.topics import ALERTS, FHIR_EVENTS, FHIR_WRITEBACK, FINDINGS, TRIAL_MATCHES
from services.research.timeline import from_bundle
from services.research.trials.app import PatientTrials, Trials, rematch
from tests.conftest import ServiceProcess, graph_query, running, unique, wait_for

pytestmark = pytest.mark.integration
GATEWAY, MATCHER, ADR, WRITER = 18121, 18122, 18123, 18124
FHIR_AUTH = {"Authorization": "Bearer dev-ehr-token", "Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def protocols(local_stack) -> list[dict]:
    loaded = load_protocols()
    publish(local_stack, loaded)  # before the matcher starts: it reads them at start
    return loaded


@pytest.fixture(scope="module")
def services(local_stack, protocols) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    procs = {
        "fhir-gateway": ServiceProcess("fhir-gateway", GATEWAY, logs),
        "trial-matching": ServiceProcess("trial-matching", MATCHER, logs),
        "adverse-drug-reactions": ServiceProcess("adverse-drug-reactions", ADR, logs),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs),
    }
    with running(procs, 180):
        yield procs


def latest_matches(settings, since, patients: set[str]) -> dict[tuple[str, str], dict]:
    out = {}
    for key, value, _ in read_records(settings, TRIAL_MATCHES.name, since):
        if key and key.decode() in patients:
            doc = json.loads(value)
            out[(doc["patient_id"], doc["trial_id"])] = doc
    return out


def test_synthea_patients_are_matched_on_the_stream(local_stack, services, protocols, tmp_path):
    paths = renumber_patients(generate(3, seed=23, out_dir=tmp_path))
    bundles = [json.loads(p.read_bytes()) for p in paths]
    timelines = {t.patient_id: t for t in map(from_bundle, bundles)}
    before = {t: end_offsets(local_stack, t) for t in (TRIAL_MATCHES.name, FHIR_WRITEBACK.name, FHIR_EVENTS.name)}

    url = f"http://127.0.0.1:{GATEWAY}"
    first = asyncio.run(replay(paths, url))
    assert first.refused == [] and first.bundles == 3
    published = sum(1 for _ in read_records(local_stack, FHIR_EVENTS.name, before[FHIR_EVENTS.name]))
    assert published == first.accepted
    again = asyncio.run(replay(paths, url))  # a client retrying every bundle
    assert again.refused == [] and again.accepted == first.accepted
    assert sum(1 for _ in read_records(local_stack, FHIR_EVENTS.name, before[FHIR_EVENTS.name])) == published

    # what the worker should end with: the same trials, matched in process on the whole record
    trials = Trials()
    for p in protocols:
        trials.update(p)
    expected: dict[str, set[str]] = {}
    for pid, timeline in timelines.items():
        state = PatientTrials(timeline)
        rematch(pid, state, trials.parsed.values(), None, 0)
        expected[pid] = {tid for tid, m in state.matches.items() if m.candidate}
    assert any(expected.values()), "the seed should give at least one candidate"

    def candidates_on_topic() -> dict[str, set[str]]:
        latest = latest_matches(local_stack, before[TRIAL_MATCHES.name], set(timelines))
        out: dict[str, set[str]] = {pid: set() for pid in timelines}
        for (pid, tid), doc in latest.items():
            if not doc["unmet"]:
                out[pid].add(tid)
        return out

    wait_for(lambda: candidates_on_topic() == expected, 240, interval_s=2, what="the worker's candidates")
    doc = next(iter(latest_matches(local_stack, before[TRIAL_MATCHES.name], set(timelines)).values()))
    assert {"met", "not-met", "unknown", "conflicting"} >= {c["status"] for c in doc["verdicts"]}
    assert all("text" in c and "evidence" in c for c in doc["verdicts"])

    edges = """
    MATCH (p:Patient)-[r:ELIGIBLE_FOR]->(t:Trial) WHERE p.id IN $patients AND r.candidate
    RETURN p.id AS patient, t.id AS trial
    """

    def in_graph() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {pid: set() for pid in timelines}
        for row in graph_query(local_stack, edges, patients=list(timelines)):
            out[row["patient"]].add(row["trial"])
        return out

    wait_for(lambda: in_graph() == expected, 120, interval_s=2, what="ELIGIBLE_FOR edges in Neo4j")
    pid, trial_ids = next((p, t) for p, t in expected.items() if t)
    listed = asyncio.run(candidates(local_stack, sorted(trial_ids)[0], limit=1000))
    assert pid in {c.patient_id for c in listed}

    subjects = [
        json.loads(fhir_pb2.FhirResourceEvent.FromString(v).resource_json)
        for k, v, _ in read_records(local_stack, FHIR_WRITEBACK.name, before[FHIR_WRITEBACK.name])
        if k and k.decode().removeprefix("Patient/") in timelines
    ]
    candidates_written = {
        (s["individual"]["reference"].removeprefix("Patient/"), s["study"]["reference"].removeprefix("ResearchStudy/"))
        for s in subjects
        if s["resourceType"] == "ResearchSubject" and s["status"] == "candidate"
    }
    assert {(p, t) for p, ts in expected.items() for t in ts} <= candidates_written


def post(*resources: dict) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }
    resp = httpx.post(f"http://127.0.0.1:{GATEWAY}/fhir/r4", content=json.dumps(bundle), headers=FHIR_AUTH, timeout=30)
    assert resp.status_code == 200, resp.text


def diabetic(pid: str, a1c: float) -> list[dict]:
    ref = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1968-04-02"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-dm",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "subject": ref,
            "onsetDateTime": "2016-05-01T00:00:00Z",
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-a1c",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": ref,
            "effectiveDateTime": "2024-09-01T00:00:00Z",
            "valueQuantity": {"value": a1c, "unit": "%", "code": "%"},
        },
    ]


def test_an_amended_protocol_rematches_patients_already_held(local_stack, services, protocols):
    pid = unique("dm")
    before = end_offsets(local_stack, TRIAL_MATCHES.name)
    post(*diabetic(pid, 8.0))
    trial = next(p for p in protocols if p["id"] == "MS-T001")

    def mine() -> dict:
        return latest_matches(local_stack, before, {pid}).get((pid, "MS-T001"), {})

    first = wait_for(mine, 120, what="a match for MS-T001")
    assert first["eligible"]
    # the amendment raises the HbA1c floor above this patient's value: the matcher re-evaluates and rules them out
    # (versions count on from the one the matcher holds: the compacted topic keeps earlier runs' amendments)
    amended = {**trial, "version": first["version"] + 1}
    amended["inclusion"] = [
        c if not c.startswith("HbA1c") else "HbA1c between 8.5% and 10.5%" for c in trial["inclusion"]
    ]
    publish(local_stack, [amended])
    second = wait_for(lambda: mine() if mine().get("version") == amended["version"] else None, 120, what="re-match")
    assert second["unmet"] and not second["eligible"]
    publish(local_stack, [trial | {"version": amended["version"] + 1}])  # and back, for the other tests
    wait_for(lambda: mine().get("version") == amended["version"] + 1, 120, what="second re-match")


def test_partition_of_agrees_with_the_gateway_producers_partitioner(local_stack):
    """A re-match after an amendment filters a partition's patients with partition_of: it must place keys where
    the producers (librdkafka's murmur2_random) do."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from services.research.trials.app import partition_of

    topic = unique("medstream.test.partitions")
    admin = AdminClient(local_stack.kafka_client_config())
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    placed: dict[str, int] = {}
    producer = Producer({**local_stack.kafka_client_config(), "partitioner": "murmur2_random"})
    try:
        for _ in range(100):
            producer.produce(
                topic,
                b"x",
                key=f"Patient/{uuid.uuid4()}".encode(),
                on_delivery=lambda err, msg: placed.__setitem__(msg.key().decode(), msg.partition()),
            )
        assert producer.flush(30) == 0
        assert len(placed) == 100 and all(partition_of(k, 3) == p for k, p in placed.items())
    finally:
        admin.delete_topics([topic])


def order(pid: str, rid: str, code: str, display: str, authored: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": f"{pid}-{rid}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": display}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": authored,
    }


def history(pid: str, birth: str, egfr: float, ckd: bool) -> list[dict]:
    ref = {"reference": f"Patient/{pid}"}
    out = [{"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": birth}]
    if ckd:
        out.append(
            {
                "resourceType": "Condition",
                "id": f"{pid}-ckd",
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "433144002"}]},
                "subject": ref,
                "onsetDateTime": "2019-02-01T00:00:00Z",
            }
        )
    out.append(
        {
            "resourceType": "Observation",
            "id": f"{pid}-egfr",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
            "subject": ref,
            "effectiveDateTime": "2024-11-20T00:00:00Z",
            "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}", "code": "mL/min/{1.73_m2}"},
        }
    )
    return out


def test_a_high_risk_statin_start_raises_an_adr_alert_and_a_graph_edge(local_stack, services):
    """The injection rules' strongest myopathy case (an 80-year-old with CKD, eGFR 40, on clarithromycin and
    gemfibrozil, starting simvastatin at 4x the usual strength) against a young patient's low dose."""
    high, low = unique("adr-hi"), unique("adr-lo")
    before = {t: end_offsets(local_stack, t) for t in (FINDINGS.name, ALERTS.name)}
    post(
        *history(high, "1944-01-01", 40, ckd=True),
        order(high, "cla", "197517", "clarithromycin 500 MG Oral Tablet", "2024-11-28T00:00:00Z"),
        order(high, "fib", "310288", "Gemfibrozil 600 MG Oral Tablet", "2024-10-01T00:00:00Z"),
    )
    post(*history(low, "1994-03-01", 105, ckd=False))
    post(order(high, "statin", "198211", "Simvastatin 80 MG Oral Tablet", "2024-12-01T00:00:00Z"))
    post(order(low, "statin", "314231", "Simvastatin 10 MG Oral Tablet", "2024-12-01T00:00:00Z"))

    def findings() -> dict[str, finding_pb2.Finding]:
        out = {}
        for _, v, _ in read_records(local_stack, FINDINGS.name, before[FINDINGS.name]):
            f = finding_pb2.Finding.FromString(v)
            # the history's own orders (clarithromycin, gemfibrozil) are drug starts too: take the statin's
            if (
                f.kind == "adverse-drug-reaction-risk"
                and f.evidence[0].uri == f"MedicationRequest/{f.patient_id}-statin"
            ):
                out.setdefault(f.patient_id, f)
        return out

    found = wait_for(lambda: f if len(f := findings()) == 2 else None, 120, what="two ADR findings")
    risks = {pid: {m.name: m.value for m in f.measurements} for pid, f in found.items()}
    assert risks[high]["risk:myopathy"] > risks[low]["risk:myopathy"]
    assert {e.uri for e in found[high].evidence} >= {f"Observation/{high}-egfr", f"MedicationRequest/{high}-cla"}
    assert found[high].model.name == "adr_risk" and found[high].model.version

    alerts = [
        a
        for _, v, _ in read_records(local_stack, ALERTS.name, before[ALERTS.name])
        if (a := alert_pb2.Alert.FromString(v)).patient_id in (high, low) and a.kind == "adverse-drug-reaction"
    ]
    myopathy = [a for a in alerts if a.summary.startswith("myopathy") and a.finding_id == found[high].finding_id]
    assert not [a for a in alerts if a.patient_id == low]
    assert myopathy and "simvastatin" in myopathy[0].summary and "CYP3A4" in myopathy[0].summary

    edges = """
    MATCH (:Patient {id: $patient})-[r:AT_RISK_OF]->(m:Medication)
    RETURN r.reaction AS reaction, r.model AS model, m.id AS medication
    """
    rows = wait_for(lambda: graph_query(local_stack, edges, patient=high) or None, 60, what="AT_RISK_OF edge")
    assert {"reaction": "myopathy", "model": "adr_risk", "medication": "DB00641"} in rows
    assert graph_query(local_stack, edges, patient=low) == []


def test_a_killed_matcher_resumes_from_its_state_and_loses_no_event(local_stack, services):
    """SIGKILL the matcher after a patient became a candidate, send the event that rules them out while it is down,
    restart it: the exclusion is published, which needs the diabetes and HbA1c the restarted worker recovered from
    its changelog (the new event alone would not make the patient a candidate of anything)."""
    pid = unique("dm-crash")
    before = end_offsets(local_stack, TRIAL_MATCHES.name)
    post(*diabetic(pid, 8.0))

    def mine() -> dict:
        return latest_matches(local_stack, before, {pid}).get((pid, "MS-T001"), {})

    assert wait_for(mine, 120, what="a match for MS-T001")["eligible"]
    matcher = services["trial-matching"]
    matcher.kill()
    post(
        order(
            pid, "insulin", "865098", "Insulin Lispro 100 UNT/ML Injectable Solution [Humalog]", "2024-11-01T00:00:00Z"
        )
    )
    matcher.start()
    wait_for(matcher.ready, 180, what="trial-matching ready after SIGKILL")
    excluded = wait_for(lambda: m if (m := mine()).get("unmet") else None, 180, what="the exclusion after restart")
    assert not excluded["eligible"] and any(u.startswith("MS-T001-E") for u in excluded["unmet"])
