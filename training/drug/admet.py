"""The ADMET pre-filter for virtual screening: the activity GNN's network (training/drug/gnn.py) with four sigmoid
outputs, distilled from admet-ai's predictions for DrugBank's approved drugs. Run as `python -m training.drug.admet`.

Data: admet-ai 2.0.1 ships `admet_ai/resources/data/drugbank_approved.csv`, its chemprop models' predictions for
2,845 approved drugs. The probabilities for hERG, DILI, ClinTox and AMES are the soft targets (binary cross-entropy
on the probability); admet-ai itself is not imported (its chemprop 2 needs numpy 2). Molecules go through
services/drug/chem.py as the screening service's do (parse, standardise, featurise); those over chem.MAX_ATOMS heavy
atoms, or that RDKit refuses, are dropped and counted.

Evaluation: a Bemis-Murcko scaffold split of the drugs (training/drug/activity.scaffold_split). Agreement with
admet-ai per endpoint: AUROC against admet-ai's probability >= 0.5, and the mean absolute difference of the
probabilities. This measures imitation of another model, not toxicity: no experimental label is involved.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.drug.chem import MAX_ATOMS, InvalidMolecule, featurise_many, parse, standardise
from services.drug.screening.contract import ADMET_ENDPOINTS, ADMET_MODEL_NAME
from training.drug.activity import scaffold_split
from training.drug.gnn import ActivityGNN, fit_member, validation_slice

__all__ = ["ENDPOINTS", "MODEL_NAME", "AdmetModel", "Drug", "evaluate", "fit", "load_drugs", "main", "train"]

MODEL_NAME = ADMET_MODEL_NAME
ENDPOINTS = ADMET_ENDPOINTS  # admet-ai's column names in drugbank_approved.csv
DATA = ("admet_ai", "resources/data/drugbank_approved.csv")
EPOCHS = 30  # 2.4 s an epoch for 2,100 drugs on one thread of the dev machine


@dataclass(frozen=True, slots=True)
class Drug:
    drugbank_id: str
    name: str
    smiles: str
    probabilities: tuple[float, ...]  # admet-ai's, in ENDPOINTS order


@dataclass(frozen=True, slots=True)
class Featurised:
    drugs: list[Drug]  # standardised SMILES in place of DrugBank's
    atoms: np.ndarray
    bonds: np.ndarray
    targets: np.ndarray  # float32 [n, ENDPOINTS]
    too_large: int  # dropped: over MAX_ATOMS heavy atoms after standardisation
    invalid: int  # dropped: RDKit refuses the structure


def drugbank_csv() -> Path:
    """admet-ai's predictions for the approved drugs, found inside the installed wheel without importing it."""
    package, relative = DATA
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("admet-ai is not installed (the training extra installs it as data)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed admet-ai")
    return path


def load_drugs(path: Path | None = None) -> list[Drug]:
    """Every drug with a structure and all of ENDPOINTS, in file order."""
    with (path or drugbank_csv()).open(newline="") as fh:
        return [
            Drug(row["id"], row["name"], row["smiles"], tuple(float(row[e]) for e in ENDPOINTS))
            for row in csv.DictReader(fh)
            if row["smiles"] and all(row.get(e) for e in ENDPOINTS)
        ]


def featurise_drugs(drugs: Sequence[Drug]) -> Featurised:
    """The screening service's path (parse, standardise, featurise); drugs it cannot take are counted, not kept."""
    kept, mols, too_large, invalid = [], [], 0, 0
    for drug in drugs:
        try:
            parent = standardise(parse(drug.smiles))
        except InvalidMolecule:
            invalid += 1
            continue
        if parent.mol.GetNumAtoms() > MAX_ATOMS:
            too_large += 1
            continue
        kept.append(Drug(drug.drugbank_id, drug.name, parent.smiles, drug.probabilities))
        mols.append(parent.mol)
    batch = featurise_many(mols)
    targets = np.array([d.probabilities for d in kept], dtype=np.float32).reshape(-1, len(ENDPOINTS))
    return Featurised(kept, batch["ATOMS"], batch["BONDS"], targets, too_large, invalid)


class AdmetModel(nn.Module):
    """(ATOMS float32 [B, 48, 29], BONDS uint8 [B, 48, 48]) -> probabilities [B, ENDPOINTS]."""

    def __init__(self, network: ActivityGNN) -> None:
        super().__init__()
        self.network = network

    def forward(self, atoms: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(atoms, bonds))


def _soft_bce(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, probabilities)


def fit(
    atoms: np.ndarray,
    bonds: np.ndarray,
    targets: np.ndarray,
    epochs: int = EPOCHS,
    patience: int = 10,
    batch: int = 64,
    lr: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> AdmetModel:
    """One network, BCE on admet-ai's probabilities as soft targets, early-stopped on a validation slice held out
    of the training set."""
    fit_idx, val_idx = validation_slice(len(targets), val_fraction, seed)
    torch.manual_seed(seed)
    network = ActivityGNN(outputs=len(ENDPOINTS))
    fit_member(
        network,
        atoms,
        bonds,
        np.asarray(targets, dtype=np.float32),
        fit_idx,
        val_idx,
        loss=_soft_bce,
        epochs=epochs,
        patience=patience,
        batch=batch,
        lr=lr,
        seed=seed,
    )
    return AdmetModel(network).eval()


def predict(model: nn.Module, atoms: np.ndarray, bonds: np.ndarray, batch: int = 256) -> np.ndarray:
    """[n, ENDPOINTS] probabilities."""
    model.eval()
    a, b = torch.from_numpy(atoms), torch.from_numpy(bonds)
    with torch.no_grad():
        out = [model(a[i : i + batch], b[i : i + batch]) for i in range(0, len(a), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, len(ENDPOINTS)))


def agreement(reference: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, float]]:
    """Per endpoint: AUROC against admet-ai's probability >= 0.5, mean absolute difference, positives."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, endpoint in enumerate(ENDPOINTS):
        positive = reference[:, j] >= 0.5
        both = 0 < positive.sum() < len(positive)
        out[endpoint] = {
            "auroc": float(roc_auc_score(positive, predicted[:, j])) if both else float("nan"),
            "mae": float(np.abs(reference[:, j] - predicted[:, j]).mean()),
            "positives": float(positive.sum()),
        }
    return out


def _split(data: Featurised) -> tuple[list[int], list[int]]:
    return scaffold_split([d.smiles for d in data.drugs])


def _fit_and_measure(data: Featurised, **fit_args: object) -> tuple[AdmetModel, dict[str, object]]:
    train_idx, test_idx = _split(data)
    started = time.perf_counter()
    model = fit(data.atoms[train_idx], data.bonds[train_idx], data.targets[train_idx], **fit_args)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    figures: dict[str, object] = {
        "model": MODEL_NAME,
        "data": "admet-ai 2.0.1 drugbank_approved.csv (predictions, not experimental labels)",
        "endpoints": list(ENDPOINTS),
        "split": "scaffold",
        "drugs": len(data.drugs) + data.too_large + data.invalid,
        "dropped_over_max_atoms": data.too_large,
        "dropped_invalid": data.invalid,
        "train_molecules": len(train_idx),
        "test_molecules": len(test_idx),
        "train_seconds": seconds,
    }
    if test_idx:
        reference = data.targets[test_idx].astype(np.float64)
        figures["test"] = agreement(reference, predict(model, data.atoms[test_idx], data.bonds[test_idx]))
        # the floor: every test drug given the training set's mean probability
        floor = np.broadcast_to(data.targets[train_idx].mean(axis=0), reference.shape)
        figures["training_mean_mae"] = dict(
            zip(ENDPOINTS, np.abs(reference - floor).mean(axis=0).tolist(), strict=True)
        )
    return model, figures


def evaluate(drugs: Sequence[Drug] | None = None, **fit_args: object) -> dict[str, object]:
    """Fit on the scaffold split's training part; agreement with admet-ai on its test part."""
    return _fit_and_measure(featurise_drugs(list(drugs or load_drugs())), **fit_args)[1]


def train(target: Path, drugs: Sequence[Drug] | None = None, **fit_args: object) -> dict[str, object]:
    """Train on the scaffold split's training part, write `target/1/model.pt` (TorchScript: ATOMS float32, BONDS
    uint8 -> ADMET [B, 4] probabilities) and `target/evaluation.json`; return the figures."""
    model, figures = _fit_and_measure(featurise_drugs(list(drugs or load_drugs())), **fit_args)
    version_dir = Path(target) / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(version_dir / "model.pt"))
    (Path(target) / "evaluation.json").write_text(json.dumps(figures, indent=1))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=Path("build") / "drug" / "admet_evaluation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two ran several times slower than one on the shared dev machine (small matrices)
    figures = evaluate(epochs=args.epochs)
    print(
        f"admet-ai's predictions for {figures['drugs']} approved drugs: {figures['dropped_over_max_atoms']} dropped "
        f"over {MAX_ATOMS} heavy atoms, {figures['dropped_invalid']} refused by RDKit; scaffold split "
        f"{figures['train_molecules']} train / {figures['test_molecules']} test; trained in "
        f"{figures['train_seconds']:.0f} s"
    )
    print("| endpoint | AUROC vs admet-ai >= 0.5 | MAE | MAE of the training mean | test positives |")
    print("|---|---|---|---|---|")
    test = figures["test"]
    floor = figures["training_mean_mae"]
    assert isinstance(test, dict) and isinstance(floor, dict)
    for endpoint in ENDPOINTS:
        m = test[endpoint]
        print(
            f"| {endpoint} | {m['auroc']:.3f} | {m['mae']:.3f} | {floor[endpoint]:.3f} | "
            f"{int(m['positives'])} of {figures['test_molecules']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
