"""ops.roi_align / ops.multilevel_roi_align against torchvision.ops.roi_align, the oracle's
SingleRoIExtractor and a numpy reference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from ref_detection import ref_multilevel_roi_align, ref_roi_align, ref_roi_levels

from afd_trt import ops
from afd_trt.config import FasterRCNNConfig, load_config

F32 = np.float32
FRCNN = load_config("faster-rcnn")
assert isinstance(FRCNN, FasterRCNNConfig)
TV_ATOL = 0.0  # vs torchvision: same float32 operations in the same order, bit for bit
REF_ATOL = 1e-5  # vs the numpy reference: its sums over samples are ordered differently


def tv_roi_align(
    feature: np.ndarray, rois: np.ndarray, scale: float, out: int, sr: int, aligned: bool
) -> np.ndarray:
    boxes = torch.from_numpy(np.concatenate([np.zeros((len(rois), 1), F32), rois], 1))
    return torchvision.ops.roi_align(torch.from_numpy(feature[None]), boxes, out, scale, sr, aligned).numpy()


def mixed_rois(rng: np.random.Generator, img_w: float, img_h: float, n: int) -> np.ndarray:
    """float32 (n + 8, 4) RoIs in image pixels: random ones plus partly / fully outside, tiny,
    sub-pixel, huge, degenerate and inverted ones."""
    xy = rng.uniform(-0.1, 1.0, (n, 2)) * [img_w, img_h]
    wh = np.exp(rng.uniform(np.log(2), np.log(max(img_w, img_h)), (n, 2)))
    special = [
        [-30, -20, 0.3 * img_w, 0.4 * img_h],  # partly outside (top-left)
        [0.8 * img_w, 0.7 * img_h, 1.3 * img_w, 1.2 * img_h],  # partly outside (bottom-right)
        [1.2 * img_w, 1.1 * img_h, 1.5 * img_w, 1.6 * img_h],  # fully outside
        [-80, -90, -40, -50],  # fully outside, negative side
        [10.2, 11.7, 10.9, 12.1],  # sub-pixel
        [-img_w, -img_h, 2 * img_w, 2 * img_h],  # huge
        [5, 5, 5, 40],  # zero width
        [30, 30, 20, 10],  # inverted
    ]
    return np.concatenate([np.concatenate([xy, xy + wh], 1), np.array(special)]).astype(F32)


# Channels: fewer than one vectorised block of 64, exactly one, and two blocks plus a remainder.
@pytest.mark.parametrize("c", [6, 64, 160])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("spatial_scale", "sampling_ratio", "aligned"),
    [(0.25, 0, True), (0.125, 2, True), (0.5, 0, False), (1.0, 3, False)],
)
def test_roi_align_matches_torchvision_and_reference(
    c: int, seed: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
    feature = rng.normal(0, 1, (c, h, w)).astype(F32)
    rois = mixed_rois(rng, w / spatial_scale, h / spatial_scale, 40)
    ours = ops.roi_align(feature, rois, spatial_scale, 7, sampling_ratio, aligned)
    assert ours.shape == (len(rois), c, 7, 7)
    assert ours.dtype == np.float32
    expected = tv_roi_align(feature, rois, spatial_scale, 7, sampling_ratio, aligned)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TV_ATOL)
    np.testing.assert_allclose(
        ours, ref_roi_align(feature, rois, spatial_scale, 7, sampling_ratio, aligned), rtol=0, atol=REF_ATOL
    )
    # the special cases are there: some RoIs pool to exactly zero, most do not
    zero = np.all(ours == 0, axis=(1, 2, 3))
    assert 0 < zero.sum() < len(rois) // 2


def test_roi_align_single_pixel_values() -> None:
    # aligned=True, a 1x1 output over a RoI covering exactly pixel (2, 3): the pixel's value
    feature = np.arange(2 * 5 * 6, dtype=F32).reshape(2, 5, 6)
    out = ops.roi_align(feature, np.array([[3, 2, 4, 3]], F32), 1.0, 1, 1, True)
    np.testing.assert_allclose(out[0, :, 0, 0], feature[:, 2, 3])


def fpn_feats(rng: np.random.Generator, pad_hw: tuple[int, int], c: int) -> list[np.ndarray]:
    return [
        rng.normal(0, 1, (c, -(-pad_hw[0] // s), -(-pad_hw[1] // s))).astype(F32)
        for s in FRCNN.roi_featmap_strides
    ]


def oracle_extractor(feats: list[np.ndarray], rois: np.ndarray) -> np.ndarray:
    from anime_face_detector._vendor.mmdet import SingleRoIExtractor

    ext = SingleRoIExtractor(
        output_size=FRCNN.roi_output_size,
        sampling_ratio=FRCNN.roi_sampling_ratio,
        out_channels=feats[0].shape[0],
        featmap_strides=list(FRCNN.roi_featmap_strides),
        finest_scale=int(FRCNN.roi_finest_scale),
    )
    boxes = torch.from_numpy(np.concatenate([np.zeros((len(rois), 1), F32), rois], 1))
    with torch.no_grad():
        return ext([torch.from_numpy(f[None]) for f in feats], boxes).numpy()


def multilevel_kwargs(feats: list[np.ndarray], rois: np.ndarray, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "feats": feats,
        "rois": rois,
        "featmap_strides": FRCNN.roi_featmap_strides,
        "finest_scale": FRCNN.roi_finest_scale,
        "output_size": FRCNN.roi_output_size,
        "sampling_ratio": FRCNN.roi_sampling_ratio,
        "aligned": FRCNN.roi_aligned,
    }
    kw.update(over)
    return kw


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_multilevel_roi_align_matches_oracle_and_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pad_hw = [(256, 320), (320, 224), (416, 416), (192, 288)][seed]
    feats = fpn_feats(rng, pad_hw, 8)
    sides = np.repeat([30.0, 150.0, 300.0, 600.0], 5)  # one group per level
    xy = rng.uniform(-50, 200, (len(sides), 2))
    per_level = np.concatenate([xy, xy + sides[:, None] * rng.uniform(0.7, 1.4, (len(sides), 2))], 1).astype(
        F32
    )
    rois = np.concatenate([mixed_rois(rng, pad_hw[1], pad_hw[0], 100), per_level])
    levels = ref_roi_levels(rois, len(feats), FRCNN.roi_finest_scale)
    assert set(levels[levels >= 0]) == {0, 1, 2, 3}  # every level used
    ours = ops.multilevel_roi_align(**multilevel_kwargs(feats, rois))
    assert ours.shape == (len(rois), 8, 7, 7)
    np.testing.assert_allclose(ours, oracle_extractor(feats, rois), rtol=0, atol=TV_ATOL)
    np.testing.assert_allclose(
        ours, ref_multilevel_roi_align(**multilevel_kwargs(feats, rois)), rtol=0, atol=REF_ATOL
    )


def test_multilevel_roi_align_concurrent_calls_each_get_their_own_maps() -> None:
    """The transposed level maps live in scratch buffers that calls hand back to a pool and later
    calls reuse, larger ones for smaller maps too. Calls from several threads at once (the GIL is
    released), over maps of six sizes, each give what a lone call gives, bit for bit, and the
    reference's values: no call reads another's map or a stale part of a reused buffer."""
    rng = np.random.default_rng(11)
    cases = []
    for k in range(6):
        pad_hw = (96 + 32 * (k % 3), 224 - 32 * k)
        feats = fpn_feats(rng, pad_hw, 24 + 8 * k)
        cases.append(multilevel_kwargs(feats, mixed_rois(rng, pad_hw[1], pad_hw[0], 40)))
    alone = [ops.multilevel_roi_align(**kw) for kw in cases]
    for kw, out in zip(cases, alone, strict=True):
        np.testing.assert_allclose(out, ref_multilevel_roi_align(**kw), rtol=0, atol=REF_ATOL)
    order = [i for _ in range(4) for i in rng.permutation(len(cases))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: ops.multilevel_roi_align(**cases[i]), order))
    for i, out in zip(order, together, strict=True):
        assert np.array_equal(out, alone[i]), i


@pytest.mark.parametrize(
    ("side", "level"),
    [(111.99, 0), (112.0, 1), (223.9, 1), (224.0, 2), (447.9, 2), (448.0, 3), (5000.0, 3), (1.0, 0)],
)
def test_multilevel_level_boundaries(side: float, level: int) -> None:
    # level = floor(log2(sqrt(w h) / 56 + 1e-6)): boundaries at 112, 224, 448 px
    rng = np.random.default_rng(0)
    feats = fpn_feats(rng, (256, 256), 3)
    rois = np.array([[10, 20, 10 + side, 20 + side]], F32)
    assert ref_roi_levels(rois, 4, 56.0)[0] == level
    ours = ops.multilevel_roi_align(**multilevel_kwargs(feats, rois))
    stride = FRCNN.roi_featmap_strides[level]
    np.testing.assert_array_equal(ours, ops.roi_align(feats[level], rois, 1.0 / stride, 7, 0, True))


def test_multilevel_single_level_and_empty() -> None:
    rng = np.random.default_rng(1)
    feat = rng.normal(0, 1, (4, 16, 16)).astype(F32)
    rois = mixed_rois(rng, 64, 64, 10)
    one = ops.multilevel_roi_align(**multilevel_kwargs([feat], rois, featmap_strides=(4,)))
    np.testing.assert_array_equal(one, ops.roi_align(feat, rois, 0.25, 7, 0, True))
    empty = ops.multilevel_roi_align(**multilevel_kwargs([feat], np.zeros((0, 4), F32), featmap_strides=(4,)))
    assert empty.shape == (0, 4, 7, 7)
    assert ops.roi_align(feat, np.zeros((0, 4), F32), 0.25, 7, 0, True).shape == (0, 4, 7, 7)


def test_multilevel_nan_roi_pools_zeros() -> None:
    feats = fpn_feats(np.random.default_rng(2), (64, 64), 2)
    rois = np.array([[np.nan, 0, 10, 10], [0, 0, 30, 30]], F32)
    out = ops.multilevel_roi_align(**multilevel_kwargs(feats, rois))
    assert np.all(out[0] == 0)
    assert np.any(out[1] != 0)


ROI_ERRORS = [
    ({"feature": np.zeros((2, 8, 8), np.float64)}, "feature must have dtype float32"),
    ({"feature": np.zeros((8, 8), F32)}, "feature must be 3-D"),
    ({"feature": np.zeros((2, 0, 8), F32)}, "feature must have a non-empty"),
    ({"rois": np.zeros((3, 5), F32)}, r"rois must have shape \(K, 4\)"),
    ({"rois": np.zeros((4, 3), F32).T}, "rois must be C-contiguous"),
    ({"spatial_scale": 0.0}, "spatial_scale must be finite and > 0"),
    ({"spatial_scale": float("inf")}, "spatial_scale must be finite and > 0"),
    ({"output_size": 0}, "output_size must be >= 1"),
]


@pytest.mark.parametrize(("over", "match"), ROI_ERRORS)
def test_roi_align_input_errors(over: dict[str, Any], match: str) -> None:
    kw: dict[str, Any] = {
        "feature": np.zeros((2, 8, 8), F32),
        "rois": np.zeros((3, 4), F32),
        "spatial_scale": 0.25,
        "output_size": 7,
        "sampling_ratio": 0,
        "aligned": True,
    }
    kw.update(over)
    with pytest.raises(ValueError, match=match):
        ops.roi_align(**kw)


def test_roi_align_rejects_runaway_sampling() -> None:
    with pytest.raises(ValueError, match=r"rois\[0\] needs .* samples per bin"):
        ops.roi_align(np.zeros((1, 8, 8), F32), np.array([[0, 0, 1e7, 1e7]], F32), 1.0, 7, 0, True)


MULTI_ERRORS = [
    ({"feats": np.zeros((4, 2, 8, 8), F32)}, "feats must be a sequence of numpy arrays"),
    ({"feats": []}, "feats must hold at least one"),
    (
        {"feats": [np.zeros((2, 8, 8), F32), np.zeros((3, 4, 4), F32)]},
        r"feats\[1\] must have 2 channels like feats\[0\]",
    ),
    (
        {"feats": [np.zeros((2, 8, 8), F32), np.zeros((2, 4, 4), np.float16)]},
        r"feats\[1\] must have dtype float32",
    ),
    ({"featmap_strides": (4,)}, "featmap_strides must have 2 entries"),
    ({"featmap_strides": (4, 0)}, r"featmap_strides\[1\] must be >= 1"),
    ({"finest_scale": -56.0}, "finest_scale must be finite and > 0"),
    ({"rois": np.zeros(4, F32)}, "rois must be 2-D"),
    ({"output_size": -7}, "output_size must be >= 1"),
]


@pytest.mark.parametrize(("over", "match"), MULTI_ERRORS)
def test_multilevel_roi_align_input_errors(over: dict[str, Any], match: str) -> None:
    kw = multilevel_kwargs(
        [np.zeros((2, 8, 8), F32), np.zeros((2, 4, 4), F32)], np.zeros((3, 4), F32), featmap_strides=(4, 8)
    )
    kw.update(over)
    with pytest.raises(ValueError, match=match):
        ops.multilevel_roi_align(**kw)
