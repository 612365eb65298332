"""Molecules for the drug-discovery services: parse with RDKit's own reason for a refusal, standardise, key by
InChIKey, screen against property limits and structural alerts, and featurise as a dense graph.

The dense graph (atom features plus a bond-type matrix, padded to MAX_ATOMS) is what the activity model takes on
Triton (services/drug/screening/contract.py) and what training/drug/ builds it from: one featuriser for both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import FilterCatalog, rdMolDescriptors
from rdkit.Chem.MolStandardize import rdMolStandardize

rdBase.DisableLog("rdApp.*")  # reasons are returned to the caller, not printed

MAX_ATOMS = 48  # heavy atoms the model takes: the ChEMBL series tops out at 41, MOSES at 27
ELEMENTS = ("C", "N", "O", "F", "S", "Cl", "Br", "I", "P")  # then one "other element" slot
DEGREES = 6  # 0..5
CHARGES = (-1, 0, 1)
HYDROGENS = 4  # 0..3
HYBRIDISATIONS = (
    Chem.rdchem.HybridizationType.SP,
    Chem.rdchem.HybridizationType.SP2,
    Chem.rdchem.HybridizationType.SP3,
)  # then one "other" slot
ATOM_FEATURES = (len(ELEMENTS) + 1) + DEGREES + len(CHARGES) + HYDROGENS + 2 + (len(HYBRIDISATIONS) + 1)
# BONDS matrix codes: 0 no bond, then these
BOND_CODES = {
    Chem.rdchem.BondType.SINGLE: 1,
    Chem.rdchem.BondType.DOUBLE: 2,
    Chem.rdchem.BondType.TRIPLE: 3,
    Chem.rdchem.BondType.AROMATIC: 4,
}
BOND_TYPES = len(BOND_CODES) + 1

# Property limits before the model: a lead-like envelope wide enough for the ChEMBL series and approved drugs.
MAX_WEIGHT = 700.0  # monoisotopic mass, Da
MAX_LOGP = 7.0


class InvalidMolecule(ValueError):
    """RDKit cannot read the structure; the message is RDKit's reason."""


@dataclass(frozen=True, slots=True)
class Standardised:
    smiles: str  # canonical SMILES of the standardised parent
    inchikey: str
    mol: Chem.Mol


@dataclass(slots=True)
class Screen:
    """Why a molecule stops before the model (`refused`), and the alerts it carries on (`alerts`)."""

    refused: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    weight: float = 0.0
    logp: float = 0.0
    heavy_atoms: int = 0


def parse(text: str) -> Chem.Mol:
    """A sanitised molecule from SMILES or a MOL block, or InvalidMolecule with RDKit's reason."""
    stripped = text.strip()
    if not stripped:
        raise InvalidMolecule("empty structure")
    is_block = "\n" in stripped  # a MOL block's first (name) line may be blank: parse it unstripped
    mol = Chem.MolFromMolBlock(text, sanitize=False) if is_block else Chem.MolFromSmiles(stripped, sanitize=False)
    if mol is None:
        raise InvalidMolecule(f"{'MOL block' if is_block else 'SMILES'} syntax error: {stripped[:80]!r}")
    problems = Chem.DetectChemistryProblems(mol)
    if problems:
        raise InvalidMolecule("; ".join(f"{p.GetType()}: {p.Message()}" for p in problems))
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several types; the message is the reason
        raise InvalidMolecule(str(exc)) from exc
    if mol.GetNumAtoms() == 0:
        raise InvalidMolecule("no atoms")
    return mol


@lru_cache(maxsize=1)
def _standardisers() -> tuple[rdMolStandardize.LargestFragmentChooser, rdMolStandardize.Uncharger]:
    return rdMolStandardize.LargestFragmentChooser(preferOrganic=True), rdMolStandardize.Uncharger()


def standardise(mol: Chem.Mol) -> Standardised:
    """Clean up, keep the largest organic fragment (drop salts and solvents), neutralise; canonical SMILES and
    InChIKey of the result. Tautomers are left as drawn (as the ChEMBL structure pipeline does)."""
    chooser, uncharger = _standardisers()
    try:
        parent = uncharger.uncharge(chooser.choose(rdMolStandardize.Cleanup(mol)))
    except Exception as exc:  # RDKit's own exception types: a refusal with its reason, never a failed batch
        raise InvalidMolecule(f"standardisation failed: {exc}") from exc
    key = Chem.MolToInchiKey(parent)
    if not key:
        raise InvalidMolecule("no InChIKey could be computed")
    return Standardised(Chem.MolToSmiles(parent), key, parent)


@lru_cache(maxsize=1)
def _catalogs() -> tuple[FilterCatalog.FilterCatalog, FilterCatalog.FilterCatalog]:
    def catalog(*which: FilterCatalog.FilterCatalogParams.FilterCatalogs) -> FilterCatalog.FilterCatalog:
        params = FilterCatalog.FilterCatalogParams()
        for w in which:
            params.AddCatalog(w)
        return FilterCatalog.FilterCatalog(params)

    kinds = FilterCatalog.FilterCatalogParams.FilterCatalogs
    return catalog(kinds.PAINS), catalog(kinds.BRENK)


def screen(mol: Chem.Mol) -> Screen:
    """Property limits and PAINS refuse a molecule; Brenk's unwanted-group alerts are kept as flags."""
    pains, brenk = _catalogs()
    out = Screen(
        weight=float(rdMolDescriptors.CalcExactMolWt(mol)),
        logp=float(rdMolDescriptors.CalcCrippenDescriptors(mol)[0]),
        heavy_atoms=mol.GetNumHeavyAtoms(),
    )
    if out.heavy_atoms > MAX_ATOMS:
        out.refused.append(f"{out.heavy_atoms} heavy atoms, over the model's {MAX_ATOMS}")
    elif mol.GetNumAtoms() > MAX_ATOMS:  # hydrogens kept as atoms (isotopes: Cleanup keeps [2H]) fill slots too
        out.refused.append(f"{mol.GetNumAtoms()} atoms with its explicit hydrogens, over the model's {MAX_ATOMS}")
    if out.weight > MAX_WEIGHT:
        out.refused.append(f"molecular weight {out.weight:.0f} over {MAX_WEIGHT:.0f}")
    if out.logp > MAX_LOGP:
        out.refused.append(f"logP {out.logp:.1f} over {MAX_LOGP:.0f}")
    out.refused += [f"PAINS {m.GetDescription()}" for m in pains.GetMatches(mol)]
    out.alerts = sorted({f"Brenk {m.GetDescription()}" for m in brenk.GetMatches(mol)})
    return out


def _one_hot(index: int, size: int) -> list[float]:
    row = [0.0] * size
    row[index] = 1.0
    return row


def atom_features(atom: Chem.Atom) -> list[float]:
    symbol = atom.GetSymbol()
    element = ELEMENTS.index(symbol) if symbol in ELEMENTS else len(ELEMENTS)
    charge = atom.GetFormalCharge()
    hybrid = atom.GetHybridization()
    return [
        *_one_hot(element, len(ELEMENTS) + 1),
        *_one_hot(min(atom.GetDegree(), DEGREES - 1), DEGREES),
        *_one_hot(CHARGES.index(charge) if charge in CHARGES else 1, len(CHARGES)),
        *_one_hot(min(atom.GetTotalNumHs(), HYDROGENS - 1), HYDROGENS),
        float(atom.GetIsAromatic()),
        float(atom.IsInRing()),
        *_one_hot(
            HYBRIDISATIONS.index(hybrid) if hybrid in HYBRIDISATIONS else len(HYBRIDISATIONS),
            len(HYBRIDISATIONS) + 1,
        ),
    ]


def featurise(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """(ATOMS float32 [MAX_ATOMS, ATOM_FEATURES], BONDS uint8 [MAX_ATOMS, MAX_ATOMS]): heavy atoms in RDKit order,
    zero rows as padding; BONDS holds BOND_CODES, symmetric."""
    n = mol.GetNumAtoms()
    if n > MAX_ATOMS:
        raise ValueError(f"{n} atoms, over {MAX_ATOMS}")
    atoms = np.zeros((MAX_ATOMS, ATOM_FEATURES), np.float32)
    for atom in mol.GetAtoms():
        atoms[atom.GetIdx()] = atom_features(atom)
    bonds = np.zeros((MAX_ATOMS, MAX_ATOMS), np.uint8)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = BOND_CODES.get(bond.GetBondType(), 1)
    return atoms, bonds


def featurise_many(mols: Sequence[Chem.Mol]) -> dict[str, np.ndarray]:
    """A batch in the activity model's input names."""
    pairs = [featurise(m) for m in mols]
    return {
        "ATOMS": np.stack([a for a, _ in pairs]) if pairs else np.zeros((0, MAX_ATOMS, ATOM_FEATURES), np.float32),
        "BONDS": np.stack([b for _, b in pairs]) if pairs else np.zeros((0, MAX_ATOMS, MAX_ATOMS), np.uint8),
    }
