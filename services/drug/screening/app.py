"""Virtual-screening service: a compound library streams through the funnel, a batch at a time.

medstream.drug.library.v1 --> parse + standardise (invalid: dead letter with RDKit's reason)
    --> de-duplicate on the InChIKey within a library (faust table)
    --> property limits and PAINS (Brenk alerts flag, not refuse)
    --> drug_activity on Triton (dynamic batching; ensemble mean and spread) --> at or over the hit threshold
    (lower confidence bound) --> drug_admet on Triton, the ADMET pre-filter
    --> medstream.drug.screening.outcomes.v1: every record's stage and reason (records in = outcomes out)
    --> medstream.drug.hits.v1 (ranked hit with its uncertainty, alerts, ADMET) and medstream.graph.mutations.v1
        ((:Compound)-[:PREDICTED_ACTIVE]->(:Target), idempotent on the InChIKey)

Every record's outcome is counted by stage (medstream_screening_molecules_total{stage}) and each stage is timed
(medstream_screening_stage_seconds). A model refusing a batch (a config mismatch) dead-letters its molecules for a
replay once fixed; their outcome is "error".
The de-duplication table holds one entry per distinct structure: it grows with the library (tens of bytes a
structure) while everything else stays per batch. With several replicas each holds the keys of its own partitions
of a table keyed by InChIKey, not of the input, so a structure sent under two ids to two replicas is scored twice;
the hits topic (compacted) and the graph (MERGE) still hold it once.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np
from medstream.events.v1 import common_pb2, drug_pb2
from prometheus_client import Counter, Histogram
from tritonclient.utils import InferenceServerException

from services.common.config import Settings, get_settings
from services.common.deadletter import VALIDATION_ERROR
from services.common.model_contract import ModelContract
from services.common.topics import DRUG_HITS, DRUG_LIBRARY, DRUG_SCREENING_OUTCOMES, GRAPH_MUTATIONS
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step
from services.drug import chem
from services.drug.screening import funnel
from services.drug.screening.contract import DRUG_ACTIVITY, DRUG_ADMET

SERVICE = "virtual-screening"
MOLECULES = Counter("medstream_screening_molecules_total", "Library molecules by funnel stage", ["service", "stage"])
STAGE_SECONDS = Histogram(
    "medstream_screening_stage_seconds",
    "Time a batch spent in each funnel stage",
    ["service", "stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _valid(message: drug_pb2.LibraryMolecule) -> list[str]:
    return [] if message.molecule_id else ["molecule_id is empty"]


def build(settings: Settings) -> FaustWorker:
    worker = FaustWorker(SERVICE, settings, (DRUG_SCREENING_OUTCOMES, DRUG_HITS, GRAPH_MUTATIONS))
    seen: MutableMapping[str, str] = worker.table("screening-seen")  # funnel.seen_key -> first molecule_id
    threshold = settings.screening_hit_threshold

    async def infer(contract: ModelContract, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        return await worker.shell.call(lambda: worker.triton.infer_contract(contract, inputs))

    async def refused(
        candidates: list[funnel.Candidate],
        model: str,
        exc: InferenceServerException,
        outcomes: list[drug_pb2.ScreeningOutcome],
        step: Step,
    ) -> None:
        """A model refused them: dead letters for a replay once fixed, and not remembered as seen, so that replay is
        screened."""
        await worker.shell.refuse([c.accepted.record for c in candidates], model, exc)
        for c in candidates:
            step.state.pop(funnel.seen_key(c.accepted.message.library, c.parent.inchikey), None)
            outcomes.append(funnel.outcome(c.accepted.message, "error", f"{model} refused: {exc.message()}", c.parent))

    async def process(batch: list[Accepted[drug_pb2.LibraryMolecule]]) -> Step:
        step = Step()
        sorted_ = funnel.triage(batch, seen)
        for stage, seconds in sorted_.seconds.items():
            STAGE_SECONDS.labels(SERVICE, stage).observe(seconds)
        for a, reason in sorted_.invalid:
            await worker.shell.dead_letters.publish(a.record, VALIDATION_ERROR, f"invalid structure: {reason}")
        outcomes = list(sorted_.outcomes)
        step.state = dict(sorted_.seen)
        candidates = sorted_.candidates
        if candidates:
            step.outputs += await assess(candidates, outcomes, step)
        for o in outcomes:
            MOLECULES.labels(SERVICE, o.stage).inc()
        step.outputs += [(DRUG_SCREENING_OUTCOMES.name, o.molecule_id.encode(), o) for o in outcomes]  # last: "done"
        return step

    async def assess(
        candidates: list[funnel.Candidate], outcomes: list[drug_pb2.ScreeningOutcome], step: Step
    ) -> list[Output]:
        """The model stages: activity for every candidate, ADMET for the ones over the threshold; hits out."""
        inputs = chem.featurise_many([c.parent.mol for c in candidates])
        try:
            with STAGE_SECONDS.labels(SERVICE, "activity").time():
                outputs, version = await infer(DRUG_ACTIVITY, inputs)
        except InferenceServerException as exc:
            await refused(candidates, DRUG_ACTIVITY.name, exc, outcomes, step)
            return []
        model = common_pb2.ModelRef(name=DRUG_ACTIVITY.name, version=version)
        scores = funnel.scores(outputs["ACTIVITY"])
        active = [i for i, s in enumerate(scores) if s.rank >= threshold]
        for i, (c, score) in enumerate(zip(candidates, scores, strict=True)):
            if i not in active:
                reason = f"rank score {score.rank:.2f} under {threshold:.2f}"
                outcomes.append(
                    funnel.outcome(c.accepted.message, "inactive", reason, c.parent, score, model, c.screen.alerts)
                )
        if not active:
            return []
        try:
            with STAGE_SECONDS.labels(SERVICE, "admet").time():
                admet, _ = await infer(DRUG_ADMET, {k: v[active] for k, v in inputs.items()})
        except InferenceServerException as exc:
            await refused([candidates[i] for i in active], DRUG_ADMET.name, exc, outcomes, step)
            return []
        out: list[Output] = []
        for row, i in enumerate(active):
            c, score, probabilities = candidates[i], scores[i], admet["ADMET"][row]
            refusals = funnel.admet_refusals(probabilities)
            stage = "admet-refused" if refusals else "hit"
            outcomes.append(
                funnel.outcome(c.accepted.message, stage, "; ".join(refusals), c.parent, score, model, c.screen.alerts)
            )
            if refusals:
                continue
            h = funnel.hit(c, score, probabilities, model, SERVICE)
            out += [
                (DRUG_HITS.name, h.inchikey.encode(), h),
                (GRAPH_MUTATIONS.name, h.inchikey.encode(), funnel.graph_mutation(h)),
            ]
        return out

    worker.batches(
        DRUG_LIBRARY, Intake(drug_pb2.LibraryMolecule, _valid), process, batch_max=256, within_s=0.2, table=seen
    )
    return worker


def main() -> None:
    worker = build(get_settings())

    async def models_ready() -> bool:
        return await worker.triton.ready(DRUG_ACTIVITY.name) and await worker.triton.ready(DRUG_ADMET.name)

    worker.run({"triton": models_ready})
