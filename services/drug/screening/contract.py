"""The drug_activity model's contract: a molecule as a dense graph in (services/drug/chem.py), the predicted activity
of each ensemble member out (pIC50-like units of the ChEMBL series it was trained on). The members' spread is the
screening funnel's uncertainty. training/drug/gnn.py builds it; model_repository/drug_activity serves it."""

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
