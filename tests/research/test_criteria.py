"""Criterion sentences to structured criteria: negation, time windows, lab thresholds with units, age ranges, the
"other" fallback, and every shipped protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.research.timeline import LOINC, RXNORM, SNOMED
from services.research.trials import concepts
from services.research.trials.criteria import (
    Criterion,
    ParsedTrial,
    is_negated,
    min_duration,
    parse_sentence,
    parse_trial,
    threshold,
    window,
)

pytestmark = pytest.mark.unit
PROTOCOLS = Path(__file__).resolve().parents[2] / "services" / "research" / "trials" / "protocols.json"


def one(sentence: str, section: str = "inclusion") -> list[Criterion]:
    return parse_sentence("T", section, 1, sentence)  # type: ignore[arg-type]


def test_age_and_condition_from_one_sentence_keep_the_sentence():
    sentence = "Adults aged 40 to 75 years with type 2 diabetes mellitus diagnosed at least 6 months before screening"
    age, diabetes = one(sentence)
    assert (age.type, age.comparator, age.low, age.high) == ("age", "between", 40, 75)
    assert diabetes.type == "condition" and diabetes.concept == "type 2 diabetes mellitus"
    assert (SNOMED, "44054006") in diabetes.codes
    assert diabetes.min_duration_days == pytest.approx(182.6, abs=0.1)
    assert age.text == diabetes.text == sentence
    assert (age.id, diabetes.id) == ("T-I1", "T-I1.2")
    assert age.sentence_id == diabetes.sentence_id == "T-I1"
    assert age.aspects() == {"demographics"} and diabetes.aspects() == {"condition"}


def test_negation_prior_treatment_and_pseudo_negation():
    (insulin,) = one("No prior treatment with insulin")
    assert insulin.type == "medication" and insulin.negated and insulin.timing == "ever"
    assert insulin.aspects() == {"medication"}
    (naive,) = one("Insulin-naive")
    assert naive.concept == "insulin" and naive.negated
    assert not is_negated("not only hypertension", len("not only "))
    assert is_negated("without heart failure", len("without "))
    assert not is_negated("no insulin, but heart failure", len("no insulin, but "))
    (stroke,) = one("Has not had a stroke in the past 6 months")
    assert stroke.negated and stroke.timing == "window"


def test_temporal_windows_and_durations():
    assert window("within the last 3 months") == pytest.approx(91.3, abs=0.1)
    assert window("in the past year") == pytest.approx(365.25)
    assert window("within the last 30 days") == 30
    assert min_duration("diagnosed at least 6 months before screening") == pytest.approx(182.6, abs=0.1)
    assert min_duration("more than 2 years ago") == pytest.approx(730.5)
    assert window("with type 2 diabetes") is None
    (mi,) = one("History of myocardial infarction or stroke within the last 6 months")
    assert mi.concept == "myocardial infarction or stroke" and mi.timing == "window"
    assert {(SNOMED, "22298006"), (SNOMED, "230690007")} <= set(mi.codes)


def test_lab_thresholds_with_units():
    (a1c,) = one("HbA1c between 7.0% and 10.5% within the last 3 months")
    assert (a1c.type, a1c.comparator, a1c.low, a1c.high, a1c.unit) == ("lab", "between", 7.0, 10.5, "%")
    assert a1c.timing == "window" and a1c.window_days == pytest.approx(91.3, abs=0.1)
    assert a1c.aspects() == {"lab:4548-4", "lab:17856-6"}
    (egfr,) = one("eGFR below 30 mL/min/1.73 m2", "exclusion")
    assert (egfr.comparator, egfr.high, egfr.unit, egfr.timing) == ("<", 30, "mL/min/{1.73_m2}", "latest")
    (creatinine,) = one("Serum creatinine above 150 umol/L")
    assert creatinine.unit == "umol/L" and creatinine.aspects() == {"lab:2160-0", "lab:38483-4"}
    (si,) = one("HbA1c ≥ 53 mmol/mol at screening")
    assert (si.comparator, si.low, si.unit) == (">=", 53, "mmol/mol")
    (either,) = one("ALT or AST above 120 U/L (3 times the upper limit of normal)")
    assert either.concept == "ALT or AST" and {(LOINC, "1742-6"), (LOINC, "1920-8")} <= set(either.codes)
    assert threshold("of 140 mmhg or higher") == (">=", 140.0, None, "mmhg")


def test_sex_specific_thresholds_give_one_criterion_per_sex():
    men, women = one("Serum creatinine > 1.5 mg/dL in men or > 1.4 mg/dL in women")
    assert (men.sex, men.low, women.sex, women.low) == ("male", 1.5, "female", 1.4)
    assert men.type == women.type == "lab"


def test_age_ranges_and_sex():
    (older,) = one("Age ≥ 65 years")
    assert (older.comparator, older.low) == (">=", 65)
    (adults,) = one("Adults 18 years of age or older")
    assert (adults.comparator, adults.low) == (">=", 18)
    (children,) = one("Children younger than 12 years of age")
    assert (children.comparator, children.high) == ("<", 12)
    kinds = [c.type for c in one("Women aged 50 years or older with osteoporosis")]
    assert kinds == ["age", "sex", "condition"]


def test_pregnancy_and_what_the_record_cannot_say():
    (pregnant,) = one("Pregnant or breastfeeding women", "exclusion")
    assert pregnant.type == "pregnancy" and pregnant.aspects() == {"condition", "demographics"}
    (consent,) = one("Able to provide written informed consent")
    assert consent.type == "other" and consent.codes == () and consent.method == "none"
    (allergy,) = one("Known hypersensitivity to statins", "exclusion")
    assert allergy.type == "other"  # an allergy is not the use of the drug
    sex, rest = one("Women of childbearing potential not using highly effective contraception", "exclusion")
    assert sex.type == "sex" and rest.type == "other"


def test_medication_classes_and_ingredients():
    (ace,) = one("Currently treated with an ACE inhibitor or angiotensin receptor blocker")
    assert ace.type == "medication" and ace.timing == "current" and (RXNORM, "314076") in ace.codes
    (vka,) = one("Ongoing therapy with warfarin or another vitamin K antagonist")
    assert vka.concept == "warfarin or vitamin k antagonist"
    statin = concepts.by_name("statin")
    assert statin is not None
    assert concepts.medication_matches(statin, RXNORM, "999", "Atorvastatin 40 MG Oral Tablet")
    assert not concepts.medication_matches(statin, RXNORM, "999", "Aspirin 81 MG Oral Tablet")


def test_ckd_stage_ranges_name_both_stages():
    (ckd,) = one("Adults with chronic kidney disease stage 3 or 4")[1:]
    assert {(SNOMED, "433144002"), (SNOMED, "431857002")} <= set(ckd.codes)
    assert (SNOMED, "431855005") not in ckd.codes  # stage 1 is not asked for


def test_unit_conversion_to_the_concepts_unit():
    creatinine, a1c = concepts.by_name("serum creatinine"), concepts.by_name("HbA1c")
    assert creatinine is not None and a1c is not None
    assert concepts.to_canonical(creatinine, 88.42, "umol/L") == pytest.approx(1.0)
    assert concepts.to_canonical(a1c, 53, "mmol/mol") == pytest.approx(7.0, abs=0.01)
    assert concepts.to_canonical(creatinine, 1.0, "furlongs") is None


def test_embedding_resolves_an_unlisted_phrase_and_refuses_a_far_one():
    # MiniLM (installed offline): a synonym the lexicon does not list is found, an unrelated phrase is not.
    close = concepts.resolve("high cholesterol", "condition")
    assert close.method == "embedding" and close.concept is not None and close.concept.name == "hyperlipidaemia"
    assert concepts.EMBEDDING_FLOOR <= close.score < 1
    far = concepts.resolve("written informed consent", "condition")
    assert far.concept is None and far.method == "none"
    assert concepts.resolve("type 2 diabetes", "condition").method == "rule"


def test_every_protocol_parses_into_typed_coded_criteria_and_round_trips():
    protocols = json.loads(PROTOCOLS.read_text())["trials"]
    assert len(protocols) >= 30
    ids = [p["id"] for p in protocols]
    assert len(set(ids)) == len(ids)
    for protocol in protocols:
        trial = parse_trial(protocol)
        sentences = protocol["inclusion"] + protocol["exclusion"]
        assert {c.text for c in trial.criteria} == set(sentences)
        assert len({c.sentence_id for c in trial.criteria}) == len(sentences)
        for c in trial.criteria:
            assert c.trial_id == protocol["id"] and c.id.startswith(c.sentence_id)
            if c.type in ("condition", "medication", "lab", "pregnancy"):
                assert c.codes or c.ingredients, c
            if c.type == "lab":
                assert c.comparator and c.unit and c.aspects()
        assert ParsedTrial.from_json(trial.to_json()) == trial
