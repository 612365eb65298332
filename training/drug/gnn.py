"""The activity GNN for virtual screening (issue 12): a dense message-passing network in plain torch on the graphs
services/drug/chem.py builds, an ensemble of ENSEMBLE members (each on a bootstrap resample with its own seed) whose
spread is the screening funnel's uncertainty, compared with the random-forest baseline of training/drug/activity.py
on the same Bemis-Murcko scaffold split and random split. Run as `python -m training.drug.gnn`.

Model: atom features -> Linear -> 3 rounds of h' = relu(W_self h + sum_k A_k h W_k) over the four bond types
(single, double, triple, aromatic, one-hot from the uint8 BONDS codes inside the model), masked to real atoms
(rows with any nonzero feature), sum + max readout, MLP head with dropout. Targets are standardised for training;
the mean and standard deviation travel as frozen parameters so the exported model answers in activity units.
Training: AdamW (weight decay 1e-4) with a cosine learning rate over 60 epochs, keeping each member's epoch with
the lowest loss on a validation slice of the training set. These settings were chosen on an inner scaffold split
of the scaffold split's training part (what helped and what did not: model_repository/drug_activity/MODEL_CARD.md);
the test part was not used to choose anything.

Nothing here is validated for any real target: one ChEMBL series, about a thousand compounds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.drug.chem import ATOM_FEATURES, featurise_many, parse, standardise
from services.drug.screening.contract import ENSEMBLE, MODEL_NAME
from training.drug.activity import (
    SERIES,
    Compound,
    load_series,
    metrics,
    morgan,
    random_forest,
    random_split,
    scaffold_split,
)

__all__ = [
    "MODEL_NAME",
    "ActivityGNN",
    "Ensemble",
    "evaluate",
    "featurise_series",
    "fit",
    "fit_member",
    "main",
    "predict",
    "train",
    "validation_slice",
]

EDGE_TYPES = 4  # BONDS codes 1..4; 0 is no bond
ROUNDS = 3
HIDDEN = 64
DROPOUT = 0.1
EPOCHS = 60
PATIENCE = 20
LR = 3e-3
WEIGHT_DECAY = 1e-4


class _Round(nn.Module):
    """h' = relu(W_self h + sum_k A_k h W_k), masked to real atoms."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.edge_types = EDGE_TYPES
        self.self_weight = nn.Linear(hidden, hidden)
        # all four edge types' W_k in one matrix: h @ W -> [B, N, EDGE_TYPES * hidden]
        self.edge_weight = nn.Linear(hidden, EDGE_TYPES * hidden, bias=False)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = h.shape[0], h.shape[1]
        per_type = self.edge_weight(h).view(b, n, self.edge_types, self.hidden).transpose(1, 2)  # [B, 4, N, H]
        # adjacency is [B, N, 4N] (A_1 | A_2 | A_3 | A_4): one matmul sums over the edge types
        messages = torch.bmm(adjacency, per_type.reshape(b, self.edge_types * n, self.hidden))  # [B, N, H]
        return torch.relu(self.self_weight(h) + messages) * mask


class ActivityGNN(nn.Module):
    """One network: (ATOMS float [B, 48, 29], BONDS uint8 [B, 48, 48]) -> [B] (standardised activity), or
    [B, outputs] when outputs > 1 (the ADMET pre-filter's logits, training/drug/admet.py)."""

    def __init__(
        self,
        features: int = ATOM_FEATURES,
        hidden: int = HIDDEN,
        rounds: int = ROUNDS,
        dropout: float = DROPOUT,
        outputs: int = 1,
    ) -> None:
        super().__init__()
        self.edge_types = EDGE_TYPES
        self.outputs = outputs
        self.embed = nn.Linear(features, hidden)
        self.rounds = nn.ModuleList([_Round(hidden) for _ in range(rounds)])
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
        )

    def forward(self, atoms: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
        b, n = bonds.shape[0], bonds.shape[1]
        # one-hot of BONDS codes 1..4 (0, no bond, dropped), laid out [B, N, 4N] as A_1 | A_2 | A_3 | A_4
        onehot = nn.functional.one_hot(bonds.to(torch.int64), self.edge_types + 1)[..., 1:]  # [B, N, N, 4]
        adjacency = onehot.transpose(2, 3).reshape(b, n, self.edge_types * n).to(atoms.dtype)
        mask = (atoms != 0).any(dim=-1).to(atoms.dtype).unsqueeze(-1)  # [B, N, 1]
        h = torch.relu(self.embed(atoms)) * mask
        for layer in self.rounds:
            h = layer(h, adjacency, mask)
        # sum (grows with the molecule) and max (is some group present anywhere); h >= 0, so the zero padding
        # never wins the max
        total = h.sum(dim=1)
        peak = h.max(dim=1).values
        out = self.head(torch.cat([total, peak], dim=-1))
        return out.squeeze(-1) if self.outputs == 1 else out


class Ensemble(nn.Module):
    """ENSEMBLE members in activity units: (ATOMS, BONDS uint8) -> [B, members]."""

    def __init__(self, members: Sequence[ActivityGNN], mean: float, std: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        # fixed, not trained: parameters rather than buffers only so that mypy and TorchScript both see tensors
        self.mean = nn.Parameter(torch.tensor(float(mean)), requires_grad=False)
        self.std = nn.Parameter(torch.tensor(float(std)), requires_grad=False)

    def forward(self, atoms: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
        outs = [member(atoms, bonds) for member in self.members]
        return torch.stack(outs, dim=1) * self.std + self.mean


def featurise_series(smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ATOMS, BONDS) by the path the screening service takes: parse, standardise, featurise (about 2 s here)."""
    batch = featurise_many([standardise(parse(s)).mol for s in smiles])
    return batch["ATOMS"], batch["BONDS"]


def _predict(model: nn.Module, atoms: torch.Tensor, bonds: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(atoms[i : i + batch], bonds[i : i + batch]) for i in range(0, len(atoms), batch)])


def validation_slice(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: a random `fraction` of the training set held out for early stopping (none for
    four molecules or fewer)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(fraction * n)) if n > 4 else 0
    return order[n_val:], order[:n_val]


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit_member(
    model: nn.Module,
    atoms: np.ndarray,
    bonds: np.ndarray,
    target: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    loss: Loss = nn.functional.mse_loss,
    epochs: int = EPOCHS,
    patience: int = PATIENCE,
    batch: int = 64,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    seed: int = 0,
) -> nn.Module:
    """Train `model` in place on the rows `fit_idx` (repeats allowed: a bootstrap) with AdamW and a cosine learning
    rate over `epochs`; keep the weights of the epoch with the lowest `loss` on `val_idx`, and stop after `patience`
    epochs without a new lowest; without a validation slice, the last epoch's weights are kept."""
    generator = torch.Generator().manual_seed(seed)
    x_a = torch.from_numpy(np.ascontiguousarray(atoms, dtype=np.float32))
    x_b = torch.from_numpy(np.ascontiguousarray(bonds, dtype=np.uint8))
    y = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
    sizes = (x_a != 0).any(dim=-1).sum(dim=1).clamp(min=1)
    rows, val = torch.from_numpy(np.asarray(fit_idx, np.int64)), torch.from_numpy(np.asarray(val_idx, np.int64))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(rows) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps))
    best_loss, best_state, stale = float("inf"), {k: v.clone() for k, v in model.state_dict().items()}, 0
    for _ in range(epochs):
        model.train()
        shuffled = rows[torch.randperm(len(rows), generator=generator)]
        for i in range(0, len(shuffled), batch):
            idx = shuffled[i : i + batch]
            k = int(sizes[idx].max())  # padding past the batch's largest molecule changes nothing: crop it
            optimiser.zero_grad()
            loss(model(x_a[idx, :k], x_b[idx, :k, :k]), y[idx]).backward()
            optimiser.step()
            schedule.step()
        if len(val) == 0:
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            continue
        val_loss = float(loss(_predict(model, x_a[val], x_b[val]), y[val]))
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def fit(
    atoms: np.ndarray,
    bonds: np.ndarray,
    y: np.ndarray,
    members: int = ENSEMBLE,
    epochs: int = EPOCHS,
    patience: int = PATIENCE,
    batch: int = 64,
    hidden: int = HIDDEN,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    dropout: float = DROPOUT,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Ensemble:
    """Each member: fit_member on MSE of standardised targets, on a bootstrap resample (own seed) of the training
    part, early-stopped on a validation slice held out of the training set (the same slice for every member)."""
    y = np.asarray(y, dtype=np.float64)
    fit_idx, val_idx = validation_slice(len(y), val_fraction, seed)
    mean, std = float(y[fit_idx].mean()), float(y[fit_idx].std() or 1.0)
    target = ((y - mean) / std).astype(np.float32)
    trained: list[ActivityGNN] = []
    for m in range(members):
        member_seed = seed + 1000 * (m + 1)
        torch.manual_seed(member_seed)
        boot = np.random.default_rng(member_seed).choice(fit_idx, size=len(fit_idx), replace=True)
        model = ActivityGNN(hidden=hidden, dropout=dropout)
        fit_member(
            model,
            atoms,
            bonds,
            target,
            boot,
            val_idx,
            epochs=epochs,
            patience=patience,
            batch=batch,
            lr=lr,
            weight_decay=weight_decay,
            seed=member_seed,
        )
        trained.append(model)
    return Ensemble(trained, mean, std).eval()


def predict(ensemble: nn.Module, atoms: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """[n, members] in activity units."""
    out = _predict(ensemble, torch.from_numpy(atoms), torch.from_numpy(bonds))
    return out.numpy().astype(np.float64)


def _gnn_metrics(truth: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    mean, spread = predictions.mean(axis=1), predictions.std(axis=1)
    out = metrics(truth, mean)
    # is the ensemble's spread informative: does it rank the molecules it gets most wrong first?
    out["uncertainty_error_spearman"] = float(spearmanr(spread, np.abs(truth - mean)).statistic)
    out["mean_ensemble_std"] = float(spread.mean())
    return out


def evaluate(
    compounds: Sequence[Compound] | None = None, trees: int = 300, **fit_args: object
) -> dict[str, dict[str, float]]:
    """GNN ensemble mean vs random forest (Morgan r=2) on the scaffold and the random split."""
    compounds = list(compounds or load_series())
    smiles = [c.smiles for c in compounds]
    y = np.array([c.activity for c in compounds])
    atoms, bonds = featurise_series(smiles)
    fingerprints = morgan(smiles)
    out: dict[str, dict[str, float]] = {}
    for split, (train_idx, test_idx) in (
        ("scaffold", scaffold_split(smiles)),
        ("random", random_split(len(smiles))),
    ):
        started = time.perf_counter()
        ensemble = fit(atoms[train_idx], bonds[train_idx], y[train_idx], **fit_args)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        gnn = _gnn_metrics(y[test_idx], predict(ensemble, atoms[test_idx], bonds[test_idx]))
        gnn["train_seconds"] = seconds
        out[f"{split}/gnn-ensemble"] = gnn
        forest = random_forest(fingerprints[train_idx], y[train_idx], trees=trees)
        out[f"{split}/random-forest"] = metrics(y[test_idx], forest.predict(fingerprints[test_idx]))  # type: ignore[attr-defined]
    return out


def train(target: Path, compounds: Sequence[Compound] | None = None, **fit_args: object) -> dict[str, object]:
    """Train on the scaffold split's training part, write `target/1/model.pt` (TorchScript Ensemble: ATOMS float32,
    BONDS uint8 -> [B, ENSEMBLE]) and `target/evaluation.json`; return the figures."""
    compounds = list(compounds or load_series())
    smiles = [c.smiles for c in compounds]
    y = np.array([c.activity for c in compounds])
    atoms, bonds = featurise_series(smiles)
    train_idx, test_idx = scaffold_split(smiles)
    started = time.perf_counter()
    ensemble = fit(atoms[train_idx], bonds[train_idx], y[train_idx], **fit_args)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    figures: dict[str, object] = {
        "model": MODEL_NAME,
        "series": SERIES,
        "split": "scaffold",
        "train_molecules": len(train_idx),
        "train_seconds": seconds,
        "members": len(ensemble.members),
    }
    if test_idx:
        figures["test"] = _gnn_metrics(y[test_idx], predict(ensemble, atoms[test_idx], bonds[test_idx]))
    version_dir = Path(target) / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(ensemble), str(version_dir / "model.pt"))
    (Path(target) / "evaluation.json").write_text(json.dumps(figures, indent=1))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=Path("build") / "drug" / "gnn_evaluation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two ran several times slower than one on the shared dev machine (small matrices)
    compounds = load_series()
    started = time.perf_counter()
    result = evaluate(compounds, trees=args.trees, epochs=args.epochs)
    total = time.perf_counter() - started
    print(f"{SERIES}: {len(compounds)} compounds; GNN ensemble of {ENSEMBLE} vs RF on Morgan r=2 ({total:.0f} s)")
    print("| split / model | RMSE | Spearman | top-5 % enrichment | test molecules | std-vs-error Spearman |")
    print("|---|---|---|---|---|---|")
    for name, m in result.items():
        unc = f"{m['uncertainty_error_spearman']:.3f}" if "uncertainty_error_spearman" in m else "-"
        print(
            f"| {name} | {m['rmse']:.3f} | {m['spearman']:.3f} | {m['top5_enrichment']:.1f}x | "
            f"{int(m['test_molecules'])} | {unc} |"
        )
    for split in ("scaffold", "random"):
        gnn, rf = result[f"{split}/gnn-ensemble"], result[f"{split}/random-forest"]
        worse = [
            label
            for label, key, higher_better in (
                ("RMSE", "rmse", False),
                ("Spearman", "spearman", True),
                ("top-5 % enrichment", "top5_enrichment", True),
            )
            if (gnn[key] <= rf[key] if higher_better else gnn[key] >= rf[key])
        ]
        verdict = f"not better than the random forest on {', '.join(worse)}" if worse else "better on every metric"
        print(f"- {split} split: the GNN is {verdict} (trained in {gnn['train_seconds']:.0f} s).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
