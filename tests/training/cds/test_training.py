"""A tiny, deterministic training run writes a loadable TorchScript model for Triton."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cds.labs import PANEL
from training.cds import training
from training.cds.diseases import DISEASES

pytestmark = pytest.mark.unit


def _hash_embed(texts: Sequence[str]) -> np.ndarray:
    # The real sentence model is tested on its own; here any deterministic text -> vector map will do.
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=384) for t in texts]
    out = np.stack(rows).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_tiny_training_run_writes_servable_model(tmp_path: Path) -> None:
    kwargs = {
        "n_patients": 150,
        "seed": 3,
        "epochs": 2,
        "cache_dir": tmp_path / "cache",
        "embed_fn": _hash_embed,
        "measure": False,
    }
    evaluation = training.train(tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    training.train(tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    extra = {"labels.json": ""}
    model = torch.jit.load(str(tmp_path / "a" / "1" / "model.pt"), _extra_files=extra).eval()
    labels = json.loads((tmp_path / "a" / "1" / "labels.json").read_text())
    assert labels == json.loads(extra["labels.json"]) == [d.key for d in DISEASES]
    emb = torch.from_numpy(_hash_embed(["a note", "another note"]))
    labs = torch.full((2, len(PANEL)), float("nan"))
    labs[0, 0] = 12.5
    probs = model(emb, labs)
    assert probs.shape == (2, len(labels)) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    other = torch.jit.load(str(tmp_path / "b" / "1" / "model.pt")).eval()
    assert torch.equal(probs, other(emb, labs))  # deterministic
    saved = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert saved["chosen"] in training.VARIANTS and {v["name"] for v in saved["variants"]} == set(training.VARIANTS)
    assert evaluation.patients == 150 and evaluation.train + evaluation.validation + evaluation.test == 150


def test_metrics() -> None:
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    f1 = training.f1_per_class(y, probs.argmax(1), 3)
    assert f1 == pytest.approx([2 * 1 / (2 + 2), 2 * 1 / (2 + 1), 0.0])
    assert training.top_k_accuracy(y, probs, k=2) == 1.0
    kept, held = training.stratified_split(np.repeat([0, 1], [8, 4]), 0.25, seed=0)
    assert len(held) == 3 and len(set(kept) | set(held)) == 12
