"""Molecule generation: the molecule_generator model's contract and the decoding of its graphs into SMILES."""
