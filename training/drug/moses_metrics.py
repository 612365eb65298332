"""MOSES metrics (Polykovskiy et al. 2020, Front. Pharmacol.) as pure functions over SMILES lists, written against
RDKit, the `fcd` package and the filter tables shipped in the molsets wheel, without importing `moses` (its
dependencies do not import here).

Definitions follow MOSES's own code: validity is the share of generated entries RDKit parses (None counts as
invalid); uniqueness the share of distinct canonical SMILES among the valid; novelty the share of distinct valid
molecules not in the training set; FCD the Frechet ChemNet Distance to a reference set; SNN the mean, over generated
molecules, of the highest Tanimoto similarity (Morgan r=2, 1024 bits) to a reference molecule; filters the share that
passes MOSES's filters (MCF and PAINS SMARTS from mcf.csv and wehi_pains.csv, matched on the molecule with explicit
hydrogens; no atoms outside C N S O F Cl Br H; no formal charges; no ring of 8 or more atoms); IntDiv1 one minus the
mean Tanimoto similarity over all pairs of generated molecules, self-pairs included (as MOSES computes it); SA the
mean synthetic accessibility score (Ertl & Schuffenhauer, RDKit Contrib sascorer). All but validity are computed on
the valid molecules.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
from rdkit import Chem, DataStructs, RDConfig
from rdkit.Chem import rdFingerprintGenerator

ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
MAX_RING = 8  # MOSES refuses rings of this many atoms or more


def canonical(smiles: str | None) -> str | None:
    """RDKit canonical SMILES, or None if it does not parse."""
    if not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def valid_smiles(generated: Iterable[str | None]) -> list[str]:
    """Canonical SMILES of the entries that parse, in order, duplicates kept."""
    return [c for c in (canonical(s) for s in generated) if c is not None]


def validity(generated: Sequence[str | None]) -> float:
    return len(valid_smiles(generated)) / len(generated) if generated else 0.0


def uniqueness(valid: Sequence[str]) -> float:
    return len(set(valid)) / len(valid) if valid else 0.0


def novelty(valid: Sequence[str], training: Iterable[str]) -> float:
    """Share of distinct valid molecules not among the training molecules (canonicalised here)."""
    unique = set(valid)
    if not unique:
        return 0.0
    known = {c for c in (canonical(s) for s in training) if c is not None}
    return len(unique - known) / len(unique)


def fingerprints(smiles: Iterable[str]) -> list[DataStructs.ExplicitBitVect]:
    """Morgan radius 2, 1024 bits, as MOSES's SNN and IntDiv use."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    return [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]


def snn(valid: Sequence[str], reference: Sequence[str]) -> float:
    """Mean over generated molecules of the highest Tanimoto similarity to any reference molecule."""
    if not valid or not reference:
        return float("nan")
    ref = fingerprints(reference)
    return float(np.mean([max(DataStructs.BulkTanimotoSimilarity(fp, ref)) for fp in fingerprints(valid)]))


def internal_diversity(valid: Sequence[str]) -> float:
    """IntDiv1: one minus the mean pairwise Tanimoto similarity, self-pairs included."""
    if not valid:
        return float("nan")
    fps = fingerprints(valid)
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fp, fps)) for fp in fps)
    return 1.0 - total / (len(fps) ** 2)


def moses_dir() -> Path:
    """The molsets wheel's package folder, found without importing it."""
    spec = importlib.util.find_spec("moses")
    if spec is None or spec.origin is None:
        raise RuntimeError("molsets is not installed (the training extra installs it)")
    return Path(spec.origin).parent


@lru_cache(maxsize=1)
def _filters() -> tuple[Chem.Mol, ...]:
    folder = moses_dir() / "metrics"
    with open(folder / "mcf.csv", newline="") as fh:
        patterns = [row["smarts"] for row in csv.DictReader(fh)]
    with open(folder / "wehi_pains.csv", newline="") as fh:
        patterns += [row[0] for row in csv.reader(fh) if row]  # no header: smarts, name
    compiled = (Chem.MolFromSmarts(p.strip()) for p in patterns)
    return tuple(p for p in compiled if p is not None)


def passes_filters(smiles: str) -> bool:
    """MOSES's mol_passes_filters: ring size, charge, allowed atoms, MCF and PAINS substructures."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return False
    if any(len(ring) >= MAX_RING for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        return False
    if any(atom.GetSymbol() not in ALLOWED_ATOMS for atom in mol.GetAtoms()):
        return False
    with_h = Chem.AddHs(mol)
    return not any(with_h.HasSubstructMatch(pattern) for pattern in _filters())


def filters(valid: Sequence[str]) -> float:
    return sum(passes_filters(s) for s in valid) / len(valid) if valid else 0.0


@lru_cache(maxsize=1)
def _sascorer() -> ModuleType:
    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # type: ignore[import-not-found]

    return sascorer  # type: ignore[no-any-return]


def sa_score(valid: Sequence[str]) -> float:
    """Mean synthetic accessibility, 1 (easy) to 10 (hard)."""
    if not valid:
        return float("nan")
    scorer = _sascorer()
    return float(np.mean([scorer.calculateScore(Chem.MolFromSmiles(s)) for s in valid]))


@lru_cache(maxsize=4)
def _chemnet_statistics(smiles: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ChemNet's penultimate activations (fcd 1.2, its bundled weights, CPU, no workers);
    cached because every sample is compared with the same reference."""
    from fcd import load_ref_model
    from fcd.fcd import get_predictions

    activations = get_predictions(load_ref_model(), list(smiles), n_jobs=0, device="cpu")
    return activations.mean(axis=0), np.cov(activations.T)


def fcd(valid: Sequence[str], reference: Sequence[str]) -> float:
    """Frechet ChemNet Distance between two sets. It is biased upward for small sets: compare like sizes only."""
    if len(valid) < 2 or len(reference) < 2:
        return float("nan")
    from fcd.utils import calculate_frechet_distance

    mu_a, sigma_a = _chemnet_statistics(tuple(valid))
    mu_b, sigma_b = _chemnet_statistics(tuple(reference))
    return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def all_metrics(generated: Sequence[str | None], training: Iterable[str], reference: Sequence[str]) -> dict[str, float]:
    """Every metric above for one sample; `reference` (MOSES test) serves FCD and SNN."""
    valid = valid_smiles(generated)
    ref = valid_smiles(reference)
    out = {
        "samples": float(len(generated)),
        "valid": float(len(valid)),
        "validity": validity(generated),
        "uniqueness": uniqueness(valid),
        "novelty": novelty(valid, training),
        "filters": filters(valid),
        "fcd": fcd(valid, ref),
        "snn": snn(valid, ref),
        "int_div": internal_diversity(valid),
        "sa": sa_score(valid),
    }
    return {k: (v if not (isinstance(v, float) and math.isinf(v)) else float("nan")) for k, v in out.items()}
