"""afd_trt.roi_torch (RoIAlign in torch, for feature maps on a GPU) against the C++ op and
torchvision, on the CPU; the same on CUDA under ``needs_cuda``; and the Faster R-CNN pipeline
with it switched on against the C++ path.

The torch version sums in another order (separable row / column weights), so it agrees to
float32 rounding: within 1e-5 absolute on N(0, 1) features (measured ~5e-7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from images import synthetic
from test_ops_roi_align import mixed_rois, tv_roi_align

from afd_trt import ops
from afd_trt.config import FasterRCNNConfig, load_config
from afd_trt.detector import Detector
from afd_trt.face_detection import FasterRCNNFaceDetector
from afd_trt.roi_torch import multilevel_roi_align_torch, roi_levels

F32 = np.float32
ATOL = 1e-5
STRIDES = [4, 8, 16, 32]


def _feats(rng: np.random.Generator, c: int, h: int, w: int) -> list[np.ndarray]:
    return [rng.standard_normal((c, -(-h // s), -(-w // s)), dtype=F32) for s in STRIDES]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (2, True), (0, False), (3, False)])
def test_matches_the_cpp_op(seed: int, sampling_ratio: int, aligned: bool) -> None:
    rng = np.random.default_rng(seed)
    c = [3, 16, 70, 130][seed]
    h, w = int(rng.integers(64, 300)), int(rng.integers(64, 300))
    feats = _feats(rng, c, h, w)
    rois = mixed_rois(rng, w, h, 60)
    want = ops.multilevel_roi_align(feats, rois, STRIDES, 56.0, 7, sampling_ratio, aligned)
    got = multilevel_roi_align_torch(
        [torch.from_numpy(f) for f in feats],
        torch.from_numpy(rois),
        STRIDES,
        56.0,
        7,
        sampling_ratio,
        aligned,
    )
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=ATOL)
    assert np.any(want != 0)


def test_one_level_matches_torchvision() -> None:
    rng = np.random.default_rng(7)
    feat = rng.standard_normal((8, 30, 41), dtype=F32)
    rois = mixed_rois(rng, 41 * 4, 30 * 4, 50)
    got = multilevel_roi_align_torch([torch.from_numpy(feat)], torch.from_numpy(rois), [4], 56.0, 7, 0, True)
    np.testing.assert_allclose(got.numpy(), tv_roi_align(feat, rois, 0.25, 7, 0, True), rtol=0, atol=ATOL)


def test_levels_nan_and_empty() -> None:
    rois = torch.tensor(
        [[0, 0, 50, 50], [0, 0, 120, 120], [0, 0, 500, 500], [0, 0, 5000, 5000], [float("nan"), 0, 1, 1]]
    )
    assert roi_levels(rois, 4, 56.0).tolist() == [0, 1, 3, 3, -1]
    feats = [torch.randn(2, 40, 40), torch.randn(2, 20, 20), torch.randn(2, 10, 10), torch.randn(2, 5, 5)]
    out = multilevel_roi_align_torch(feats, rois, STRIDES, 56.0, 7, 0, True)
    assert torch.all(out[4] == 0)
    assert torch.any(out[0] != 0)
    empty = multilevel_roi_align_torch(feats, torch.zeros(0, 4), STRIDES, 56.0, 7, 0, True)
    assert empty.shape == (0, 2, 7, 7)


def test_bad_arguments() -> None:
    feats = [torch.zeros(2, 8, 8)]
    with pytest.raises(ValueError, match=r"rois\[0\] needs .* samples per bin"):
        multilevel_roi_align_torch(feats, torch.tensor([[0.0, 0, 1e7, 1e7]]), [1], 56.0, 7, 0, True)
    with pytest.raises(ValueError, match="featmap_strides must have 1 entries"):
        multilevel_roi_align_torch(feats, torch.zeros(1, 4), [4, 8], 56.0, 7, 0, True)
    with pytest.raises(ValueError, match=r"rois must have shape \(K, 4\)"):
        multilevel_roi_align_torch(feats, torch.zeros(3, 5), [4], 56.0, 7, 0, True)


@pytest.mark.needs_cuda
def test_on_cuda_matches_the_cpp_op() -> None:
    rng = np.random.default_rng(11)
    feats = _feats(rng, 256, 768, 1344)
    rois = mixed_rois(rng, 1344, 768, 1000)
    want = ops.multilevel_roi_align(feats, rois, STRIDES, 56.0, 7, 0, True)
    got = multilevel_roi_align_torch(
        [torch.from_numpy(f).cuda() for f in feats], torch.from_numpy(rois), STRIDES, 56.0, 7, 0, True
    )
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=ATOL)


def test_faster_rcnn_pipeline_with_roi_align_in_torch(
    seeded_weights: Callable[[int], dict[str, dict[str, Path]]],
) -> None:
    """The Detector's Faster R-CNN path with RoIAlign in torch (what runs on a GPU) finds the
    same faces as with the C++ op: boxes within 1e-3 px, scores within 1e-5."""
    files = seeded_weights(0)
    cfg = load_config("faster-rcnn")
    assert isinstance(cfg, FasterRCNNConfig)
    cfg = dataclasses.replace(
        cfg, input=dataclasses.replace(cfg.input, img_scale=(320, 256)), rpn_nms_pre=300, rpn_max_per_img=150
    )
    det = Detector(
        "faster-rcnn",
        files["faster-rcnn"]["pth"],
        files["hrnetv2"]["pth"],
        device="cpu",
        flip_test=False,
        download=False,
        face_detector_config=cfg,
    )
    assert isinstance(det.face_detector, FasterRCNNFaceDetector)
    assert not det.face_detector.roi_align_on_device  # the CPU default: the C++ op
    images = [synthetic(240, 320, 0), synthetic(300, 180, 1)]
    want = [det(img) for img in images]
    det.face_detector.roi_align_on_device = True
    got = [det(img) for img in images]
    assert sum(map(len, want)) > 0
    for w_faces, g_faces in zip(want, got, strict=True):
        assert len(g_faces) == len(w_faces)
        for w, g in zip(w_faces, g_faces, strict=True):
            np.testing.assert_allclose(g["bbox"][:4], w["bbox"][:4], rtol=0, atol=1e-3)
            np.testing.assert_allclose(g["bbox"][4], w["bbox"][4], rtol=0, atol=1e-5)
