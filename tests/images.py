"""Test images: crops of the shared TADNE grid and generated ones, deterministic per seed."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from paths import TADNE_GRID


@cache
def tadne_grid() -> np.ndarray:
    """The 3072x3072 BGR grid of 36 generated anime portraits (shared test data)."""
    img = cv2.imread(str(TADNE_GRID), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"shared test image missing: {TADNE_GRID}")
    return img


def tadne_crop(x: int, y: int, w: int, h: int, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """A (h, w) crop at (x, y) of the grid, optionally resized to out_size = (w, h)."""
    crop = tadne_grid()[y : y + h, x : x + w]
    if out_size is not None:
        crop = cv2.resize(crop, out_size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients, ellipses and noise: structure for random weights to respond to."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(xx / max(w, 1)) * 255, (yy / max(h, 1)) * 255, ((xx + yy) % 97) * 2.6], axis=2)
    for _ in range(max(3, (h * w) // 60000)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, max(5, w // 5))), int(rng.integers(4, max(5, h // 5))))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
