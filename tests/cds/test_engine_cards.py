"""Fusion of model probabilities with HPO phenotype matching, and the CDS Hooks cards built from it."""

from __future__ import annotations

import numpy as np
import pytest

from services.cds import cards
from services.cds.contract import CLASSES
from services.cds.engine import Assessment, Case, Contribution, Evidence, fuse, graph_scores
from services.cds.knowledge.reasoning import default_index

pytestmark = pytest.mark.unit
WILSON = "OMIM:277900"


@pytest.fixture(scope="module")
def index():
    return default_index()


def probs_for(key: str, p: float) -> np.ndarray:
    keys = [c.key for c in CLASSES]
    out = np.full(len(keys), (1 - p) / (len(keys) - 1), dtype=np.float32)
    out[keys.index(key)] = p
    return out


def test_the_contract_names_the_graph_disease_of_rare_classes():
    assert {c.key: c.disease_id for c in CLASSES}["wilson_disease"] == WILSON


def test_graph_score_is_one_when_every_phenotype_is_annotated_on_the_disease(index):
    terms = sorted(index.onto.diseases[WILSON].phenotypes)[:4]
    scores = graph_scores(index, terms)
    assert scores[index.disease_ids.index(WILSON)] == pytest.approx(1.0)
    assert scores.max() <= 1.0 and scores.min() >= 0.0
    assert not graph_scores(index, []).any()


def test_fusion_weighs_model_and_graph_and_keeps_graph_only_candidates(index):
    terms = sorted(index.onto.diseases[WILSON].phenotypes)[:4]
    out = fuse(probs_for("wilson_disease", 0.6), terms, index, alpha=0.7, top=5)
    wilson = next(c for c in out if c.key == "wilson_disease")
    assert wilson.score == pytest.approx(0.7 * 0.6 + 0.3 * wilson.graph_score, abs=1e-6)
    assert wilson.matches and all(m.patient_term in terms for m in wilson.matches)
    graph_only = [c for c in out if c.model_probability is None]
    assert graph_only and all(c.score == pytest.approx(0.3 * c.graph_score) for c in graph_only)
    assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)


def test_without_phenotypes_the_model_alone_ranks(index):
    out = fuse(probs_for("gout", 0.8), [], index, alpha=0.7, top=3)
    assert out[0].key == "gout" and out[0].score == pytest.approx(0.8)
    assert all(c.graph_score is None and c.model_probability is not None for c in out)


@pytest.fixture(scope="module")
def assessment(index):
    terms = sorted(index.onto.diseases[WILSON].phenotypes)[:3]
    evidence = tuple(Evidence(t, index.onto.terms[t].name, "note", index.onto.terms[t].name.lower()) for t in terms)
    case = Case("pt-1", "Tremor. Jaundice.", {"ceruloplasmin": 9.0, "alt": 120.0}, evidence, "f" * 32)
    return Assessment(
        case=case,
        model_name="cds_multimodal",
        model_version="3",
        candidates=tuple(fuse(probs_for("wilson_disease", 0.9), case.hpo_ids, index, alpha=0.7, top=3)),
        top_class="wilson_disease",
        lab_contributions=(Contribution("ceruloplasmin", 9.0, 0.41), Contribution("alt", 120.0, 0.12)),
        sentence_contributions=(Contribution("sentence 1", "Tremor.", 0.2),),
        no_labs_probability=0.37,
        ontology_version="hp/releases/test",
    )


def test_cards_are_cds_hooks_cards_with_explanations(assessment, index):
    names = {t: term.name for t, term in index.onto.terms.items()}
    body = cards.response(assessment, names, 0.7)
    assert body["patient"] == "Patient/pt-1" and body["model"] == {"name": "cds_multimodal", "version": "3"}
    top = body["cards"][0]
    assert top["summary"].startswith("Consider Wilson") and len(top["summary"]) < cards.SUMMARY_MAX
    assert top["indicator"] in ("info", "warning", "critical")
    assert top["source"]["label"].endswith("(cds_multimodal v3)")
    assert top["selectionBehavior"] == "at-most-one"
    explanation = top["extension"]["medstream"]
    assert explanation["model"]["version"] == "3"
    assert [a["lab"] for a in explanation["labAttributions"]] == ["ceruloplasmin", "alt"]
    assert explanation["graphPaths"] and explanation["graphPaths"][0]["evidence"]["source"] == "note"
    assert "integrated gradients" in top["detail"] and "version 3" in top["detail"]
    for other in body["cards"][1:]:  # attributions explain the model's top class only
        assert other["extension"]["medstream"]["labAttributions"] == []


def test_card_suggestions_are_valid_fhir_conditions_and_ids_are_stable(assessment, index):
    from fhir.resources.R4B.condition import Condition

    names = {t: term.name for t, term in index.onto.terms.items()}
    first, second = cards.response(assessment, names, 0.7), cards.response(assessment, names, 0.7)
    assert first == second  # a replayed evaluation publishes the same ids
    for card in first["cards"]:
        resource = card["suggestions"][0]["actions"][0]["resource"]
        Condition.model_validate(resource)
        assert resource["verificationStatus"]["coding"][0]["code"] == "provisional"
        assert resource["subject"]["reference"] == "Patient/pt-1"


def test_every_class_has_a_valid_icd10cm_code():
    import simple_icd_10_cm as cm

    assert set(cards.ICD10_CODES) == {c.key for c in CLASSES}
    for code in cards.ICD10_CODES.values():
        assert cm.is_valid_item(code) and cm.is_leaf(code), code
