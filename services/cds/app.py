"""Decision-support service: FHIR events in; CDS Hooks suggestions and knowledge-graph updates out.

medstream.fhir.events.v1 --> per-patient state (faust table: labs in LOINC/UCUM, vitals, conditions,
    medications, notes) --> when what evaluation reads has changed: phenotypes (notes, labs, vitals),
    cds_multimodal on Triton (batched) + HPO graph ranking, fused, explained
    --> medstream.cds.suggestions.v1 (CDS Hooks cards), medstream.graph.mutations.v1, dead letters
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

from medstream.events.v1 import common_pb2, fhir_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.cds import cards
from services.cds.engine import MODEL_NAME, Assessment, Engine
from services.cds.graph import evidence_upserts, resource_upserts
from services.cds.model.embedding import embed
from services.cds.state import PatientState, apply
from services.common.config import get_settings
from services.common.deadletter import PROCESSING_ERROR, VALIDATION_ERROR, DeadLetters, SourceRecord
from services.common.graph_events import to_mutation
from services.common.kafka import FaustOutputs, JsonDocument, Record, make_faust_app, run_faust_worker
from services.common.service import retry_until_done
from services.common.telemetry import PROCESSING_SECONDS
from services.common.topics import CDS_SUGGESTIONS, DEAD_LETTERS, FHIR_EVENTS, GRAPH_MUTATIONS
from services.common.triton import TritonUnavailable, triton_client

SERVICE = "decision-support"
SUGGESTION_SCHEMA = "cds-hooks.response.v2+medstream.suggestions.v1"
BATCH_MAX, BATCH_WITHIN_S = 512, 0.05
log = logging.getLogger(__name__)
EVALUATIONS = Counter("medstream_cds_evaluations_total", "Patients evaluated", ["service", "outcome"])

settings = get_settings()
app = make_faust_app(SERVICE, settings, read_committed=True)  # the FHIR gateway writes in transactions
events_in = app.topic(FHIR_EVENTS.name, key_serializer="raw", value_serializer="raw")
outputs = FaustOutputs(app, SERVICE, (CDS_SUGGESTIONS, GRAPH_MUTATIONS, DEAD_LETTERS))
# Per-patient state, recovered from its changelog topic after a restart. Written after each batch's outputs are
# durable, keyed like the input topic (murmur2 on "Patient/<id>") so state and input stay co-partitioned.
patients = app.Table("cds-patient-state", key_type=str, value_type=str, use_partitioner=True)
triton = triton_client(settings, SERVICE)
engine = Engine(triton, embed, alpha=settings.cds_alpha, top=settings.cds_top, explain_sentences=True)
dead_letters = DeadLetters(SERVICE, lambda key, letter: outputs.send(DEAD_LETTERS.name, key, letter))


def parse(event: fhir_pb2.FhirResourceEvent) -> tuple[dict[str, Any], list[str]]:
    """The event's resource, parsed once, and what is wrong with the event (empty when it can be applied)."""
    problems = []
    if not event.resource_type or not event.resource_id:
        problems.append("resource_type and resource_id are required")
    try:
        resource = json.loads(event.resource_json)
    except ValueError as exc:
        return {}, [*problems, f"resource_json is not JSON: {exc}"]
    if not isinstance(resource, dict) or resource.get("resourceType") != event.resource_type:
        problems.append("resource_json is not a resource of the event's resource_type")
    elif resource.get("id") != event.resource_id:
        problems.append("resource_json id differs from resource_id")
    if event.patient_reference and not event.patient_reference.startswith("Patient/"):
        problems.append("patient_reference must be Patient/<id>")
    return (resource if isinstance(resource, dict) else {}), problems


def suggestion_record(assessment: Assessment) -> tuple[str, bytes, Record]:
    body = cards.response(assessment, engine.term_names, engine.alpha)
    return CDS_SUGGESTIONS.name, body["patient"].encode(), JsonDocument(SUGGESTION_SCHEMA, body)


async def evaluate(states: dict[str, PatientState]) -> list[Assessment]:
    cases = [engine.case(state) for state in states.values()]
    return await retry_until_done(lambda: engine.evaluate(cases), "triton", retry_on=(TritonUnavailable, OSError))


@app.agent(events_in)
async def process(stream):  # type: ignore[no-untyped-def]
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
        started = time.perf_counter()
        records: list[tuple[str, bytes | None, Record]] = []
        by_patient: dict[str, list[tuple[SourceRecord, fhir_pb2.FhirResourceEvent, dict[str, Any]]]]
        by_patient = defaultdict(list)
        for event in events:
            record = SourceRecord.from_faust(event)
            msg = await dead_letters.accept(record, fhir_pb2.FhirResourceEvent, lambda _: [])
            if msg is None:
                continue
            resource, problems = parse(msg)
            if problems:
                await dead_letters.publish(record, VALIDATION_ERROR, "; ".join(problems))
            elif msg.patient_reference:  # Practitioner, Organization: nothing to keep
                by_patient[msg.patient_reference].append((record, msg, resource))
        states: dict[str, PatientState] = {}
        for reference, items in by_patient.items():
            state = PatientState.from_json(patients.get(reference))
            patient_id = reference.split("/", 1)[1]
            state.patient_id = state.patient_id or patient_id
            for record, msg, resource in items:
                apply(state, msg.resource_type, resource, msg.operation == fhir_pb2.FHIR_OPERATION_DELETE)
                nodes, rels = resource_upserts(msg.resource_type, resource, patient_id)
                if nodes or rels:
                    provenance = common_pb2.Provenance(
                        producer=SERVICE, source_event_id=msg.event_id, source_topic=record.topic,
                        source_partition=record.partition, source_offset=record.offset,
                    )  # fmt: skip
                    mutation = to_mutation(f"{SERVICE}:{msg.event_id}", nodes, rels, provenance)
                    records.append((GRAPH_MUTATIONS.name, patient_id.encode(), mutation))
            states[reference] = state
        due = {ref: s for ref, s in states.items() if s.needs_evaluation()}
        if due:
            try:
                assessments = await evaluate(due)
            except InferenceServerException as exc:
                # The model refused the request itself (a model/config mismatch): no retry can fix it. The
                # triggering events go to the dead-letter topic for a replay; state keeps them and stays due.
                EVALUATIONS.labels(SERVICE, "refused").inc(len(due))
                for ref in due:
                    for record, _, _ in by_patient[ref]:
                        await dead_letters.publish(record, PROCESSING_ERROR, f"{MODEL_NAME} refused: {exc.message()}")
                assessments = []
            for ref, assessment in zip(due, assessments, strict=False):
                records.append(suggestion_record(assessment))
                rels = evidence_upserts(assessment.case.patient_id, assessment.case.evidence)
                if rels:
                    mutation_id = f"{SERVICE}:evidence:{assessment.case.patient_id}:{assessment.case.fingerprint}"
                    records.append((GRAPH_MUTATIONS.name, assessment.case.patient_id.encode(),
                                    to_mutation(mutation_id, (), rels)))  # fmt: skip
                due[ref].evaluated = assessment.case.fingerprint
                due[ref].evaluations += 1
                EVALUATIONS.labels(SERVICE, "published").inc()
        # Outputs first, then state: a crash in between replays the events, which rebuilds the same state and
        # publishes the same suggestion id again (the graph MERGEs make the repeat a no-op).
        await outputs.send_all(records)
        for ref, state in states.items():
            patients[ref] = state.to_json()
        if events:
            PROCESSING_SECONDS.labels(SERVICE, FHIR_EVENTS.name).observe((time.perf_counter() - started) / len(events))


def main() -> None:
    engine.warm_up()
    run_faust_worker(app, SERVICE, settings, {"triton": lambda: triton.ready(MODEL_NAME)})
