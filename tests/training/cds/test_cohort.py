"""Synthetic cohort: HPO parsing, note templates, lab panels."""

from __future__ import annotations

import numpy as np
import pytest

from services.cds.knowledge.hpo import hpoa_version, parse_hpoa, parse_obo
from services.cds.labs import LAB_INDEX, LAB_KEYS, ckd_epi_2021
from training.cds.cohort import CohortSpec, build, presentation, render_note, sample_labs
from training.cds.diseases import DISEASES, RARE_KEYS
from training.cds.hpo import HpoProfile, Phenotype, parse_frequency, profiles

pytestmark = pytest.mark.unit

HPOA = [
    "#version: 2025-01-16\n",
    "OMIM:1\tToy disease\t\tHP:0000001\tPMID:1\tPCS\t\t3/4\t\t\tP\tx\n",
    "OMIM:1\tToy disease\t\tHP:0000001\tPMID:2\tPCS\t\t1/4\t\t\tP\tx\n",
    "OMIM:1\tToy disease\tNOT\tHP:0000002\tPMID:1\tPCS\t\t\t\t\tP\tx\n",
    "OMIM:1\tToy disease\t\tHP:0000006\tPMID:1\tIEA\t\t\t\t\tI\tx\n",  # inheritance, not a phenotype
    "OMIM:2\tOther\t\tHP:0000003\tPMID:1\tPCS\t\tHP:0040281\t\t\tP\tx\n",
]
OBO = [
    "[Term]\n",
    "id: HP:0000001\n",
    "name: Tall stature\n",
    'synonym: "Increased body height" EXACT []\n',
    'synonym: "IBH" EXACT abbreviation []\n',
    'synonym: "Big" BROAD []\n',
    "[Term]\n",
    "id: HP:0000009\n",
    "alt_id: HP:0000002\n",
    "name: Lens subluxation\n",
]


def test_hpo_profiles_average_duplicates_keep_not_resolve_alt_ids_and_skip_other_aspects() -> None:
    _, terms = parse_obo(OBO)
    found = profiles(parse_hpoa(HPOA), terms, hpoa_version(HPOA))
    toy = found[1]
    assert (toy.omim, toy.name, toy.hpo_version) == (1, "Toy disease", "2025-01-16")
    # EXACT synonyms and abbreviations, in hp.obo's case-insensitive order
    assert toy.phenotypes == (Phenotype("HP:0000001", "Tall stature", ("IBH", "Increased body height"), 0.5),)
    assert toy.excluded == (Phenotype("HP:0000002", "Lens subluxation", (), 0.0),)  # an alt_id of HP:0000009
    assert found[2].phenotypes == ()  # HP:0000003 is not in the ontology


def test_hpo_frequency_forms() -> None:
    assert parse_frequency("HP:0040281") == pytest.approx(0.9)
    assert parse_frequency("HP:0040282") == pytest.approx(0.55)
    assert parse_frequency("HP:0040283") == pytest.approx(0.17)
    assert parse_frequency("5/20") == pytest.approx(0.25)
    assert parse_frequency("40%") == pytest.approx(0.4)
    assert 0 < parse_frequency("") < 1


def _presentations() -> dict[str, list[tuple[tuple[str, ...], float]]]:
    fake = {
        d.omim: HpoProfile(d.omim, d.name, (Phenotype("HP:1", f"{d.key} sign", ("alt sign",), 0.9),), (), "t")
        for d in DISEASES
        if d.omim is not None
    }
    return {d.key: presentation(d, fake) for d in DISEASES}


def test_notes_carry_complaints_negations_and_family_history() -> None:
    presentations = _presentations()
    marfan = next(d for d in DISEASES if d.key == "marfan_syndrome")
    notes = [render_note(np.random.default_rng(i), marfan, presentations, 30, i % 2 == 0) for i in range(200)]
    assert all(n.endswith(".") and ("marfan_syndrome sign" in n or "alt sign" in n) for n in notes)
    negations = [n for n in notes if any(w in n for w in ("Denies ", "No ", "Negative for ", "no history of"))]
    assert 0.4 < len(negations) / len(notes) < 0.8
    assert any("Marfan syndrome" in n for n in notes)  # family history names the disease
    assert all("His" not in n for i, n in enumerate(notes) if i % 2 == 0)  # women's relatives are "Her"
    assert render_note(np.random.default_rng(3), marfan, presentations, 30, False) == notes[3]  # deterministic


def test_labs_are_positive_and_egfr_comes_with_creatinine() -> None:
    fabry = next(d for d in DISEASES if d.key == "fabry_disease")
    for i in range(100):
        values = sample_labs(np.random.default_rng(i), fabry, {"haemoglobin": 13.0}, 35, False)
        assert all(v > 0 for v in values.values())
        assert ("egfr" in values) <= ("creatinine" in values)
        if "creatinine" in values:
            assert values["egfr"] == pytest.approx(ckd_epi_2021(values["creatinine"], 35, False), abs=1)


def test_small_cohort_from_carebundle_and_hpo() -> None:
    cohort = build(CohortSpec(n_patients=120, seed=5))
    assert cohort.labs.shape == (120, len(LAB_KEYS)) and len(cohort.notes) == 120
    assert set(np.unique(cohort.y)) <= set(range(len(DISEASES)))
    rare_share = np.isin(np.array(cohort.labels)[cohort.y], RARE_KEYS).mean()
    assert 0.05 < rare_share < 0.2
    assert np.isnan(cohort.labs).any() and not np.isnan(cohort.labs[:, LAB_INDEX["haemoglobin"]]).all()
