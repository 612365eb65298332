"""Wearables service: normalised samples in; alerts, hourly FHIR Observations and graph updates out.

medstream.wearables.samples.v1 --> per-patient state (faust table) --> 1-min / 1-h / 7-day windows
    --> rules (tachy/brady/desaturation/hypo/hyperglycaemia) and glycaemia_risk on Triton
    --> medstream.alerts.v1, medstream.fhir.writeback.v1, medstream.graph.mutations.v1, dead letters
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from medstream.events.v1 import common_pb2, wearable_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.common.config import Settings, get_settings
from services.common.topics import ALERTS, FHIR_WRITEBACK, GRAPH_MUTATIONS, WEARABLE_SAMPLES
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step
from services.wearables.contract import GLYCAEMIA_RISK, cgm_rows
from services.wearables.pipeline import PatientState, ScoreRequest, StepOutput, apply_risk, step, validate

SERVICE = "wearables"
log = logging.getLogger(__name__)
MODEL_FAILURES = Counter("medstream_model_failures_total", "Inference requests Triton refused", ["service", "model"])


def collect(out: StepOutput, key: bytes, outputs: list[Output]) -> None:
    outputs += [(ALERTS.name, key, a) for a in out.alerts]
    outputs += [(FHIR_WRITEBACK.name, o.patient_reference.encode(), o) for o in out.observations]
    outputs += [(GRAPH_MUTATIONS.name, key, m) for m in out.mutations]


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (ALERTS, FHIR_WRITEBACK, GRAPH_MUTATIONS))
    patients = worker.table("wearables-patient-state")  # per-patient windows, features and episodes

    async def score(requests: list[ScoreRequest]) -> tuple[list[float], common_pb2.ModelRef]:
        inputs = cgm_rows([r.glucose for r in requests])
        out, version = await worker.shell.call(lambda: worker.triton.infer_contract(GLYCAEMIA_RISK, inputs))
        return [float(v) for v in out["RISK"][:, 0]], common_pb2.ModelRef(name=GLYCAEMIA_RISK.name, version=version)

    async def process(batches: list[Accepted[wearable_pb2.WearableSampleBatch]]) -> Step:
        per_patient: dict[str, list[wearable_pb2.WearableSample]] = defaultdict(list)
        for a in batches:
            per_patient[a.message.samples[0].patient_id].extend(a.message.samples)
        now, result, pending = time.time(), Step(), []
        states: dict[str, PatientState] = {}
        for patient_id, samples in per_patient.items():
            state = states[patient_id] = PatientState.from_json(patients.get(patient_id))
            out = step(state, patient_id, samples, now)
            collect(out, patient_id.encode(), result.outputs)
            pending += [(patient_id, r) for r in out.score_requests]
        if pending:
            try:
                risks, model = await score([r for _, r in pending])
            except InferenceServerException as exc:
                # The request itself is wrong (a model/config mismatch): no retry can fix it. Rules still ran;
                # the model's alerts are skipped for this batch and the failure is counted and logged.
                MODEL_FAILURES.labels(SERVICE, GLYCAEMIA_RISK.name).inc()
                log.error(
                    "model request refused", extra={"model": GLYCAEMIA_RISK.name, "error": str(exc.message())[:300]}
                )
                pending, risks, model = [], [], common_pb2.ModelRef()
            for (patient_id, request), risk in zip(pending, risks, strict=True):
                out = apply_risk(states[patient_id], patient_id, request, risk, model, now)
                collect(out, patient_id.encode(), result.outputs)
        result.state = {patient_id: state.to_json() for patient_id, state in states.items()}
        return result

    intake = Intake(wearable_pb2.WearableSampleBatch, validate)
    worker.batches(WEARABLE_SAMPLES, intake, process, batch_max=256, within_s=0.2, table=patients)
    return worker


def main() -> None:
    worker = build(get_settings())
    worker.run({"triton": lambda: worker.triton.ready(GLYCAEMIA_RISK.name)})
