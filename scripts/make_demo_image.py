"""Write the demo input: the shared TADNE grid resized to 1280x720, or a generated image."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

out = Path(sys.argv[1])
grid = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tadne_grid_3072.jpg"
img = cv2.imread(str(grid), cv2.IMREAD_COLOR) if grid.is_file() else None
if img is not None:
    img = cv2.resize(img[512:2240], (1280, 720), interpolation=cv2.INTER_AREA)
else:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:720, 0:1280]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    for _ in range(12):
        c = (int(rng.integers(0, 1280)), int(rng.integers(0, 720)))
        cv2.circle(img, c, int(rng.integers(20, 120)), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
cv2.imwrite(str(out), img)
print(f"demo image: {out} ({img.shape[1]}x{img.shape[0]})")
