"""The activity GNN's export: a tiny fit on a few molecules of the ChEMBL series writes a TorchScript ensemble that
takes the batch the screening service builds (chem.featurise_many, accepted by the contract) and answers one
prediction per ensemble member, in activity units."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.drug.chem import featurise_many, parse, standardise
from services.drug.screening.contract import DRUG_ACTIVITY, ENSEMBLE, MODEL_NAME
from training.drug.activity import load_series
from training.drug.gnn import ActivityGNN, train

pytestmark = pytest.mark.unit


def test_a_tiny_fit_exports_a_torchscript_ensemble_that_honours_the_contract(tmp_path):
    compounds = load_series()[:40]
    figures = train(tmp_path, compounds, epochs=2, batch=16)
    assert figures["model"] == MODEL_NAME and figures["members"] == ENSEMBLE
    assert json.loads((tmp_path / "evaluation.json").read_text())["train_molecules"] == figures["train_molecules"]

    batch = featurise_many([standardise(parse(c.smiles)).mol for c in compounds[:3]])
    DRUG_ACTIVITY.check_inputs(batch)
    model = torch.jit.load(str(tmp_path / "1" / "model.pt"))
    with torch.no_grad():
        out = model(torch.from_numpy(batch["ATOMS"]), torch.from_numpy(batch["BONDS"])).numpy()
    assert out.shape == (3, *DRUG_ACTIVITY.output("ACTIVITY").dims)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    DRUG_ACTIVITY.check_outputs({"ACTIVITY": out})
    # standardisation travels inside the model: answers are in the series' activity units, not z-scores
    activities = [c.activity for c in compounds]
    assert min(activities) - 3 < float(out.mean()) < max(activities) + 3


def test_padding_and_bond_codes_are_read_inside_the_model():
    batch = featurise_many([parse("c1ccccc1O"), parse("CC#N")])
    torch.manual_seed(0)
    model = ActivityGNN().eval()
    atoms, bonds = torch.from_numpy(batch["ATOMS"]), torch.from_numpy(batch["BONDS"])
    with torch.no_grad():
        full = model(atoms, bonds)
        cropped = model(atoms[:, :7], bonds[:, :7, :7])  # extra zero padding changes nothing
        single = bonds.clone()
        single[single > 0] = 1
        rebonded = model(atoms, single)
    assert full.shape == (2,)
    assert torch.allclose(full, cropped, atol=1e-5)
    assert not torch.allclose(full, rebonded)  # aromatic and triple bonds are not read as single
