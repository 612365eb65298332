"""FHIR resources and suggestions as knowledge-graph upserts (pure apart from the cached drug dictionary).

Patients, encounters and observations join the graph keyed by their FHIR ids; conditions attach to the
ICD-10-CM `Condition` nodes `medstream kg load` created (keyed by code), medications to the `Medication` nodes
(DrugBank id where the drug name resolves), abnormal results and note phenotypes to HPO `Phenotype` nodes.
Every write is a MERGE on those keys, so a replayed event changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from medstream.events.v1 import common_pb2, fhir_pb2, graph_pb2

from services.cds.engine import Case, Evidence
from services.cds.labs import LabObservation, LabPhenotype, NormalisedLab, classify, normalise
from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_WORD = re.compile(r"[a-z][a-z\-]+")


@cache
def _drug_variants() -> tuple[Mapping[str, list[str]], Mapping[str, Any]]:
    from services.cds.knowledge.loader import drug_dictionary

    data = drug_dictionary()
    return data["drug_variant_to_canonical"], data["drug_canonical_to_data"]


def medication_key(text: str, rxnorm: str | None = None) -> str:
    """The graph id of a medication named in free text ("metformin hydrochloride 500 MG Oral Tablet" -> DB00331):
    the longest leading run of words that names a drug; else "RXNORM:<code>" when coded; else "name:<text>"."""
    from services.cds.knowledge.loader import medication_id

    variants, canonical_data = _drug_variants()
    words = _WORD.findall(text.lower())
    for n in range(min(len(words), 4), 0, -1):
        canonicals = variants.get(" ".join(words[:n]))
        if canonicals:
            return medication_id(canonicals[0], canonical_data[canonicals[0]])
    for word in words:  # "oral metformin": any single word that is a drug name
        if canonicals := variants.get(word):
            return medication_id(canonicals[0], canonical_data[canonicals[0]])
    return f"RXNORM:{rxnorm}" if rxnorm else f"name:{text.strip().lower()}"


def _ref_id(reference: Any, resource_type: str) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(ref, str) and ref.startswith(f"{resource_type}/"):
        return ref.split("/", 1)[1]
    return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in (concept or {}).get("coding", []) if isinstance(c, dict)]


def resource_upserts(
    resource_type: str, resource: Mapping[str, Any], patient_id: str
) -> tuple[list[Node], list[Relationship]]:
    """Nodes and relationships one FHIR resource contributes; empty for types the graph does not hold."""
    patient = Node("Patient", patient_id)
    rid = str(resource.get("id", ""))
    nodes: list[Node] = []
    rels: list[Relationship] = []
    encounter_id = _ref_id(resource.get("encounter"), "Encounter")
    if resource_type == "Patient":
        nodes.append(Node("Patient", rid, {"source": "fhir"}))
    elif resource_type == "Encounter":
        period = resource.get("period") or {}
        encounter = Node(
            "Encounter",
            rid,
            {
                "status": resource.get("status"),
                "start": period.get("start"),
                "class": (resource.get("class") or {}).get("code"),
            },
        )
        rels.append(Relationship(patient, "HAD_ENCOUNTER", encounter))
    elif resource_type == "Observation":
        codings = [c for c in _codings(resource.get("code")) if c.get("system") == "http://loinc.org"]
        raw_quantity = resource.get("valueQuantity")
        quantity: dict[str, Any] = raw_quantity if isinstance(raw_quantity, dict) else {}
        props: dict[str, Any] = {
            "loinc": codings[0].get("code") if codings else None,
            "status": resource.get("status"),
            "effective": resource.get("effectiveDateTime"),
        }
        phenotype = None
        if codings and isinstance(quantity.get("value"), int | float):
            unit = str(quantity.get("code") or quantity.get("unit") or "")
            lab = normalise(str(codings[0].get("code")), float(quantity["value"]), unit)
            if isinstance(lab, NormalisedLab):
                props.update(analyte=lab.key, value=lab.value, unit=lab.unit)
                finding = classify(LabObservation(lab.loinc, lab.value, lab.unit, rid))
                if isinstance(finding, LabPhenotype):
                    props["interpretation"] = finding.direction
                    phenotype = finding.hpo_id
            else:
                props.update(value=float(quantity["value"]), unit=unit)
        observation = Node("Observation", rid, props)
        rels.append(Relationship(patient, "HAS_OBSERVATION", observation))
        if phenotype:
            rels.append(Relationship(observation, "INDICATES", Node("Phenotype", phenotype)))
        if encounter_id:
            rels.append(Relationship(observation, "DURING", Node("Encounter", encounter_id)))
    elif resource_type == "Condition":
        for coding in _codings(resource.get("code")):
            if coding.get("system") == ICD10CM and coding.get("code"):
                status = _codings(resource.get("clinicalStatus"))
                rels.append(
                    Relationship(
                        patient,
                        "HAS_CONDITION",
                        Node("Condition", str(coding["code"]), {"system": ICD10CM}),
                        {
                            "fhir_id": rid,
                            "clinical_status": status[0].get("code") if status else None,
                            "onset": resource.get("onsetDateTime"),
                        },
                    )
                )
    elif resource_type in ("MedicationRequest", "MedicationStatement"):
        concept = resource.get("medicationCodeableConcept") or {}
        text = concept.get("text") or next((c.get("display") for c in _codings(concept) if c.get("display")), "")
        rxnorm = next((str(c["code"]) for c in _codings(concept) if c.get("system") == RXNORM and c.get("code")), None)
        if text:
            rels.append(
                Relationship(
                    patient,
                    "PRESCRIBED",
                    Node("Medication", medication_key(text, rxnorm)),
                    {
                        "fhir_id": rid,
                        "status": resource.get("status"),
                        "text": text,
                        "authored": resource.get("authoredOn"),
                    },
                )
            )
    return nodes, rels


def evidence_upserts(patient_id: str, evidence: Iterable[Evidence]) -> list[Relationship]:
    """Phenotypes found in the patient's notes: (Patient)-[:EXHIBITS {source}]->(Phenotype)."""
    patient = Node("Patient", patient_id)
    return [
        Relationship(patient, "EXHIBITS", Node("Phenotype", e.hpo_id), {"source": e.source})
        for e in evidence
        if e.source == "note"
    ]


def resource_mutation(
    producer: str, event: fhir_pb2.FhirResourceEvent, resource: dict[str, Any], provenance: common_pb2.Provenance
) -> graph_pb2.GraphMutation | None:
    """The graph upserts of one FHIR event, keyed by the event id (a redelivery MERGEs the same); None: nothing."""
    patient_id = event.patient_reference.split("/", 1)[1]
    nodes, rels = resource_upserts(event.resource_type, resource, patient_id)
    return to_mutation(f"{producer}:{event.event_id}", nodes, rels, provenance) if nodes or rels else None


def evidence_mutation(producer: str, case: Case) -> graph_pb2.GraphMutation | None:
    """The phenotypes an evaluation found, keyed by what it read (the same evaluation MERGEs the same)."""
    rels = evidence_upserts(case.patient_id, case.evidence)
    return to_mutation(f"{producer}:evidence:{case.patient_id}:{case.fingerprint}", (), rels) if rels else None
