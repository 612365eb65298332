"""Virtual screening on the real stack: a library with invalid entries, salts and an SDF record streams through the
virtual-screening worker (drug_activity and drug_admet on Triton) into the hits topic and Neo4j. The hits are the
ones the same models give in process; invalid structures are dead-lettered with RDKit's reason; a SIGKILL halfway
through a second library loses no hit, and no compound gets a second PREDICTED_ACTIVE edge. Generated molecules take
the same path: a request to the molecule-generation worker (molecule_generator on Triton) ends as screened molecules,
and a request it cannot serve is dead-lettered with why."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from medstream.events.v1 import deadletter_pb2, drug_pb2

from services.cli import library
from services.common.config import Settings
from services.common.deadletter import SourceRecord
from services.common.kafka import EventProducer
from services.common.topic_reader import committed_offsets, end_offsets, read_messages, record_positions
from services.common.topics import (
    DEAD_LETTERS,
    DRUG_GENERATION_REQUESTS,
    DRUG_HITS,
    DRUG_LIBRARY,
    DRUG_SCREENING_OUTCOMES,
)
from services.common.worker import Accepted
from services.drug import chem
from services.drug.generation.app import library_of, request
from services.drug.generation.contract import GUIDANCE
from services.drug.screening import funnel
from services.drug.screening.app import SERVICE as SCREENING_SERVICE
from services.drug.screening.contract import ADMET_ENDPOINTS, ADMET_MODEL_NAME, MODEL_NAME
from tests.conftest import ServiceProcess, graph_query, running, unique, wait_for
from training.drug.activity import load_series

pytestmark = pytest.mark.integration
SCREENING, WRITER, GENERATION = 18131, 18132, 18133
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
INVALID = {"bad-valence": "c1ccccc1N(=O)=O=C", "bad-syntax": "C1CC(", "empty": ""}
SDF_BLOCK = """aspirin-sdf
     RDKit          2D

 13 13  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0
    1.2990    0.7500    0.0000 C   0  0
    1.2990    2.2500    0.0000 O   0  0
    2.5981   -0.0000    0.0000 O   0  0
    3.8971    0.7500    0.0000 C   0  0
    3.8971    2.2500    0.0000 C   0  0
    5.1962    3.0000    0.0000 C   0  0
    6.4952    2.2500    0.0000 C   0  0
    6.4952    0.7500    0.0000 C   0  0
    5.1962   -0.0000    0.0000 C   0  0
    5.1962   -1.5000    0.0000 C   0  0
    3.8971   -2.2500    0.0000 O   0  0
    6.4952   -2.2500    0.0000 O   0  0
  1  2  1  0
  2  3  2  0
  2  4  1  0
  4  5  1  0
  5  6  2  0
  6  7  1  0
  7  8  2  0
  8  9  1  0
  9 10  2  0
 10  5  1  0
 10 11  1  0
 11 12  2  0
 11 13  1  0
M  END
"""


@pytest.fixture(scope="module")
def services(local_stack: Settings) -> Iterator[dict[str, ServiceProcess]]:
    logs = local_stack.state_dir / "logs"
    procs = {
        "virtual-screening": ServiceProcess("virtual-screening", SCREENING, logs),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs),
        "molecule-generation": ServiceProcess("molecule-generation", GENERATION, logs),
    }
    with running(procs, 180):
        yield procs


def series_library(name: str, n: int, offset: int = 0) -> list[drug_pb2.LibraryMolecule]:
    """Molecules of the ChEMBL series the activity model learned, most active first (many score as hits)."""
    ranked = sorted(load_series(), key=lambda c: -c.activity)
    rows = [(c.chembl_id, c.smiles, False) for c in ranked[offset : offset + n]]
    return list(library.records(name, rows))


def expected_hits(molecules: list[drug_pb2.LibraryMolecule], threshold: float) -> tuple[set[str], set[str]]:
    """(InChIKeys the funnel should keep, those within 0.01 of a threshold) by the same models run in process."""
    batch = [Accepted(library_record(m), m) for m in molecules]
    candidates = funnel.triage(batch, seen={}).candidates
    inputs = chem.featurise_many([c.parent.mol for c in candidates])
    tensors = (torch.from_numpy(inputs["ATOMS"]), torch.from_numpy(inputs["BONDS"]))
    with torch.no_grad():
        activity = torch.jit.load(str(REPOSITORY / MODEL_NAME / "1" / "model.pt"))(*tensors).numpy()
        admet = torch.jit.load(str(REPOSITORY / ADMET_MODEL_NAME / "1" / "model.pt"))(*tensors).numpy()
    keep, borderline = set(), set()
    for c, score, probabilities in zip(candidates, funnel.scores(activity), admet, strict=True):
        levels = np.array([funnel.ADMET_REFUSE.get(name, 2.0) for name in ADMET_ENDPOINTS])
        near = abs(score.rank - threshold) < 0.01 or np.any(np.abs(probabilities - levels) < 0.01)
        if near:
            borderline.add(c.parent.inchikey)
        elif score.rank >= threshold and not funnel.admet_refusals(probabilities):
            keep.add(c.parent.inchikey)
    return keep, borderline


def library_record(m: drug_pb2.LibraryMolecule) -> SourceRecord:
    return SourceRecord("test", 0, 0, m.molecule_id.encode(), m.SerializeToString())


def outcomes_of(settings: Settings, since: dict[int, int], name: str) -> dict[str, drug_pb2.ScreeningOutcome]:
    return {
        o.molecule_id: o
        for o in read_messages(settings, DRUG_SCREENING_OUTCOMES.name, drug_pb2.ScreeningOutcome, since)
        if o.library == name
    }


def accounted(settings: Settings, since: dict[int, int], molecules: list[drug_pb2.LibraryMolecule], timeout_s: float):
    """Wait until every record has its outcome; the outcomes by molecule_id. On a timeout the failure says where the
    records without one sit on the library topic, next to the worker group's committed offsets."""
    ids = {m.molecule_id for m in molecules}
    try:
        return wait_for(
            lambda: (o := outcomes_of(settings, since, molecules[0].library)) and ids <= set(o) and o,
            timeout_s,
            what=f"an outcome for each of {len(ids)} records",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{unaccounted(settings, ids - set(outcomes_of(settings, since, molecules[0].library)))}"
        ) from exc


def unaccounted(settings: Settings, missing: set[str]) -> str:
    where: dict[int, list[int]] = {}
    for partition, offset, key in record_positions(settings, DRUG_LIBRARY.name):
        if (key or b"").decode() in missing:
            where.setdefault(partition, []).append(offset)
    committed = committed_offsets(settings, f"medstream-{SCREENING_SERVICE}", DRUG_LIBRARY.name)
    ends = end_offsets(settings, DRUG_LIBRARY.name)
    rows = [
        f"partition {p}: offsets {min(o)}..{max(o)} ({len(o)}), committed {committed.get(p)}, end {ends[p]}"
        for p, o in sorted(where.items())
    ]
    return f"{len(missing)} records without an outcome: " + "; ".join(rows)


def edges_per_compound(settings: Settings, keys: set[str]) -> dict[str, int]:
    """PREDICTED_ACTIVE edges per compound, once every compound has reached the graph."""
    return wait_for(
        lambda: (
            (
                r := graph_query(
                    settings,
                    "MATCH (c:Compound)-[a:PREDICTED_ACTIVE]->(:Target) WHERE c.inchikey IN $keys "
                    "RETURN c.inchikey AS key, count(a) AS edges",
                    keys=sorted(keys),
                )
            )
            and len(r) == len(keys)
            and {row["key"]: row["edges"] for row in r}
        ),
        90,
        what="PREDICTED_ACTIVE edges",
    )


def hits_of(settings: Settings, since: dict[int, int], name: str) -> dict[str, drug_pb2.ScreeningHit]:
    return {
        h.inchikey: h
        for h in read_messages(settings, DRUG_HITS.name, drug_pb2.ScreeningHit, since)
        if h.library == name
    }


def test_a_library_streams_through_the_funnel_into_hits_and_the_graph(local_stack, services):
    name = unique("screen")
    molecules = series_library(name, 120)
    salt = drug_pb2.LibraryMolecule()
    salt.CopyFrom(molecules[0])
    salt.molecule_id, salt.smiles = f"{name}:salt", f"{molecules[0].smiles}.Cl"  # the same parent: a duplicate
    extra = [
        *(drug_pb2.LibraryMolecule(molecule_id=f"{name}:{k}", library=name, smiles=s) for k, s in INVALID.items()),
        salt,
        drug_pb2.LibraryMolecule(molecule_id=f"{name}:aspirin-sdf", library=name, molblock=SDF_BLOCK),
    ]
    molecules += extra
    keep, borderline = expected_hits(molecules, local_stack.screening_hit_threshold)
    assert len(keep) >= 10, "the series should give hits: is drug_activity trained?"
    topics = (DRUG_HITS.name, DEAD_LETTERS.name, DRUG_SCREENING_OUTCOMES.name)
    since = {t: end_offsets(local_stack, t) for t in topics}

    library.publish(local_stack, molecules)

    outcomes = accounted(local_stack, since[DRUG_SCREENING_OUTCOMES.name], molecules, 120)
    assert len(outcomes) == len(molecules)
    assert {k: outcomes[f"{name}:{k}"].stage for k in INVALID} == dict.fromkeys(INVALID, "invalid")
    pair = sorted(outcomes[m].stage for m in (molecules[0].molecule_id, f"{name}:salt"))  # partitions: either first
    assert pair[0] == "duplicate" and pair[1] != "duplicate"
    assert outcomes[f"{name}:aspirin-sdf"].inchikey == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    hits = wait_for(
        lambda: (h := hits_of(local_stack, since[DRUG_HITS.name], name)) and keep <= set(h) and h, 60, what="hits"
    )
    assert set(hits) - borderline == keep
    assert {o.inchikey for o in outcomes.values() if o.stage == "hit"} == set(hits)
    for h in hits.values():
        assert h.model.name == MODEL_NAME and h.model.version and h.uncertainty > 0
        assert h.rank_score == pytest.approx(h.activity - h.uncertainty) and set(h.admet) and h.smiles
    letters = wait_for(
        lambda: (
            (
                d := {
                    x.original_key.decode(): x
                    for x in read_messages(
                        local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, since[DEAD_LETTERS.name]
                    )
                    if x.original_key.decode().startswith(name)
                }
            )
            and len(d) >= len(INVALID)
            and d
        ),
        60,
        what="dead letters",
    )
    assert set(letters) == {f"{name}:{k}" for k in INVALID}
    assert "valence" in letters[f"{name}:bad-valence"].error_text.lower()
    assert all(d.consumer == "virtual-screening" and d.original_value for d in letters.values())

    assert edges_per_compound(local_stack, keep) == dict.fromkeys(keep, 1)
    assert graph_query(local_stack, "MATCH (:Assay)-[m:MEASURES]->(:Target) RETURN count(m) AS n")[0]["n"] >= 1


def test_a_killed_worker_loses_no_hit_and_duplicates_no_edge(local_stack, services):
    name = unique("screen-kill")
    molecules = series_library(name, 600, offset=120)
    keep, borderline = expected_hits(molecules, local_stack.screening_hit_threshold)
    since = end_offsets(local_stack, DRUG_HITS.name)
    since_outcomes = end_offsets(local_stack, DRUG_SCREENING_OUTCOMES.name)
    worker = services["virtual-screening"]

    library.publish(local_stack, molecules)
    wait_for(lambda: len(hits_of(local_stack, since, name)) >= len(keep) // 4, 120, what="a quarter of the hits")
    worker.kill(signal.SIGKILL)
    worker.start()
    wait_for(worker.ready, 180, what="virtual-screening /readyz after the kill")
    outcomes = accounted(local_stack, since_outcomes, molecules, 240)
    assert len(outcomes) == len(molecules)  # none lost (a replayed batch repeats outcomes under the same keys)
    hits = wait_for(lambda: (h := hits_of(local_stack, since, name)) and keep <= set(h) and h, 60, what="hits")
    assert set(hits) - borderline == keep
    assert edges_per_compound(local_stack, keep) == dict.fromkeys(keep, 1)  # a replayed batch merged, not added


def test_generated_molecules_flow_into_the_funnel(local_stack, services):
    good = request(48, GUIDANCE, seed=int(uuid.uuid4().int % 1_000_000), request_id=unique("gen"))
    bad = drug_pb2.GenerationRequest(request_id=unique("gen-bad"), count=5, target="CHEMBL1", guidance=1.0)
    since = {
        t: end_offsets(local_stack, t) for t in (DRUG_LIBRARY.name, DRUG_SCREENING_OUTCOMES.name, DEAD_LETTERS.name)
    }
    producer = EventProducer(local_stack, "test")
    for r in (good, bad):
        producer.send_sync(DRUG_GENERATION_REQUESTS.name, r.request_id.encode(), r)
    producer.close()

    generated = wait_for(
        lambda: [
            m
            for m in read_messages(local_stack, DRUG_LIBRARY.name, drug_pb2.LibraryMolecule, since[DRUG_LIBRARY.name])
            if m.request_id == good.request_id
        ],
        180,
        what="generated molecules on the library topic",
    )
    assert 0 < len(generated) <= good.count
    assert all(chem.parse(m.smiles) and m.library == library_of(good) for m in generated)
    outcomes = accounted(local_stack, since[DRUG_SCREENING_OUTCOMES.name], generated, 120)
    assert set(outcomes) == {m.molecule_id for m in generated}
    assert {o.stage for o in outcomes.values()} <= set(funnel.STAGES) - {"invalid", "error"}
    letter = wait_for(
        lambda: next(
            (
                d
                for d in read_messages(
                    local_stack, DEAD_LETTERS.name, deadletter_pb2.DeadLetter, since[DEAD_LETTERS.name]
                )
                if d.original_key == bad.request_id.encode()
            ),
            None,
        ),
        60,
        what="the refused request's dead letter",
    )
    assert "knows" in letter.error_text and letter.consumer == "molecule-generation"
