"""Molecule-generation service: "N molecules, guided toward target T" in, new molecules onto the screening library.

medstream.drug.generation.requests.v1 --> checked (count, target, guidance; a bad request is dead-lettered with why)
    --> molecule_generator on Triton (row i: seed + i, the request's guidance; at most max_batch_size rows a call)
    --> decode.py: graph to SMILES with RDKit (graphs that do not sanitise as one molecule are counted, not sent)
    --> medstream.drug.library.v1 (library and request "generated:<request>", molecule_id "generated:<request>:<i>")
    --> the virtual-screening funnel, like any library: each request is a library of its own, so a structure met in
        an earlier request is screened again (the hits topic and the graph still hold it once)

A crash replays the request: the same seeds give the same molecules under the same ids, which screening treats as
a redelivery, not as new molecules.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from medstream.events.v1 import drug_pb2
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.common.config import Settings, get_settings
from services.common.topics import DRUG_GENERATION_REQUESTS, DRUG_LIBRARY
from services.common.worker import Accepted, FaustWorker, Intake, Output, Step
from services.drug.generation.contract import MOLECULE_GENERATOR
from services.drug.generation.decode import decode
from services.drug.screening.contract import TARGET

SERVICE = "molecule-generation"
LIBRARY = "generated"
MAX_COUNT = 2000  # molecules per request: a bigger campaign is several requests (one request is one batch)
SAMPLING_DEADLINE_S = 120.0
GENERATED = Counter("medstream_generation_molecules_total", "Sampled graphs by outcome", ["service", "outcome"])


def problems(request: drug_pb2.GenerationRequest) -> list[str]:
    out = []
    if not request.request_id:
        out.append("request_id is empty")
    if not 1 <= request.count <= MAX_COUNT:
        out.append(f"count {request.count} outside 1..{MAX_COUNT}")
    if request.target and request.target != TARGET:
        out.append(f"target {request.target!r}: the generator's guidance knows {TARGET} only")
    if not math.isfinite(request.guidance) or request.guidance < 0:
        out.append(f"guidance {request.guidance} is not a finite number >= 0")
    elif request.guidance and not request.target:
        out.append("guidance without a target")
    return out


def library_of(request: drug_pb2.GenerationRequest) -> str:
    return f"{LIBRARY}:{request.request_id}"


def inputs(request: drug_pb2.GenerationRequest) -> dict[str, np.ndarray]:
    """The model inputs for a request: row i samples with seed + i (the Triton client splits them into requests of
    at most the model's max_batch_size rows)."""
    seeds = np.arange(request.count, dtype=np.int64)[:, None] + request.seed
    return {"SEED": seeds, "GUIDANCE": np.full((request.count, 1), request.guidance, np.float32)}


def molecules(
    a: Accepted[drug_pb2.GenerationRequest], atom_types: np.ndarray, bond_types: np.ndarray
) -> tuple[list[drug_pb2.LibraryMolecule], int]:
    """The valid molecules of a request's sampled graphs as library records, and how many graphs were invalid."""
    out, invalid = [], 0
    for i, (atoms, bonds) in enumerate(zip(atom_types, bond_types, strict=True)):
        smiles, _ = decode(atoms, bonds)
        if smiles is None:
            invalid += 1
            continue
        out.append(
            drug_pb2.LibraryMolecule(
                molecule_id=f"{library_of(a.message)}:{i}",
                library=library_of(a.message),
                smiles=smiles,
                request_id=a.message.request_id,
                provenance=a.record.provenance(SERVICE, a.message.request_id),
            )
        )
    return out, invalid


def build(settings: Settings) -> FaustWorker:
    # a call samples up to max_batch_size molecules through every diffusion step (seconds on a CPU): calls go two at
    # a time with a deadline for a slow one, not the settings' default made for single forward passes
    worker = FaustWorker(SERVICE, settings, (DRUG_LIBRARY,), triton_timeout_s=SAMPLING_DEADLINE_S, triton_concurrency=2)

    async def process(requests: list[Accepted[drug_pb2.GenerationRequest]]) -> Step:
        step = Step()
        for a in requests:
            try:
                graphs, _ = await worker.shell.call(
                    partial(worker.triton.infer_contract, MOLECULE_GENERATOR, inputs(a.message))
                )
            except InferenceServerException as exc:
                await worker.shell.refuse([a.record], MOLECULE_GENERATOR.name, exc)
                continue
            valid, invalid = molecules(a, graphs["ATOM_TYPES"], graphs["BOND_TYPES"])
            GENERATED.labels(SERVICE, "valid").inc(len(valid))
            GENERATED.labels(SERVICE, "invalid").inc(invalid)
            outputs: list[Output] = [(DRUG_LIBRARY.name, m.molecule_id.encode(), m) for m in valid]
            step.outputs += outputs
        return step

    worker.batches(
        DRUG_GENERATION_REQUESTS, Intake(drug_pb2.GenerationRequest, problems), process, batch_max=4, within_s=0.1
    )
    return worker


def request(
    count: int, guidance: float, seed: int, request_id: str, target: str = TARGET
) -> drug_pb2.GenerationRequest:
    """A request as `medstream drug generate` and the demo send it (unguided: guidance 0, no target)."""
    message = drug_pb2.GenerationRequest(
        request_id=request_id, count=count, target=target if guidance else "", guidance=guidance, seed=seed
    )
    message.requested_at.GetCurrentTime()
    return message


def main() -> None:
    worker = build(get_settings())
    worker.run({"triton": lambda: worker.triton.ready(MOLECULE_GENERATOR.name)})
