"""Train the deterioration-risk MLP on synthetic vital signs labelled by the NEWS2 urgent-response trigger.

The data is synthetic and the label is a published rule, so the model can at best reproduce NEWS2: it exists
to exercise the streaming and serving path with a real trained network, not to add clinical value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.deterioration.contract import ALERT_THRESHOLD, DETERIORATION_RISK, vitals_rows
from services.deterioration.news2 import FEATURES, Vitals, urgent_response
from training.evaluation import auc_score

MODEL_NAME = DETERIORATION_RISK.name


def synthetic_vitals(n: int, rng: np.random.Generator) -> list[Vitals]:
    """Vital-sign sets from a mixture of stable, unwell and deteriorating ward patients."""
    state = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])
    sev = np.array([0.0, 1.0, 2.2])[state] + rng.normal(0, 0.4, n)
    rr = rng.normal(15 + 4 * sev, 2.5)
    spo2 = np.clip(rng.normal(97.5 - 2.5 * sev, 1.5), 70, 100)
    temp = rng.normal(36.9 + 0.5 * sev * rng.choice([-1, 1], n, p=[0.25, 0.75]), 0.4)
    sbp = rng.normal(125 - 12 * sev, 14)
    hr = rng.normal(75 + 14 * sev, 10)
    o2 = rng.random(n) < np.clip(0.03 + 0.25 * sev, 0, 0.9)
    not_alert = rng.random(n) < np.clip(0.01 + 0.06 * sev**2, 0, 0.6)
    consciousness = np.where(not_alert, rng.integers(2, 6, n), 1)
    return [
        Vitals(
            round(float(a), 0),
            round(float(b), 0),
            bool(c),
            round(float(d), 1),
            round(float(e), 0),
            round(float(f), 0),
            int(g),
        )
        for a, b, c, d, e, f, g in zip(rr, spo2, o2, temp, sbp, hr, consciousness, strict=True)
    ]


class RiskModel(nn.Module):
    """Standardise raw vitals, two hidden layers, sigmoid risk."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        # Frozen parameters rather than buffers: TorchScript and mypy both see them as tensors.
        self.mean = nn.Parameter(mean, requires_grad=False)
        self.std = nn.Parameter(std, requires_grad=False)
        self.net = nn.Sequential(
            nn.Linear(len(FEATURES), 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((x - self.mean) / self.std))


@dataclass
class Evaluation:
    n_train: int
    n_test: int
    prevalence: float
    auc: float
    sensitivity: float
    specificity: float
    threshold: float


def train(out_dir: Path, n_train: int = 40_000, n_test: int = 10_000, epochs: int = 30, seed: int = 7) -> Evaluation:
    """Train, evaluate on held-out synthetic data, write `1/model.pt` (TorchScript) and `evaluation.json`."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    data = synthetic_vitals(n_train + n_test, rng)
    x = vitals_rows(data)["VITALS"]  # exactly what the worker sends
    y = np.array([urgent_response(v) for v in data], dtype=np.float32)
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    xt = torch.from_numpy(x_train)
    model = RiskModel(xt.mean(0), xt.std(0) + 1e-6)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCELoss()
    yt = torch.from_numpy(y_train).unsqueeze(1)
    for _ in range(epochs):
        perm = torch.randperm(n_train)
        for start in range(0, n_train, 256):
            idx = perm[start : start + 256]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()

    model.eval()
    with torch.no_grad():
        risk = model(torch.from_numpy(x_test)).numpy()
    DETERIORATION_RISK.check_outputs({"RISK": risk})
    p = risk[:, 0]
    threshold = ALERT_THRESHOLD
    pred = p >= threshold
    pos = y_test.astype(bool)
    auc = auc_score(y_test, p)
    if auc is None:
        raise ValueError("the held-out set holds one class only")
    evaluation = Evaluation(
        n_train=n_train,
        n_test=n_test,
        prevalence=float(pos.mean()),
        auc=auc,
        sensitivity=float((pred & pos).sum() / pos.sum()),
        specificity=float((~pred & ~pos).sum() / (~pos).sum()),
        threshold=threshold,
    )
    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(version_dir / "model.pt"))
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(evaluation), indent=2) + "\n")
    return evaluation
