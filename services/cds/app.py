"""Decision-support service: FHIR events in; CDS Hooks suggestions and knowledge-graph updates out.

medstream.fhir.events.v1 --> per-patient state (faust table: labs in LOINC/UCUM, vitals, conditions,
    medications, notes) --> when what evaluation reads has changed: phenotypes (notes, labs, vitals),
    cds_multimodal on Triton (batched) + HPO graph ranking, fused, explained
    --> medstream.cds.suggestions.v1 (CDS Hooks cards), medstream.graph.mutations.v1, dead letters
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from medstream.events.v1 import fhir_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.cds import cards
from services.cds.contract import CDS_MULTIMODAL
from services.cds.engine import Assessment, Engine
from services.cds.graph import evidence_mutation, resource_mutation
from services.cds.state import PatientState, apply, parse_event
from services.common.config import Settings, get_settings
from services.common.deadletter import VALIDATION_ERROR, SourceRecord
from services.common.kafka import JsonDocument
from services.common.sentences import embed
from services.common.topics import CDS_SUGGESTIONS, FHIR_EVENTS, GRAPH_MUTATIONS
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step

SERVICE = "decision-support"
SUGGESTION_SCHEMA = "cds-hooks.response.v2+medstream.suggestions.v1"
EVALUATIONS = Counter("medstream_cds_evaluations_total", "Patients evaluated", ["service", "outcome"])


def suggestion_record(assessment: Assessment, engine: Engine) -> Output:
    body = cards.response(assessment, engine.term_names, engine.alpha)
    return CDS_SUGGESTIONS.name, body["patient"].encode(), JsonDocument(SUGGESTION_SCHEMA, body)


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (CDS_SUGGESTIONS, GRAPH_MUTATIONS), read_committed=True)
    patients = worker.table("cds-patient-state")  # keyed "Patient/<id>", like the input topic
    engine = Engine(worker.triton, embed, alpha=settings.cds_alpha, top=settings.cds_top)

    async def process(events: list[Accepted[fhir_pb2.FhirResourceEvent]]) -> Step:
        step = Step()
        by_patient: dict[str, list[tuple[SourceRecord, fhir_pb2.FhirResourceEvent, dict[str, Any]]]]
        by_patient = defaultdict(list)
        for a in events:
            resource, problems = parse_event(a.message)
            if problems:
                await worker.shell.dead_letters.publish(a.record, VALIDATION_ERROR, "; ".join(problems))
            elif a.message.patient_reference:  # Practitioner, Organization: nothing to keep
                by_patient[a.message.patient_reference].append((a.record, a.message, resource))
        states: dict[str, PatientState] = {}
        for reference, items in by_patient.items():
            state = states[reference] = PatientState.from_json(patients.get(reference))
            patient_id = reference.split("/", 1)[1]
            state.patient_id = state.patient_id or patient_id
            for record, msg, resource in items:
                apply(state, msg.resource_type, resource, msg.operation == fhir_pb2.FHIR_OPERATION_DELETE)
                mutation = resource_mutation(SERVICE, msg, resource, record.provenance(SERVICE, msg.event_id))
                if mutation is not None:
                    step.outputs.append((GRAPH_MUTATIONS.name, patient_id.encode(), mutation))
        due = {ref: s for ref, s in states.items() if s.needs_evaluation()}
        if due:
            cases = [engine.case(state) for state in due.values()]
            try:
                assessments = await worker.shell.call(lambda: engine.evaluate(cases))
            except InferenceServerException as exc:
                # The triggering events go to the dead-letter topic; the state keeps them and stays due.
                EVALUATIONS.labels(SERVICE, "refused").inc(len(due))
                await worker.shell.refuse([r for ref in due for r, _, _ in by_patient[ref]], CDS_MULTIMODAL.name, exc)
                assessments = []
            for state, assessment in zip(due.values(), assessments, strict=False):
                step.outputs.append(suggestion_record(assessment, engine))
                case = assessment.case
                if (mutation := evidence_mutation(SERVICE, case)) is not None:
                    step.outputs.append((GRAPH_MUTATIONS.name, case.patient_id.encode(), mutation))
                state.evaluated = case.fingerprint
                state.evaluations += 1
                EVALUATIONS.labels(SERVICE, "published").inc()
        step.state = {ref: state.to_json() for ref, state in states.items()}
        return step

    worker.batches(
        FHIR_EVENTS, Intake(fhir_pb2.FhirResourceEvent), process, batch_max=512, within_s=0.05, table=patients
    )
    worker.before_run.append(engine.warm_up)  # HPO index, note matcher, sentence model: seconds
    return worker


def main() -> None:
    worker = build(get_settings())
    worker.run({"triton": lambda: worker.triton.ready(CDS_MULTIMODAL.name)})
