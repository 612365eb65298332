"""The molecule-generation worker's pure parts: which requests it refuses and why, the seeds it sends, and the
library records it makes of sampled graphs (graphs that are not one valid molecule are counted, not sent)."""

from __future__ import annotations

import numpy as np
import pytest
from medstream.events.v1 import drug_pb2

from services.common.deadletter import SourceRecord
from services.common.topics import DRUG_GENERATION_REQUESTS
from services.common.worker import Accepted
from services.drug.generation.app import LIBRARY, MAX_COUNT, inputs, molecules, problems, request
from services.drug.generation.contract import ATOM_VOCAB, MAX_NODES, MOLECULE_GENERATOR
from services.drug.screening.contract import TARGET

pytestmark = pytest.mark.unit


def test_requests_are_checked():
    assert problems(request(10, 2.0, 0, "r1")) == []
    assert problems(request(10, 0.0, 0, "r1")) == []
    assert problems(drug_pb2.GenerationRequest(request_id="r", count=10, target="CHEMBL1", guidance=1.0)) == [
        f"target 'CHEMBL1': the generator's guidance knows {TARGET} only"
    ]
    assert problems(drug_pb2.GenerationRequest(count=MAX_COUNT + 1, guidance=-1.0)) == [
        "request_id is empty",
        f"count {MAX_COUNT + 1} outside 1..{MAX_COUNT}",
        "guidance -1.0 is not a finite number >= 0",
    ]
    assert problems(drug_pb2.GenerationRequest(request_id="r", count=1, guidance=1.0)) == ["guidance without a target"]


def test_row_i_samples_with_seed_plus_i():
    rows = inputs(request(130, 1.5, 1000, "r"))
    MOLECULE_GENERATOR.check_inputs(rows)
    assert rows["SEED"][:3, 0].tolist() == [1000, 1001, 1002] and rows["SEED"].shape == (130, 1)
    assert np.all(rows["GUIDANCE"] == 1.5)


def test_sampled_graphs_become_library_records():
    atoms = np.zeros((2, MAX_NODES), np.uint8)
    bonds = np.zeros((2, MAX_NODES, MAX_NODES), np.uint8)
    carbon, oxygen = ATOM_VOCAB.index("C") + 1, ATOM_VOCAB.index("O") + 1
    atoms[0, :3] = (carbon, carbon, oxygen)  # ethanol
    bonds[0, 0, 1] = bonds[0, 1, 0] = bonds[0, 1, 2] = bonds[0, 2, 1] = 1
    atoms[1, :2] = (oxygen, oxygen)  # O#O: no valid valence
    bonds[1, 0, 1] = bonds[1, 1, 0] = 3
    msg = request(2, 0.0, 0, "req-1")
    a = Accepted(SourceRecord(DRUG_GENERATION_REQUESTS.name, 0, 5, b"req-1", msg.SerializeToString()), msg)
    valid, invalid = molecules(a, atoms, bonds)
    assert invalid == 1 and len(valid) == 1
    assert (valid[0].smiles, valid[0].molecule_id, valid[0].library, valid[0].request_id) == (
        "CCO",
        f"{LIBRARY}:req-1:0",
        f"{LIBRARY}:req-1",
        "req-1",
    )
    assert valid[0].provenance.source_offset == 5
