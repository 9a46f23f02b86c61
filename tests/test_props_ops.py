"""Property-based tests of the native ops (afd_trt._C) against the numpy references.

Hypothesis draws random but valid inputs: empty and one-element shapes, degenerate and reversed
boxes, tied scores, thresholds exactly at values present in the data, extreme but finite
coordinates; the op must agree with tests/ref_detection.py / tests/ref_landmarks.py. Then invalid
inputs (wrong dtype / ndim / shape, non-contiguous, NaN or inf where the op rejects them, negative
or zero sizes) must raise ValueError or TypeError with a message, never crash.

Runs are deterministic (derandomize=True, no example database): CI sees the same examples every
time. Example counts are set so that the file takes well under a minute on 2 cores.

Where exactness needs it, logits are drawn from values whose float32 ``exp`` numpy (the
references) and libm (the C++ ops) round the same way: numpy's SIMD exp is not correctly rounded
and disagrees with libm by an ulp on ~40% of inputs, which would make a threshold "exactly at a
value in the data" sit at two different values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import ref_landmarks as ref
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ref_detection import (
    ref_batched_nms,
    ref_multilevel_roi_align,
    ref_nms,
    ref_rcnn_postprocess,
    ref_roi_align,
    ref_rpn_proposals,
    ref_yolo_postprocess,
    sigmoid,
)

from afd_trt import ops

F32 = np.float32
BOX_ATOL, BOX_RTOL = 1e-4, 3e-7  # detection boxes: exp/sigmoid of arbitrary floats differ by ulps
ROI_ATOL = 1e-5  # RoIAlign: numpy sums the samples pairwise, the op sequentially


def props(n: int) -> Any:
    """Deterministic hypothesis settings with n examples."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _exp_agrees(x: float) -> bool:
    """numpy's float32 exp of x (vector loop) is the correctly rounded one (which libm's is)."""
    return bool(np.exp(np.full(16, x, F32))[0] == F32(math.exp(float(F32(x)))))


# Logits x whose sigmoid (exp(-x)) rounds alike in numpy and the op; differences d whose exp(-d) does.
SAFE_LOGITS = [float(x) for x in np.arange(-9.0, 9.5, 0.5) if _exp_agrees(-float(x))]
SAFE_DIFFS = [float(d) for d in np.arange(0.0, 12.5, 0.5) if _exp_agrees(-float(d))]
assert len(SAFE_LOGITS) >= 12
assert len(SAFE_DIFFS) >= 8
EXTREME = [-3.0e38, -1.0e30, -1.0e6, 1.0e6, 1.0e30, 3.0e38]


def f32s(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite float32 values in [lo, hi] (bounds rounded to float32)."""
    return st.floats(float(F32(lo)), float(F32(hi)), width=32, allow_nan=False, allow_infinity=False)


finite32 = f32s(-1e4, 1e4)


def f32_arrays(shape: Any, elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(F32, shape, elements=elements)


def assert_dets_close(ours: np.ndarray, expected: np.ndarray) -> None:
    """(K, 5) detections: same count and order; boxes within ulps, scores equal."""
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours[:, :4], expected[:, :4], rtol=BOX_RTOL, atol=BOX_ATOL)
    np.testing.assert_array_equal(ours[:, 4], expected[:, 4])


def assert_rejected(call: Callable[[], object]) -> None:
    """The call raises ValueError or TypeError with a non-empty message."""
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert str(err.value).strip()


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------


@st.composite
def box_sets(draw: st.DrawFn, max_n: int = 24) -> np.ndarray:
    """float32 (N, 4): grid values (ties, degenerate and identical boxes), floats, or extremes;
    ordered (x1 <= x2, y1 <= y2) or not (reversed boxes have negative areas)."""
    n = draw(st.integers(0, max_n))
    kind = draw(st.sampled_from(["grid", "float", "extreme"]))
    elem: st.SearchStrategy[float]
    if kind == "grid":
        elem = st.integers(0, 6).map(float)
    elif kind == "float":
        elem = finite32
    else:
        elem = st.sampled_from([*EXTREME, -1.0, 0.0, 1.0]) | f32s(-3e38, 3e38)
    boxes = draw(f32_arrays((n, 4), elem))
    if draw(st.booleans()):
        lo, hi = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])
        boxes = np.concatenate([lo, hi], axis=1)
    return np.ascontiguousarray(boxes, dtype=F32)


def pairwise_ious(boxes: np.ndarray) -> list[float]:
    """The finite float32 IoUs in [0, 1] between the boxes, as the op computes them."""
    x1, y1, x2, y2 = (boxes[:, j] for j in range(4))
    with np.errstate(all="ignore"):
        area = (x2 - x1) * (y2 - y1)
        w = np.maximum(F32(0), np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]))
        h = np.maximum(F32(0), np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]))
        inter = w * h
        iou = inter / (area[:, None] + area[None] - inter)
    vals = iou[np.isfinite(iou) & (iou >= 0) & (iou <= 1)]
    return sorted({float(v) for v in vals.ravel()})


@st.composite
def nms_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    boxes = draw(box_sets())
    n = boxes.shape[0]
    score_elem = (
        st.sampled_from([0.0, 0.25, 0.5, 1.0]) | f32s(-1e6, 1e6) | st.sampled_from([-math.inf, math.inf])
    )
    scores = draw(f32_arrays((n,), score_elem))
    present = pairwise_ious(boxes)
    thr_choices: list[st.SearchStrategy[float]] = [st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)]
    if present:
        thr_choices.append(st.sampled_from(present))  # exactly at an IoU of the data
    thr = draw(st.one_of(*thr_choices))
    return boxes, scores, thr


@props(300)
@given(nms_cases())
def test_nms_matches_reference(case: tuple[np.ndarray, np.ndarray, float]) -> None:
    boxes, scores, thr = case
    keep = ops.nms(boxes, scores, thr)
    assert keep.dtype == np.int64
    with np.errstate(all="ignore"):
        want = ref_nms(boxes, scores, thr)
    np.testing.assert_array_equal(keep, want)
    event(f"nms: {'suppressed some' if len(keep) < len(boxes) else 'kept all'}")
    event(f"nms: threshold {'at an IoU of the data' if thr in pairwise_ious(boxes) else 'elsewhere'}")


@props(200)
@given(nms_cases(), st.data())
def test_batched_nms_matches_reference(
    case: tuple[np.ndarray, np.ndarray, float], data: st.DataObject
) -> None:
    boxes, scores, thr = case
    idxs = data.draw(hnp.arrays(np.int64, boxes.shape[0], elements=st.integers(-3, 3)))
    keep = ops.nms(boxes, scores, thr, idxs)
    with np.errstate(all="ignore"):
        want = ref_batched_nms(boxes, scores, idxs, thr)
    np.testing.assert_array_equal(keep, want)


# ---------------------------------------------------------------------------------------------
# YOLOv3 / RPN / R-CNN post-processing
# ---------------------------------------------------------------------------------------------


def _present_or_random(draw: st.DrawFn, present: np.ndarray, fixed: list[float]) -> float:
    """A threshold exactly at a value of the data (as a Python float), a fixed one, or random."""
    choices: list[st.SearchStrategy[float]] = [st.sampled_from(fixed), st.floats(0.0, 1.0)]
    vals = sorted({float(v) for v in present.ravel() if np.isfinite(v)})
    if vals:
        choices.append(st.sampled_from(vals))
    return draw(st.one_of(*choices))


@st.composite
def yolo_cases(draw: st.DrawFn) -> dict[str, Any]:
    levels = draw(st.integers(1, 3))
    anchors = draw(st.integers(1, 3))
    strides = draw(st.lists(st.sampled_from([1, 8, 16, 32]), min_size=levels, max_size=levels))
    geom = f32s(-3.0, 3.0) | st.sampled_from([0.0, -30.0, 30.0])  # tx, ty, tw, th
    logit = st.sampled_from(SAFE_LOGITS)
    maps = []
    for _ in range(levels):
        h, w = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        m = draw(f32_arrays((anchors, 6, h, w), geom))
        m[:, 4:] = draw(f32_arrays((anchors, 2, h, w), logit))
        maps.append(np.ascontiguousarray(m.reshape(anchors * 6, h, w)))
    base_sizes = draw(f32_arrays((levels, anchors, 2), f32s(1.0, 120.0)))
    scale_factor = draw(f32_arrays((4,), st.sampled_from([0.5, 1.0, 1.6]) | f32s(0.05, 20.0)))
    obj = np.concatenate([sigmoid(m.reshape(anchors, 6, -1)[:, 4]).ravel() for m in maps])
    cls = np.concatenate([sigmoid(m.reshape(anchors, 6, -1)[:, 5]).ravel() for m in maps])
    return {
        "pred_maps": maps,
        "strides": strides,
        "base_sizes": base_sizes,
        "scale_factor": scale_factor,
        "conf_thr": _present_or_random(draw, obj, [0.0, 0.005]),
        "score_thr": _present_or_random(draw, cls, [0.0, 0.05]),
        "nms_iou": draw(st.sampled_from([0.0, 0.45, 1.0]) | st.floats(0.0, 1.0)),
        "max_per_img": draw(st.integers(1, 12)),
    }


@props(120)
@given(yolo_cases())
def test_yolo_postprocess_matches_reference(kw: dict[str, Any]) -> None:
    with np.errstate(all="ignore"):
        want = ref_yolo_postprocess(**kw)
    event(f"yolo: {min(len(want), 2)}{'+' if len(want) >= 2 else ''} detections")
    assert_dets_close(ops.yolo_postprocess(**kw), want)


RPN_CODER = {"target_means": [0.0, 0.0, 0.0, 0.0], "target_stds": [1.0, 1.0, 1.0, 1.0]}


@st.composite
def rpn_cases(draw: st.DrawFn) -> dict[str, Any]:
    levels = draw(st.integers(1, 3))
    ratios = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=2))
    scales = draw(st.lists(st.sampled_from([1.0, 2.0, 8.0]), min_size=1, max_size=2))
    a = len(ratios) * len(scales)
    strides = draw(st.lists(st.sampled_from([1, 4, 8, 16]), min_size=levels, max_size=levels))
    delta = st.sampled_from([0.0, 0.5, -0.5]) | f32s(-2.0, 2.0) | st.sampled_from([-50.0, 50.0])
    cls_scores, bbox_preds, counts = [], [], []
    for level in range(levels):
        lo = 1 if level == 0 else 0  # empty maps on the other levels only
        h, w = draw(st.integers(lo, 4)), draw(st.integers(lo, 4))
        cls_scores.append(draw(f32_arrays((a, h, w), st.sampled_from(SAFE_LOGITS))))
        bbox_preds.append(draw(f32_arrays((a * 4, h, w), delta)))
        counts.append(a * h * w)
    nms_pre = draw(
        st.integers(1, max(counts) + 2) | st.sampled_from([max(1, max(counts) - 1), max(1, max(counts))])
    )
    stds = draw(st.sampled_from([[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]]))
    return {
        "cls_scores": cls_scores,
        "bbox_preds": bbox_preds,
        "strides": strides,
        "ratios": ratios,
        "scales": scales,
        "img_shape": (draw(st.integers(1, 48)), draw(st.integers(1, 48))),
        "nms_pre": nms_pre,
        "nms_iou": draw(st.sampled_from([0.0, 0.7, 1.0]) | st.floats(0.0, 1.0)),
        "max_per_img": draw(st.integers(1, 20)),
        "min_bbox_size": draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 4.0, 8.0])),
        "target_means": [0.0, 0.0, 0.0, 0.0],
        "target_stds": stds,
    }


@props(120)
@given(rpn_cases())
def test_rpn_proposals_matches_reference(kw: dict[str, Any]) -> None:
    with np.errstate(all="ignore"):
        want = ref_rpn_proposals(**kw)
    event(f"rpn: {min(len(want), 2)}{'+' if len(want) >= 2 else ''} proposals")
    assert_dets_close(ops.rpn_proposals(**kw), want)


@st.composite
def rcnn_cases(draw: st.DrawFn) -> dict[str, Any]:
    rois = draw(box_sets(max_n=16))
    k = rois.shape[0]
    # Logit pairs (face, background) whose softmax rounds alike: the difference's exp is safe.
    l0 = draw(hnp.arrays(F32, k, elements=st.integers(-6, 6).map(float)))
    d = draw(hnp.arrays(F32, k, elements=st.sampled_from(SAFE_DIFFS)))
    sign = draw(hnp.arrays(F32, k, elements=st.sampled_from([-1.0, 1.0])))
    cls_score = np.ascontiguousarray(np.stack([l0, l0 + sign * d], axis=1), dtype=F32)
    bbox_pred = draw(f32_arrays((k, 4), st.sampled_from([0.0, 0.1, -0.1]) | f32s(-2.0, 2.0)))
    e = np.exp(cls_score - cls_score.max(axis=1, keepdims=True))
    probs = (e * (F32(1) / e.sum(axis=1, keepdims=True)))[:, 0]
    return {
        "rois": rois,
        "cls_score": cls_score,
        "bbox_pred": bbox_pred,
        "img_shape": (draw(st.integers(1, 64)), draw(st.integers(1, 64))),
        "scale_factor": draw(f32_arrays((4,), st.sampled_from([1.0, 2.0]) | f32s(0.05, 20.0))),
        "target_means": [0.0, 0.0, 0.0, 0.0],
        "target_stds": draw(st.sampled_from([[0.1, 0.1, 0.2, 0.2], [1.0, 1.0, 1.0, 1.0]])),
        "score_thr": _present_or_random(draw, probs, [0.0, 0.05, 0.5]),
        "nms_iou": draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)),
        "max_per_img": draw(st.integers(1, 20)),
    }


@props(150)
@given(rcnn_cases())
def test_rcnn_postprocess_matches_reference(kw: dict[str, Any]) -> None:
    with np.errstate(all="ignore"):
        want = ref_rcnn_postprocess(**kw)
    event(f"rcnn: {min(len(want), 2)}{'+' if len(want) >= 2 else ''} detections")
    assert_dets_close(ops.rcnn_postprocess(**kw), want)


# ---------------------------------------------------------------------------------------------
# RoIAlign
# ---------------------------------------------------------------------------------------------


@st.composite
def roi_cases(draw: st.DrawFn) -> dict[str, Any]:
    c, h, w = draw(st.integers(0, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    feature = draw(f32_arrays((c, h, w), f32s(-1.0, 1.0) | st.sampled_from([0.0, 1.0])))
    scale = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    sampling_ratio = draw(st.integers(-1, 3))
    k = draw(st.integers(0, 5))
    if sampling_ratio > 0 and draw(st.booleans()):
        # Far-away coordinates: only with a fixed grid (an adaptive one would be astronomically
        # large), and within +-1e12 (the reference casts sample points to int64 before masking).
        coord = st.sampled_from([-1e12, -1e6, -1.0, 0.0, 1e6, 1e12]) | f32s(-1e12, 1e12)
    else:
        # Grid points on and around the map (incl. exactly -1, 0, H, W in feature pixels), off-grid values.
        coord = (st.integers(-8, 28).map(lambda v: v / 4.0) | f32s(-4.0, 8.0)).map(lambda v: v / scale)
    rois = draw(f32_arrays((k, 4), coord))
    return {
        "feature": feature,
        "rois": rois,
        "spatial_scale": scale,
        "output_size": draw(st.integers(1, 4)),
        "sampling_ratio": sampling_ratio,
        "aligned": draw(st.booleans()),
    }


@props(150)
@given(roi_cases())
def test_roi_align_matches_reference(kw: dict[str, Any]) -> None:
    ours = ops.roi_align(**kw)
    with np.errstate(all="ignore"):
        want = ref_roi_align(**kw)
    assert ours.shape == want.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=ROI_ATOL)


@props(40)
@given(st.sampled_from([*EXTREME, math.inf, -math.inf, math.nan]), st.integers(0, 3), st.integers(1, 3),
       st.booleans(), st.integers(1, 3))  # fmt: skip
def test_roi_align_far_away_rois_pool_zeros(
    far: float, which: int, sampling_ratio: int, aligned: bool, c: int
) -> None:
    """RoIs with a corner at an extreme or non-finite coordinate (the others far away on the same
    side) sample nothing on the map, or a NaN grid: zeros."""
    roi = np.array([[far if j == which else 1e6 * np.sign(far or 1.0) for j in range(4)]], F32)
    feature = np.ones((c, 4, 4), F32)
    out = ops.roi_align(feature, roi, 1.0, 2, sampling_ratio, aligned)
    assert out.shape == (1, c, 2, 2)
    np.testing.assert_array_equal(out, np.zeros_like(out))


@st.composite
def multilevel_cases(draw: st.DrawFn) -> dict[str, Any]:
    levels, c = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    strides = [4, 8, 16][:levels]
    feats = [
        draw(f32_arrays((c, draw(st.integers(1, 5)), draw(st.integers(1, 5))), f32s(-1.0, 1.0)))
        for _ in range(levels)
    ]
    k = draw(st.integers(0, 6))
    rois = draw(f32_arrays((k, 4), st.integers(-4, 80).map(float) | f32s(-8.0, 80.0)))
    return {
        "feats": feats,
        "rois": rois,
        "featmap_strides": strides,
        "finest_scale": draw(st.sampled_from([1.0, 4.0, 8.0, 56.0])),
        "output_size": draw(st.integers(1, 3)),
        "sampling_ratio": draw(st.integers(0, 2)),
        "aligned": draw(st.booleans()),
    }


@props(100)
@given(multilevel_cases())
def test_multilevel_roi_align_matches_reference(kw: dict[str, Any]) -> None:
    ours = ops.multilevel_roi_align(**kw)
    with np.errstate(all="ignore"):
        want = ref_multilevel_roi_align(**kw)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=ROI_ATOL)


# ---------------------------------------------------------------------------------------------
# Face-crop warp
# ---------------------------------------------------------------------------------------------


@st.composite
def affines(draw: st.DrawFn) -> np.ndarray:
    """Non-singular float64 (2, 3) forward maps: identity, mirrors, rotations, tiny to large scales,
    translations far off the image."""
    kind = draw(st.sampled_from(["identity", "mirror", "similar", "general"]))
    if kind == "identity":
        m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    elif kind == "mirror":
        m = np.array([[-1.0, 0.0, draw(st.integers(-4, 20))], [0.0, 1.0, draw(st.integers(-4, 20))]])
    elif kind == "similar":
        s = draw(st.sampled_from([0.05, 0.5, 1.0, 2.0, 4.0, 20.0]) | st.floats(0.05, 20.0))
        a = draw(st.sampled_from([0.0, 90.0, 180.0, 45.0]) | st.floats(-180.0, 180.0))
        t = st.floats(-20.0, 40.0) | st.sampled_from([-1e6, 1e6, 0.5, -0.5])
        ca, sa = s * math.cos(math.radians(a)), s * math.sin(math.radians(a))
        m = np.array([[ca, -sa, draw(t)], [sa, ca, draw(t)]])
    else:
        e = st.floats(-3.0, 3.0)
        m = np.array([[draw(e) for _ in range(3)] for _ in range(2)]) * [[1, 1, 10], [1, 1, 10]]
        if abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) < 1e-3:
            m[0, 0] += 1.0
            m[1, 1] += 1.0
            if abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) < 1e-3:
                m[:, :2] = np.eye(2)
    return m.astype(np.float64)


@st.composite
def warp_cases(draw: st.DrawFn) -> dict[str, Any]:
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    image = draw(hnp.arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255) | st.sampled_from([0, 255])))
    n = draw(st.integers(0, 3))
    mats = np.ascontiguousarray(np.stack([draw(affines()) for _ in range(n)]) if n else np.zeros((0, 2, 3)))
    out_size = (draw(st.sampled_from([1, 15, 16, 17, 33]) | st.integers(1, 20)), draw(st.integers(1, 12)))
    return {
        "image": image,
        "matrices": mats,
        "out_size": out_size,
        "mode": draw(st.sampled_from(["opencv5", "opencv4"])),
    }


@props(100)
@given(warp_cases(), st.integers(0, 3))
def test_warp_crops_u8_matches_reference(kw: dict[str, Any], threads: int) -> None:
    got = ops.warp_crops_u8(**kw, threads=threads)
    w, h = kw["out_size"]
    assert got.shape == (len(kw["matrices"]), h, w, 3)
    assert got.dtype == np.uint8
    warp = ref.warp_opencv5 if kw["mode"] == "opencv5" else ref.warp_opencv4
    for i, m in enumerate(kw["matrices"]):
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(got[i], warp(kw["image"], m, kw["out_size"]), err_msg=f"face {i}")


@props(40)
@given(warp_cases(), st.lists(f32s(-2.0, 2.0), min_size=3, max_size=3),
       st.lists(st.sampled_from([0.229, 1.0, -0.5]) | f32s(0.01, 4.0), min_size=3, max_size=3))  # fmt: skip
def test_warp_crops_normalises_the_u8_crops(kw: dict[str, Any], mean: list[float], std: list[float]) -> None:
    u8 = ops.warp_crops_u8(**kw)
    got = ops.warp_crops(**kw, mean=mean, std=std)
    rgb = u8[..., ::-1].transpose(0, 3, 1, 2).astype(F32)
    m32, s32 = np.asarray(mean, F32)[None, :, None, None], np.asarray(std, F32)[None, :, None, None]
    np.testing.assert_array_equal(got, (rgb / F32(255) - m32) / s32)


# ---------------------------------------------------------------------------------------------
# Heatmaps: flip merge and decoding
# ---------------------------------------------------------------------------------------------


@st.composite
def heatmap_arrays(draw: st.DrawFn, n: int, k: int, h: int, w: int) -> np.ndarray:
    """float32 (N, K, H, W): smooth-ish values, plateaus of a few levels (ties in the argmax),
    all non-positive maps, or extreme finite values."""
    kind = draw(st.sampled_from(["float", "plateau", "negative", "extreme"]))
    elem: st.SearchStrategy[float]
    if kind == "float":
        elem = f32s(-0.1, 1.0)
    elif kind == "plateau":
        elem = st.sampled_from([0.0, 0.25, 0.5, 1.0])
    elif kind == "negative":
        elem = f32s(-2.0, 0.0)
    else:
        elem = st.sampled_from([-3.0e38, 0.0, 1e-30, 1.0, 3.0e38]) | f32s(-3e38, 3e38)
    return draw(f32_arrays((n, k, h, w), elem))


@st.composite
def flip_pairs(draw: st.DrawFn, k: int) -> list[tuple[int, int]]:
    """Pairs in [0, K), repeats and self-pairs included (later pairs win)."""
    idx = st.integers(0, k - 1)
    return draw(st.lists(st.tuples(idx, idx), max_size=5))


@props(150)
@given(st.data())
def test_merge_flip_matches_reference(data: st.DataObject) -> None:
    n, k, h, w = (data.draw(st.integers(lo, hi)) for lo, hi in ((0, 3), (1, 5), (1, 6), (1, 6)))
    hm = data.draw(heatmap_arrays(n, k, h, w))
    fl = data.draw(heatmap_arrays(n, k, h, w))
    pairs = data.draw(flip_pairs(k))
    shift = data.draw(st.booleans())
    got = ops.merge_flip(hm, fl, pairs, shift)
    with np.errstate(all="ignore"):
        want = ref.merge_flip(hm, fl, pairs, shift)
    np.testing.assert_array_equal(got, want)


@st.composite
def decode_cases(draw: st.DrawFn) -> dict[str, Any]:
    n, k = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return {
        "heatmaps": draw(heatmap_arrays(n, k, h, w)),
        "centers": draw(f32_arrays((n, 2), f32s(-1e3, 1e3))),
        "box_sizes": draw(f32_arrays((n, 2), f32s(0.5, 1e3) | st.sampled_from([200.0, 1.0]))),
        "mode": draw(st.sampled_from(["dark", "quarter", "none"])),
        "blur_kernel": draw(st.sampled_from([3, 5, 7, 9, 11, 13])),
    }


@props(200)
@given(decode_cases(), st.integers(0, 3))
def test_decode_heatmaps_matches_reference(kw: dict[str, Any], threads: int) -> None:
    got = ops.decode_heatmaps(**kw, threads=threads)
    with np.errstate(all="ignore"):
        want = ref.decode(kw["heatmaps"], kw["centers"], kw["box_sizes"], kw["mode"], kw["blur_kernel"])
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@props(60)
@given(decode_cases(), st.data())
def test_decode_with_flip_is_decode_of_merged(kw: dict[str, Any], data: st.DataObject) -> None:
    hm = kw["heatmaps"]
    flipped = data.draw(heatmap_arrays(*hm.shape))
    pairs = data.draw(flip_pairs(hm.shape[1]))
    shift = data.draw(st.booleans())
    got = ops.decode_heatmaps(**kw, flipped=flipped, flip_pairs=pairs, shift=shift)
    with np.errstate(all="ignore"):
        merged = ref.merge_flip(hm, flipped, pairs, shift)
        want = ref.decode(merged, kw["centers"], kw["box_sizes"], kw["mode"], kw["blur_kernel"])
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Invalid inputs: ValueError / TypeError with a message, never a crash
# ---------------------------------------------------------------------------------------------


def _bad_arrays(a: np.ndarray, last_fixed: bool = True) -> list[object]:
    """Wrong versions of a valid array: dtype, ndim, shape (last axis one short where its length
    is fixed), layout, not an array."""
    out: list[object] = [
        a.astype(np.float64) if a.dtype != np.float64 else a.astype(np.float32),
        a.astype(np.int32),
        a.astype(np.float16),
        a[None],
        a.reshape(-1)[:0] if a.ndim > 1 else a.reshape(1, -1),
        a.tolist(),
        None,
        "array",
    ]
    if last_fixed and a.ndim >= 1 and a.shape[-1] > 1:
        out.append(np.ascontiguousarray(a[..., :-1]))  # last axis one short
    if a.ndim >= 2 and a.shape[0] >= 1 and a.shape[1] > 1:
        out.append(a[:, ::-1])  # not C-contiguous
    return out


def _nan_like(a: np.ndarray, value: float) -> np.ndarray:
    b = a.copy()
    b.reshape(-1)[0] = value
    return b


def _check_invalid(call: Callable[..., object], good: dict[str, Any], arg: str, value: object) -> None:
    kw = dict(good)
    kw[arg] = value
    assert_rejected(lambda: call(**kw))


def _valid_nms() -> dict[str, Any]:
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [10, 10, 12, 12]], F32)
    return {"boxes": boxes, "scores": np.array([0.9, 0.8, 0.7], F32), "iou_threshold": 0.5,
            "idxs": np.array([0, 0, 1], np.int64)}  # fmt: skip


NONFINITE = [math.nan, math.inf, -math.inf]


@props(60)
@given(st.data())
def test_nms_rejects_invalid_inputs(data: st.DataObject) -> None:
    good = _valid_nms()
    arg = data.draw(st.sampled_from(["boxes", "scores", "idxs", "iou_threshold"]))
    if arg == "iou_threshold":
        value: object = data.draw(st.sampled_from([-0.1, 1.5, *NONFINITE, "0.5", None]))
    else:
        arr = good[arg]
        bad = [v for v in _bad_arrays(arr) if not (arg == "idxs" and v is None)]
        if arg == "idxs":
            bad.append(arr.astype(np.int32))
        value = data.draw(st.sampled_from(bad))
    _check_invalid(ops.nms, good, arg, value)


def _valid_yolo() -> dict[str, Any]:
    return {
        "pred_maps": [np.zeros((6, 2, 2), F32), np.zeros((6, 3, 3), F32)],
        "strides": [32, 16],
        "base_sizes": np.full((2, 1, 2), 10.0, F32),
        "scale_factor": np.ones(4, F32),
        "conf_thr": 0.005,
        "score_thr": 0.05,
        "nms_iou": 0.45,
        "max_per_img": 10,
    }


def _valid_rpn() -> dict[str, Any]:
    return {
        "cls_scores": [np.zeros((1, 2, 2), F32)],
        "bbox_preds": [np.zeros((4, 2, 2), F32)],
        "strides": [4],
        "ratios": [1.0],
        "scales": [8.0],
        "img_shape": (16, 16),
        "nms_pre": 10,
        "nms_iou": 0.7,
        "max_per_img": 10,
        "min_bbox_size": 0.0,
        **RPN_CODER,
    }


def _valid_rcnn() -> dict[str, Any]:
    return {
        "rois": np.array([[0, 0, 4, 4], [1, 1, 5, 5]], F32),
        "cls_score": np.zeros((2, 2), F32),
        "bbox_pred": np.zeros((2, 4), F32),
        "img_shape": (16, 16),
        "scale_factor": np.ones(4, F32),
        **RPN_CODER,
        "score_thr": 0.05,
        "nms_iou": 0.5,
        "max_per_img": 10,
    }


# Per op: argument -> invalid values (arrays get _bad_arrays on top).
DETECTION_INVALID: dict[
    str, tuple[Callable[..., object], Callable[[], dict[str, Any]], dict[str, list[object]]]
] = {
    "yolo": (
        ops.yolo_postprocess,
        _valid_yolo,
        {
            "pred_maps": [
                [],
                np.zeros((6, 2, 2), F32),
                [np.zeros((7, 2, 2), F32)] * 2,
                [np.zeros((12, 2, 2), F32)] * 2,
                [np.zeros((6, 2), F32)] * 2,
                [np.zeros((6, 2, 2), np.float64)] * 2,
                "maps",
                None,
            ],
            "strides": [[32], [0, 16], [-8, 16], [32, 16, 8], ["a", "b"], None],
            "base_sizes": [
                np.full((1, 1, 2), 10.0, F32),
                np.full((2, 0, 2), 10.0, F32),
                np.full((2, 1, 3), 10.0, F32),
                np.full((2, 1, 2), np.nan, F32),
                np.zeros((2, 1, 2), F32),
                np.full((2, 1, 2), -10.0, F32),
                np.full((2, 1, 2), np.inf, F32),
            ],
            "scale_factor": [
                np.zeros(4, F32),
                -np.ones(4, F32),
                np.full(4, np.nan, F32),
                np.full(4, np.inf, F32),
                np.ones(3, F32),
            ],
            "conf_thr": [-1.0, *NONFINITE],
            "score_thr": [-0.5, *NONFINITE],
            "nms_iou": [-0.1, 1.1, math.nan],
            "max_per_img": [0, -1, 2**70, 1.5],
        },
    ),
    "rpn": (
        ops.rpn_proposals,
        _valid_rpn,
        {
            "cls_scores": [[], [np.zeros((2, 2, 2), F32)], [np.zeros((1, 2), F32)], np.zeros((1, 2, 2), F32)],
            "bbox_preds": [
                [],
                [np.zeros((4, 3, 2), F32)],
                [np.zeros((3, 2, 2), F32)],
                [np.zeros((4, 2, 2), F32)] * 2,
            ],
            "strides": [[], [0], [-4], [4, 8]],
            "ratios": [[], [0.0], [-1.0], [math.nan], [math.inf], [1.0, 2.0]],
            "scales": [[], [0.0], [math.nan]],
            "img_shape": [(0, 16), (16, -1), (16,), (1, 2, 3)],
            "nms_pre": [0, -5],
            "nms_iou": [-1.0, 2.0, math.nan],
            "max_per_img": [0, -3],
            "min_bbox_size": NONFINITE,
            "target_means": [[0.0] * 3, [math.nan, 0, 0, 0]],
            "target_stds": [[1.0] * 5, [0.0, 1, 1, 1], [-1.0, 1, 1, 1], [math.inf, 1, 1, 1]],
        },
    ),
    "rcnn": (
        ops.rcnn_postprocess,
        _valid_rcnn,
        {
            "cls_score": [np.zeros((2, 3), F32), np.zeros((3, 2), F32)],
            "bbox_pred": [np.zeros((2, 8), F32), np.zeros((1, 4), F32)],
            "img_shape": [(0, 0), (-16, 16)],
            "scale_factor": [np.zeros(4, F32), np.full(4, np.nan, F32)],
            "target_stds": [[0.0, 1, 1, 1], [math.nan, 1, 1, 1]],
            "score_thr": [-0.1, *NONFINITE],
            "nms_iou": [1.5, math.nan],
            "max_per_img": [0, -1],
        },
    ),
}


@props(150)
@given(st.sampled_from(sorted(DETECTION_INVALID)), st.data())
def test_detection_post_rejects_invalid_inputs(op_name: str, data: st.DataObject) -> None:
    call, valid, table = DETECTION_INVALID[op_name]
    good = valid()
    arg = data.draw(
        st.sampled_from(sorted({*table, *(k for k, v in good.items() if isinstance(v, np.ndarray))}))
    )
    bad = list(table.get(arg, []))
    if isinstance(good[arg], np.ndarray):
        bad += _bad_arrays(good[arg])
    _check_invalid(call, good, arg, data.draw(st.sampled_from(bad)))


def _valid_roi() -> dict[str, Any]:
    return {"feature": np.zeros((2, 4, 4), F32), "rois": np.array([[0, 0, 2, 2]], F32), "spatial_scale": 1.0,
            "output_size": 2, "sampling_ratio": 0, "aligned": True}  # fmt: skip


@props(80)
@given(st.data())
def test_roi_align_rejects_invalid_inputs(data: st.DataObject) -> None:
    good = _valid_roi()
    table: dict[str, list[object]] = {
        "feature": [
            *_bad_arrays(good["feature"], last_fixed=False),
            np.zeros((2, 0, 4), F32),
            np.zeros((2, 4, 0), F32),
        ],
        "rois": [*_bad_arrays(good["rois"]), np.zeros((1, 5), F32)],
        "spatial_scale": [0.0, -1.0, *NONFINITE],
        "output_size": [0, -1, -(2**40), 1025, 2**40, 2**70],
        "sampling_ratio": [1025, 2**40, 2**70],
    }
    arg = data.draw(st.sampled_from(sorted(table)))
    _check_invalid(ops.roi_align, good, arg, data.draw(st.sampled_from(table[arg])))


@props(40)
@given(st.sampled_from([(0.0, 0), (0.0, 2**40)]), st.sampled_from([3e38, 1e30, 1e12, math.inf]))
def test_roi_align_runaway_sampling_is_an_error(args: tuple[float, int], extent: float) -> None:
    """A huge RoI with an adaptive (or huge) grid is refused with ValueError, not a giant allocation."""
    _, sampling_ratio = args
    rois = np.array([[0.0, 0.0, extent, extent]], F32)
    kw = {**_valid_roi(), "rois": rois, "sampling_ratio": sampling_ratio}
    assert_rejected(lambda: ops.roi_align(**kw))


@props(40)
@given(st.data())
def test_multilevel_roi_align_rejects_invalid_inputs(data: st.DataObject) -> None:
    feats = [np.zeros((2, 4, 4), F32), np.zeros((2, 2, 2), F32)]
    good = {"feats": feats, "rois": np.array([[0, 0, 8, 8]], F32), "featmap_strides": [4, 8], "finest_scale": 56.0,
            "output_size": 2, "sampling_ratio": 0, "aligned": True}  # fmt: skip
    table: dict[str, list[object]] = {
        "feats": [[], feats[0], [feats[0], np.zeros((3, 2, 2), F32)], [feats[0], np.zeros((2, 0, 2), F32)],
                  [feats[0].astype(np.float64), feats[1]]],
        "featmap_strides": [[4], [0, 8], [-4, 8]],
        "finest_scale": [0.0, -56.0, *NONFINITE],
        "rois": _bad_arrays(good["rois"]),
        "output_size": [0, -7, 2**40],
    }  # fmt: skip
    arg = data.draw(st.sampled_from(sorted(table)))
    _check_invalid(ops.multilevel_roi_align, good, arg, data.draw(st.sampled_from(table[arg])))


@props(80)
@given(st.data(), st.booleans())
def test_warp_rejects_invalid_inputs(data: st.DataObject, normalised: bool) -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    mats = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    good: dict[str, Any] = {
        "image": image,
        "matrices": mats,
        "out_size": (8, 8),
        "mode": "opencv5",
        "threads": 0,
    }
    if normalised:
        good |= {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    table: dict[str, list[object]] = {
        "image": [*_bad_arrays(image), np.zeros((0, 5, 3), np.uint8), np.zeros((4, 5, 4), np.uint8),
                  np.zeros((4, 5), np.uint8)],
        "matrices": [*_bad_arrays(mats), np.zeros((1, 2, 3)), np.full((1, 2, 3), np.nan), np.full((1, 2, 3), np.inf),
                     np.array([[[1.0, 2, 0], [2, 4, 0]]]), np.array([[[1e-200, 0, 0], [0, 1e-200, 0]]])],
        "out_size": [(0, 8), (8, -1), (-8, -8), (40000, 8), (8,), (8, 8, 8), ("a", 8)],
        "mode": ["opencv3", "", None],
        "threads": [-1, 10**6, 2**40],
    }  # fmt: skip
    if normalised:
        table |= {
            "mean": [[0.5, 0.5], [math.nan, 0.5, 0.5], [math.inf] * 3, "abc"],
            "std": [[0.0, 1.0, 1.0], [math.nan] * 3, [1.0] * 4],
        }
    arg = data.draw(st.sampled_from(sorted(table)))
    call = ops.warp_crops if normalised else ops.warp_crops_u8
    _check_invalid(call, good, arg, data.draw(st.sampled_from(table[arg])))


@props(100)
@given(st.data(), st.booleans())
def test_heatmap_ops_reject_invalid_inputs(data: st.DataObject, decode: bool) -> None:
    hm = np.zeros((2, 3, 6, 6), F32)
    pairs = [(0, 1)]
    table: dict[str, list[object]] = {
        "heatmaps": [*_bad_arrays(hm), np.zeros((2, 0, 6, 6), F32), np.zeros((2, 3, 0, 6), F32),
                     np.zeros((2, 3, 6, 0), F32)],
        "flipped": [*(v for v in _bad_arrays(hm) if v is not None), np.zeros((2, 3, 6, 5), F32)],
        "flip_pairs": [[(0, 3)], [(-1, 0)], [(0, 1, 2)], [[0.5, 1.0]], np.zeros((1, 2), np.float32), "01"],
    }  # fmt: skip
    good: dict[str, Any] = {"heatmaps": hm, "flipped": hm.copy(), "flip_pairs": pairs}
    if decode:
        good |= {"centers": np.zeros((2, 2), F32), "box_sizes": np.ones((2, 2), F32), "mode": "dark",
                 "blur_kernel": 11, "threads": 0}  # fmt: skip
        table |= {
            "centers": _bad_arrays(good["centers"]),
            "box_sizes": _bad_arrays(good["box_sizes"]),
            "mode": ["unbiased", "", None],
            "blur_kernel": [0, 1, 2, 4, -11, 2**31 - 1, 2**40],
            "threads": [-1, 10**6, 2**40],
        }
    arg = data.draw(st.sampled_from(sorted(table)))
    call = ops.decode_heatmaps if decode else ops.merge_flip
    _check_invalid(call, good, arg, data.draw(st.sampled_from(table[arg])))


def test_decode_pairs_without_flipped_is_an_error() -> None:
    hm = np.zeros((1, 2, 5, 5), F32)
    assert_rejected(
        lambda: ops.decode_heatmaps(hm, np.zeros((1, 2), F32), np.ones((1, 2), F32), flip_pairs=[(0, 1)])
    )


def test_safe_logits_cover_ties_and_both_signs() -> None:
    """The exactness sets used above hold values on both sides of 0, so thresholds and ties are exercised."""
    assert min(SAFE_LOGITS) < -2 < 2 < max(SAFE_LOGITS)
    assert 0.0 in SAFE_DIFFS
    assert sigmoid(np.array(SAFE_LOGITS, F32)).min() < 0.1
