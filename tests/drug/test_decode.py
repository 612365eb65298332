"""Decoding generated graphs: RDKit's own reason for a refusal, and the whole-graph vs largest-fragment choice."""

from __future__ import annotations

import numpy as np
import pytest

from services.drug.generation.contract import ATOM_VOCAB, MAX_NODES
from services.drug.generation.decode import decode

pytestmark = pytest.mark.unit


def graph(elements: list[str], bonds: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    atoms = np.zeros(MAX_NODES, np.uint8)
    atoms[: len(elements)] = [ATOM_VOCAB.index(e) + 1 for e in elements]
    matrix = np.zeros((MAX_NODES, MAX_NODES), np.uint8)
    for (i, j), order in bonds.items():
        matrix[i, j] = matrix[j, i] = order
    return atoms, matrix


def test_kekule_benzene_decodes_to_aromatic_smiles():
    ring = {(i, (i + 1) % 6): 2 if i % 2 == 0 else 1 for i in range(6)}
    assert decode(*graph(["C"] * 6, ring)) == ("c1ccccc1", "ok")


def test_a_hetero_atom_molecule_decodes():
    assert decode(*graph(["C", "C", "O"], {(0, 1): 1, (1, 2): 1}))[0] == "CCO"
    assert decode(*graph(["C", "C", "N"], {(0, 1): 1, (1, 2): 3}))[0] == "CC#N"


def test_an_over_valent_atom_is_refused_with_rdkits_reason():
    smiles, reason = decode(*graph(["F", "C", "C"], {(0, 1): 1, (0, 2): 1}))  # fluorine with two bonds
    assert smiles is None
    assert "valence" in reason.lower() and "F" in reason


def test_disconnected_graphs_are_invalid_unless_the_largest_fragment_is_asked_for():
    atoms, bonds = graph(["C", "C", "O", "N"], {(0, 1): 1, (1, 2): 1})
    assert decode(atoms, bonds) == (None, "disconnected: 2 fragments")
    assert decode(atoms, bonds, keep_largest_fragment=True) == ("CCO", "largest of 2 fragments")


def test_bonds_to_empty_slots_are_ignored_and_bad_input_has_a_reason():
    atoms, bonds = graph(["C", "O"], {(0, 1): 1})
    bonds[0, 5] = bonds[5, 0] = 2  # slot 5 holds no atom
    assert decode(atoms, bonds) == ("CO", "ok")
    assert decode(np.zeros(MAX_NODES, np.uint8), bonds) == (None, "no atoms")
    assert decode(atoms, bonds[:5, :5])[0] is None
    bonds[0, 1] = bonds[1, 0] = 7
    assert decode(atoms, bonds)[1].startswith("bond type 7")
