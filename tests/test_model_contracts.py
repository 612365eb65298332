"""One contract per model: what training builds, what the worker sends and what Triton's config.pbtxt declares
agree. A change on one side only fails here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cds.contract import CDS_MULTIMODAL, CLASSES
from services.cds.labs import PANEL
from services.common.model_contract import ContractViolation, ModelContract
from services.deterioration.contract import DETERIORATION_RISK, vitals_rows
from services.drug.generation.contract import MOLECULE_GENERATOR
from services.drug.screening.contract import DRUG_ACTIVITY, DRUG_ADMET
from services.imaging.routes import ROUTES
from services.research.adr.contract import ADR_RISK
from services.wearables.contract import GLYCAEMIA_RISK, WINDOW, cgm_rows

pytestmark = pytest.mark.unit
REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
CONTRACTS = [
    DETERIORATION_RISK,
    GLYCAEMIA_RISK,
    CDS_MULTIMODAL,
    ADR_RISK,
    DRUG_ACTIVITY,
    DRUG_ADMET,
    MOLECULE_GENERATOR,
    *(r.contract for r in ROUTES.values()),
]


def test_every_served_model_has_exactly_one_contract():
    served = sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt"))
    assert sorted(c.name for c in CONTRACTS) == served


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_config_pbtxt_declares_the_contract(contract: ModelContract):
    assert contract.config_differences((REPOSITORY / contract.name / "config.pbtxt").read_text()) == []


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_the_model_card_states_the_contract(contract: ModelContract):
    card = (REPOSITORY / contract.name / "MODEL_CARD.md").read_text()
    for spec in (*contract.inputs, *contract.outputs):
        dims = f"x {spec.dims[0]}" if len(spec.dims) == 1 else "\\[" + ", ".join(map(str, spec.dims)) + "\\]"
        dtype = spec.triton_dtype.removeprefix("TYPE_")
        assert re.search(rf"`{spec.name}`[^|\n]*{dtype} {dims}", card), f"{contract.name} card: {spec}"


def test_a_config_that_drifts_from_the_contract_is_caught():
    text = (REPOSITORY / "glycaemia_risk" / "config.pbtxt").read_text().replace("dims: [ 24 ]", "dims: [ 36 ]")
    assert any("inputs" in problem for problem in GLYCAEMIA_RISK.config_differences(text))
    text = text.replace("max_batch_size: 256", "max_batch_size: 8")
    assert any("max_batch_size" in problem for problem in GLYCAEMIA_RISK.config_differences(text))


def test_deterioration_training_and_worker_meet_the_contract():
    from training.deterioration_risk import RiskModel, synthetic_vitals

    inputs = vitals_rows(synthetic_vitals(16, np.random.default_rng(0)))  # what the worker sends
    DETERIORATION_RISK.check_inputs(inputs)
    x = torch.from_numpy(inputs["VITALS"])
    model = RiskModel(x.mean(0), x.std(0) + 1e-6)  # what training exports
    with torch.no_grad():
        DETERIORATION_RISK.check_outputs({"RISK": model(x).numpy()})


def test_glycaemia_training_and_worker_meet_the_contract():
    from training.glycaemia.sequences import windows
    from training.glycaemia.training import GlycaemiaRisk

    x_train, _ = windows(np.linspace(180, 60, 80).astype(np.float32))  # training's windows
    inputs = cgm_rows([list(range(100, 100 + WINDOW))])  # what the worker sends
    GLYCAEMIA_RISK.check_inputs({"CGM": x_train})
    GLYCAEMIA_RISK.check_inputs(inputs)
    with torch.no_grad():
        GLYCAEMIA_RISK.check_outputs({"RISK": GlycaemiaRisk(120.0, 40.0, 3.0)(torch.from_numpy(x_train)).numpy()})


def test_the_worker_refuses_short_or_gappy_cgm_windows():
    with pytest.raises(ContractViolation):
        cgm_rows([[120.0] * (WINDOW - 1)])
    with pytest.raises(ContractViolation):
        cgm_rows([[120.0] * (WINDOW - 1) + [float("nan")]])


def test_cds_training_classes_and_network_meet_the_contract():
    from training.cds.diseases import DISEASES
    from training.cds.network import CdsMultimodal

    assert [d.key for d in DISEASES] == [c.key for c in CLASSES]
    rows = 3
    inputs = {
        "NOTE_EMBEDDING": np.zeros((rows, 384), np.float32),
        "LABS": np.full((rows, len(PANEL)), np.nan, np.float32),
    }
    CDS_MULTIMODAL.check_inputs(inputs)
    model = CdsMultimodal([0.0] * len(PANEL), [1.0] * len(PANEL), [False] * len(PANEL), len(CLASSES)).eval()
    with torch.no_grad():
        CDS_MULTIMODAL.check_outputs({"PROBS": model(*(torch.from_numpy(a) for a in inputs.values())).numpy()})


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_imaging_routes_patches_meet_their_contract(name: str):
    from services.imaging.patches import tile
    from training.imaging.network import UNet3D

    route = ROUTES[name]
    tiles = tile(np.random.default_rng(0).random((40, 50, 45), dtype=np.float32), route.patch, route.stride)
    route.contract.check_inputs({"PATCH": tiles.patches})  # what the worker sends
    with torch.no_grad():
        prob = UNet3D((4, 16, 32))(torch.from_numpy(tiles.patches[:2])).numpy()  # what training exports
    route.contract.check_outputs({"PROB": prob})


def test_adr_features_and_network_meet_the_contract():
    from services.research import timeline as tl
    from services.research.adr.features import episode_inputs
    from training.research.adr import AdrRisk

    t = tl.from_resources(
        [
            ("Patient", {"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01", "gender": "male"}),
            (
                "MedicationRequest",
                {
                    "resourceType": "MedicationRequest",
                    "id": "m",
                    "status": "active",
                    "medicationCodeableConcept": {
                        "coding": [{"system": tl.RXNORM, "code": "0", "display": "Simvastatin 20 MG Oral Tablet"}]
                    },
                    "authoredOn": "2020-01-01",
                },
            ),
        ]
    )
    inputs = episode_inputs(t, t.medications["MedicationRequest/m"])  # what the service sends
    ADR_RISK.check_inputs(inputs)
    n_static = ADR_RISK.inputs[1].dims[0]
    model = AdrRisk(torch.zeros(n_static), torch.ones(n_static)).eval()  # what training exports
    with torch.no_grad():
        risk, attention = model(*(torch.from_numpy(inputs[n]) for n in ADR_RISK.input_names))
    ADR_RISK.check_outputs({"RISK": risk.numpy(), "ATTENTION": attention.numpy()})


def test_drug_featuriser_and_networks_meet_the_contracts():
    from services.drug.chem import featurise_many, parse, standardise
    from training.drug.admet import AdmetModel
    from training.drug.gnn import ActivityGNN, Ensemble

    smiles = ["CC(=O)Nc1ccc(O)cc1", "Cc1ccc(S(=O)(=O)Nc2ccccc2)cc1", "C#N", "[Na+].OC(=O)c1ccccc1[O-]"]
    inputs = featurise_many([standardise(parse(s)).mol for s in smiles])  # what the worker sends
    DRUG_ACTIVITY.check_inputs(inputs)
    DRUG_ADMET.check_inputs(inputs)
    torch.manual_seed(0)
    ensemble = Ensemble([ActivityGNN() for _ in range(DRUG_ACTIVITY.output("ACTIVITY").dims[0])], 6.0, 1.0).eval()
    admet = AdmetModel(ActivityGNN(outputs=DRUG_ADMET.output("ADMET").dims[0])).eval()  # what training exports
    atoms, bonds = (torch.from_numpy(inputs[n]) for n in DRUG_ACTIVITY.input_names)
    with torch.no_grad():
        DRUG_ACTIVITY.check_outputs({"ACTIVITY": ensemble(atoms, bonds).numpy()})
        DRUG_ADMET.check_outputs({"ADMET": admet(atoms, bonds).numpy()})
