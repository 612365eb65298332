"""A generated graph (ATOM_TYPES row, BOND_TYPES matrix; see contract.py) as canonical SMILES, or None with RDKit's
reason. Pure: no model, no I/O.

Validity as DiGress reports it is the whole graph sanitising as one connected molecule (`keep_largest_fragment=False`,
the default). With `keep_largest_fragment=True` a graph that sanitises but falls apart into pieces answers its
largest piece (by heavy atoms), as several generators do when they report validity; callers that use it should say so.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem, rdBase

from services.drug.generation.contract import ATOM_VOCAB, BOND_ORDERS

rdBase.DisableLog("rdApp.*")  # the reason is returned, not printed

_BONDS = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def decode(
    atom_types: np.ndarray, bond_types: np.ndarray, keep_largest_fragment: bool = False
) -> tuple[str | None, str]:
    """(canonical SMILES, "ok" or how it was repaired) or (None, why not). Bonds touching "no atom" slots are ignored;
    the upper triangle of BOND_TYPES is read."""
    atoms = np.asarray(atom_types).astype(np.int64).reshape(-1)
    bonds = np.asarray(bond_types).astype(np.int64)
    if bonds.shape != (len(atoms), len(atoms)):
        return None, f"bond matrix {list(bonds.shape)} does not match {len(atoms)} atom slots"
    if atoms.min(initial=0) < 0 or atoms.max(initial=0) > len(ATOM_VOCAB):
        return None, f"atom type outside 0..{len(ATOM_VOCAB)}"
    slots = np.flatnonzero(atoms)
    if len(slots) == 0:
        return None, "no atoms"
    mol = Chem.RWMol()
    index = {}
    for slot in slots:
        index[int(slot)] = mol.AddAtom(Chem.Atom(ATOM_VOCAB[atoms[slot] - 1]))
    for a, i in enumerate(slots):
        for j in slots[a + 1 :]:
            order = int(bonds[i, j])
            if order < 0 or order > BOND_ORDERS:
                return None, f"bond type {order} outside 0..{BOND_ORDERS}"
            if order:
                mol.AddBond(index[int(i)], index[int(j)], _BONDS[order])
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several types; the message is the reason
        return None, str(exc).strip() or type(exc).__name__
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(fragments) > 1:
        if not keep_largest_fragment:
            return None, f"disconnected: {len(fragments)} fragments"
        largest = max(fragments, key=lambda f: f.GetNumAtoms())
        return Chem.MolToSmiles(largest), f"largest of {len(fragments)} fragments"
    return Chem.MolToSmiles(mol), "ok"
