"""Assessments as CDS Hooks 2.0 cards (pure): the suggestions topic and the CDS Hooks service share this shape.

Each card is one candidate diagnosis: a summary, a markdown detail with its explanation, an indicator, the
source (model name and version), one suggestion (record it as a provisional Condition) and, under
`extension["medstream"]`, the machine-readable explanation: fused-score parts, lab attributions, note sentences,
and the HPO paths from the patient's phenotypes to the disease's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from services.cds.engine import Assessment, Diagnosis

SUMMARY_MAX = 140  # CDS Hooks: summary "SHOULD be less than 140 characters"
NAMESPACE = uuid.UUID("5b0b7c3e-9d8e-4a43-9e55-6f1cf3b6a2d1")
DISCLAIMER = "Trained on synthetic data only; not validated, not for clinical use."
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# ICD-10-CM codes for the model's classes (checked against simple-icd-10-cm by the tests).
ICD10_CODES: dict[str, str] = {
    "type2_diabetes": "E11.9",
    "hypertension": "I10",
    "ckd_stage3": "N18.30",
    "iron_deficiency_anaemia": "D50.9",
    "community_acquired_pneumonia": "J18.9",
    "heart_failure": "I50.9",
    "hypothyroidism": "E03.9",
    "hyperthyroidism": "E05.90",
    "copd": "J44.9",
    "urinary_tract_infection": "N39.0",
    "nafld": "K76.0",
    "vitamin_b12_deficiency": "E53.8",
    "gout": "M10.9",
    "atrial_fibrillation": "I48.91",
    "rheumatoid_arthritis": "M06.9",
    "migraine": "G43.909",
    "marfan_syndrome": "Q87.40",
    "fabry_disease": "E75.21",
    "wilson_disease": "E83.01",
    "gaucher_disease_type1": "E75.22",
    "hereditary_haemochromatosis": "E83.110",
    "ehlers_danlos_classic": "Q79.61",
    "hht_type1": "I78.0",
    "alport_syndrome_x_linked": "Q87.81",
}
DISEASE_SYSTEMS = {"OMIM": "https://omim.org/entry/", "ORPHA": "https://www.orpha.net/", "DECIPHER": ""}


def suggestion_id(assessment: Assessment) -> str:
    """Stable per (patient, inputs, model version): a replayed evaluation publishes the same id."""
    case = assessment.case
    return str(uuid.uuid5(NAMESPACE, f"{case.patient_id}|{case.fingerprint}|{assessment.model_version}"))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _term_name(names: Mapping[str, str], hpo_id: str) -> str:
    return f"{names.get(hpo_id, hpo_id)} ({hpo_id})"


def _condition(candidate: Diagnosis, patient_id: str) -> dict[str, Any]:
    if candidate.key in ICD10_CODES:
        coding = {"system": ICD10CM, "code": ICD10_CODES[candidate.key], "display": candidate.name}
    else:  # a graph-only HPO disease: OMIM / Orphanet id
        prefix, _, code = (candidate.disease_id or candidate.key).partition(":")
        system = {"OMIM": "http://www.omim.org", "ORPHA": "http://www.orpha.net"}.get(prefix, "urn:medstream:disease")
        coding = {"system": system, "code": code, "display": candidate.name}
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "provisional"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                    }
                ]
            }
        ],
        "code": {"coding": [coding], "text": candidate.name},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def _explanation(assessment: Assessment, candidate: Diagnosis, names: Mapping[str, str]) -> dict[str, Any]:
    is_top = candidate.key == assessment.top_class
    evidence = {e.hpo_id: e for e in assessment.case.evidence}
    return {
        "model": {"name": assessment.model_name, "version": assessment.model_version},
        "ontology": {"name": "HPO", "version": assessment.ontology_version},
        "score": round(candidate.score, 4),
        "modelProbability": None if candidate.model_probability is None else round(candidate.model_probability, 4),
        "graphScore": None if candidate.graph_score is None else round(candidate.graph_score, 4),
        "diseaseId": candidate.disease_id,
        "rare": candidate.rare,
        # Attributions are computed for the model's top class: they explain this card only when it is that class.
        "labAttributions": [
            {"lab": c.feature, "value": c.value, "contribution": round(c.contribution, 4)}
            for c in assessment.lab_contributions
        ]
        if is_top
        else [],
        "noLabsProbability": round(assessment.no_labs_probability, 4) if is_top else None,
        "noteSentences": [
            {"sentence": c.value, "contribution": round(c.contribution, 4)} for c in assessment.sentence_contributions
        ]
        if is_top
        else [],
        "graphPaths": [
            {
                "patientTerm": m.patient_term,
                "patientTermName": names.get(m.patient_term, ""),
                "evidence": {"source": evidence[m.patient_term].source, "detail": evidence[m.patient_term].detail}
                if m.patient_term in evidence
                else None,
                "diseaseTerm": m.disease_term,
                "diseaseTermName": names.get(m.disease_term, ""),
                "commonAncestor": m.common_ancestor,
                "commonAncestorName": names.get(m.common_ancestor, ""),
                "informationContent": round(m.ic, 4),
                "relation": m.relation,
                "patientPath": list(m.patient_path),
                "diseasePath": list(m.disease_path),
            }
            for m in candidate.matches
        ],
    }


def _detail(assessment: Assessment, candidate: Diagnosis, names: Mapping[str, str], alpha: float) -> str:
    lines = []
    if candidate.model_probability is not None and candidate.graph_score is not None:
        lines.append(
            f"**Score {_pct(candidate.score)}** = {alpha:g} x model {_pct(candidate.model_probability)}"
            f" + {1 - alpha:g} x phenotype match {_pct(candidate.graph_score)}."
        )
    elif candidate.model_probability is not None:
        lines.append(f"**Score {_pct(candidate.score)}**: model probability (no HPO annotations for this class).")
    else:
        lines.append(
            f"**Score {_pct(candidate.score)}** = {1 - alpha:g} x phenotype match {_pct(candidate.graph_score)};"
            " the model has no class for this disease."
        )
    if candidate.key == assessment.top_class and assessment.lab_contributions:
        labs = ", ".join(f"{c.feature} {c.value:g} ({c.contribution:+.2f})" for c in assessment.lab_contributions)
        lines.append(f"**Labs behind the model** (integrated gradients, change in probability): {labs}.")
    if candidate.key == assessment.top_class and assessment.sentence_contributions:
        parts = "; ".join(f'"{c.value}" ({c.contribution:+.2f})' for c in assessment.sentence_contributions)
        lines.append(f"**Note sentences behind the model**: {parts}.")
    if candidate.matches:
        paths = "; ".join(
            f"{_term_name(names, m.patient_term)} ~ {_term_name(names, m.disease_term)}"
            f" via {names.get(m.common_ancestor, m.common_ancestor)} [{m.relation}]"
            for m in candidate.matches[:5]
        )
        lines.append(f"**Phenotypes matched in HPO**: {paths}.")
    lines.append(f"_{assessment.model_name} version {assessment.model_version}. {DISCLAIMER}_")
    return "\n\n".join(lines)


def card(assessment: Assessment, candidate: Diagnosis, names: Mapping[str, str], alpha: float) -> dict[str, Any]:
    patient_id = assessment.case.patient_id
    base = f"{suggestion_id(assessment)}|{candidate.key}"
    summary = f"Consider {candidate.name} ({_pct(candidate.score)})"
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1] + "\u2026"
    return {
        "uuid": str(uuid.uuid5(NAMESPACE, base)),
        "summary": summary,
        "detail": _detail(assessment, candidate, names, alpha),
        "indicator": "warning" if candidate.score >= 0.5 else "info",
        "source": {
            "label": f"medstream decision support ({assessment.model_name} v{assessment.model_version})",
            "topic": {"system": "urn:medstream:cds", "code": "differential-diagnosis"},
        },
        "suggestions": [
            {
                "label": f"Record {candidate.name} as a provisional diagnosis",
                "uuid": str(uuid.uuid5(NAMESPACE, base + "|record")),
                "actions": [
                    {
                        "type": "create",
                        "description": f"Add {candidate.name} (provisional) to the problem list",
                        "resource": _condition(candidate, patient_id),
                    }
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "extension": {"medstream": _explanation(assessment, candidate, names)},
    }


def response(assessment: Assessment, names: Mapping[str, str], alpha: float) -> dict[str, Any]:
    """The CDS Hooks response body ({"cards": [...]}) plus the envelope the suggestions topic carries."""
    return {
        "suggestionId": suggestion_id(assessment),
        "patient": f"Patient/{assessment.case.patient_id}",
        "model": {"name": assessment.model_name, "version": assessment.model_version},
        "fingerprint": assessment.case.fingerprint,
        # What the evaluation read (counts and the HPO terms found, not the values): for audit and replay checks.
        "inputs": {
            "counts": assessment.case.counts,
            "phenotypes": [{"hpo": e.hpo_id, "source": e.source} for e in assessment.case.evidence],
        },
        "cards": [card(assessment, c, names, alpha) for c in assessment.candidates],
    }
