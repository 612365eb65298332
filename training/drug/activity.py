"""The activity-prediction baseline for virtual screening (issue 12): a random forest on Morgan fingerprints for the
ChEMBL aryl-sulfonamide series shipped inside the rdkit wheel, on a Bemis-Murcko scaffold split and a random split.
Run as `python -m training.drug.activity`.

Data: `rdkit/Contrib/FreeWilson/data/CHEMBL2321810.smi` (SMILES, ChEMBL molregno) joined with
`CHEMBL2321810_act.csv` (Name, Act): 1,017 compounds of one ChEMBL assay with activities 4.3-9.2, which look like
pIC50 but whose unit the files do not state. Read from the installed package; nothing is downloaded.

Scaffold split: molecules grouped by Bemis-Murcko scaffold, the largest groups fill the training set and the rest
(the rarer scaffolds) form the test set, so no test scaffold is seen in training, the usual way to ask whether a
model generalises beyond close analogues. Metrics: RMSE, Spearman rank correlation, and enrichment of the true top
5 % (the share of the test set's most active 5 % found in the predicted top 5 %, over what random picking finds).

This is the floor a chemist would write in an afternoon; the GNN the issue asks for is to be compared against it
on the same split. Nothing here is validated for any real target.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SERIES = "CHEMBL2321810"
FINGERPRINT_BITS = 2048
TOP_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class Compound:
    chembl_id: str
    smiles: str
    activity: float


def series_dir() -> Path:
    spec = importlib.util.find_spec("rdkit")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rdkit is not installed (the training extra installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "Contrib" / "FreeWilson" / "data"


def load_series(folder: Path | None = None) -> list[Compound]:
    """The compounds that have both a structure and an activity, in file order."""
    folder = folder or series_dir()
    with open(folder / f"{SERIES}_act.csv", newline="") as fh:
        activity = {row["Name"]: float(row["Act"]) for row in csv.DictReader(fh)}
    compounds = []
    for line in (folder / f"{SERIES}.smi").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in activity:
            compounds.append(Compound(parts[1], parts[0], activity[parts[1]]))
    return compounds


def murcko_scaffold(smiles: str) -> str:
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse {smiles!r}")
    return str(MurckoScaffold.MurckoScaffoldSmiles(mol=mol))


def scaffold_split(smiles: Sequence[str], test_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """(train, test) indices: whole scaffold groups, largest first into training until it holds
    1 - test_fraction of the molecules; ties broken by scaffold text, so the split is deterministic."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(smiles):
        groups[murcko_scaffold(s)].append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    train: list[int] = []
    test: list[int] = []
    limit = (1 - test_fraction) * len(smiles)
    for _, members in ordered:
        (train if len(train) + len(members) <= limit else test).extend(members)
    return sorted(train), sorted(test)


def random_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * (1 - test_fraction))
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def morgan(smiles: Sequence[str], radius: int = 2, bits: int = FINGERPRINT_BITS) -> np.ndarray:
    """Morgan (ECFP4-like) bit vectors, uint8 [n, bits]."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    out = np.zeros((len(smiles), bits), dtype=np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"RDKit cannot parse {s!r}")
        DataStructs.ConvertToNumpyArray(generator.GetFingerprint(mol), out[i])
    return out


def top_enrichment(truth: np.ndarray, predicted: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of the truly most active `fraction` found among the predicted most active `fraction`, divided by
    `fraction` (what random picking finds on average): 1 is random, 1/fraction is perfect."""
    k = max(1, round(fraction * len(truth)))
    true_top = set(np.argsort(-truth)[:k].tolist())
    picked = set(np.argsort(-predicted)[:k].tolist())
    return len(true_top & picked) / k / fraction


def metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    return {
        "rmse": float(np.sqrt(np.mean((truth - predicted) ** 2))),
        "spearman": float(spearmanr(truth, predicted).statistic),
        "top5_enrichment": top_enrichment(truth, predicted),
        "test_molecules": float(len(truth)),
    }


def random_forest(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0, trees: int = 300) -> object:
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(n_estimators=trees, n_jobs=2, random_state=seed, min_samples_leaf=1)
    model.fit(x_train, y_train)
    return model


def evaluate(compounds: Sequence[Compound] | None = None, trees: int = 300) -> dict[str, dict[str, float]]:
    """RF on Morgan fingerprints, and the training-mean predictor, on the scaffold and the random split."""
    compounds = list(compounds or load_series())
    smiles = [c.smiles for c in compounds]
    y = np.array([c.activity for c in compounds])
    x = morgan(smiles)
    out: dict[str, dict[str, float]] = {}
    for split, (train, test) in (("scaffold", scaffold_split(smiles)), ("random", random_split(len(smiles)))):
        model = random_forest(x[train], y[train], trees=trees)
        out[f"{split}/random-forest"] = metrics(y[test], model.predict(x[test]))  # type: ignore[attr-defined]
        # a constant prediction ranks nothing: no rank correlation, and its "picks" are random (enrichment 1)
        rmse = float(np.sqrt(np.mean((y[test] - y[train].mean()) ** 2)))
        out[f"{split}/training-mean"] = {
            "rmse": rmse,
            "spearman": 0.0,
            "top5_enrichment": 1.0,
            "test_molecules": float(len(test)),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("build") / "drug" / "activity_baseline.json")
    args = parser.parse_args(argv)
    compounds = load_series()
    result = evaluate(compounds, trees=args.trees)
    print(f"{SERIES}: {len(compounds)} compounds, Morgan r=2 {FINGERPRINT_BITS} bits")
    print("| split / model | RMSE | Spearman | top-5 % enrichment | test molecules |\n|---|---|---|---|---|")
    for name, m in result.items():
        print(
            f"| {name} | {m['rmse']:.3f} | {m['spearman']:.3f} | {m['top5_enrichment']:.1f}x | "
            f"{int(m['test_molecules'])} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
