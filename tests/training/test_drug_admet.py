"""The ADMET pre-filter's export: a few training steps on a few dozen approved drugs write a TorchScript model that
takes the screening service's batch and answers four probabilities, in the contract's order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.drug.chem import featurise_many, parse, standardise
from services.drug.screening.contract import ADMET_ENDPOINTS, ADMET_THRESHOLDS, DRUG_ADMET
from training.drug.admet import ENDPOINTS, MODEL_NAME, featurise_drugs, load_drugs, train

pytestmark = pytest.mark.unit


def test_the_drugs_carry_admet_ais_probabilities_for_the_contracts_endpoints():
    drugs = load_drugs()
    assert len(drugs) > 2000 and ENDPOINTS == ADMET_ENDPOINTS == tuple(ADMET_THRESHOLDS)
    assert all(len(d.probabilities) == len(ENDPOINTS) for d in drugs)
    assert all(0.0 <= p <= 1.0 for d in drugs[:200] for p in d.probabilities)


def test_drugs_too_large_for_the_model_are_dropped_and_counted():
    drugs = load_drugs()
    large = next(d for d in drugs if standardise(parse(d.smiles)).mol.GetNumAtoms() > 48)
    data = featurise_drugs([drugs[0], large])
    assert data.too_large == 1 and len(data.drugs) == 1 and data.atoms.shape[0] == data.targets.shape[0] == 1


def test_a_tiny_fit_exports_a_torchscript_model_that_honours_the_contract(tmp_path):
    drugs = load_drugs()[:60]
    figures = train(tmp_path, drugs, epochs=2, batch=16)
    assert figures["model"] == MODEL_NAME == DRUG_ADMET.name
    assert json.loads((tmp_path / "evaluation.json").read_text())["train_molecules"] == figures["train_molecules"]

    batch = featurise_many([standardise(parse(d.smiles)).mol for d in drugs[:3]])
    DRUG_ADMET.check_inputs(batch)
    model = torch.jit.load(str(tmp_path / "1" / "model.pt"))
    with torch.no_grad():
        out = model(torch.from_numpy(batch["ATOMS"]), torch.from_numpy(batch["BONDS"])).numpy()
    assert out.shape == (3, len(ADMET_ENDPOINTS)) and out.dtype == np.float32
    assert ((out > 0) & (out < 1)).all()  # sigmoid probabilities
    DRUG_ADMET.check_outputs({"ADMET": out})
