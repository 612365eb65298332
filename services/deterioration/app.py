"""Deterioration-risk service: vital-sign snapshots in; findings, alerts and graph mutations out.

medstream.vitals.snapshots.v1 --> decode/validate --(bad)--> medstream.deadletter.v1
                               --> Triton deterioration_risk (batched)
                               --> medstream.findings.v1, medstream.alerts.v1, medstream.graph.mutations.v1
"""

from __future__ import annotations

from medstream.events.v1 import common_pb2, vitals_pb2
from tritonclient.utils import InferenceServerException

from services.common.config import Settings, get_settings
from services.common.topics import ALERTS, FINDINGS, GRAPH_MUTATIONS, VITALS_SNAPSHOTS
from services.common.worker import Accepted, FaustWorker, Intake, Step
from services.deterioration.assess import assess, to_vitals, validate
from services.deterioration.contract import DETERIORATION_RISK, vitals_rows

SERVICE = "deterioration"


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (FINDINGS, ALERTS, GRAPH_MUTATIONS))

    async def score(batch: list[Accepted[vitals_pb2.VitalSignsSnapshot]]) -> Step:
        inputs = vitals_rows([to_vitals(a.message) for a in batch])
        try:
            risks, version = await worker.shell.call(
                lambda: worker.triton.infer_contract(DETERIORATION_RISK, inputs, ["RISK"])
            )
        except InferenceServerException as exc:
            await worker.shell.refuse([a.record for a in batch], DETERIORATION_RISK.name, exc)
            return Step()
        model = common_pb2.ModelRef(name=DETERIORATION_RISK.name, version=version)
        step = Step()
        for a, risk in zip(batch, risks["RISK"][:, 0], strict=True):
            result = assess(a.message, float(risk), model, a.record.provenance(SERVICE, a.message.snapshot_id))
            key = a.message.patient_id.encode()
            step.outputs.append((FINDINGS.name, key, result.finding))
            if result.alert is not None:
                step.outputs.append((ALERTS.name, key, result.alert))
            step.outputs.append((GRAPH_MUTATIONS.name, key, result.mutation))
        return step

    intake = Intake(vitals_pb2.VitalSignsSnapshot, validate)
    worker.batches(VITALS_SNAPSHOTS, intake, score, batch_max=64, within_s=0.05)
    return worker


def main() -> None:
    worker = build(get_settings())
    worker.run({"triton": lambda: worker.triton.ready(DETERIORATION_RISK.name)})
