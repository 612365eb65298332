"""The 3D U-Net's shapes and TorchScript export, sliding-window stitching, lesion measurement and growth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.imaging.patches import patch_starts, sliding_window
from services.imaging.postprocess import Candidate, candidates, compare, doubling_time
from training.imaging.network import UNet3D, dice_loss

pytestmark = pytest.mark.unit


def test_unet_keeps_the_patch_shape_and_scripts():
    model = UNet3D((4, 8, 16)).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), y, atol=1e-6)
    target = (x > 0.5).float()
    assert float(dice_loss(torch.full_like(x, 20.0) * (2 * target - 1), target)) < 1e-3


def test_patch_starts_cover_the_axis():
    assert patch_starts(100, 32, 24) == [0, 24, 48, 68]
    assert patch_starts(20, 32, 24) == [0]


def test_sliding_window_stitches_identity():
    volume = np.random.default_rng(0).random((40, 50, 37)).astype(np.float32)
    out = sliding_window(volume, 16, 12, lambda patches: patches)
    assert out.shape == volume.shape
    np.testing.assert_allclose(out, volume, atol=1e-6)


def sphere(shape, centre, radius):
    z, y, x = np.indices(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2).astype(np.float32)


def test_candidates_measure_position_size_and_volume():
    spacing = (2.0, 1.0, 1.0)
    affine = np.array([[0, 0, 1.0, -100], [0, 1.0, 0, -50], [2.0, 0, 0, 10], [0, 0, 0, 1]])  # (z,y,x) -> LPS
    prob = np.zeros((40, 80, 80), dtype=np.float32)
    prob += 0.9 * sphere(prob.shape, (20, 40, 30), 8)  # in voxels; physical radius differs along z (2 mm)
    prob += 0.7 * sphere(prob.shape, (10, 10, 60), 1)  # 7 voxels = 14 mm3
    found = candidates(prob, affine, spacing, threshold=0.5, min_volume_mm3=20)
    assert len(found) == 1
    c = found[0]
    assert c.centre_mm == pytest.approx((30 - 100, 40 - 50, 2 * 20 + 10), abs=1e-4)
    assert c.volume_ml == pytest.approx(int(sphere(prob.shape, (20, 40, 30), 8).sum()) * 2 / 1000)
    assert c.diameter_mm == pytest.approx((6 * c.volume_ml * 1000 / math.pi) ** (1 / 3))
    assert c.confidence == pytest.approx(0.9)


def test_growth_and_doubling_time():
    assert doubling_time(1.0, 2.0, 100) == pytest.approx(100)
    assert doubling_time(2.0, 1.0, 100) is None
    prior = [
        Candidate((0, 0, 0), (0, 0, 0), 1.0, 12.4, 13, 0.9, 500),
        Candidate((50, 0, 0), (0, 0, 0), 0.5, 9, 9, 0.8, 250),
    ]
    current = [
        Candidate((1, 1, 0), (0, 0, 0), 2.0, 15.6, 16, 0.9, 1000),
        Candidate((0, 90, 0), (0, 0, 0), 0.2, 7, 7, 0.6, 100),
    ]
    changes = compare(current, prior, days=90)
    grown, new = changes
    assert grown.prior is prior[0] and grown.volume_change_pct == pytest.approx(100)
    assert grown.doubling_time_days == pytest.approx(90)
    assert new.prior is None and new.doubling_time_days is None
