"""The fused note-and-labs classifier, its losses and its training loop (eager PyTorch, scriptable)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.cds.contract import EMBEDDING_DIM


class CdsMultimodal(nn.Module):
    """Note embedding + standardised labs with missing-value indicators -> MLP -> softmax over diagnoses.

    `LABS` arrive in raw units with NaN for labs not ordered; the standardisation (log first for skewed labs)
    uses training statistics baked in as frozen parameters, so serving sends raw values.
    """

    def __init__(
        self,
        lab_mean: Sequence[float],
        lab_std: Sequence[float],
        log_mask: Sequence[bool],
        n_classes: int,
        hidden: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        n_labs = len(lab_mean)
        # Frozen parameters rather than buffers: TorchScript and mypy both see them as tensors.
        self.lab_mean = nn.Parameter(torch.tensor(list(lab_mean), dtype=torch.float32), requires_grad=False)
        self.lab_std = nn.Parameter(torch.tensor(list(lab_std), dtype=torch.float32), requires_grad=False)
        self.log_mask = nn.Parameter(torch.tensor(list(log_mask), dtype=torch.bool), requires_grad=False)
        self.head = nn.Sequential(
            nn.Linear(EMBEDDING_DIM + 2 * n_labs, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, n_classes),
        )

    @torch.jit.export
    def standardise(self, labs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z-scores with 0 where missing, 1.0 where missing)."""
        missing = torch.isnan(labs)
        filled = torch.where(missing, self.lab_mean, labs)  # any finite value: it is masked below
        value = torch.where(self.log_mask, torch.log(filled.clamp(min=1e-3)), filled)
        z = torch.where(missing, torch.zeros_like(value), (value - self.lab_mean) / self.lab_std)
        return z.clamp(-8.0, 8.0), missing.to(torch.float32)

    @torch.jit.export
    def fuse(self, note_embedding: torch.Tensor, labs: torch.Tensor) -> torch.Tensor:
        z, missing = self.standardise(labs)
        return torch.cat([note_embedding, z, missing], dim=1)

    @torch.jit.export
    def logits(self, note_embedding: torch.Tensor, labs: torch.Tensor) -> torch.Tensor:
        return self.head(self.fuse(note_embedding, labs))

    def forward(self, note_embedding: torch.Tensor, labs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(note_embedding, labs), dim=1)


def lab_statistics(labs: np.ndarray, log_mask: Sequence[bool]) -> tuple[list[float], list[float]]:
    """Mean and sd per lab over the values present, on the log scale where `log_mask` says so."""
    mask = np.asarray(log_mask)
    values = np.where(mask, np.log(np.clip(labs, 1e-3, None)), labs)
    mean = np.nan_to_num(np.nanmean(values, axis=0), nan=0.0)
    std = np.nan_to_num(np.nanstd(values, axis=0), nan=1.0)
    return [float(m) for m in mean], [float(s) if s > 1e-6 else 1.0 for s in std]


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), mean over the batch: -alpha_t (1 - p_t)^gamma log p_t."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - log_p.exp()).clamp(min=0.0) ** gamma) * log_p
    if alpha is not None:
        loss = loss * alpha[target]
    return loss.mean()


def fit_head(
    model: CdsMultimodal,
    features: np.ndarray,
    y: np.ndarray,
    *,
    loss: str = "ce",
    epochs: int = 30,
    batch: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    gamma: float = 2.0,
    seed: int = 0,
) -> CdsMultimodal:
    """Train the MLP on fused features (so SMOTE can act in that space); `loss` is "ce" or "focal"."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, t = torch.from_numpy(features.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    optimiser = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = perm[start : start + batch]
            logits = model.head(x[idx])
            value = focal_loss(logits, t[idx], gamma) if loss == "focal" else F.cross_entropy(logits, t[idx])
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
    return model.eval()


def predict_proba(model: nn.Module, embeddings: np.ndarray, labs: np.ndarray, batch: int = 2048) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        parts = [
            model(torch.from_numpy(embeddings[i : i + batch]), torch.from_numpy(labs[i : i + batch])).numpy()
            for i in range(0, len(labs), batch)
        ]
    return np.concatenate(parts)
