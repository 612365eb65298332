"""Cutting a volume into overlapping cubic patches for the model and stitching its predictions back (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis covering [0, size) (the last one flush with the end)."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


@dataclass(frozen=True)
class Tiles:
    """A volume cut into cubic patches: where each patch starts in the (padded) volume, and the patches."""

    shape: tuple[int, int, int]  # the original volume's
    padded: tuple[int, int, int]
    patch: int
    origins: list[tuple[int, int, int]]
    patches: np.ndarray  # float32 [N, 1, p, p, p]


def tile(volume: np.ndarray, patch: int, stride: int, keep: Callable[[np.ndarray], bool] | None = None) -> Tiles:
    """Overlapping cubes covering the volume (zero-padded to at least one patch per axis); those `keep` rejects
    (e.g. no lung in them) are left out and will read as probability 0."""
    pads = [(0, max(0, patch - s)) for s in volume.shape]
    padded = np.pad(volume, pads)
    grid = [
        (z, y, x)
        for z in patch_starts(padded.shape[0], patch, stride)
        for y in patch_starts(padded.shape[1], patch, stride)
        for x in patch_starts(padded.shape[2], patch, stride)
    ]
    cubes = [padded[z : z + patch, y : y + patch, x : x + patch] for z, y, x in grid]
    if keep is not None:
        grid, cubes = [g for g, c in zip(grid, cubes, strict=True) if keep(c)], [c for c in cubes if keep(c)]
    array = np.stack(cubes)[:, None].astype(np.float32) if cubes else np.zeros((0, 1, patch, patch, patch), np.float32)
    shape3 = (volume.shape[0], volume.shape[1], volume.shape[2])
    padded3 = (padded.shape[0], padded.shape[1], padded.shape[2])
    return Tiles(shape3, padded3, patch, grid, array)


def stitch(tiles: Tiles, probs: np.ndarray) -> np.ndarray:
    """Per-voxel probabilities from the patches' predictions (overlaps averaged), cropped to the volume."""
    total = np.zeros(tiles.padded, dtype=np.float32)
    count = np.zeros(tiles.padded, dtype=np.float32)
    p = tiles.patch
    for (z, y, x), prob in zip(tiles.origins, probs, strict=True):
        total[z : z + p, y : y + p, x : x + p] += prob[0]
        count[z : z + p, y : y + p, x : x + p] += 1
    out = total / np.maximum(count, 1)
    return out[: tiles.shape[0], : tiles.shape[1], : tiles.shape[2]]


def sliding_window(
    volume: np.ndarray,
    patch: int,
    stride: int,
    predict: Callable[[np.ndarray], np.ndarray],
    keep: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """`tile`, `predict` over all patches in one call ([N, 1, p, p, p] -> same), `stitch`."""
    tiles = tile(volume, patch, stride, keep)
    if not tiles.origins:
        return np.zeros(tiles.shape, dtype=np.float32)
    return stitch(tiles, predict(tiles.patches))
