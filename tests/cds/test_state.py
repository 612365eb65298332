"""Patient state from FHIR resources: normalisation to LOINC/UCUM, active conditions/medications, notes, and
evaluation only on relevant change."""

from __future__ import annotations

import base64

import pytest

from services.cds.state import MAX_NOTES, PatientState, apply

pytestmark = pytest.mark.unit


def lab(rid: str, loinc: str, value: float, unit: str, when: str = "2026-01-01T09:00:00Z") -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def note(rid: str, text: str, date: str = "2026-01-01T10:00:00Z") -> dict:
    data = base64.b64encode(text.encode()).decode()
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "date": date,
        "subject": {"reference": "Patient/p1"},
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}],
    }


def condition(rid: str, code: str, status: str = "active", verification: str = "confirmed") -> dict:
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {"coding": [{"code": status}]},
        "verificationStatus": {"coding": [{"code": verification}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
        "subject": {"reference": "Patient/p1"},
    }


def test_labs_are_normalised_to_the_canonical_loinc_and_ucum_unit():
    state = PatientState()
    apply(state, "Observation", lab("o1", "30313-1", 91.0, "g/L"))  # alias LOINC, g/L
    apply(state, "Observation", lab("o2", "2345-7", 7.0, "mmol/L"))
    assert state.labs["haemoglobin"].loinc == "718-7"
    assert state.labs["haemoglobin"].value == pytest.approx(9.1)
    assert state.labs["haemoglobin"].unit == "g/dL"
    assert state.labs["glucose"].value == pytest.approx(126.1, abs=0.1)


def test_unknown_codes_and_units_are_kept_as_unmapped_not_guessed():
    state = PatientState()
    apply(state, "Observation", lab("o1", "718-7", 9.1, "furlongs"))
    apply(state, "Observation", lab("o2", "99999-9", 1.0, "g/dL"))
    assert not state.labs
    assert state.unmapped == {"718-7|furlongs": "unknown-unit", "99999-9|g/dL": "unknown-loinc"}


def test_an_older_result_does_not_replace_a_newer_one():
    state = PatientState()
    apply(state, "Observation", lab("new", "718-7", 9.0, "g/dL", "2026-02-01T00:00:00Z"))
    apply(state, "Observation", lab("old", "718-7", 14.0, "g/dL", "2026-01-01T00:00:00Z"))
    assert state.labs["haemoglobin"].observation_id == "new"


def test_vital_signs_and_blood_pressure_components():
    bp = {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-01T09:00:00Z",
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 168, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 96, "code": "mm[Hg]"},
            },
        ],
    }
    state = PatientState()
    apply(state, "Observation", bp)
    apply(state, "Observation", lab("t", "8310-5", 101.3, "[degF]"))
    assert state.vitals["systolic_bp"].value == 168
    assert state.vitals["body_temperature"].value == pytest.approx(38.5, abs=0.01)
    flags = dict(state.phenotypes_from_measurements())
    assert "HP:0000822" in flags and "HP:0001945" in flags  # hypertension, fever


def test_conditions_follow_their_status_and_medications_theirs():
    state = PatientState()
    apply(state, "Condition", condition("c1", "E11.9"))
    apply(state, "Condition", condition("c2", "I10", verification="refuted"))
    assert list(state.conditions) == ["c1"]
    apply(state, "Condition", condition("c1", "E11.9", status="resolved"))
    assert not state.conditions
    med = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "metformin 500 MG Oral Tablet"},
        "subject": {"reference": "Patient/p1"},
    }
    apply(state, "MedicationRequest", med)
    assert state.medications["m1"].display == "metformin 500 MG Oral Tablet"
    apply(state, "MedicationRequest", {**med, "status": "stopped"})
    assert not state.medications


def test_notes_keep_the_most_recent_ones_and_deletes_remove():
    state = PatientState()
    for i in range(MAX_NOTES + 2):
        apply(state, "DocumentReference", note(f"n{i}", f"Note {i}.", f"2026-01-0{i + 1}T00:00:00Z"))
    assert [n.id for n in state.notes] == [f"n{i}" for i in range(2, MAX_NOTES + 2)]
    apply(state, "DocumentReference", note(f"n{MAX_NOTES + 1}", ""), deleted=True)
    assert f"n{MAX_NOTES + 1}" not in [n.id for n in state.notes]


def test_evaluation_is_due_only_when_what_it_reads_changes():
    state = PatientState()
    apply(state, "Patient", {"resourceType": "Patient", "id": "p1", "gender": "female"})
    assert not state.needs_evaluation()  # nothing to evaluate yet
    apply(state, "Observation", lab("o1", "718-7", 9.1, "g/dL"))
    assert state.needs_evaluation()
    state.evaluated = state.fingerprint()
    assert apply(state, "Observation", lab("o1", "718-7", 9.1, "g/dL")) is False  # the same resource again
    apply(state, "Observation", lab("o2", "718-7", 9.2, "g/dL", "2026-01-02T00:00:00Z"))  # moved < 5 %
    apply(state, "Observation", lab("hr", "8867-4", 72, "/min"))  # a normal vital sign
    assert not state.needs_evaluation()
    apply(state, "Observation", lab("o3", "718-7", 7.5, "g/dL", "2026-01-03T00:00:00Z"))
    assert state.needs_evaluation()
    state.evaluated = state.fingerprint()
    apply(state, "DocumentReference", note("n1", "Tired all the time."))
    assert state.needs_evaluation()


def test_state_round_trips_through_json():
    state = PatientState()
    apply(state, "Observation", lab("o1", "718-7", 9.1, "g/dL"))
    apply(state, "Condition", condition("c1", "E11.9"))
    apply(state, "DocumentReference", note("n1", "Pallor."))
    state.evaluated = state.fingerprint()
    again = PatientState.from_json(state.to_json())
    assert again == state
    assert not again.needs_evaluation()
