import json
from typing import Any

import numpy as np
import pytest
import torch

from services.research import timeline as tl
from services.research.adr import drugs, features
from services.research.adr.contract import ADR_RISK
from services.research.adr.drugs import AKI, MYOPATHY, QT, REACTIONS
from training.research import adr

pytestmark = pytest.mark.unit
DAY = 86400.0


def bundle() -> dict[str, Any]:
    """An old patient with CKD, a low eGFR and low potassium: many injected starts, many reactions."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1940-05-01", "gender": "female"},
        {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": [{"system": tl.SNOMED, "code": "433144002", "display": "CKD stage 3"}]},
            "onsetDateTime": "1990-01-01",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "active",
            "medicationCodeableConcept": {
                "coding": [{"system": tl.RXNORM, "code": "0", "display": "Simvastatin 80 MG Oral Tablet"}]
            },
            "authoredOn": "2020-01-01",
        },
    ]
    for i, (loinc, value) in enumerate([("33914-3", 40.0), ("2823-3", 3.2)]):
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {"coding": [{"system": tl.LOINC, "code": loinc, "display": loinc}]},
                "effectiveDateTime": "1995-01-01",
                "valueQuantity": {"value": value, "unit": "x"},
            }
        )
    return {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}


def test_injection_writes_each_reactions_evidence_inside_its_onset_window():
    episodes, timeline, injected = adr.patient_episodes(bundle(), np.random.default_rng(3), starts=150)
    assert len(episodes) > 100
    by_id = {r["id"]: r for r in injected}
    loincs = {MYOPATHY: "2157-6", AKI: "2160-0", adr.HEPATOTOXICITY: "1742-6", QT: "8636-3"}
    seen = set()
    for k, ep in enumerate(episodes):
        assert ep.label[~ep.eligible].sum() == 0 and (ep.probability[~ep.eligible] == 0).all()
        for i, reaction in enumerate(REACTIONS):
            if not ep.label[i]:
                continue
            seen.add(reaction)
            lo, hi = adr.ONSET_DAYS[reaction]
            assert lo <= ep.onset[i] <= hi
            evidence = [r for rid, r in by_id.items() if rid.startswith(f"adr-p1-{k}-{i}-")]
            first = next(r for r in evidence if r["code"]["coding"][0]["code"] == loincs[reaction])
            when = tl.epoch(first["effectiveDateTime"])
            assert when == pytest.approx(ep.t + ep.onset[i] * DAY, abs=1.0)
    assert seen == set(REACTIONS)
    # the evidence is folded into the patient's own timeline, where later starts can see it
    assert timeline.lab_values("2157-6") or timeline.lab_values("8636-3")
    assert any(e.order == "MedicationRequest/m1" for e in episodes)  # Synthea's own orders are episodes too


def test_rule_factors_match_the_documented_rules():
    simva = drugs.by_ingredient("simvastatin")
    clarithro = drugs.by_ingredient("clarithromycin")
    quiet = adr.Context(50, False, 90.0, 1.0, 20.0, 4.2, None, frozenset(), ())
    base = adr.rule_probabilities(simva, 1.0, quiet)[MYOPATHY]
    assert base == pytest.approx(0.04)
    inhibited = adr.Context(50, False, 90.0, 1.0, 20.0, 4.2, None, frozenset(), (clarithro,))
    assert adr.rule_probabilities(simva, 1.0, inhibited)[MYOPATHY] == pytest.approx(0.16)
    naproxen, lisinopril, hctz = (drugs.by_ingredient(n) for n in ("naproxen", "lisinopril", "hydrochlorothiazide"))
    alone = adr.rule_probabilities(naproxen, 1.0, quiet)[AKI]
    whammy = adr.Context(50, False, 90.0, 1.0, 20.0, 4.2, None, frozenset(), (lisinopril, hctz))
    assert adr.rule_probabilities(naproxen, 1.0, whammy)[AKI] == pytest.approx(4 * alone)
    assert MYOPATHY not in adr.rule_probabilities(naproxen, 1.0, quiet)


def test_reporting_odds_ratio(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"","Simvastatin","Other"\n"Rhabdomyolysis",10,100\n"Other AE",90,9900\n')
    [(drug, reaction, reports, ror, low, high)] = list(adr.reporting_odds_ratios(path))
    assert (drug, reaction, reports) == ("simvastatin", MYOPATHY, 10)
    assert ror == pytest.approx((10 / 90) / (100 / 9900))
    assert low < ror < high


def test_average_precision_and_calibration():
    y = np.array([1, 0, 1, 0])
    assert adr.average_precision(y, np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    ece, bins = adr.calibration(np.array([0, 1]), np.array([0.05, 0.95]))
    assert ece == pytest.approx(0.05) and [b.n for b in bins] == [1, 1]


def test_tiny_training_run_exports_a_model_that_meets_the_contract(tmp_path, monkeypatch):
    monkeypatch.setattr(adr, "TRAIN_SEEDS", (5,))
    monkeypatch.setattr(adr, "EVAL_SEED", 6)
    evaluation = adr.train(
        tmp_path / "adr_risk", train_patients=3, eval_patients=3, starts=40, epochs=2, cache_dir=tmp_path / "cache"
    )
    assert evaluation.train_episodes > 0 and evaluation.eval_episodes > 0
    written = json.loads((tmp_path / "adr_risk" / "evaluation.json").read_text())
    assert [r["reaction"] for r in written["reactions"]] == list(REACTIONS)
    model = torch.jit.load(str(tmp_path / "adr_risk" / "1" / "model.pt"))
    t = tl.from_bundle(bundle())
    inputs = features.episode_inputs(t, t.medications["MedicationRequest/m1"])
    ADR_RISK.check_inputs(inputs)
    risk, attention = model(torch.from_numpy(inputs["SEQUENCE"]), torch.from_numpy(inputs["STATIC"]))
    outputs = {"RISK": risk.detach().numpy(), "ATTENTION": attention.detach().numpy()}
    ADR_RISK.check_outputs(outputs)
    assert ((outputs["RISK"] >= 0) & (outputs["RISK"] <= 1)).all()
    present = inputs["SEQUENCE"][0, :, features.SEQUENCE_FEATURES.index("present")] > 0.5
    assert outputs["ATTENTION"][0, present].sum() == pytest.approx(1.0, abs=1e-4)  # padding gets no weight
