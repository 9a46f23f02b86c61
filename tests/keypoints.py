"""Keypoint comparison between two runs of the landmark network that may differ in their last bits
(another backend, device, batch padding or CUDA graph), on the same face boxes."""

from __future__ import annotations

import numpy as np

from afd_trt.config import HRNetConfig, load_config
from afd_trt.landmarks import boxes_to_center_scale

KPT_PX = 0.05  # the core contract, px


def on_the_heatmap(keypoints: np.ndarray, box: np.ndarray) -> np.ndarray:
    """bool (28,): keypoints (float32 (28, 2+)) inside the span of the face's 64x64 heatmap (plus
    one heatmap pixel) for its box (float32 (4+,)). DARK puts a keypoint outside it only when its
    Newton step is ill-conditioned (a ridge or plateau in the blurred log heatmap, which the seeded
    stand-ins' broad random peaks sometimes have and trained heatmaps do not): such a step divides
    by a near-zero Hessian, so a last-bit difference in the heatmap moves it by a fixed fraction of
    its length, not by a fixed number of pixels."""
    cfg = load_config("hrnetv2")
    assert isinstance(cfg, HRNetConfig)
    w, h = cfg.input_size
    center, scale = boxes_to_center_scale(box[None, :4], w / h, cfg.bbox_padding, cfg.pixel_std)
    half = scale[0] * cfg.pixel_std / 2 * (1 + 1 / cfg.heatmap_size[0])
    return np.asarray((np.abs(keypoints[:, :2] - center[0]) <= half).all(axis=1))


def assert_keypoints_close(got: np.ndarray, want: np.ndarray, box: np.ndarray) -> tuple[int, int]:
    """Keypoints ``got`` within 0.05 px of ``want`` (float32 (28, 3)) where ``want`` lies on the
    face's heatmap; those DARK threw off it within 1e-3 of their distance from the box centre
    (plus 0.05 px). Returns (on the heatmap, off it) counts: callers check the second is rare."""
    inside = on_the_heatmap(want, box)
    np.testing.assert_allclose(got[inside, :2], want[inside, :2], rtol=0, atol=KPT_PX)
    center = (box[:2] + box[2:4]) / 2
    reach = np.abs(want[~inside, :2] - center).max(axis=1, initial=0.0, keepdims=True)
    off = np.abs(got[~inside, :2] - want[~inside, :2])
    assert (off <= 1e-3 * reach + KPT_PX).all(), f"off-heatmap keypoints moved by {off.max()} px"
    return int(inside.sum()), int((~inside).sum())
