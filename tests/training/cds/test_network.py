"""Fused classifier: missing labs, focal loss numerics, int8 quantisation, explanations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from services.cds.labs import LAB_INDEX, PANEL
from training.cds.explain import explain, sentences
from training.cds.network import CdsMultimodal, focal_loss, lab_statistics

pytestmark = pytest.mark.unit
N_LABS, N_CLASSES = len(PANEL), 6


def _model(seed: int = 0) -> CdsMultimodal:
    torch.manual_seed(seed)
    labs = np.abs(np.random.default_rng(seed).normal(5, 2, size=(50, N_LABS))).astype(np.float32) + 0.1
    mean, std = lab_statistics(labs, [lab.log for lab in PANEL])
    return CdsMultimodal(mean, std, [lab.log for lab in PANEL], N_CLASSES, hidden=32).eval()


def _inputs(batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(batch, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labs = np.abs(rng.normal(5, 2, size=(batch, N_LABS))).astype(np.float32) + 0.1
    labs[:, LAB_INDEX["ceruloplasmin"]] = np.nan
    return torch.from_numpy(emb), torch.from_numpy(labs)


def test_missing_labs_become_zero_scores_and_indicators() -> None:
    model = _model()
    emb, labs = _inputs()
    z, missing = model.standardise(labs)
    i = LAB_INDEX["ceruloplasmin"]
    assert torch.all(z[:, i] == 0) and torch.all(missing[:, i] == 1) and missing.sum() == len(labs)
    probs = torch.jit.script(model)(emb, labs)
    assert probs.shape == (4, N_CLASSES) and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)


def test_focal_loss_numerics() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    p = torch.softmax(logits, 1)[torch.arange(2), target]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert torch.allclose(focal_loss(logits, target, gamma=2.0), expected)
    assert focal_loss(logits, target, 2.0) < F.cross_entropy(logits, target)  # easy examples down-weighted
    extreme = torch.tensor([[100.0, -100.0, 0.0]])
    assert math.isfinite(float(focal_loss(extreme, torch.tensor([1]))))
    assert float(focal_loss(extreme, torch.tensor([0]))) == 0
    alpha = torch.tensor([2.0, 1.0, 1.0])
    assert torch.allclose(focal_loss(logits[:1], target[:1], alpha=alpha), 2 * focal_loss(logits[:1], target[:1]))


def test_int8_quantised_model_still_predicts() -> None:
    model = _model()
    emb, labs = _inputs(batch=64)
    int8 = torch.jit.script(torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8))
    with torch.no_grad():
        p32, p8 = model(emb, labs), int8(emb, labs)
    assert p8.shape == p32.shape and torch.allclose(p8.sum(1), torch.ones(64), atol=1e-4)
    assert (p8 - p32).abs().max() < 0.05


def test_explain_returns_signed_contributions_that_add_up() -> None:
    model = torch.jit.script(_model())
    emb, labs = _inputs(batch=1)
    labels = [f"class{i}" for i in range(N_CLASSES)]
    result = explain(model, emb[0].numpy(), labs[0].numpy(), labels, top_k=N_LABS, n_steps=64)
    assert result.label in labels and 0 < result.probability < 1
    assert len(result.labs) == N_LABS - 1 and "ceruloplasmin" not in {c.feature for c in result.labs}
    signs = {np.sign(c.contribution) for c in result.labs}
    assert signs >= {1.0, -1.0}
    total = sum(c.contribution for c in result.labs)
    assert total == pytest.approx(result.probability - result.labs_baseline_probability, abs=2e-3)
    assert [abs(c.contribution) for c in result.labs] == sorted(
        (abs(c.contribution) for c in result.labs), reverse=True
    )


def test_explain_occludes_note_sentences() -> None:
    model = torch.jit.script(_model())
    _, labs = _inputs(batch=1)
    note = "54-year-old woman presenting with fever. Also reports cough. Denies rash."

    def fake_embed(texts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(len(t)).normal(size=384) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    result = explain(
        model, fake_embed([note])[0], labs[0].numpy(), [str(i) for i in range(N_CLASSES)], note=note, embed=fake_embed
    )
    assert sentences(note) == ["54-year-old woman presenting with fever.", "Also reports cough.", "Denies rash."]
    assert {c.value for c in result.sentences} == set(sentences(note))
    assert all(isinstance(c.contribution, float) for c in result.sentences)
