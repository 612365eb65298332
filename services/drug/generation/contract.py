"""The molecule_generator model's contract: a seed and a guidance scale per row in, one molecular graph per row out.

The graph is dense and kekulised: ATOM_TYPES holds 0 for "no atom" or 1 + the index of the element in ATOM_VOCAB,
BOND_TYPES the bond order (0 none, 1 single, 2 double, 3 triple). decode.py turns it into SMILES;
training/drug/generator.py builds the model (a DiGress-style discrete diffusion model with activity guidance) and
model_repository/molecule_generator serves it.
"""

from __future__ import annotations

from services.common.model_contract import ModelContract, TensorSpec

MODEL_NAME = "molecule_generator"
ATOM_VOCAB = ("C", "N", "O", "F", "S", "Cl", "Br")  # MOSES's elements (its filters allow no others but H)
BOND_ORDERS = 3  # BOND_TYPES codes 1..3 = single, double, triple; 0 = no bond
# Heavy atoms per molecule. MOSES goes up to 27; the model is trained on its molecules of at most 20 heavy atoms so
# that training and sampling fit a CPU budget (the dense graph costs MAX_NODES squared).
MAX_NODES = 20
# The guidance scale the evaluation, the benchmark and the demo use: the scale is relative to the guidance
# regressor's gradients, so it belongs to the model; its card shows what this and other scales do.
GUIDANCE = 10.0
MOLECULE_GENERATOR = ModelContract(
    MODEL_NAME,
    inputs=(
        TensorSpec("SEED", "int64", (1,)),  # the sampler's random seed
        TensorSpec("GUIDANCE", "float32", (1,)),  # 0 = unguided; larger steers toward higher predicted activity
    ),
    outputs=(
        TensorSpec("ATOM_TYPES", "uint8", (MAX_NODES,)),  # 0 = no atom, else 1 + index into ATOM_VOCAB
        TensorSpec("BOND_TYPES", "uint8", (MAX_NODES, MAX_NODES)),  # symmetric bond orders, 0 on the diagonal
    ),
    max_batch_size=64,
)
