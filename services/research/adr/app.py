"""Adverse-drug-reaction service: a drug start is assessed the moment its MedicationRequest arrives.

medstream.fhir.events.v1 --> per-patient timeline (faust table) --> an active MedicationRequest that starts a
    catalogued drug or changes its strength --> adr_risk on Triton (batched: history sequence + static context)
    --> medstream.findings.v1 (risk of each named reaction, with the FHIR resources it read)
    --> medstream.alerts.v1 (kind=adverse-drug-reaction) for each reaction at or over its threshold, with the drug,
        the reaction, the evidence and the explanation
    --> medstream.graph.mutations.v1 ((:Patient)-[:AT_RISK_OF {reaction, score, model, version}]->(:Medication))

Orders a record already holds as stopped or completed (a history being replayed) update the timeline but are not
assessed: an assessment is for a start happening now.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, fhir_pb2, finding_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.common.config import Settings, get_settings
from services.common.deadletter import VALIDATION_ERROR, SourceRecord
from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.topics import ALERTS, FHIR_EVENTS, FINDINGS, GRAPH_MUTATIONS
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step
from services.research.adr import drugs, features
from services.research.adr.contract import ADR_RISK, HORIZON_DAYS, THRESHOLDS
from services.research.adr.drugs import REACTIONS
from services.research.timeline import ACTIVE_MEDICATION, Entry, Timeline, event_resource, pack, unpack

SERVICE = "adverse-drug-reactions"
KIND = "adverse-drug-reaction"
FINDING_KIND = "adverse-drug-reaction-risk"
FINDING_KIND_SYSTEM = "https://medstream.dev/finding-kind"
_NAMESPACE = uuid.UUID("0d7c3f7e-93a4-4f0e-8d0f-5a1b8e0c2b61")
ASSESSMENTS = Counter("medstream_adr_assessments_total", "Drug starts assessed", ["service", "outcome"])


@dataclass(frozen=True, slots=True)
class Start:
    """A drug start to assess: the order, the patient's timeline as it stood, and the event it came from."""

    patient_id: str
    order: Entry
    drug: drugs.Drug
    inputs: dict[str, np.ndarray]
    evidence: list[tuple[str, str]]
    record: SourceRecord
    event_id: str


def medication_node(order: Entry, drug: drugs.Drug) -> Node:
    """The drug as the knowledge graph keys it: DrugBank id where known (as decision support does), else RxNorm."""
    key = drug.drugbank_id or (f"RXNORM:{order.code}" if order.code else f"name:{drug.ingredient}")
    return Node("Medication", key, {"name": drug.ingredient})


def outputs_for(start: Start, risks: np.ndarray, attention: np.ndarray, version: str) -> list[Output]:
    """Finding always; per reaction at or over its threshold an alert and an AT_RISK_OF edge."""
    model = common_pb2.ModelRef(name=ADR_RISK.name, version=version)
    finding_id = str(uuid.uuid5(_NAMESPACE, f"{start.event_id}|{model.name}|{model.version}"))
    effective = Timestamp()
    effective.FromNanoseconds(int((start.order.start or time.time()) * 1e9))
    reasons = features.explain(start.inputs, [float(r) for r in risks], [float(a) for a in attention])
    over = [(r, float(risk)) for r, risk in zip(REACTIONS, risks, strict=True) if risk >= THRESHOLDS[r]]
    top_reaction, top_risk = max(zip(REACTIONS, (float(r) for r in risks), strict=True), key=lambda p: p[1])
    summary = (
        f"{start.drug.ingredient} ({start.drug.drug_class}) start: highest risk {top_reaction} {top_risk:.2f} "
        f"within {HORIZON_DAYS} d; " + " | ".join(reasons)
    )
    finding = finding_pb2.Finding(
        finding_id=finding_id,
        patient_id=start.patient_id,
        kind=FINDING_KIND,
        code=finding_pb2.Coding(system=FINDING_KIND_SYSTEM, code=FINDING_KIND, display="Adverse drug reaction risk"),
        score=top_risk,
        severity=finding_pb2.SEVERITY_MEDIUM if over else finding_pb2.SEVERITY_LOW,
        model=model,
        effective_time=effective,
        summary=summary[:1000],
        measurements=[
            finding_pb2.Measurement(name=f"risk:{r}", value=float(v), unit="1")
            for r, v in zip(REACTIONS, risks, strict=True)
        ],
        provenance=start.record.provenance(SERVICE, start.event_id),
        evidence=[
            finding_pb2.EvidenceRef(
                kind="fhir-resource", uri=ref, content_type="application/fhir+json", description=text
            )
            for ref, text in start.evidence
        ],
    )
    key = start.patient_id.encode()
    out: list[Output] = [(FINDINGS.name, key, finding)]
    patient, medication = Node("Patient", start.patient_id), medication_node(start.order, start.drug)
    finding_node = Node(
        "Finding",
        finding_id,
        {"kind": FINDING_KIND, "score": round(top_risk, 6), "model": f"{model.name}:{model.version}"},
    )
    relationships = [
        Relationship(patient, "HAS_FINDING", finding_node),
        Relationship(finding_node, "CONCERNS", medication),
    ]
    raised = Timestamp()
    raised.GetCurrentTime()
    for reaction, risk in over:
        relationships.append(
            Relationship(
                patient,
                "AT_RISK_OF",
                medication,
                {
                    "reaction": reaction,
                    "score": round(risk, 6),
                    "model": model.name,
                    "version": model.version,
                    "finding_id": finding_id,
                },
            )
        )
        why = next((line for line in reasons if line.startswith(reaction)), f"{reaction} {risk:.2f}")
        text = f"{reaction} risk {risk:.2f} within {HORIZON_DAYS} d of starting {start.drug.ingredient}: {why}"
        out.append(
            (
                ALERTS.name,
                key,
                alert_pb2.Alert(
                    alert_id=str(uuid.uuid5(_NAMESPACE, f"alert|{finding_id}|{reaction}")),
                    patient_id=start.patient_id,
                    kind=KIND,
                    severity=finding_pb2.SEVERITY_HIGH
                    if risk >= 2 * THRESHOLDS[reaction]
                    else finding_pb2.SEVERITY_MEDIUM,
                    summary=text[:1000],
                    raised_at=raised,
                    window_start=effective,
                    window_end=effective,
                    rule_id=f"{model.name}:{reaction}>={THRESHOLDS[reaction]:.2f}",
                    model=model,
                    finding_id=finding_id,
                ),
            )
        )
    out.append(
        (
            GRAPH_MUTATIONS.name,
            key,
            to_mutation(
                finding_id, relationships=relationships, provenance=start.record.provenance(SERVICE, start.event_id)
            ),
        )
    )
    return out


def fold_batch(
    events: list[Accepted[fhir_pb2.FhirResourceEvent]], table: Mapping[str, str]
) -> tuple[dict[str, Timeline], list[Start], list[tuple[Accepted[fhir_pb2.FhirResourceEvent], str]]]:
    """The timelines after the batch, the drug starts to assess (inputs taken as each order arrived), and the
    events to dead-letter."""
    by_patient: dict[str, list[tuple[Accepted[fhir_pb2.FhirResourceEvent], dict[str, Any]]]] = defaultdict(list)
    invalid = []
    for a in events:
        resource, problem = event_resource(a.message.resource_json, a.message.resource_type)
        if resource is None:
            invalid.append((a, problem))
        elif a.message.patient_reference:
            by_patient[a.message.patient_reference].append((a, resource))
    timelines: dict[str, Timeline] = {}
    starts: list[Start] = []
    for reference, items in by_patient.items():
        timeline = timelines[reference] = Timeline.from_json(unpack(table.get(reference)))
        patient_id = reference.split("/", 1)[1]
        timeline.patient_id = timeline.patient_id or patient_id
        for a, resource in items:
            deleted = a.message.operation == fhir_pb2.FHIR_OPERATION_DELETE
            touched = timeline.fold(a.message.resource_type, resource, deleted)
            if a.message.resource_type != "MedicationRequest" or deleted or not touched:
                continue
            order = timeline.medications.get(f"MedicationRequest/{resource.get('id', '')}")
            if order is None or order.status not in ACTIVE_MEDICATION:
                continue
            drug = drugs.classify(order)
            if drug is None or not features.is_start_or_dose_change(timeline, order):
                continue
            starts.append(
                Start(
                    patient_id,
                    order,
                    drug,
                    features.episode_inputs(timeline, order),
                    features.evidence(timeline, order),
                    a.record,
                    a.message.event_id,
                )
            )
    return timelines, starts, invalid


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (FINDINGS, ALERTS, GRAPH_MUTATIONS), read_committed=True)
    patients: MutableMapping[str, str] = worker.table("adr-patient-timeline")  # keyed "Patient/<id>"

    async def process(events: list[Accepted[fhir_pb2.FhirResourceEvent]]) -> Step:
        step = Step()
        timelines, starts, invalid = fold_batch(events, patients)
        for a, problem in invalid:
            await worker.shell.dead_letters.publish(a.record, VALIDATION_ERROR, problem)
        if starts:
            inputs = features.batch(s.inputs for s in starts)
            try:
                outputs, version = await worker.shell.call(lambda: worker.triton.infer_contract(ADR_RISK, inputs))
            except InferenceServerException as exc:
                ASSESSMENTS.labels(SERVICE, "refused").inc(len(starts))
                await worker.shell.refuse([s.record for s in starts], ADR_RISK.name, exc)
                outputs, version = {}, ""
            for i, start in enumerate(starts if outputs else []):
                step.outputs += outputs_for(start, outputs["RISK"][i], outputs["ATTENTION"][i], version)
                ASSESSMENTS.labels(SERVICE, "assessed").inc()
        step.state = {ref: pack(t.to_json()) for ref, t in timelines.items()}
        return step

    worker.batches(
        FHIR_EVENTS, Intake(fhir_pb2.FhirResourceEvent), process, batch_max=512, within_s=0.02, table=patients
    )
    return worker


def main() -> None:
    worker = build(get_settings())
    worker.run({"triton": lambda: worker.triton.ready(ADR_RISK.name)})
