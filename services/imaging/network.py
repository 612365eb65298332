"""A small 3D U-Net (torch) for lesion segmentation on fixed-size patches, exportable with TorchScript.

Both imaging models use it: lung nodules on CT (HU windowed to 0..1) and stroke lesions on MR (normalised
intensity). The services cut a resampled volume into overlapping cubic patches, Triton batches them (dynamic
batching), and the services stitch the probabilities back (`sliding_window`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet3D(nn.Module):
    """Encoder-decoder with skip connections, three resolutions; input [N, 1, D, H, W] (D, H, W divisible by 4),
    output the lesion probability [N, 1, D, H, W]."""

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.enc1 = _block(1, c1)
        self.enc2 = _block(c1, c2)
        self.bottom = _block(c2, c3)
        self.pool = nn.MaxPool3d(2)
        self.up2 = nn.ConvTranspose3d(c3, c2, 2, stride=2)
        self.dec2 = _block(2 * c2, c2)
        self.up1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _block(2 * c1, c1)
        self.head = nn.Conv3d(c1, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3, 4))
    return (1 - (2 * inter + eps) / (p.sum(dim=(1, 2, 3, 4)) + target.sum(dim=(1, 2, 3, 4)) + eps)).mean()


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis covering [0, size) (the last one flush with the end)."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    volume: np.ndarray, patch: int, stride: int, predict: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Probabilities for a [D, H, W] volume from `predict` over [N, 1, p, p, p] patches (overlaps averaged).
    The volume is zero-padded up to at least one patch per axis; `predict` gets every patch in one call, so a
    Triton client can split it into requests and let the server batch them."""
    pads = [(0, max(0, patch - s)) for s in volume.shape]
    padded = np.pad(volume, pads)
    grid = [(z, y, x) for z in patch_starts(padded.shape[0], patch, stride)
            for y in patch_starts(padded.shape[1], patch, stride)
            for x in patch_starts(padded.shape[2], patch, stride)]  # fmt: skip
    patches = np.stack([padded[z : z + patch, y : y + patch, x : x + patch] for z, y, x in grid])[:, None]
    probs = predict(patches.astype(np.float32))
    total = np.zeros(padded.shape, dtype=np.float32)
    count = np.zeros(padded.shape, dtype=np.float32)
    for (z, y, x), p in zip(grid, probs, strict=True):
        total[z : z + patch, y : y + patch, x : x + patch] += p[0]
        count[z : z + patch, y : y + patch, x : x + patch] += 1
    out = total / np.maximum(count, 1)
    return out[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
