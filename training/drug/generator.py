"""The molecule generator (issue 12): a DiGress-style discrete diffusion model over kekulised molecular graphs
(Vignac et al., "DiGress: Discrete Denoising diffusion for graph generation", ICLR 2023), steered toward higher
predicted activity by a regressor on noisy graphs. Run as `python -m training.drug.generator` (MOSES metrics of
unguided and guided samples beside published figures).

Data: MOSES training SMILES (shipped in the molsets wheel, read in file order) with at most MAX_NODES = 20 heavy atoms,
kekulised: atoms one-hot over ATOM_VOCAB, bonds one-hot over none/single/double/triple. The CPU budget (training in
under five minutes on two cores) is why the subset is small and the molecules smaller than MOSES's (up to 27).

Diffusion: node and edge types are noised independently with DiGress's marginal transitions,
Qbar_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T (m: the training marginals), alpha_bar from the cosine schedule,
T = STEPS. The number of atoms is drawn from the training size histogram and stays fixed. The denoiser (a small dense
graph transformer: edge-modulated attention, FiLM by the timestep, plus cheap structural inputs: degree and the
diagonals of A^3..A^6, which count closed walks and so see rings) predicts the clean graph; the reverse step is the
posterior p(x_{t-1} | x_t) = sum_x0 p(x0 | x_t) q(x_{t-1} | x_t, x0), edges sampled on the upper triangle.

Guidance (DiGress's regressor guidance): a second graph transformer is trained on noisy graphs (X_t, E_t, t) to
predict the drug_activity ensemble's mean prediction (standardised) for the clean molecule. At each reverse step
p(x_{t-1} | x_t) is reweighted by exp(GUIDANCE * <grad_{x_t} regressor, x_{t-1}>). Sampler and regressor are inside
the exported TorchScript module (`sample(seeds, guidance)`), so Triton and the evaluation run the same code.

Nothing here is validated for any real target: the activity it steers toward is the screening model's, a model of
one ChEMBL series.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from torch import nn

from services.drug.chem import featurise_many, parse, standardise
from services.drug.generation.contract import (
    ATOM_VOCAB,
    BOND_ORDERS,
    GUIDANCE,
    MAX_NODES,
    MODEL_NAME,
    MOLECULE_GENERATOR,
)
from services.drug.generation.decode import decode
from services.drug.screening.contract import ENSEMBLE
from training.drug.moses_metrics import all_metrics, moses_dir

__all__ = [
    "MODEL_NAME",
    "Generator",
    "GraphTransformer",
    "encode",
    "fit",
    "main",
    "moses_smiles",
    "sample_graphs",
    "train",
]

ATOM_CLASSES = len(ATOM_VOCAB)
EDGE_CLASSES = BOND_ORDERS + 1
STEPS = 50  # diffusion steps T: DiGress uses 500; 50 keeps sampling a thousand molecules within a minute or so of CPU
STRUCTURE_FEATURES = 5  # degree, diag(A^3) .. diag(A^6)
GUIDE_EDGES = True  # reweight bond types too, as DiGress does (False: atom types only)
SWEEP = (3.0, 5.0, 20.0)  # further guidance scales main() tries (beside 0) on a smaller sample
DENOISER_STEPS, REGRESSOR_STEPS = 1400, 1500  # what `make models` trains: batches of 64, no time cap
TRAIN_MOLECULES = 12000  # the first this many MOSES training molecules of at most MAX_NODES heavy atoms
EDGE_WEIGHT = 5.0  # DiGress's lambda: edges outnumber nodes, their loss counts more


def moses_smiles(split: str = "train", limit: int | None = None, max_atoms: int | None = None) -> list[str]:
    """The first `limit` SMILES of a MOSES split (train, test, test_scaffolds), in file order, optionally only those
    with at most `max_atoms` heavy atoms; stops reading as soon as it has enough."""
    out: list[str] = []
    with gzip.open(moses_dir() / "dataset" / "data" / f"{split}.csv.gz", "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            smiles = row["SMILES"]
            if max_atoms is not None:
                mol = Chem.MolFromSmiles(smiles)
                if mol is None or mol.GetNumAtoms() > max_atoms:
                    continue
            out.append(smiles)
            if limit is not None and len(out) >= limit:
                break
    return out


def encode(smiles: str, max_nodes: int = MAX_NODES) -> tuple[np.ndarray, np.ndarray] | None:
    """(atom classes int64 [max_nodes], -1 padding; bond orders int64 [max_nodes, max_nodes]) of the kekulised
    molecule, or None if it has other elements, charges, or too many atoms."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() > max_nodes:
        return None
    Chem.Kekulize(mol, clearAromaticFlags=True)
    atoms = np.full(max_nodes, -1, np.int64)
    for atom in mol.GetAtoms():
        if atom.GetSymbol() not in ATOM_VOCAB or atom.GetFormalCharge() != 0:
            return None
        atoms[atom.GetIdx()] = ATOM_VOCAB.index(atom.GetSymbol())
    bonds = np.zeros((max_nodes, max_nodes), np.int64)
    orders = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    for bond in mol.GetBonds():
        order = orders.get(bond.GetBondType())
        if order is None:
            return None
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = order
    return atoms, bonds


# ---- diffusion arithmetic (TorchScript-compiled with the module that calls it) ----


def cosine_alpha_bar(steps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar_t for t = 0..steps (Nichol & Dhariwal's cosine schedule, as DiGress uses), alpha_bar_0 = 1."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    f = torch.cos(0.5 * math.pi * ((x / steps) + s) / (1 + s)) ** 2
    alpha_bar = (f / f[0]).clamp(min=1e-5)
    return alpha_bar.to(torch.float32)


def transition(alpha: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
    """[B, K, K]: alpha I + (1 - alpha) 1 m^T, rows the state moved from."""
    k = marginal.shape[0]
    eye = torch.eye(k, dtype=marginal.dtype, device=marginal.device).unsqueeze(0)
    a = alpha.view(-1, 1, 1)
    return a * eye + (1 - a) * marginal.view(1, 1, k)


def posterior(
    x_t: torch.Tensor, p_x0: torch.Tensor, q_t: torch.Tensor, qbar_s: torch.Tensor, qbar_t: torch.Tensor
) -> torch.Tensor:
    """p(x_{t-1} | x_t) = sum_c p(x0=c | x_t) q(x_{t-1} | x_t, x0=c), over a flattened [B, M, K] batch."""
    left = torch.bmm(x_t, q_t.transpose(1, 2))  # q(x_t | x_{t-1} = k)
    denominator = torch.bmm(x_t, qbar_t.transpose(1, 2)).clamp(min=1e-8)  # q(x_t | x0 = c)
    prob = torch.bmm(p_x0 / denominator, qbar_s) * left
    return prob / prob.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def structure_features(edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, N, 5]: degree and diag(A^k), k = 3..6, of the bonded adjacency, scaled to about unit size."""
    adjacency = (1.0 - edges[..., 0]) * (mask.unsqueeze(1) * mask.unsqueeze(2))
    power = torch.bmm(adjacency, adjacency)
    feats = [adjacency.sum(dim=-1) / 4.0]
    for k in range(3, 7):
        power = torch.bmm(power, adjacency)
        feats.append(torch.diagonal(power, dim1=1, dim2=2) / float(4**k) * 4.0)
    return torch.stack(feats, dim=-1) * mask.unsqueeze(-1)


def draw(prob: torch.Tensor) -> torch.Tensor:
    """One class per row of the last axis (inverse CDF: far cheaper than torch.multinomial on many small rows)."""
    u = torch.rand(prob.shape[:-1], dtype=prob.dtype, device=prob.device).unsqueeze(-1)
    cdf = prob.cumsum(dim=-1)
    return (cdf < u * cdf[..., -1:]).sum(dim=-1).clamp(max=prob.shape[-1] - 1)


def symmetric_sample(prob: torch.Tensor) -> torch.Tensor:
    """Edge classes [B, N, N] from [B, N, N, K]: sampled on the upper triangle, mirrored, zero diagonal."""
    drawn = draw(prob)
    upper = torch.triu(drawn, diagonal=1)
    return upper + upper.transpose(1, 2)


# ---- networks ----


class _Layer(nn.Module):
    """DiGress's graph transformer layer, trimmed for a CPU: multi-head attention whose scores are modulated by the
    edges (FiLM) and also become the new edges; nodes also read the sum of their edges; node update FiLM-ed by the
    global (timestep) vector. DiGress keeps one score per channel; one per head is what a CPU affords."""

    def __init__(self, dx: int, de: int, dy: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dx // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q, self.k, self.v = nn.Linear(dx, dx), nn.Linear(dx, dx), nn.Linear(dx, dx)
        self.e_film = nn.Linear(de, 2 * heads)
        self.y_film = nn.Linear(dy, 2 * dx)
        self.e_to_x = nn.Linear(de, dx)
        self.x_out, self.e_out = nn.Linear(dx, dx), nn.Linear(heads, de)
        self.ff_x = nn.Sequential(nn.Linear(dx, 2 * dx), nn.ReLU(), nn.Linear(2 * dx, dx))
        self.ff_e = nn.Sequential(nn.Linear(de, 2 * de), nn.ReLU(), nn.Linear(2 * de, de))
        self.norm_x1, self.norm_x2 = nn.LayerNorm(dx), nn.LayerNorm(dx)
        self.norm_e1, self.norm_e2 = nn.LayerNorm(de), nn.LayerNorm(de)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = x.shape[0], x.shape[1]
        node = mask.unsqueeze(-1)  # [B, N, 1]
        pair = (mask.unsqueeze(1) * mask.unsqueeze(2)).unsqueeze(-1)  # [B, N, N, 1]
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]
        k = self.k(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)).permute(0, 2, 3, 1) * self.scale  # [B, N, N, H]
        mul, add = self.e_film(e).chunk(2, dim=-1)
        scores = scores * (mul + 1.0) + add
        new_e = self.e_out(scores) * pair
        attention = torch.softmax(scores.masked_fill(pair == 0, -1e9), dim=2).permute(0, 3, 1, 2)  # [B, H, N, N]
        new_x = torch.matmul(attention, v).transpose(1, 2).reshape(b, n, -1)
        new_x = new_x + self.e_to_x((e * pair).sum(dim=2) / 4.0)
        y_mul, y_add = self.y_film(y).unsqueeze(1).chunk(2, dim=-1)
        new_x = self.x_out(new_x * (y_mul + 1.0) + y_add)
        x = self.norm_x1(x + new_x)
        e = self.norm_e1(e + new_e)
        x = self.norm_x2(x + self.ff_x(x)) * node
        e = self.norm_e2(e + self.ff_e(e)) * pair
        return x, e


class GraphTransformer(nn.Module):
    """(one-hot X_t [B, N, Kx], one-hot E_t [B, N, N, Ke], t/T [B], node mask [B, N]) -> node [B, N, dx] and edge
    [B, N, N, de] embeddings; `head` reads them as clean-graph logits (denoiser) or a scalar (regressor)."""

    def __init__(self, layers: int = 3, dx: int = 64, de: int = 16, dy: int = 32, max_nodes: int = MAX_NODES) -> None:
        super().__init__()
        self.max_nodes = max_nodes
        self.x_in = nn.Sequential(nn.Linear(ATOM_CLASSES + STRUCTURE_FEATURES, dx), nn.ReLU(), nn.Linear(dx, dx))
        self.e_in = nn.Sequential(nn.Linear(EDGE_CLASSES, de), nn.ReLU(), nn.Linear(de, de))
        self.y_in = nn.Sequential(nn.Linear(2, dy), nn.ReLU(), nn.Linear(dy, dy))
        self.layers = nn.ModuleList([_Layer(dx, de, dy) for _ in range(layers)])

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = mask.sum(dim=1) / float(self.max_nodes)
        y = self.y_in(torch.stack([t, size], dim=-1))
        h = self.x_in(torch.cat([x, structure_features(e, mask)], dim=-1)) * mask.unsqueeze(-1)
        g = self.e_in(e)
        for layer in self.layers:
            h, g = layer(h, g, y, mask)
        return h, g


class Denoiser(nn.Module):
    """Logits of the clean graph: nodes [B, N, Kx], edges [B, N, N, Ke] (symmetrised)."""

    def __init__(self, layers: int = 3, dx: int = 64, de: int = 16) -> None:
        super().__init__()
        self.trunk = GraphTransformer(layers, dx, de)
        self.x_head = nn.Linear(dx, ATOM_CLASSES)
        self.e_head = nn.Linear(de, EDGE_CLASSES)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, g = self.trunk(x, e, t, mask)
        logits_e = self.e_head(g)
        return self.x_head(h), 0.5 * (logits_e + logits_e.transpose(1, 2))


class Regressor(nn.Module):
    """Standardised predicted activity [B] of the clean molecule behind a noisy graph. Its graph transformer has the
    denoiser's shape so that `fit` can start it from the trained denoiser's trunk, which already reads noisy graphs
    (`regressor_check` and `make eval-drug` show how it ranks held-out molecules, beside a composition baseline).
    Besides the transformer, a linear term on the atom- and bond-type composition, weighted by 1 - t/T."""

    def __init__(self, layers: int = 3, dx: int = 64, de: int = 16) -> None:
        super().__init__()
        self.trunk = GraphTransformer(layers, dx, de)
        self.head = nn.Sequential(nn.Linear(2 * dx, dx), nn.ReLU(), nn.Linear(dx, 1))
        self.composition = nn.Linear(ATOM_CLASSES + EDGE_CLASSES, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.trunk(x, e, t, mask)
        size = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        total = h.sum(dim=1)
        graph = self.head(torch.cat([total / float(self.trunk.max_nodes), total / size], dim=-1)).squeeze(-1)
        n = mask.shape[1]
        pair = mask.unsqueeze(1) * mask.unsqueeze(2) * (1.0 - torch.eye(n, dtype=mask.dtype, device=mask.device))
        atoms = (x * mask.unsqueeze(-1)).sum(dim=1) / size
        bonds = (e * pair.unsqueeze(-1)).sum(dim=(1, 2)) / pair.sum(dim=(1, 2)).clamp(min=1.0).unsqueeze(-1)
        linear = self.composition(torch.cat([atoms, bonds], dim=-1)).squeeze(-1)
        return graph + (1.0 - t) * linear


class Generator(nn.Module):
    """The exported model: denoiser, regressor, schedule, marginals and size histogram; `sample` is the sampler."""

    def __init__(
        self,
        denoiser: Denoiser,
        regressor: Regressor,
        atom_marginal: torch.Tensor,
        edge_marginal: torch.Tensor,
        sizes: torch.Tensor,
        steps: int = STEPS,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.regressor = regressor
        self.steps = steps
        self.max_nodes = MAX_NODES
        self.atom_classes = ATOM_CLASSES
        self.guide_edges = GUIDE_EDGES
        self.edge_classes = EDGE_CLASSES
        # fixed, not trained: parameters rather than buffers so that mypy and TorchScript both see tensors (as gnn.py)
        self.alpha_bar = nn.Parameter(cosine_alpha_bar(steps), requires_grad=False)
        self.atom_marginal = nn.Parameter(atom_marginal.float(), requires_grad=False)
        self.edge_marginal = nn.Parameter(edge_marginal.float(), requires_grad=False)
        self.sizes = nn.Parameter(sizes.float(), requires_grad=False)  # histogram over 0..MAX_NODES heavy atoms

    @torch.jit.export  # the held-out regressor check noises graphs with the exported module
    def noise(
        self, atoms: torch.Tensor, bonds: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot (X_t, E_t) drawn from q(x_t | x_0) for clean classes (atoms -1 padded) at integer steps t [B]."""
        a = self.alpha_bar[t]
        x0 = nn.functional.one_hot(atoms.clamp(min=0), self.atom_classes).float()
        e0 = nn.functional.one_hot(bonds, self.edge_classes).float()
        b, n = atoms.shape[0], atoms.shape[1]
        px = torch.bmm(x0, transition(a, self.atom_marginal))
        pe = torch.bmm(e0.view(b, n * n, self.edge_classes), transition(a, self.edge_marginal)).view(
            b, n, n, self.edge_classes
        )
        return self._one_hot_states(draw(px), symmetric_sample(pe), mask)

    def _one_hot_states(
        self, atoms: torch.Tensor, bonds: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pair = mask.unsqueeze(1) * mask.unsqueeze(2)
        bonds = bonds * pair.long()
        x = nn.functional.one_hot(atoms, self.atom_classes).float() * mask.unsqueeze(-1)
        e = nn.functional.one_hot(bonds, self.edge_classes).float()
        return x, e

    def forward(self, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The regressor's standardised activity for noisy graphs (t as a fraction of T): the guidance signal."""
        return self.regressor(x, e, t, mask)

    @torch.jit.export
    def sample(self, seeds: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ATOM_TYPES uint8 [B, MAX_NODES], BOND_TYPES uint8 [B, MAX_NODES, MAX_NODES]) for B rows; torch's generator
        is seeded once from seeds[0], so a row's molecule depends on the whole batch's seed, not its own."""
        b, n = seeds.shape[0], self.max_nodes
        torch.manual_seed(int(seeds.reshape(-1)[0]))
        guidance = guidance.reshape(-1).float()
        guided = bool((guidance != 0).any())
        counts = torch.multinomial(self.sizes, b, replacement=True)
        mask = (torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)).float()
        pair = mask.unsqueeze(1) * mask.unsqueeze(2) * (1.0 - torch.eye(n).unsqueeze(0))
        atoms = draw(self.atom_marginal.view(1, 1, self.atom_classes).expand(b, n, self.atom_classes))
        prior_e = self.edge_marginal.view(1, 1, 1, self.edge_classes).expand(b, n, n, self.edge_classes)
        bonds = symmetric_sample(prior_e.contiguous())
        x, e = self._one_hot_states(atoms, bonds, mask)
        no_bond = torch.zeros(self.edge_classes)
        no_bond[0] = 1.0
        for s in range(self.steps, 0, -1):
            t = torch.full([b], s, dtype=torch.long)
            t_frac = t.float() / float(self.steps)
            with torch.no_grad():
                logits_x, logits_e = self.denoiser(x, e, t_frac, mask)
            a_t, a_s = self.alpha_bar[t], self.alpha_bar[t - 1]
            step_alpha = a_t / a_s
            prob_x = posterior(
                x,
                torch.softmax(logits_x, dim=-1),
                transition(step_alpha, self.atom_marginal),
                transition(a_s, self.atom_marginal),
                transition(a_t, self.atom_marginal),
            )
            prob_e = posterior(
                e.view(b, n * n, self.edge_classes),
                torch.softmax(logits_e, dim=-1).view(b, n * n, self.edge_classes),
                transition(step_alpha, self.edge_marginal),
                transition(a_s, self.edge_marginal),
                transition(a_t, self.edge_marginal),
            ).view(b, n, n, self.edge_classes)
            if guided:
                grad_x, grad_e = self._guidance_gradient(x, e, t_frac, mask)
                scale = guidance.view(b, 1, 1)
                prob_x = prob_x * torch.exp(scale * (grad_x - grad_x.max(dim=-1, keepdim=True)[0]))
                prob_x = prob_x / prob_x.sum(dim=-1, keepdim=True).clamp(min=1e-12)
                if self.guide_edges:
                    grad_e = grad_e + grad_e.transpose(1, 2)  # E_t is symmetric: both entries move together
                    prob_e = prob_e * torch.exp(scale.unsqueeze(-1) * (grad_e - grad_e.max(dim=-1, keepdim=True)[0]))
                    prob_e = prob_e / prob_e.sum(dim=-1, keepdim=True).clamp(min=1e-12)
            # padding rows get a harmless distribution; the mask zeroes them afterwards
            prob_x = torch.where(mask.unsqueeze(-1) > 0, prob_x, self.atom_marginal.view(1, 1, -1))
            prob_e = torch.where(pair.unsqueeze(-1) > 0, prob_e, no_bond.view(1, 1, 1, -1))
            atoms = draw(prob_x)
            bonds = symmetric_sample(prob_e)
            x, e = self._one_hot_states(atoms, bonds, mask)
        atom_types = ((atoms + 1) * mask.long()).to(torch.uint8)
        bond_types = (bonds * pair.long()).to(torch.uint8)
        return atom_types, bond_types

    def _guidance_gradient(
        self, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the caller may be under no_grad (Triton's model.py, the evaluation); TorchScript has no enable_grad block
        was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        xg = x.detach().clone().requires_grad_(True)
        eg = e.detach().clone().requires_grad_(True)
        out = self.regressor(xg, eg, t, mask).sum()
        grads = torch.autograd.grad([out], [xg, eg])
        torch.set_grad_enabled(was_enabled)
        grad_x, grad_e = grads[0], grads[1]
        assert grad_x is not None and grad_e is not None
        return grad_x.detach(), grad_e.detach()


# ---- training ----


def _marginals(atoms: np.ndarray, bonds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    real = atoms >= 0
    atom_counts = np.bincount(atoms[real], minlength=ATOM_CLASSES).astype(np.float64)
    n = real.sum(axis=1)
    pairs = real[:, :, None] & real[:, None, :] & ~np.eye(atoms.shape[1], dtype=bool)[None]
    edge_counts = np.bincount(bonds[pairs], minlength=EDGE_CLASSES).astype(np.float64)
    sizes = np.bincount(n, minlength=MAX_NODES + 1).astype(np.float64)
    return (
        torch.from_numpy(atom_counts / atom_counts.sum()),
        torch.from_numpy(edge_counts / edge_counts.sum()),
        torch.from_numpy(sizes / sizes.sum()),
    )


def _batches(count: int, batch: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        for idx in torch.randperm(count, generator=generator).split(batch):
            if len(idx) < batch or done >= steps:
                break
            done += 1
            yield idx


def fit(
    atoms: np.ndarray,
    bonds: np.ndarray,
    activity: np.ndarray | None = None,
    activity_rows: np.ndarray | None = None,
    steps: int = 2500,
    regressor_steps: int = 1500,
    batch: int = 64,
    lr: float = 2e-3,
    regressor_lr: float = 1e-3,
    layers: int = 3,
    seed: int = 0,
    budget_s: float | None = None,
    regressor_budget_s: float | None = None,
    log: bool = False,
) -> tuple[Generator, dict[str, float]]:
    """Denoiser: AdamW on cross-entropy of the clean graph (edges weighted EDGE_WEIGHT) at uniform t; regressor
    (fit_regressor), starting from the trained denoiser's trunk: MSE on the standardised activity of `activity_rows`
    (indices into atoms) at uniform t. `budget_s` and `regressor_budget_s` (seconds) stop the loops early on a slow
    machine; the figures say how many steps ran."""
    torch.manual_seed(seed)
    x_all, e_all = torch.from_numpy(atoms), torch.from_numpy(bonds)
    mask_all = (x_all >= 0).float()
    atom_marginal, edge_marginal, sizes = _marginals(atoms, bonds)
    generator = Generator(Denoiser(layers), Regressor(layers), atom_marginal, edge_marginal, sizes)
    figures: dict[str, float] = {}
    started = time.perf_counter()

    def t_batch(size: int) -> torch.Tensor:
        return torch.randint(1, generator.steps + 1, (size,))

    optimiser = torch.optim.AdamW(generator.denoiser.parameters(), lr=lr, weight_decay=1e-12)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # short warm-up, then cosine decay
        optimiser, lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    done, loss_sum = 0, 0.0
    generator.denoiser.train()
    for idx in _batches(len(atoms), batch, steps, seed):
        mask = mask_all[idx]
        k = int(mask.sum(dim=1).max())  # crop padding past the batch's largest molecule
        x0, e0, mask = x_all[idx, :k], e_all[idx, :k, :k], mask[:, :k]
        t = t_batch(len(idx))
        with torch.no_grad():
            x_t, e_t = generator.noise(x0, e0, t, mask)
        logits_x, logits_e = generator.denoiser(x_t, e_t, t.float() / generator.steps, mask)
        pair = (mask.unsqueeze(1) * mask.unsqueeze(2) * (1 - torch.eye(k).unsqueeze(0))).bool()
        loss_x = nn.functional.cross_entropy(logits_x[mask.bool()], x0[mask.bool()])
        loss_e = nn.functional.cross_entropy(logits_e[pair], e0[pair])
        loss = loss_x + EDGE_WEIGHT * loss_e
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(generator.denoiser.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        done += 1
        loss_sum += float(loss.detach())
        if log and done % 200 == 0:
            print(
                f"denoiser step {done}: loss {loss_sum / 200:.3f} ({time.perf_counter() - started:.0f} s)", flush=True
            )
            loss_sum = 0.0
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    figures["denoiser_steps"] = done
    figures["denoiser_last_loss"] = float(loss.detach())
    figures["denoiser_seconds"] = time.perf_counter() - started

    if activity is not None and activity_rows is not None and len(activity_rows) > batch:
        generator.regressor.trunk.load_state_dict(generator.denoiser.trunk.state_dict())  # fine-tuned from here
        figures.update(
            fit_regressor(
                generator,
                atoms,
                bonds,
                activity,
                activity_rows,
                steps=regressor_steps,
                batch=batch,
                lr=regressor_lr,
                seed=seed + 1,
                budget_s=regressor_budget_s,
                log=log,
            )
        )
    generator.eval()
    return generator, figures


def fit_regressor(
    generator: Generator,
    atoms: np.ndarray,
    bonds: np.ndarray,
    activity: np.ndarray,
    rows: np.ndarray,
    steps: int,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 1,
    budget_s: float | None = None,
    log: bool = False,
) -> dict[str, float]:
    """Train generator.regressor in place: MSE on the standardised `activity` of molecules `rows` (indices into
    atoms), each noised by the generator's schedule to a uniform step t. Figures: steps run, seconds, label scale."""
    started = time.perf_counter()
    x_all, e_all = torch.from_numpy(atoms), torch.from_numpy(bonds)
    mask_all = (x_all >= 0).float()
    mean, std = float(activity.mean()), float(activity.std() or 1.0)
    y = torch.from_numpy(((activity - mean) / std).astype(np.float32))
    index = torch.from_numpy(rows)
    optimiser = torch.optim.AdamW(generator.regressor.parameters(), lr=lr)
    done, mse_sum = 0, 0.0
    generator.regressor.train()
    for pos in _batches(len(index), batch, steps, seed):
        idx = index[pos]
        mask = mask_all[idx]
        k = int(mask.sum(dim=1).max())
        x0, e0, mask = x_all[idx, :k], e_all[idx, :k, :k], mask[:, :k]
        t = torch.randint(1, generator.steps + 1, (len(idx),))
        with torch.no_grad():
            x_t, e_t = generator.noise(x0, e0, t, mask)
        mse = nn.functional.mse_loss(generator.regressor(x_t, e_t, t.float() / generator.steps, mask), y[pos])
        optimiser.zero_grad()
        mse.backward()
        optimiser.step()
        done += 1
        mse_sum += float(mse.detach())
        if log and done % 200 == 0:
            print(f"regressor step {done}: mse {mse_sum / 200:.3f}", flush=True)
            mse_sum = 0.0
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    generator.regressor.eval()
    return {
        "regressor_steps": done,
        "regressor_seconds": time.perf_counter() - started,
        "regressor_label_mean": mean,
        "regressor_label_std": std,
    }


REGRESSOR_CHECK_T = (1, 10, 25, 40)  # reverse steps (of STEPS) at which the held-out check reads the regressor
HELD_OUT = 1000  # the last this many training molecules: never regressor labels, the check's molecules


def regressor_check(
    model: torch.jit.ScriptModule | Generator,
    atoms: np.ndarray,
    bonds: np.ndarray,
    activity: np.ndarray,
    ts: Sequence[int] = REGRESSOR_CHECK_T,
    seed: int = 0,
    batch: int = 250,
) -> dict[str, dict[str, float]]:
    """How well the guidance regressor ranks held-out molecules by the activity ensemble's prediction for them:
    Spearman and top-5 % enrichment (training.drug.activity.metrics) between the ensemble's activity of each clean
    molecule and the regressor's output on that molecule noised to step t, for each t in `ts` (t = 1 is nearly
    clean, t = STEPS is pure noise). Guidance can only steer as well as this ranks."""
    from training.drug.activity import metrics

    torch.manual_seed(seed)
    x_all, e_all = torch.from_numpy(atoms), torch.from_numpy(bonds)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for t in ts:
            predicted = []
            for start in range(0, len(atoms), batch):
                x0, e0 = x_all[start : start + batch], e_all[start : start + batch]
                mask = (x0 >= 0).float()
                steps = torch.full([len(x0)], int(t), dtype=torch.long)
                x_t, e_t = model.noise(x0, e0, steps, mask)
                predicted.append(model.forward(x_t, e_t, steps.float() / float(model.steps), mask).numpy())
            m = metrics(activity, np.concatenate(predicted))
            out[f"t={t}"] = {"spearman": m["spearman"], "top5_enrichment": m["top5_enrichment"]}
    return out


def composition_baseline(
    atoms: np.ndarray,
    bonds: np.ndarray,
    activity: np.ndarray,
    rows: np.ndarray,
    check_atoms: np.ndarray,
    check_bonds: np.ndarray,
    check_activity: np.ndarray,
) -> dict[str, float]:
    """The bar a guidance regressor has to clear: ridge regression on the counts of each atom and bond type and the
    number of atoms, fitted to the regressor's labels, read on the clean held-out molecules."""
    from training.drug.activity import metrics

    def counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        per_atom = [(a == c).sum(axis=1) for c in range(ATOM_CLASSES)]
        per_bond = [(b == c).sum(axis=(1, 2)) / 2 for c in range(1, EDGE_CLASSES)]
        return np.stack([*per_atom, *per_bond, (a >= 0).sum(axis=1), np.ones(len(a))], axis=1).astype(np.float64)

    features = counts(atoms[rows], bonds[rows])
    weights = np.linalg.solve(features.T @ features + np.eye(features.shape[1]), features.T @ activity)
    m = metrics(check_activity, counts(check_atoms, check_bonds) @ weights)
    return {"spearman": m["spearman"], "top5_enrichment": m["top5_enrichment"]}


def held_out(
    smiles: Sequence[str], atoms: np.ndarray, bonds: np.ndarray, ensemble: torch.jit.ScriptModule
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atoms, bonds, ensemble-mean activity) of the last HELD_OUT molecules of `training_data` that the ensemble
    scores: the regressor check's molecules."""
    labels = predicted_activity(ensemble, smiles[-HELD_OUT:]).mean(axis=1)
    ok = np.isfinite(labels)
    return atoms[-HELD_OUT:][ok], bonds[-HELD_OUT:][ok], labels[ok]


def sample_graphs(
    model: torch.jit.ScriptModule | Generator, count: int, guidance: float, seed: int = 0, batch: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """(ATOM_TYPES, BOND_TYPES) for `count` molecules, in batches each seeded seed + batch index."""
    atoms, bonds = [], []
    for i, start in enumerate(range(0, count, batch)):
        size = min(batch, count - start)
        seeds = torch.full((size, 1), seed + i, dtype=torch.int64)
        a, b = model.sample(seeds, torch.full((size, 1), float(guidance)))
        atoms.append(a.numpy())
        bonds.append(b.numpy())
    return np.concatenate(atoms), np.concatenate(bonds)


def activity_model(repository: Path) -> torch.jit.ScriptModule:
    """The drug_activity TorchScript ensemble beside the generator, trained first if it is missing."""
    path = repository / "drug_activity" / "1" / "model.pt"
    if not path.exists():
        from training.drug.gnn import train as train_activity

        train_activity(repository / "drug_activity")
    return torch.jit.load(str(path)).eval()


def predicted_activity(ensemble: torch.jit.ScriptModule, smiles: Sequence[str]) -> np.ndarray:
    """[n, members] by the screening service's path (parse, standardise, featurise); NaN rows where that fails."""
    from training.drug.gnn import predict

    out = np.full((len(smiles), ENSEMBLE), np.nan)
    mols, rows = [], []
    for i, s in enumerate(smiles):
        try:
            mols.append(standardise(parse(s)).mol)
            rows.append(i)
        except ValueError:
            continue
    if mols:
        batch = featurise_many(mols)
        out[rows] = predict(ensemble, batch["ATOMS"], batch["BONDS"])
    return out


def decode_all(atoms: np.ndarray, bonds: np.ndarray) -> dict[str, list]:
    """Whole-graph SMILES (None where invalid), largest-fragment SMILES and the reasons."""
    whole = [decode(a, b) for a, b in zip(atoms, bonds, strict=True)]
    largest = [decode(a, b, keep_largest_fragment=True) for a, b in zip(atoms, bonds, strict=True)]
    return {
        "smiles": [s for s, _ in whole],
        "largest_fragment": [s for s, _ in largest],
        "reasons": [r for _, r in whole],
    }


def training_data(
    ensemble: torch.jit.ScriptModule, molecules: int = TRAIN_MOLECULES, labelled: int = TRAIN_MOLECULES
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(SMILES, atoms, bonds, activity, rows): the first `molecules` MOSES training molecules of at most MAX_NODES
    heavy atoms that encode, and the drug_activity ensemble's mean prediction (the regressor's labels) for those
    `rows` among the first `labelled` that it scores, leaving out the last HELD_OUT (the regressor check's)."""
    smiles: list[str] = []
    atoms, bonds = [], []
    for s in moses_smiles("train", limit=molecules, max_atoms=MAX_NODES):
        graph = encode(s)
        if graph is not None:
            smiles.append(s)
            atoms.append(graph[0])
            bonds.append(graph[1])
    rows = np.arange(min(labelled, len(smiles) - HELD_OUT))
    labels = predicted_activity(ensemble, [smiles[i] for i in rows]).mean(axis=1)
    keep = np.isfinite(labels)
    return smiles, np.stack(atoms), np.stack(bonds), labels[keep], rows[keep]


def train(
    target: Path,
    molecules: int = TRAIN_MOLECULES,
    labelled: int = TRAIN_MOLECULES,
    steps: int = DENOISER_STEPS,
    regressor_steps: int = REGRESSOR_STEPS,
    guidance: float = GUIDANCE,
    evaluate_samples: int = 100,
    budget_s: float | None = None,
    regressor_budget_s: float | None = None,
    log: bool = False,
) -> dict[str, object]:
    """Train on the first `molecules` MOSES training molecules of at most MAX_NODES heavy atoms (the regressor on the
    first `labelled` except the last HELD_OUT, labelled by the drug_activity ensemble), write `target/1/model.pt`
    (TorchScript Generator) and `target/evaluation.json` (with the held-out regressor check). Fixed steps and seeds and
    no wall-clock cap by default, so that a training on another machine gets the same steps (the caps, in seconds,
    stop early and evaluation.json records how many steps ran)."""
    torch.manual_seed(0)
    started = time.perf_counter()
    target = Path(target)
    ensemble = activity_model(target.parent)
    smiles, x, e, labels, label_rows = training_data(ensemble, molecules, labelled)
    data_seconds = time.perf_counter() - started
    generator, fit_figures = fit(
        x,
        e,
        labels,
        label_rows,
        steps=steps,
        regressor_steps=regressor_steps,
        budget_s=budget_s,
        regressor_budget_s=regressor_budget_s,
        log=log,
    )
    scripted = torch.jit.script(generator)
    version_dir = target / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(version_dir / "model.pt"))
    train_seconds = time.perf_counter() - started
    figures: dict[str, object] = {
        "model": MODEL_NAME,
        "data": f"MOSES train, first {len(smiles)} molecules with <= {MAX_NODES} heavy atoms",
        "train_molecules": len(smiles),
        "labelled_molecules": len(label_rows),
        "label_mean": float(labels.mean()),
        "diffusion_steps": generator.steps,
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        **fit_figures,
        "regressor_held_out": regressor_check(scripted, *held_out(smiles, x, e, ensemble)),
    }
    if evaluate_samples:
        for name, scale in (("unguided", 0.0), (f"guided_{guidance:g}", guidance)):
            t0 = time.perf_counter()
            a, b = sample_graphs(scripted, evaluate_samples, scale, seed=1)
            MOLECULE_GENERATOR.check_outputs({"ATOM_TYPES": a, "BOND_TYPES": b})
            seconds = time.perf_counter() - t0
            decoded = decode_all(a, b)
            valid = [s for s in decoded["smiles"] if s]
            pred = predicted_activity(ensemble, valid).mean(axis=1) if valid else np.array([np.nan])
            figures[name] = {
                "samples": evaluate_samples,
                "validity": len(valid) / evaluate_samples,
                "validity_largest_fragment": sum(s is not None for s in decoded["largest_fragment"]) / evaluate_samples,
                "mean_predicted_activity": float(np.nanmean(pred)),
                "molecules_per_s": evaluate_samples / seconds,
            }
    (target / "evaluation.json").write_text(json.dumps(figures, indent=1))
    return figures


# ---- the published comparison ----

# As published, on MOSES's 30k samples (unique@10k), against MOSES's full test set; our sample is far smaller.
# MOSES: Polykovskiy et al. 2020, Front. Pharmacol. 11:565644, Table 2 (and the molecularsets/moses README).
# DiGress: Vignac et al. 2023, ICLR, Table on MOSES (uniqueness there is unique@ its own sample size).
PUBLISHED: dict[str, dict[str, float]] = {
    "CharRNN (MOSES paper)": {
        "validity": 0.975,
        "uniqueness": 0.999,
        "novelty": 0.842,
        "filters": 0.994,
        "fcd": 0.073,
        "snn": 0.601,
    },
    "VAE (MOSES paper)": {
        "validity": 0.977,
        "uniqueness": 0.998,
        "novelty": 0.695,
        "filters": 0.997,
        "fcd": 0.099,
        "snn": 0.626,
    },
    "JTN-VAE (MOSES paper)": {
        "validity": 1.000,
        "uniqueness": 0.9996,
        "novelty": 0.914,
        "filters": 0.976,
        "fcd": 0.395,
        "snn": 0.548,
    },
    "DiGress (Vignac et al. 2023)": {
        "validity": 0.857,
        "uniqueness": 1.000,
        "novelty": 0.950,
        "filters": 0.971,
        "fcd": 1.19,
        "snn": 0.52,
    },
}


def guidance_sweep(
    model: torch.jit.ScriptModule | Generator,
    ensemble: torch.jit.ScriptModule,
    scales: Sequence[float],
    samples: int,
    seed: int = 100,
) -> dict[str, dict[str, float]]:
    """Validity, uniqueness of the valid and the activity ensemble's view of them, per guidance scale."""
    out: dict[str, dict[str, float]] = {}
    for scale in scales:
        atoms, bonds = sample_graphs(model, samples, scale, seed=seed)
        valid = [s for s in decode_all(atoms, bonds)["smiles"] if s]
        pred = predicted_activity(ensemble, valid).mean(axis=1) if valid else np.zeros(0)
        pred = pred[np.isfinite(pred)]
        out[f"{scale:g}"] = {
            "validity": len(valid) / samples,
            "uniqueness": len(set(valid)) / max(1, len(valid)),
            "activity_mean": float(pred.mean()) if len(pred) else float("nan"),
            "activity_above_7": float((pred > 7.0).mean()) if len(pred) else float("nan"),
        }
    return out


def _cell(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _evaluate_sample(
    smiles: Sequence[str | None],
    largest_fragment: Sequence[str | None],
    training: Sequence[str],
    reference: Sequence[str],
    ensemble: torch.jit.ScriptModule,
) -> dict[str, float]:
    """MOSES metrics plus the largest-fragment validity and the activity ensemble's view of the valid molecules."""
    out = all_metrics(smiles, training, reference)
    out["validity_largest_fragment"] = sum(s is not None for s in largest_fragment) / max(1, len(smiles))
    valid = [s for s in smiles if s]
    pred = predicted_activity(ensemble, valid).mean(axis=1) if valid else np.zeros(0)
    pred = pred[np.isfinite(pred)]
    out["activity_mean"] = float(pred.mean()) if len(pred) else float("nan")
    out["activity_std"] = float(pred.std()) if len(pred) else float("nan")
    out["activity_above_7"] = float((pred > 7.0).mean()) if len(pred) else float("nan")
    return out


def _reasons(reasons: Sequence[str]) -> dict[str, int]:
    """Why graphs failed, grouped by RDKit's message without atom indices."""
    counts: dict[str, int] = {}
    for r in reasons:
        key = "disconnected" if r.startswith("disconnected") else r
        if "valence" in r.lower():
            key = "valence"
        elif "kekulize" in r.lower():
            key = "kekulization"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--train", action="store_true", help="train even if model.pt exists")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--sweep-samples", type=int, default=200, help="samples per guidance scale in the sweep")
    parser.add_argument("--reference", type=int, default=1000, help="MOSES test molecules for FCD and SNN")
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds: also train the generator afresh in memory with each (denoiser and regressor, "
        "a few minutes each) and print its regressor check and guidance effect, to see how much trainings differ",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build") / "drug" / "generator_evaluation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    target = args.repository / MODEL_NAME
    path = target / "1" / "model.pt"
    trained = train(target, evaluate_samples=0) if args.train or not path.exists() else None
    model = torch.jit.load(str(path)).eval()
    ensemble = activity_model(args.repository)
    subset, x, e, labels, label_rows = training_data(ensemble)  # read, encoded and labelled once
    training = subset + moses_smiles("train", limit=20000)  # novelty: our subset plus the first 20k of MOSES train
    reference = moses_smiles("test", limit=args.reference)
    rows: dict[str, dict[str, float]] = {}
    reasons: dict[str, dict[str, int]] = {}
    for name, scale in (("ours, unguided", 0.0), (f"ours, guidance {args.guidance:g}", args.guidance)):
        t0 = time.perf_counter()
        atoms, bonds = sample_graphs(model, args.samples, scale, seed=0)
        seconds = time.perf_counter() - t0
        decoded = decode_all(atoms, bonds)
        rows[name] = _evaluate_sample(decoded["smiles"], decoded["largest_fragment"], training, reference, ensemble)
        rows[name]["molecules_per_s"] = args.samples / seconds
        reasons[name] = _reasons(decoded["reasons"])
    # the same code on real molecules of the same count: what FCD and SNN read at this sample size
    calibration = subset[-args.samples :]
    rows[f"MOSES train, <= {MAX_NODES} atoms (our data)"] = _evaluate_sample(
        calibration, calibration, training, reference, ensemble
    )
    sweep = guidance_sweep(model, ensemble, (0.0, *SWEEP), args.sweep_samples) if args.sweep_samples else {}
    check_atoms, check_bonds, check_labels = held_out(subset, x, e, ensemble)
    check = regressor_check(model, check_atoms, check_bonds, check_labels)
    baseline = composition_baseline(x, e, labels, label_rows, check_atoms, check_bonds, check_labels)
    retrained: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    if args.seeds:
        for seed in (int(v) for v in args.seeds.split(",")):
            fresh, _ = fit(x, e, labels, label_rows, steps=DENOISER_STEPS, regressor_steps=REGRESSOR_STEPS, seed=seed)
            retrained[str(seed)] = {
                "regressor_held_out": regressor_check(fresh, check_atoms, check_bonds, check_labels),
                "guidance": guidance_sweep(fresh, ensemble, (0.0, GUIDANCE, *SWEEP), args.sweep_samples or 200),
            }
    total = time.perf_counter() - started

    keys = ("validity", "uniqueness", "novelty", "filters", "fcd", "snn")
    print(
        f"MOSES metrics on {args.samples} seeded samples each, FCD and SNN against the first {len(reference)} MOSES "
        "test molecules. Published rows are as published (30k samples, unique@10k, the full 176k test set), so they "
        "are not directly comparable; the 'MOSES train' row is real molecules through our code at our sample size."
    )
    print("| model | validity | uniqueness | novelty | filters | FCD/Test | SNN/Test | IntDiv | SA | largest frag. |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        cells = [_cell(m[k]) for k in keys] + [_cell(m["int_div"]), _cell(m["sa"], 2)]
        print(f"| {name} | " + " | ".join(cells) + f" | {_cell(m['validity_largest_fragment'])} |")
    for name, published in PUBLISHED.items():
        print(f"| {name}, as published | " + " | ".join(_cell(published[k]) for k in keys) + " | - | - | - |")
    print()
    print("| sample | molecules/s | predicted activity of valid molecules (mean ± std of ensemble means) | > 7.0 |")
    print("|---|---|---|---|")
    for name, m in rows.items():
        speed = _cell(m["molecules_per_s"], 1) if "molecules_per_s" in m else "-"
        activity = f"{_cell(m['activity_mean'], 2)} ± {_cell(m['activity_std'], 2)}"
        print(f"| {name} | {speed} | {activity} | {_cell(m['activity_above_7'])} |")
    if sweep:
        print(f"\nGuidance sweep, {args.sweep_samples} samples each (another seed):")
        print("| GUIDANCE | validity | uniqueness of valid | predicted activity (mean) | > 7.0 |")
        print("|---|---|---|---|---|")
        for scale_name, m in sweep.items():
            print(
                f"| {scale_name} | {_cell(m['validity'])} | {_cell(m['uniqueness'])} | "
                f"{_cell(m['activity_mean'], 2)} | {_cell(m['activity_above_7'])} |"
            )
    print(
        f"\nGuidance regressor against the activity ensemble on {len(check_labels)} held-out molecules (the last "
        f"{HELD_OUT} of the training subset, never regressor labels), each noised to step t of {STEPS}:"
    )
    print("| t | Spearman | top-5 % enrichment (1 = random, 20 = perfect) |")
    print("|---|---|---|")
    for step, m in check.items():
        print(f"| {step.removeprefix('t=')} | {_cell(m['spearman'])} | {_cell(m['top5_enrichment'], 1)} |")
    print(
        f"| baseline: ridge on atom and bond counts, clean graphs | {_cell(baseline['spearman'])} | "
        f"{_cell(baseline['top5_enrichment'], 1)} |"
    )
    for seed_name, fresh_figures in retrained.items():
        spearman = ", ".join(
            f"t={k.removeprefix('t=')} {_cell(m['spearman'])}" for k, m in fresh_figures["regressor_held_out"].items()
        )
        effect = "; ".join(
            f"{k}: validity {_cell(m['validity'])}, activity {_cell(m['activity_mean'], 2)}"
            for k, m in fresh_figures["guidance"].items()
        )
        print(f"\nRetrained in memory with seed {seed_name}: regressor Spearman {spearman}\n  guidance {effect}")
    print("\nDecoding outcomes (whole graph):")
    for name, counts in reasons.items():
        print(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(
        f"Total {total:.0f} s. Sources: MOSES, Polykovskiy et al. 2020, Front. Pharmacol. 11:565644, Table 2; "
        "DiGress, Vignac et al. 2023, ICLR."
    )
    result = {
        "samples": args.samples,
        "guidance": args.guidance,
        "reference": len(reference),
        "trained": trained,
        "ours": rows,
        "reasons": reasons,
        "sweep": sweep,
        "regressor_held_out": check,
        "composition_baseline": baseline,
        "retrained": retrained,
        "published": PUBLISHED,
        "seconds": total,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
