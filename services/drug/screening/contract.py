"""The drug_activity model's contract: a molecule as a dense graph in (services/drug/chem.py), the predicted activity
of each ensemble member out (pIC50-like units of the ChEMBL series it was trained on). The members' spread is the
screening funnel's uncertainty. training/drug/gnn.py builds it; model_repository/drug_activity serves it. Below it,
drug_admet's: the same graph in, four toxicity probabilities out, the screening funnel's ADMET pre-filter."""

from __future__ import annotations

from services.common.model_contract import ModelContract, TensorSpec
from services.drug.chem import ATOM_FEATURES, MAX_ATOMS

MODEL_NAME = "drug_activity"
ENSEMBLE = 5  # independently initialised members, each trained on a bootstrap resample of the training set
TARGET = "CHEMBL2321810"  # the one structure-activity series the model learned: the ChEMBL assay it comes from
DRUG_ACTIVITY = ModelContract(
    MODEL_NAME,
    inputs=(
        TensorSpec("ATOMS", "float32", (MAX_ATOMS, ATOM_FEATURES)),  # chem.atom_features rows, zero-padded
        TensorSpec("BONDS", "uint8", (MAX_ATOMS, MAX_ATOMS)),  # chem.BOND_CODES, 0 = no bond
    ),
    outputs=(TensorSpec("ACTIVITY", "float32", (ENSEMBLE,)),),  # one prediction per member
    max_batch_size=256,
)

# The ADMET pre-filter: the same graph in, four toxicity probabilities out. training/drug/admet.py distils it from
# admet-ai's predictions for DrugBank's approved drugs; model_repository/drug_admet serves it.
ADMET_MODEL_NAME = "drug_admet"
ADMET_ENDPOINTS = ("hERG", "DILI", "ClinTox", "AMES")  # admet-ai's (TDC's) names: hERG block, liver injury, ...
# Probability at or over which the pre-filter flags a molecule: 0.5, the decision point of admet-ai's classifiers
# (trained on TDC's binary labels). At 0.5 it flags 37 %, 44 %, 8 % and 21 % of DrugBank's approved drugs by
# admet-ai's own predictions, so a flag asks for a look, it does not refuse.
ADMET_THRESHOLDS = dict.fromkeys(ADMET_ENDPOINTS, 0.5)
DRUG_ADMET = ModelContract(
    ADMET_MODEL_NAME,
    inputs=DRUG_ACTIVITY.inputs,
    outputs=(TensorSpec("ADMET", "float32", (len(ADMET_ENDPOINTS),)),),  # probabilities, ADMET_ENDPOINTS order
    max_batch_size=256,
)
