"""Model evaluation measures shared by the training scripts."""

from __future__ import annotations

import numpy as np


def auc_score(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (ties share their mean rank); None when only one class is present."""
    pos = np.asarray(y).astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
