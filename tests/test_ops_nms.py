"""ops.nms against torchvision.ops.nms, mmcv's batched_nms (the oracle's) and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from ref_detection import ref_batched_nms, ref_nms

from afd_trt import ops

F32 = np.float32


def random_boxes(rng: np.random.Generator, n: int, *, extent: float = 200.0) -> np.ndarray:
    """float32 (n, 4) boxes in clusters so that many pairs overlap around typical thresholds."""
    centres = rng.uniform(0, extent, (max(1, n // 8), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(F32)


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()


def pair_with_iou(iou: float) -> np.ndarray:
    """Two boxes, the second a wider copy of the first: IoU = 100 / width (float64 construction)."""
    return np.array([[0, 0, 100, 100], [0, 0, 100 / iou, 100]], dtype=F32)


def float32_iou(boxes: np.ndarray) -> float:
    """IoU of boxes[0] and boxes[1] computed in float32 like the kernels."""
    a, b = boxes
    w = max(F32(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(F32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision_and_reference(seed: int, iou_threshold: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    boxes = random_boxes(rng, n)
    scores = rng.random(n).astype(F32)
    keep = ops.nms(boxes, scores, iou_threshold)
    assert keep.dtype == np.int64
    expected = torchvision_nms(boxes, scores, iou_threshold)
    assert 0 < len(expected) < n  # the case exercises suppression
    np.testing.assert_array_equal(keep, expected)
    np.testing.assert_array_equal(keep, ref_nms(boxes, scores, iou_threshold))


@pytest.mark.parametrize("iou_threshold", [0.2, 0.45, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("side", ["above", "below"])
def test_nms_iou_just_above_or_below_threshold(iou_threshold: float, side: str) -> None:
    eps = 1e-5 if side == "above" else -1e-5
    boxes = pair_with_iou(iou_threshold + eps)
    iou = float32_iou(boxes)
    assert (iou > iou_threshold) == (side == "above")
    scores = np.array([0.9, 0.8], F32)
    expected = [0] if side == "above" else [0, 1]
    np.testing.assert_array_equal(ops.nms(boxes, scores, iou_threshold), expected)
    np.testing.assert_array_equal(torchvision_nms(boxes, scores, iou_threshold), expected)


def test_nms_iou_equal_to_threshold_is_kept() -> None:
    boxes = np.array([[0, 0, 100, 100], [0, 0, 200, 100]], F32)  # IoU exactly 0.5
    assert float32_iou(boxes) == 0.5
    np.testing.assert_array_equal(ops.nms(boxes, np.array([1, 0.5], F32), 0.5), [0, 1])
    np.testing.assert_array_equal(ops.nms(boxes, np.array([1, 0.5], F32), 0.4999), [0])


@pytest.mark.parametrize("seed", range(3))
def test_nms_tied_scores_keep_input_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    boxes = random_boxes(rng, n)
    scores = rng.integers(0, 4, n).astype(F32)  # many exact ties
    keep = ops.nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(keep, torchvision_nms(boxes, scores, 0.5))
    np.testing.assert_array_equal(keep, ref_nms(boxes, scores, 0.5))
    # among kept boxes of equal score, input order
    for s in np.unique(scores):
        same = keep[scores[keep] == s]
        assert np.all(np.diff(same) > 0)


def test_nms_empty_and_single() -> None:
    empty = ops.nms(np.zeros((0, 4), F32), np.zeros(0, F32), 0.5)
    assert empty.shape == (0,)
    assert empty.dtype == np.int64
    batched_empty = ops.nms(np.zeros((0, 4), F32), np.zeros(0, F32), 0.5, np.zeros(0, np.int64))
    assert batched_empty.shape == (0,)
    np.testing.assert_array_equal(ops.nms(np.array([[1, 2, 3, 4]], F32), np.array([0.1], F32), 0.5), [0])


def test_nms_degenerate_boxes() -> None:
    # zero-area boxes: IoU is 0 or 0/0 = NaN, never above a threshold: all kept, by score
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 0], [0, 0, 0, 10], [0, 0, 10, 10]], F32)
    scores = np.array([0.5, 0.9, 0.3, 0.7, 0.1], F32)
    keep = ops.nms(boxes, scores, 0.0)
    np.testing.assert_array_equal(keep, torchvision_nms(boxes, scores, 0.0))
    np.testing.assert_array_equal(keep, [1, 3, 0, 2, 4])


def test_nms_threshold_zero_suppresses_any_overlap() -> None:
    boxes = np.array([[0, 0, 10, 10], [9, 9, 20, 20], [10, 10, 20, 20], [30, 30, 40, 40]], F32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], F32)
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.0), torchvision_nms(boxes, scores, 0.0))
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.0), [0, 2, 3])  # touching edges: no overlap


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_mmcv(seed: int) -> None:
    from anime_face_detector._vendor.mmcv import batched_nms

    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 500))
    boxes = random_boxes(rng, n, extent=900.0)
    scores = rng.random(n).astype(F32)
    idxs = rng.integers(0, 5, n).astype(np.int64)
    keep = ops.nms(boxes, scores, 0.6, idxs)
    _, expected = batched_nms(
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(idxs),
        {"type": "nms", "iou_threshold": 0.6},
    )
    np.testing.assert_array_equal(keep, expected.numpy())
    np.testing.assert_array_equal(keep, ref_batched_nms(boxes, scores, idxs, 0.6))
    # groups never suppress each other: per group, the result is plain NMS of that group
    for g in np.unique(idxs):
        members = np.flatnonzero(idxs == g)
        per_group = members[ref_nms(boxes[members] + F32(0), scores[members], 0.6)]
        assert set(keep[idxs[keep] == g]) == set(per_group)


def test_batched_nms_separates_identical_boxes_of_different_groups() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 3, F32)
    scores = np.array([0.3, 0.2, 0.1], F32)
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.5), [0])
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.5, np.array([0, 1, 1], np.int64)), [0, 1])


def _good() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((3, 4), F32), np.zeros(3, F32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boxes": np.zeros((3, 4), np.float64)}, "boxes must have dtype float32"),
        ({"boxes": np.zeros((3, 5), F32)}, r"boxes must have shape \(N, 4\)"),
        ({"boxes": np.zeros(12, F32)}, "boxes must be 2-D"),
        ({"boxes": np.zeros((4, 3), F32).T}, "boxes must be C-contiguous"),
        ({"boxes": [[0, 0, 1, 1]] * 3}, "boxes must be a numpy array"),
        ({"scores": np.zeros(4, F32)}, "scores must have shape"),
        ({"scores": np.zeros((3, 1), F32)}, "scores must be 1-D"),
        ({"scores": np.zeros(3, np.float16)}, "scores must have dtype float32"),
        ({"iou_threshold": -0.1}, "iou_threshold must be in"),
        ({"iou_threshold": 1.5}, "iou_threshold must be in"),
        ({"iou_threshold": float("nan")}, "iou_threshold must be in"),
        ({"idxs": np.zeros(3, np.int32)}, "idxs must have dtype int64"),
        ({"idxs": np.zeros(2, np.int64)}, "idxs must have shape"),
        ({"idxs": np.zeros((3, 1), np.int64)}, "idxs must be 1-D"),
    ],
)
def test_nms_input_errors(kwargs: dict[str, object], match: str) -> None:
    boxes, scores = _good()
    args: dict[str, object] = {"boxes": boxes, "scores": scores, "iou_threshold": 0.5, "idxs": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.nms(**args)  # type: ignore[arg-type]
