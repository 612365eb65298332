"""Criteria against hand-built timelines: met / not-met / unknown / conflicting with evidence, unit conversion, the
trial-level match, and re-evaluation limited to the aspects a new resource touched."""

from __future__ import annotations

from typing import Any

import pytest

from services.research.timeline import LOINC, RXNORM, SNOMED, Timeline
from services.research.trials.criteria import Criterion, parse_sentence, parse_trial
from services.research.trials.matching import Match, evaluate, match

pytestmark = pytest.mark.unit


def patient(birth: str = "1960-05-01", sex: str = "female") -> dict[str, Any]:
    return {"id": "p1", "birthDate": birth, "gender": sex}


def condition(rid: str, code: str, display: str, onset: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
        "clinicalStatus": {"coding": [{"code": status}]},
        "onsetDateTime": onset,
        **extra,
    }


def medication(rid: str, code: str, display: str, authored: str, status: str = "active") -> dict[str, Any]:
    coding = {"system": RXNORM, "code": code, "display": display}
    return {"id": rid, "status": status, "medicationCodeableConcept": {"coding": [coding]}, "authoredOn": authored}


def lab(rid: str, loinc: str, value: float, unit: str, when: str) -> dict[str, Any]:
    return {
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": loinc}]},
        "valueQuantity": {"value": value, "unit": unit, "code": unit},
        "effectiveDateTime": when,
    }


def timeline(*resources: tuple[str, dict[str, Any]]) -> Timeline:
    t = Timeline()
    t.fold("Patient", patient())
    for kind, resource in resources:
        t.fold(kind, resource)
    return t


def criterion(sentence: str, section: str = "inclusion", k: int = 0) -> Criterion:
    return parse_sentence("T", section, 1, sentence)[k]  # type: ignore[arg-type]


DIABETES = ("Condition", condition("dm", "44054006", "Diabetes mellitus type 2", "2015-03-02"))
LATE = ("Observation", lab("bmi", "39156-5", 27.0, "kg/m2", "2024-06-01"))  # moves the record's time to mid-2024


def test_condition_met_with_its_reference_and_not_met_without():
    c = criterion("Adults with type 2 diabetes mellitus diagnosed at least 6 months before screening", k=1)
    verdict = evaluate(c, timeline(DIABETES, LATE))
    assert verdict.status == "met"
    assert verdict.evidence[0][0] == "Condition/dm" and "2015-03-02" in verdict.evidence[0][1]
    assert evaluate(c, timeline(LATE)).status == "not-met"
    recent = ("Condition", condition("dm", "44054006", "Diabetes mellitus type 2", "2024-05-01"))
    assert evaluate(c, timeline(recent, LATE)).status == "not-met"  # diagnosed too recently


def test_conflicting_condition_recorded_and_refuted():
    refuted = condition("dm2", "44054006", "Diabetes mellitus type 2", "2016-01-01")
    refuted["verificationStatus"] = {"coding": [{"code": "refuted"}]}
    verdict = evaluate(criterion("Diagnosis of type 2 diabetes mellitus"), timeline(DIABETES, ("Condition", refuted)))
    assert verdict.status == "conflicting"
    assert {r for r, _ in verdict.evidence} == {"Condition/dm", "Condition/dm2"}


def test_window_on_a_resolved_event():
    mi = condition("mi", "22298006", "Myocardial infarction", "2024-03-01", "resolved", abatementDateTime="2024-04-01")
    c = criterion("Myocardial infarction within the last 6 months", "exclusion")
    assert evaluate(c, timeline(("Condition", mi), LATE)).status == "met"
    later = ("Observation", lab("bmi2", "39156-5", 27.0, "kg/m2", "2025-06-01"))
    assert evaluate(c, timeline(("Condition", mi), later)).status == "not-met"


def test_lab_window_met_not_met_unknown_and_conflicting():
    c = criterion("HbA1c between 7.0% and 10.5% within the last 3 months")
    a = ("Observation", lab("a1", "4548-4", 8.1, "%", "2024-05-01"))
    verdict = evaluate(c, timeline(a, LATE))
    assert verdict.status == "met" and verdict.evidence == (("Observation/a1", "HbA1c 8.1 % on 2024-05-01"),)
    low = ("Observation", lab("a2", "4548-4", 6.2, "%", "2024-05-20"))
    assert evaluate(c, timeline(low, LATE)).status == "not-met"
    assert evaluate(c, timeline(a, low, LATE)).status == "conflicting"
    old = ("Observation", lab("a0", "4548-4", 8.1, "%", "2022-01-01"))
    verdict = evaluate(c, timeline(old, LATE))
    assert verdict.status == "unknown" and verdict.evidence[0][0] == "Observation/a0"
    assert evaluate(c, timeline(LATE)).status == "unknown"


def test_lab_units_are_converted_both_ways():
    mg = ("Observation", lab("cr", "2160-0", 1.8, "mg/dL", "2024-05-01"))
    assert evaluate(criterion("Serum creatinine above 150 umol/L"), timeline(mg)).status == "met"  # 159 umol/L
    umol = ("Observation", lab("cr", "38483-4", 120.0, "umol/L", "2024-05-01"))
    assert evaluate(criterion("Serum creatinine above 1.5 mg/dL"), timeline(umol)).status == "not-met"  # 1.36
    ifcc = ("Observation", lab("a1", "4548-4", 64.0, "mmol/mol", "2024-05-01"))  # 8.0 %
    assert evaluate(criterion("HbA1c of at least 7.5%"), timeline(ifcc)).status == "met"
    odd = ("Observation", lab("a1", "4548-4", 8.0, "furlongs", "2024-05-01"))
    assert evaluate(criterion("HbA1c of at least 7.5%"), timeline(odd)).status == "unknown"


def test_sex_specific_thresholds_hold_trivially_for_the_other_sex():
    men, women = parse_sentence("T", "inclusion", 1, "Serum creatinine > 1.5 mg/dL in men or > 1.4 mg/dL in women")
    creatinine = ("Observation", lab("cr", "2160-0", 1.45, "mg/dL", "2024-05-01"))
    woman = timeline(creatinine)  # patient() is female
    assert (evaluate(men, woman).status, evaluate(women, woman).status) == ("met", "met")
    man = Timeline()
    man.fold("Patient", patient(sex="male"))
    man.fold(*creatinine)
    assert (evaluate(men, man).status, evaluate(women, man).status) == ("not-met", "met")


def test_negated_medication_and_current_prescriptions():
    c = criterion("No prior treatment with insulin")
    insulin = (
        "MedicationRequest",
        medication("ins", "106892", "insulin isophane, human 70 UNT/ML", "2010-01-01", "stopped"),
    )
    verdict = evaluate(c, timeline(insulin, LATE))
    assert verdict.status == "not-met" and verdict.evidence[0][0] == "MedicationRequest/ins"
    assert evaluate(c, timeline(LATE)).status == "met"
    current = criterion("Currently treated with a statin")
    renewed = ("MedicationRequest", medication("s", "999", "Atorvastatin 20 MG Oral Tablet", "2024-01-10", "stopped"))
    long_ago = ("MedicationRequest", medication("s", "999", "Atorvastatin 20 MG Oral Tablet", "2019-01-10", "stopped"))
    assert evaluate(current, timeline(renewed, LATE)).status == "met"  # a yearly renewal still running
    assert evaluate(current, timeline(long_ago, LATE)).status == "not-met"


def test_age_sex_and_pregnancy():
    t = timeline(LATE)
    assert evaluate(criterion("Adults aged 40 to 75 years"), t).status == "met"  # 64 in mid-2024
    assert evaluate(criterion("Age ≥ 65 years"), t).status == "not-met"
    assert evaluate(criterion("Age ≥ 65 years"), t).evidence == (("Patient/p1", "age 64 on 2024-06-01"),)
    assert evaluate(criterion("Men aged 18 years or older", k=1), t).status == "not-met"
    pregnant = criterion("Pregnant or breastfeeding women", "exclusion")
    assert evaluate(pregnant, t).status == "not-met"
    birth = condition("preg", "72892002", "Normal pregnancy", "2023-06-01", "resolved", abatementDateTime="2024-02-01")
    assert evaluate(pregnant, timeline(("Condition", birth), LATE)).status == "unknown"  # breastfeeding unrecorded
    now = condition("preg", "72892002", "Normal pregnancy", "2024-03-01")
    assert evaluate(pregnant, timeline(("Condition", now), LATE)).status == "met"
    assert evaluate(criterion("Able to provide written informed consent"), t).status == "unknown"


TRIAL = {
    "id": "T",
    "title": "test trial",
    "version": 2,
    "inclusion": [
        "Adults aged 40 to 75 years with type 2 diabetes mellitus",
        "HbA1c between 7.0% and 10.5%",
        "Able to provide written informed consent",
    ],
    "exclusion": ["eGFR below 30 mL/min/1.73 m2", "Prior treatment with insulin"],
}


def test_match_summarises_eligibility_score_unmet_and_unknown():
    trial = parse_trial(TRIAL)
    a1c = ("Observation", lab("a1", "4548-4", 8.1, "%", "2024-05-01"))
    m = match(trial, timeline(DIABETES, a1c, LATE))
    assert not m.eligible and m.candidate  # consent is for the coordinator
    assert m.unknown == ("T-I3", "T-E1") and m.unmet == ()
    assert m.score == pytest.approx(3 / 5)  # I1, I2, E2 in favour
    low = ("Observation", lab("a2", "4548-4", 6.1, "%", "2024-05-20"))
    ruled_out = match(trial, timeline(DIABETES, low, LATE))
    assert ruled_out.unmet == ("T-I2",) and not ruled_out.candidate
    assert Match.from_json(m.to_json()) == m
    assert m.document("p1")["verdicts"][0]["criterion_id"] == "T-I1"


def test_only_criteria_reading_a_touched_aspect_are_recomputed():
    trial = parse_trial(TRIAL)
    t = timeline(DIABETES, ("Observation", lab("a1", "4548-4", 8.1, "%", "2024-05-01")), LATE)
    first = match(trial, t)
    assert set(first.recomputed) == {c.id for c in trial.criteria}
    touched = t.fold("Observation", lab("egfr", "33914-3", 25.0, "mL/min/{1.73_m2}", "2024-05-15"))
    assert touched == {"lab:33914-3"}
    again = match(trial, t, first, touched)
    assert set(again.recomputed) == {"T-I1", "T-E1"}  # the age criterion, always; the eGFR criterion it touched
    assert again.verdict("T-E1").status == "met"  # type: ignore[union-attr]
    assert again.unmet == ("T-E1",) and again.verdict("T-I2") is first.verdict("T-I2")
    nothing = match(trial, t, again, frozenset())
    assert nothing.recomputed == ("T-I1",)
    # the record's latest time moving on re-checks time-dependent criteria (here only the age)
    t.fold("Condition", condition("gerd", "235595009", "GERD", "2024-09-01"))
    assert set(match(trial, t, nothing, frozenset({"condition"})).recomputed) == {"T-I1", "T-I1.2"}
    other_version = parse_trial({**TRIAL, "version": 3})
    assert len(match(other_version, t, nothing, frozenset()).recomputed) == len(other_version.criteria)
