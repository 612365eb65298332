"""Training and evaluation shared by the imaging models: patch sampling, the training loop, TorchScript export,
and lesion-level metrics (sensitivity, false positives per scan, size error)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.common.model_contract import ModelContract
from services.imaging.patches import sliding_window
from services.imaging.postprocess import Candidate, candidates
from training.imaging.network import UNet3D, dice_loss


@dataclass(frozen=True)
class Lesion:
    centre_voxel: tuple[float, float, float]  # (z, y, x) in the sample's grid
    diameter_mm: float
    kind: str = ""


@dataclass
class Sample:
    """One preprocessed scan: intensities 0..1 on an isotropic grid, the lesion mask, and the lesions."""

    volume: np.ndarray  # float32 [z, y, x]
    mask: np.ndarray  # float32 {0, 1}
    lesions: list[Lesion]
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))


def sample_patches(
    samples: Sequence[Sample],
    rng: np.random.Generator,
    n: int,
    patch: int,
    positive_share: float = 0.6,
    negative_keep: Callable[[np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` patches: a share centred (with jitter) on lesions, the rest anywhere `negative_keep` accepts (hard
    negatives: e.g. lung with vessels rather than air outside the body); flips as augmentation."""
    xs, ys = [], []
    for _ in range(n):
        s = samples[int(rng.integers(len(samples)))]
        shape = np.array(s.volume.shape)
        positive = bool(s.lesions) and rng.random() < positive_share
        for _attempt in range(20):
            if positive:
                lesion = s.lesions[int(rng.integers(len(s.lesions)))]
                centre = np.array(lesion.centre_voxel) + rng.integers(-patch // 4, patch // 4 + 1, size=3)
            else:
                centre = rng.integers(0, shape)
            start = np.clip(np.round(centre - patch / 2).astype(int), 0, np.maximum(shape - patch, 0))
            region = tuple(slice(int(a), int(a) + patch) for a in start)
            if positive or negative_keep is None or negative_keep(s.volume[region]):
                break
        x, y = s.volume[region], s.mask[region]
        pad = [(0, patch - d) for d in x.shape]
        x, y = np.pad(x, pad), np.pad(y, pad)
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        xs.append(x)
        ys.append(y)
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32)


@dataclass
class TrainReport:
    steps: int
    seconds: float
    final_loss: float
    losses: list[float]


def train(
    samples: Sequence[Sample],
    *,
    patch: int,
    steps: int,
    batch: int,
    seed: int,
    channels: tuple[int, int, int] = (8, 16, 32),
    lr: float = 3e-3,
    positive_share: float = 0.6,
    negative_keep: Callable[[np.ndarray], bool] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[UNet3D, TrainReport]:
    """Dice + BCE on sampled patches with Adam and cosine decay (CPU-sized: minutes, not hours)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = UNet3D(channels)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = sample_patches(samples, rng, batch, patch, positive_share, negative_keep)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        logits = model.logits(xt)
        loss = dice_loss(logits, yt) + bce(logits, yt)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
    model.eval()
    return model, TrainReport(steps, time.perf_counter() - started, float(np.mean(losses[-20:])), losses[::10])


def predict_volume(
    model: torch.nn.Module,
    volume: np.ndarray,
    patch: int,
    stride: int,
    batch: int = 8,
    keep: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    def run(patches: np.ndarray) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for i in range(0, len(patches), batch):
                outs.append(model(torch.from_numpy(patches[i : i + batch])).numpy())
        return np.concatenate(outs)

    return sliding_window(volume, patch, stride, run, keep)


@dataclass
class LesionMetrics:
    scans: int
    lesions: int
    detected: int
    false_positives: int
    sensitivity: float
    false_positives_per_scan: float
    diameter_abs_error_mm: float  # mean over detected lesions
    diameter_rel_error: float
    by_size: dict[str, dict[str, float]]  # size bucket -> {"lesions", "sensitivity"}


def match(found: Sequence[Candidate], truth: Sequence[Lesion], spacing: Sequence[float]) -> tuple[dict[int, int], int]:
    """Greedy matching of candidates to true lesions: a hit when the candidate centre lies within the lesion's
    radius (at least 4 mm). Returns ({truth index: candidate index}, false positives)."""
    hits: dict[int, int] = {}
    used: set[int] = set()
    for ci, c in enumerate(found):
        best, best_d = None, math.inf
        for ti, t in enumerate(truth):
            if ti in hits:
                continue
            d = math.dist(
                [a * s for a, s in zip(c.centre_voxel, spacing, strict=True)],
                [a * s for a, s in zip(t.centre_voxel, spacing, strict=True)],
            )
            if d <= max(t.diameter_mm / 2, 4.0) and d < best_d:
                best, best_d = ti, d
        if best is not None:
            hits[best] = ci
            used.add(ci)
    return hits, len(found) - len(used)


SIZE_BUCKETS = (("<6 mm", 0.0, 6.0), ("6-10 mm", 6.0, 10.0), (">=10 mm", 10.0, math.inf))


def evaluate(
    predict: Callable[[Sample], np.ndarray],
    samples: Sequence[Sample],
    threshold: float = 0.5,
    min_volume_mm3: float = 8.0,
) -> LesionMetrics:
    total = detected = fps = 0
    errors: list[tuple[float, float]] = []
    per_bucket: dict[str, list[int]] = {name: [0, 0] for name, _, _ in SIZE_BUCKETS}
    for s in samples:
        prob = predict(s)
        found = candidates(prob, s.affine, s.spacing, threshold, min_volume_mm3)
        hits, fp = match(found, s.lesions, s.spacing)
        total += len(s.lesions)
        detected += len(hits)
        fps += fp
        for ti, t in enumerate(s.lesions):
            bucket = next(name for name, lo, hi in SIZE_BUCKETS if lo <= t.diameter_mm < hi)
            per_bucket[bucket][0] += 1
            per_bucket[bucket][1] += ti in hits
            if ti in hits:
                errors.append((found[hits[ti]].diameter_mm, t.diameter_mm))
    return LesionMetrics(
        scans=len(samples),
        lesions=total,
        detected=detected,
        false_positives=fps,
        sensitivity=detected / total if total else math.nan,
        false_positives_per_scan=fps / max(len(samples), 1),
        diameter_abs_error_mm=float(np.mean([abs(a - b) for a, b in errors])) if errors else math.nan,
        diameter_rel_error=float(np.mean([abs(a - b) / b for a, b in errors])) if errors else math.nan,
        by_size={
            name: {"lesions": n, "sensitivity": (k / n if n else math.nan)} for name, (n, k) in per_bucket.items()
        },
    )


OPERATING_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def choose_operating_point(
    probabilities: Sequence[np.ndarray], samples: Sequence[Sample], max_fp_per_scan: float, min_volume_mm3: float
) -> tuple[float, dict[float, tuple[float, float]]]:
    """The threshold with the best sensitivity at no more than `max_fp_per_scan` false positives per scan on a
    validation set (the CAD convention: sensitivity at a stated false-positive rate); the one with the fewest
    false positives when none qualifies. Returns (threshold, {threshold: (sensitivity, fp per scan)})."""
    table: dict[float, tuple[float, float]] = {}
    by_sample = {id(s): p for s, p in zip(samples, probabilities, strict=True)}

    def stored(sample: Sample) -> np.ndarray:
        return by_sample[id(sample)]

    for t in OPERATING_THRESHOLDS:
        m = evaluate(stored, samples, t, min_volume_mm3)
        table[t] = (m.sensitivity, m.false_positives_per_scan)
    allowed = [t for t, (_, fp) in table.items() if fp <= max_fp_per_scan]
    if allowed:
        return max(allowed, key=lambda t: (table[t][0], -table[t][1])), table
    return min(table, key=lambda t: (table[t][1], -table[t][0])), table


def calibrate(model: UNet3D, threshold: float) -> None:
    """Shift the output logit so the chosen operating point reads as probability 0.5 in the exported model."""
    with torch.no_grad():
        head = model.head.bias
        assert head is not None
        head -= math.log(threshold / (1 - threshold))


def export(model: UNet3D, contract: ModelContract, version_dir: Path, metadata: dict[str, object]) -> None:
    """TorchScript with the training metadata inside (`metadata.json`), as the Triton python backend loads it;
    refused unless the model takes and gives what the route's contract says."""
    [spec] = contract.inputs
    patches = np.zeros((2, *spec.dims), dtype=np.float32)
    contract.check_inputs({spec.name: patches})
    scripted = torch.jit.script(model.eval())
    with torch.no_grad():
        contract.check_outputs({contract.outputs[0].name: scripted(torch.from_numpy(patches)).numpy()})
    version_dir.mkdir(parents=True, exist_ok=True)
    scripted.save(str(version_dir / "model.pt"), _extra_files={"metadata.json": json.dumps(metadata)})


def metrics_dict(metrics: LesionMetrics) -> dict[str, object]:
    return asdict(metrics)


def cli(description: str | None, run: Callable[[Path, int], dict[str, object]], out: Path, steps: int) -> None:
    """`python -m training.imaging.<model>`: train, evaluate, export to `--out`, print the evaluation."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--steps", type=int, default=steps)
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.steps), indent=2))
