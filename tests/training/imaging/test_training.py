"""The imaging training loop learns bright spheres in noise, and the lesion metrics count hits and misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.model_contract import ContractViolation, ModelContract, TensorSpec
from services.imaging.postprocess import Candidate
from training.imaging.training import (
    Lesion,
    Sample,
    calibrate,
    choose_operating_point,
    evaluate,
    export,
    match,
    predict_volume,
    sample_patches,
    train,
)

pytestmark = pytest.mark.unit


def toy(seed: int, n: int = 2) -> Sample:
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    volume = rng.normal(0.3, 0.05, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.float32)
    z, y, x = np.indices(shape)
    lesions = []
    for _ in range(n):
        c = rng.integers(8, 32, size=3)
        r = float(rng.uniform(2.5, 5))
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r**2
        volume[ball] = 0.8
        mask[ball] = 1
        lesions.append(Lesion(tuple(float(v) for v in c), 2 * r * 1.5))
    return Sample(volume, mask, lesions, (1.5, 1.5, 1.5), np.diag([1.5, 1.5, 1.5, 1.0]))


def test_patches_have_the_asked_shape_and_positives():
    x, y = sample_patches([toy(0)], np.random.default_rng(0), 6, 16, positive_share=1.0)
    assert x.shape == y.shape == (6, 1, 16, 16, 16)
    assert (y.reshape(6, -1).max(axis=1) > 0).all()


def test_training_learns_spheres(tmp_path):
    model, report = train(
        [toy(s) for s in range(4)],
        patch=16,
        steps=150,
        batch=4,
        seed=0,
        channels=(4, 8, 8),
        lr=1e-2,
        log=lambda _: None,
    )
    assert report.final_loss < report.losses[0]
    validation, test = [toy(20), toy(21)], [toy(10), toy(11)]
    threshold, _ = choose_operating_point(
        [predict_volume(model, s.volume, 16, 12) for s in validation], validation, 1.0, 8.0
    )
    calibrate(model, threshold)  # the exported model's 0.5 is the chosen operating point
    metrics = evaluate(lambda s: predict_volume(model, s.volume, 16, 12), test)
    assert metrics.sensitivity >= 0.75 and metrics.false_positives_per_scan <= 2.0
    toy_contract = ModelContract(
        "toy",
        (TensorSpec("PATCH", "float32", (1, 16, 16, 16)),),
        (TensorSpec("PROB", "float32", (1, 16, 16, 16)),),
        max_batch_size=4,
    )
    two_channels = ModelContract("toy", toy_contract.inputs, (TensorSpec("PROB", "float32", (2, 16, 16, 16)),), 4)
    with pytest.raises(ContractViolation):  # a model that does not give what the contract says is not exported
        export(model, two_channels, tmp_path / "wrong", {})
    assert not (tmp_path / "wrong").exists()
    export(model, toy_contract, tmp_path / "1", {"trained_on": "toy"})
    extra = {"metadata.json": ""}
    loaded = torch.jit.load(str(tmp_path / "1" / "model.pt"), _extra_files=extra)
    assert b'"toy"' in extra["metadata.json"]
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_match_counts_hits_and_false_positives():
    truth = [Lesion((10, 10, 10), 10.0), Lesion((30, 30, 30), 6.0)]
    found = [
        Candidate((0, 0, 0), (10, 11, 10), 0.5, 10, 10, 0.9, 10),
        Candidate((0, 0, 0), (0, 0, 0), 0.1, 5, 5, 0.6, 3),
    ]
    hits, fps = match(found, truth, (1.0, 1.0, 1.0))
    assert hits == {0: 0} and fps == 1
