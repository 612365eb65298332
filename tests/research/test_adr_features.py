"""A drug start's inputs, evidence and explanation from hand-built timelines."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from services.research import timeline as tl
from services.research.adr import drugs, features
from services.research.adr.contract import ADR_RISK
from services.research.adr.features import SEQUENCE_FEATURES, STATIC_FEATURES

pytestmark = pytest.mark.unit


def patient(born: str = "1950-03-01", sex: str = "male") -> tuple[str, dict[str, Any]]:
    return "Patient", {"resourceType": "Patient", "id": "p1", "birthDate": born, "gender": sex}


def order(rid: str, display: str, when: str, status: str = "active") -> tuple[str, dict[str, Any]]:
    return "MedicationRequest", {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": tl.RXNORM, "code": "0", "display": display}]},
        "authoredOn": when,
    }


def lab(rid: str, loinc: str, value: float, when: str, unit: str = "mL/min") -> tuple[str, dict[str, Any]]:
    return "Observation", {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": tl.LOINC, "code": loinc, "display": loinc}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
    }


def condition(rid: str, snomed: str, when: str) -> tuple[str, dict[str, Any]]:
    return "Condition", {
        "resourceType": "Condition",
        "id": rid,
        "code": {"coding": [{"system": tl.SNOMED, "code": snomed, "display": snomed}]},
        "onsetDateTime": when,
    }


def start_of(timeline: tl.Timeline, rid: str) -> tl.Entry:
    return timeline.medications[f"MedicationRequest/{rid}"]


def test_inputs_have_the_contracts_shapes_and_read_the_drug():
    t = tl.from_resources(
        [patient(), lab("e1", "33914-3", 45, "2020-01-01"), order("m1", "Simvastatin 40 MG Oral Tablet", "2020-02-01")]
    )
    inputs = features.episode_inputs(t, start_of(t, "m1"))
    ADR_RISK.check_inputs(inputs)
    x = inputs["STATIC"][0]
    assert x[STATIC_FEATURES.index("class:statin")] == 1.0
    assert x[STATIC_FEATURES.index("log2-dose-ratio")] == pytest.approx(1.0)  # 40 mg is twice the usual 20 mg
    assert x[STATIC_FEATURES.index("egfr-missing")] == 0.0
    assert 90 * 2 ** x[STATIC_FEATURES.index("egfr")] == pytest.approx(45, rel=1e-4)
    assert x[STATIC_FEATURES.index("age")] == pytest.approx(0.699, abs=0.01)


def test_only_what_was_known_at_the_start_is_used():
    before = [
        patient(),
        condition("c1", "433144002", "2015-01-01"),  # CKD stage 3
        lab("e1", "33914-3", 45, "2019-06-01"),
        order("m1", "Ibuprofen 400 MG Oral Tablet", "2020-01-01"),
    ]
    after = [
        lab("e2", "33914-3", 20, "2020-03-01"),
        lab("k1", "2157-6", 9000, "2020-03-01", "U/L"),
        condition("c2", "88805009", "2020-04-01"),  # heart failure, later
        order("m2", "Lisinopril 10 MG Oral Tablet", "2020-05-01"),
    ]
    early = tl.from_resources(before)
    full = tl.from_resources(before + after)
    a = features.episode_inputs(early, start_of(early, "m1"))
    b = features.episode_inputs(full, start_of(full, "m1"))
    for name in ("SEQUENCE", "STATIC"):
        np.testing.assert_array_equal(a[name], b[name])
    present = b["SEQUENCE"][0, :, SEQUENCE_FEATURES.index("present")]
    assert present.sum() == 2  # the CKD condition and the eGFR; never the order itself
    assert b["SEQUENCE"][0, -1, SEQUENCE_FEATURES.index("lab:egfr")] == 1.0  # newest last


def test_sequence_keeps_the_last_events_left_padded():
    resources = [patient()] + [lab(f"a{i}", "1742-6", 20 + i, f"{1990 + i}-01-01", "U/L") for i in range(40)]
    t = tl.from_resources([*resources, order("m1", "Isoniazid 300 MG Oral Tablet", "2031-01-01")])
    seq = features.episode_inputs(t, start_of(t, "m1"))["SEQUENCE"][0]
    assert seq[:, SEQUENCE_FEATURES.index("present")].sum() == tl.MAX_PER_LAB  # the timeline keeps the latest 12
    assert seq[: features.SEQUENCE_LENGTH - tl.MAX_PER_LAB].sum() == 0.0
    days = seq[-tl.MAX_PER_LAB :, SEQUENCE_FEATURES.index("log-days-before")]
    assert (np.diff(days) < 0).all()  # oldest first


def test_triple_whammy_is_read_explained_and_cited():
    t = tl.from_resources(
        [
            patient("1940-01-01", "female"),
            lab("e1", "33914-3", 38, "2019-12-01"),
            order("m1", "lisinopril 10 MG Oral Tablet", "2019-01-01"),
            order("m2", "Hydrochlorothiazide 25 MG Oral Tablet", "2019-06-01"),
            order("m3", "Naproxen sodium 220 MG Oral Tablet", "2020-01-01"),
        ]
    )
    start = start_of(t, "m3")
    inputs = features.episode_inputs(t, start)
    x = inputs["STATIC"][0]
    assert x[STATIC_FEATURES.index("on-raas")] == x[STATIC_FEATURES.index("on-diuretic")] == 1.0
    assert x[STATIC_FEATURES.index("on-nsaid")] == 0.0  # the new drug is not "also taken"
    refs = dict(features.evidence(t, start))
    assert refs["MedicationRequest/m3"] == "Naproxen sodium 220 MG Oral Tablet"
    assert refs["Observation/e1"].startswith("egfr 38")
    assert "MedicationRequest/m1" in refs and "MedicationRequest/m2" in refs
    lines = features.explain(inputs, [0.01, 0.6, 0.0, 0.02], attention=np.eye(features.SEQUENCE_LENGTH)[-1])
    assert lines[0].startswith("acute-kidney-injury 0.60: triple whammy")
    assert "eGFR 38" in lines[0]
    assert lines[-1].startswith("most weighted history: egfr 38")


def test_a_stopped_order_counts_only_shortly_after_it_was_written():
    t = tl.from_resources(
        [
            patient(),
            order("old", "Clarithromycin 500 MG Oral Tablet", "2019-01-01", "stopped"),
            order("new", "Clarithromycin 500 MG Oral Tablet", "2020-01-20", "stopped"),
            order("m1", "Simvastatin 20 MG Oral Tablet", "2020-02-01"),
        ]
    )
    taken = [m.id for m, _ in features.concomitant(t, start_of(t, "m1"))]
    assert taken == ["MedicationRequest/new"]


def test_renewals_are_not_starts_and_dose_changes_are():
    t = tl.from_resources(
        [
            patient(),
            order("m1", "Simvastatin 20 MG Oral Tablet", "2019-01-01"),
            order("m2", "Simvastatin 20 MG Oral Tablet", "2019-12-01"),
            order("m3", "Simvastatin 40 MG Oral Tablet", "2020-02-01"),
            order("m4", "omeprazole 20 MG Delayed Release Oral Capsule", "2020-02-01"),
        ]
    )
    assert [features.is_start_or_dose_change(t, start_of(t, m)) for m in ("m1", "m2", "m3", "m4")] == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError):
        features.episode_inputs(t, start_of(t, "m4"))


def test_catalogue_reads_displays_and_admet_ai_herg():
    assert drugs.classify_display("Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet").reactions == {  # type: ignore[union-attr]
        drugs.HEPATOTOXICITY
    }
    assert drugs.classify_display("amoxicillin 500 MG Oral Tablet") is None
    assert (
        drugs.classify_display("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet").ingredient
        == "acetaminophen"
    )  # type: ignore[union-attr]
    if drugs.admet_ai_drugbank_csv() is None:
        pytest.skip("admet-ai not installed")
    amiodarone, lisinopril = drugs.by_ingredient("amiodarone"), drugs.by_ingredient("lisinopril")
    assert amiodarone.herg is not None and lisinopril.herg is not None
    assert amiodarone.herg > 0.8 > 0.2 > lisinopril.herg
    assert all(drugs.at_risk(d, drugs.QT) for d in drugs.catalogue())


def test_features_import_no_torch():
    code = (
        "import sys, services.research.adr.features, services.research.adr.contract; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
