"""Optional docking of the screening funnel's last few molecules with AutoDock Vina (issue 12) against a protein-ligand
complex bundled in the posebusters wheel (1ia1, 1of6, 1s3v, 1uou: crystal structures with one ligand removed).
Install with the `docking` extra (vina, meeko, gemmi, posebusters); nothing is downloaded at run time.

Receptor: meeko matches the PDB residues to its templates and adds the polar hydrogens Vina needs for hydrogen bonds
(residues without a template, such as 1ia1's NADPH, would need the web and fail); it is prepared once per complex and
cached. Box: centred on the co-crystal ligand, its extent plus PADDING on each side.
Ligand: RDKit's ETKDG conformer of the SMILES as written, hydrogens added, no pKa-based protonation (the SMILES'
own charges are docked); meeko types it and sets the rotatable bonds. Scores are Vina's (kcal/mol), a ranking aid for
a handful of molecules, not an affinity; nothing here is validated for any real target.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

COMPLEXES = ("1ia1", "1of6", "1s3v", "1uou")
# human dihydrofolate reductase with an antifolate (NADPH is not in the bundled file): its co-crystal ligand redocks to
# 0.7 A; 1uou's redocked 6.6 A away with the pose scored best, 1ia1's NADPH needs a template from the web
DEFAULT_COMPLEX = "1s3v"
PADDING = 5.0  # Angstrom around the co-crystal ligand on each side


@dataclass(frozen=True, slots=True)
class Receptor:
    complex_id: str
    pdbqt: str
    center: tuple[float, float, float]
    box_size: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Docking:
    smiles: str
    complex_id: str
    score: float  # kcal/mol, Vina's best pose; lower is better
    pose_molblock: str  # the best pose with hydrogens, receptor frame


def complex_dir(complex_id: str) -> Path:
    """The folder of one bundled complex inside the installed posebusters package (read, never imported)."""
    if complex_id not in COMPLEXES:
        raise ValueError(f"unknown complex {complex_id!r}: the posebusters wheel ships {COMPLEXES}")
    spec = importlib.util.find_spec("posebusters")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("posebusters is not installed (the docking extra installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "pdb" / complex_id


def cocrystal_ligand(complex_id: str = DEFAULT_COMPLEX) -> Chem.Mol:
    """The ligand removed from the complex, as deposited (heavy atoms, crystal coordinates)."""
    mol = Chem.MolFromMolFile(str(complex_dir(complex_id) / f"{complex_id}_ligand.sdf"))
    if mol is None:
        raise ValueError(f"RDKit cannot read the co-crystal ligand of {complex_id}")
    return mol


def box_around(coordinates: np.ndarray, padding: float = PADDING) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(centre, size) of the axis-aligned box around [n, 3] coordinates, `padding` added on each side."""
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    return tuple(float(v) for v in (low + high) / 2), tuple(float(v) for v in high - low + 2 * padding)


@lru_cache(maxsize=len(COMPLEXES))
def prepare_receptor(complex_id: str = DEFAULT_COMPLEX, padding: float = PADDING) -> Receptor:
    """The complex's protein as rigid Vina PDBQT and the box around its co-crystal ligand; cached per complex."""
    from meeko import MoleculePreparation, PDBQTWriterLegacy, Polymer, ResidueChemTemplates

    pdb = (complex_dir(complex_id) / f"{complex_id}_protein_one_lig_removed.pdb").read_text()
    polymer = Polymer.from_pdb_string(
        pdb,
        ResidueChemTemplates.create_from_defaults(),
        MoleculePreparation.from_config({"compute_charges": False}),
        allow_bad_res=True,  # a residue meeko cannot template (a gap's stray atoms) is dropped, not fatal
    )
    rigid, _ = PDBQTWriterLegacy.write_string_from_polymer(polymer)
    center, size = box_around(cocrystal_ligand(complex_id).GetConformer().GetPositions(), padding)
    return Receptor(complex_id, rigid, center=center, box_size=size)  # type: ignore[arg-type]


def embed(smiles: str, seed: int = 0) -> Chem.Mol:
    """One ETKDGv3 conformer with all hydrogens, MMFF-relaxed when MMFF has parameters."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse {smiles!r}")
    mol = Chem.AddHs(mol)
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed  # type: ignore[assignment]  # the rdkit stub types this property wrongly
    if rdDistGeom.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3-D")
    if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
        rdForceFieldHelpers.MMFFOptimizeMolecule(mol)
    return mol


def ligand_pdbqt(mol: Chem.Mol) -> str:
    """meeko's PDBQT of a 3-D molecule with hydrogens: Vina atom types, rotatable bonds as torsions."""
    from meeko import MoleculePreparation, PDBQTWriterLegacy

    setup = MoleculePreparation().prepare(mol)[0]
    pdbqt, ok, error = PDBQTWriterLegacy.write_string(setup)
    if not ok:
        raise ValueError(f"meeko could not write the ligand: {error}")
    return str(pdbqt)


def dock(
    smiles: str,
    complex_id: str = DEFAULT_COMPLEX,
    exhaustiveness: int = 8,
    seed: int = 0,
    cpu: int = 2,
) -> Docking:
    """Vina's best score and pose for one SMILES in the complex's pocket."""
    from meeko import PDBQTMolecule, RDKitMolCreate
    from vina import Vina

    receptor = prepare_receptor(complex_id)
    ligand = ligand_pdbqt(embed(smiles, seed))
    vina = Vina(sf_name="vina", cpu=cpu, seed=seed, verbosity=0)
    with tempfile.NamedTemporaryFile("w", suffix=".pdbqt") as fh:  # Vina reads the receptor from a file only
        fh.write(receptor.pdbqt)
        fh.flush()
        vina.set_receptor(fh.name)
    vina.set_ligand_from_string(ligand)
    vina.compute_vina_maps(center=list(receptor.center), box_size=list(receptor.box_size))
    vina.dock(exhaustiveness=exhaustiveness, n_poses=1)
    score = float(vina.energies(n_poses=1)[0][0])
    pose = RDKitMolCreate.from_pdbqt_mol(PDBQTMolecule(vina.poses(n_poses=1), skip_typing=True))[0]
    return Docking(smiles, complex_id, score, Chem.MolToMolBlock(pose))


def pose_rmsd(pose_molblock: str, reference: Chem.Mol) -> float:
    """Heavy-atom RMSD in place (no superposition), symmetry-aware: how far a pose lies from the crystal ligand."""
    from rdkit.Chem import rdMolAlign

    pose = Chem.RemoveHs(Chem.MolFromMolBlock(pose_molblock))
    return float(rdMolAlign.CalcRMS(pose, Chem.RemoveHs(reference)))
