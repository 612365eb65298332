"""FHIR resources as graph upserts: keyed by FHIR ids and knowledge-graph codes, so replays change nothing."""

from __future__ import annotations

import pytest

from services.cds.engine import Evidence
from services.cds.graph import evidence_upserts, medication_key, resource_upserts
from services.common.graph_events import from_mutation, to_mutation

pytestmark = pytest.mark.unit


def test_observation_joins_patient_encounter_and_the_phenotype_it_shows():
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "encounter": {"reference": "Encounter/e1"},
        "valueQuantity": {"value": 86, "code": "g/L"},
    }
    nodes, rels = resource_upserts("Observation", resource, "p1")
    assert not nodes
    kinds = {(r.start.label, r.type, r.end.label, r.end.key) for r in rels}
    assert kinds == {
        ("Patient", "HAS_OBSERVATION", "Observation", "o1"),
        ("Observation", "INDICATES", "Phenotype", "HP:0001903"),  # anaemia
        ("Observation", "DURING", "Encounter", "e1"),
    }
    observation = rels[0].end
    assert observation.properties["value"] == pytest.approx(8.6) and observation.properties["unit"] == "g/dL"
    # Survives the GraphMutation round trip the graph writer does.
    [back, *_] = from_mutation(to_mutation("m", nodes, rels))[1]
    assert back.end.properties == {k: v for k, v in observation.properties.items() if v is not None}


def test_conditions_attach_to_icd10_codes_and_medications_to_drug_ids():
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]},
    }
    [rel] = resource_upserts("Condition", condition, "p1")[1]
    assert (rel.type, rel.end.label, rel.end.key, rel.properties["fhir_id"]) == (
        "HAS_CONDITION",
        "Condition",
        "E11.9",
        "c1",
    )
    med = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "861007"}],
            "text": "metformin hydrochloride 500 MG Oral Tablet",
        },
    }
    [rel] = resource_upserts("MedicationRequest", med, "p1")[1]
    assert (rel.type, rel.end.key) == ("PRESCRIBED", "DB00331")


def test_medication_keys():
    assert medication_key("Metformin 500 mg") == "DB00331"
    assert medication_key("oral metformin") == "DB00331"
    assert medication_key("ferrous sulfate 325 MG Oral Tablet") == "name:ferrous sulfate"  # as `kg load` keys it
    assert medication_key("Zzyzx extract 5 MG", "310325") == "RXNORM:310325"
    assert medication_key("zzz unknown") == "name:zzz unknown"


def test_only_note_phenotypes_become_exhibits_edges():
    evidence = [Evidence("HP:0001945", "Fever", "note", "fever"), Evidence("HP:0001903", "Anemia", "lab", "hb")]
    [rel] = evidence_upserts("p1", evidence)
    assert (rel.type, rel.end.key, rel.properties["source"]) == ("EXHIBITS", "HP:0001945", "note")
