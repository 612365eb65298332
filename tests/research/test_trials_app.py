"""The trial-matching worker's steps with plain values: what a patient batch and a protocol change publish."""

from __future__ import annotations

import json

import pytest
from medstream.events.v1 import fhir_pb2, graph_pb2, research_pb2

from services.common.deadletter import SourceRecord
from services.common.kafka import JsonDocument
from services.common.topics import FHIR_EVENTS, FHIR_WRITEBACK, GRAPH_MUTATIONS, TRIAL_MATCHES, TRIAL_PROTOCOLS
from services.common.worker import Accepted
from services.research.trials.app import (
    PatientTrials,
    Trials,
    handle_patient_events,
    handle_protocols,
    partition_of,
    validate_protocol,
)

pytestmark = pytest.mark.unit
PROTOCOL = {
    "id": "T-A",
    "title": "An add-on in type 2 diabetes",
    "version": 1,
    "inclusion": [
        "Adults aged 40 to 75 years with type 2 diabetes mellitus",
        "HbA1c between 7.0% and 10.5% within the last 12 months",
    ],
    "exclusion": ["Prior treatment with insulin"],
}
REF = {"reference": "Patient/p1"}


def event(resource: dict, offset: int = 0, patient: str = "Patient/p1") -> Accepted[fhir_pb2.FhirResourceEvent]:
    msg = fhir_pb2.FhirResourceEvent(
        event_id=f"e{offset}",
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        patient_reference=patient,
        operation=fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=json.dumps(resource).encode(),
    )
    return Accepted(SourceRecord(FHIR_EVENTS.name, 0, offset, patient.encode(), msg.SerializeToString()), msg)


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1965-02-01"}
DIABETES = {
    "resourceType": "Condition",
    "id": "c1",
    "clinicalStatus": {"coding": [{"code": "active"}]},
    "code": {
        "coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]
    },
    "subject": REF,
    "onsetDateTime": "2018-01-01T00:00:00Z",
}
A1C = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "HbA1c"}]},
    "subject": REF,
    "effectiveDateTime": "2024-10-01T00:00:00Z",
    "valueQuantity": {"value": 8.1, "unit": "%", "code": "%"},
}
INSULIN = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "865098",
                "display": "Insulin Lispro 100 UNT/ML Injectable Solution [Humalog]",
            }
        ]
    },
    "subject": REF,
    "authoredOn": "2024-11-01T00:00:00Z",
}


@pytest.fixture(scope="module")
def trials() -> Trials:
    held = Trials()
    held.update(PROTOCOL)
    return held


def by_topic(outputs) -> dict[str, list]:
    out: dict[str, list] = {}
    for topic, _, value in outputs:
        out.setdefault(topic, []).append(value)
    return out


def test_a_candidate_gets_a_match_an_edge_and_a_research_subject_then_is_excluded(trials):
    table: dict[str, str] = {}
    step, invalid = handle_patient_events([event(PATIENT, 0), event(DIABETES, 1), event(A1C, 2)], table, trials)
    assert invalid == []
    published = by_topic(step.outputs)
    [match] = published[TRIAL_MATCHES.name]
    assert isinstance(match, JsonDocument) and match.body["eligible"] and match.body["trial_id"] == "T-A"
    [mutation] = published[GRAPH_MUTATIONS.name]
    assert isinstance(mutation, graph_pb2.GraphMutation)
    [edge] = mutation.relationships
    assert edge.type == "ELIGIBLE_FOR" and edge.to_node.key_value == "T-A"
    assert edge.properties["unmet"].int_value == 0 and edge.properties["candidate"].bool_value
    [subject] = published[FHIR_WRITEBACK.name]
    resource = json.loads(subject.resource_json)
    assert resource["resourceType"] == "ResearchSubject" and resource["status"] == "candidate"
    assert resource["study"]["reference"] == "ResearchStudy/T-A"
    table.update(step.state)

    # insulin rules the patient out: the match, the edge and the ResearchSubject say so
    step, _ = handle_patient_events([event(INSULIN, 3)], table, trials)
    published = by_topic(step.outputs)
    [match] = published[TRIAL_MATCHES.name]
    assert not match.body["eligible"] and match.body["unmet"] == ["T-A-E1"]
    [subject] = published[FHIR_WRITEBACK.name]
    assert json.loads(subject.resource_json)["status"] == "ineligible"
    [mutation] = published[GRAPH_MUTATIONS.name]
    assert mutation.relationships[0].properties["candidate"].bool_value is False
    table.update(step.state)
    state = PatientTrials.from_json(table["Patient/p1"])
    assert state.listed == set() and state.matches["T-A"].unmet == ("T-A-E1",)


def test_events_the_trials_do_not_read_publish_nothing(trials):
    table: dict[str, str] = {}
    step, _ = handle_patient_events([event(PATIENT, 0), event(DIABETES, 1), event(A1C, 2)], table, trials)
    table.update(step.state)
    encounter = {"resourceType": "Encounter", "id": "enc1", "status": "finished", "class": {"code": "AMB"}}
    step, _ = handle_patient_events([event(encounter, 4), event(A1C, 5)], table, trials)  # a repeat too
    assert step.outputs == [] and step.state == {}


def test_a_patient_who_never_was_a_candidate_publishes_nothing(trials):
    young = {**PATIENT, "birthDate": "2010-01-01"}
    step, _ = handle_patient_events([event(young, 0), event(DIABETES, 1)], {}, trials)
    assert step.outputs == [] and "Patient/p1" in step.state  # remembered, not published


def test_unreadable_resources_are_handed_back_for_the_dead_letter_topic(trials):
    bad = event(PATIENT, 0)
    bad.message.resource_json = b"{not json"
    step, invalid = handle_patient_events([bad], {}, trials)
    assert [problem for _, problem in invalid] and step.outputs == []


def protocol_event(protocol: dict, partition: int = 0) -> Accepted[research_pb2.TrialProtocol]:
    msg = research_pb2.TrialProtocol(
        trial_id=protocol["id"], version=protocol["version"], protocol_json=json.dumps(protocol).encode()
    )
    return Accepted(SourceRecord(TRIAL_PROTOCOLS.name, partition, 0, msg.trial_id.encode(), b""), msg)


def test_an_amended_protocol_rematches_the_partition_s_patients_once():
    trials = Trials()
    trials.update(PROTOCOL)
    table: dict[str, str] = {}
    for pid in ("p1", "p2", "p3", "p4"):
        ref = {"reference": f"Patient/{pid}"}
        resources = [{**PATIENT, "id": pid}, {**DIABETES, "id": f"c-{pid}", "subject": ref}]
        resources.append({**A1C, "id": f"o-{pid}", "subject": ref})
        step, _ = handle_patient_events([event(r, i, f"Patient/{pid}") for i, r in enumerate(resources)], table, trials)
        table.update(step.state)
    # amendment 2 narrows the HbA1c range: 8.1 % is now out
    amended = {**PROTOCOL, "version": 2, "inclusion": [PROTOCOL["inclusion"][0], "HbA1c between 8.5% and 10.5%"]}
    here = {ref for ref in table if partition_of(ref, 3) == 1}
    step = handle_protocols([protocol_event(amended, partition=1)], table, trials, partitions=3)
    assert set(step.state) == here  # only the patients this partition holds
    matches = [v.body for t, _, v in step.outputs if t == TRIAL_MATCHES.name]
    assert len(matches) == len(here) and all(m["version"] == 2 and m["unmet"] for m in matches)
    table.update(step.state)
    again = handle_protocols([protocol_event(amended, partition=1)], table, trials, partitions=3)
    assert again.outputs == [] and again.state == {}  # a replayed copy changes nothing
    older = handle_protocols([protocol_event(PROTOCOL, partition=0)], table, trials, partitions=3)
    assert older.outputs == []  # an older version never replaces a newer one


def test_partition_of_spreads_keys_like_kafka_default_partitioner():
    keys = [f"Patient/{i}" for i in range(300)]
    counts = [sum(partition_of(k, 3) == p for k in keys) for p in range(3)]
    assert all(c > 60 for c in counts)
    assert all(partition_of(k, 3) == partition_of(k, 3) for k in keys[:10])


def test_protocol_records_are_checked():
    good = protocol_event(PROTOCOL).message
    assert validate_protocol(good) == []
    wrong_id = research_pb2.TrialProtocol(trial_id="X", version=1, protocol_json=json.dumps(PROTOCOL).encode())
    assert validate_protocol(wrong_id)
    no_lists = research_pb2.TrialProtocol(trial_id="T-A", version=1, protocol_json=b'{"id": "T-A"}')
    assert validate_protocol(no_lists)
    assert validate_protocol(research_pb2.TrialProtocol(trial_id="T-A", version=1, protocol_json=b"{"))
