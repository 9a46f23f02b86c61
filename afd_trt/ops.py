"""Typed wrappers over the native ops in ``afd_trt._C``.

Every function takes and returns numpy arrays, states shapes, dtypes and coordinate
conventions, and validates in C++ (a ``ValueError`` naming the bad argument and value).
Boxes are ``(x1, y1, x2, y2)`` in pixels, float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from . import _C

# ---------------------------------------------------------------------------------------------
# Detection ops: NMS, YOLOv3 / RPN / R-CNN post-processing, RoIAlign.
# ---------------------------------------------------------------------------------------------


def nms(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    iou_threshold: float,
    idxs: NDArray[np.int64] | None = None,
) -> NDArray[np.int64]:
    """Greedy non-maximum suppression with ``torchvision.ops.nms`` semantics.

    Args:
        boxes: float32 (N, 4) as (x1, y1, x2, y2); areas are (x2 - x1) * (y2 - y1), no +1.
        scores: float32 (N,).
        iou_threshold: in [0, 1]; a box is dropped when its float32 IoU with an already kept,
            higher-scoring box is > iou_threshold.
        idxs: optional int64 (N,) group ids (mmcv ``batched_nms``): boxes of different groups
            never suppress each other. Implemented like mmcv, by shifting all four coordinates by
            ``float32(idx) * (boxes.max() + 1)`` before NMS, so rounding matches upstream.

    Returns:
        int64 (K,) indices into ``boxes``, by decreasing score; equal scores keep input order
        (torchvision's CPU kernel sorts stably too).
    """
    keep: NDArray[np.int64] = _C.nms(boxes, scores, iou_threshold, idxs)
    return keep


def yolo_postprocess(
    pred_maps: Sequence[NDArray[np.float32]],
    strides: Sequence[int],
    base_sizes: NDArray[np.float32],
    scale_factor: NDArray[np.float32],
    conf_thr: float,
    score_thr: float,
    nms_iou: float,
    max_per_img: int,
) -> NDArray[np.float32]:
    """YOLOv3 head post-processing for ONE image (mmdet ``YOLOV3Head.get_bboxes``, rescale=True).

    Args:
        pred_maps: per level, float32 (A * 6, H_l, W_l) raw head output of one image, channel
            ``a * 6 + attr`` with attr = (tx, ty, tw, th, objectness, class logit); levels in head
            order (strides 32, 16, 8 for our config). Only one class is supported.
        strides: per level, the stride in input pixels.
        base_sizes: float32 (L, A, 2) anchor (w, h) in input pixels per level and anchor.
        scale_factor: float32 (4,) (w_scale, h_scale, w_scale, h_scale) of the resize; boxes are
            divided by it before NMS, i.e. results are in original-image pixels.
        conf_thr: keep objectness >= conf_thr (0 disables the filter, like upstream).
        score_thr: keep class probability > score_thr (before multiplying by objectness).
        nms_iou: IoU threshold of the NMS, in [0, 1].
        max_per_img: keep at most this many boxes (>= 1).

    Returns:
        float32 (K, 5): (x1, y1, x2, y2, score) with score = class prob * objectness, by
        decreasing score.
    """
    out: NDArray[np.float32] = _C.yolo_postprocess(
        pred_maps, strides, base_sizes, scale_factor, conf_thr, score_thr, nms_iou, max_per_img
    )
    return out


def rpn_proposals(
    cls_scores: Sequence[NDArray[np.float32]],
    bbox_preds: Sequence[NDArray[np.float32]],
    strides: Sequence[int],
    ratios: Sequence[float],
    scales: Sequence[float],
    img_shape: tuple[int, int],
    nms_pre: int,
    nms_iou: float,
    max_per_img: int,
    min_bbox_size: float,
    target_means: Sequence[float],
    target_stds: Sequence[float],
) -> NDArray[np.float32]:
    """RPN proposals for ONE image (mmdet ``RPNHead._get_bboxes_single`` + ``_bbox_post_process``).

    Anchors are mmdet ``AnchorGenerator``'s (base size = stride, scale-major, centre offset 0),
    flattened in (y, x, anchor) order; per level the ``nms_pre`` best sigmoid scores are kept
    (stable sort: torch's CPU sort is unstable and may order exactly equal scores differently),
    deltas are decoded with ``DeltaXYWHBBoxCoder`` (wh ratio clip 16/1000, clipped to img_shape),
    boxes with width or height <= min_bbox_size dropped, then NMS per level (mmcv batched_nms).

    Args:
        cls_scores: per level, float32 (A, H_l, W_l) objectness logits of one image.
        bbox_preds: per level, float32 (A * 4, H_l, W_l) deltas, channel ``a * 4 + (dx, dy, dw, dh)``.
        strides: per level anchor stride (= base anchor size) in input pixels.
        ratios: anchor h/w ratios; scales: anchor scales; A = len(ratios) * len(scales),
            anchor index ``ratio_index * len(scales) + scale_index``.
        img_shape: (height, width) of the resized, unpadded image; boxes are clipped to it.
        nms_pre: per-level top-k before NMS (>= 1).
        nms_iou: NMS IoU threshold in [0, 1].
        max_per_img: keep at most this many proposals (>= 1).
        min_bbox_size: drop boxes with w or h <= this; negative disables the filter (upstream).
        target_means, target_stds: 4 delta de-normalisation constants each.

    Returns:
        float32 (K, 5): (x1, y1, x2, y2, sigmoid score) in resized-image pixels, by decreasing score.
    """
    out: NDArray[np.float32] = _C.rpn_proposals(
        cls_scores, bbox_preds, strides, ratios, scales, img_shape,
        nms_pre, nms_iou, max_per_img, min_bbox_size, target_means, target_stds,
    )  # fmt: skip
    return out


def rcnn_postprocess(
    rois: NDArray[np.float32],
    cls_score: NDArray[np.float32],
    bbox_pred: NDArray[np.float32],
    img_shape: tuple[int, int],
    scale_factor: NDArray[np.float32],
    target_means: Sequence[float],
    target_stds: Sequence[float],
    score_thr: float,
    nms_iou: float,
    max_per_img: int,
) -> NDArray[np.float32]:
    """Faster R-CNN box-head post-processing for ONE image (mmdet ``BBoxHead.get_bboxes``).

    Softmax over (face, background), decode the deltas of each RoI (``DeltaXYWHBBoxCoder``,
    clipped to img_shape), divide by scale_factor, keep face probability > score_thr, NMS, keep
    the first max_per_img. Only one class is supported.

    Args:
        rois: float32 (K, 4) proposals (x1, y1, x2, y2) in resized-image pixels.
        cls_score: float32 (K, 2) logits (face, background).
        bbox_pred: float32 (K, 4) deltas (dx, dy, dw, dh).
        img_shape: (height, width) of the resized, unpadded image.
        scale_factor: float32 (4,) (w_scale, h_scale, w_scale, h_scale) of the resize.
        target_means, target_stds: 4 delta de-normalisation constants each.
        score_thr: keep probability > score_thr (>= 0).
        nms_iou: NMS IoU threshold in [0, 1].
        max_per_img: keep at most this many boxes (>= 1).

    Returns:
        float32 (M, 5): (x1, y1, x2, y2, probability) in original-image pixels, by decreasing score.
    """
    out: NDArray[np.float32] = _C.rcnn_postprocess(
        rois, cls_score, bbox_pred, img_shape, scale_factor, target_means, target_stds,
        score_thr, nms_iou, max_per_img,
    )  # fmt: skip
    return out


def roi_align(
    feature: NDArray[np.float32],
    rois: NDArray[np.float32],
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> NDArray[np.float32]:
    """``torchvision.ops.roi_align`` on one image.

    Args:
        feature: float32 (C, H, W).
        rois: float32 (K, 4) as (x1, y1, x2, y2) in input pixels (multiplied by spatial_scale).
        spatial_scale: feature pixels per input pixel (1 / stride), > 0.
        output_size: pooled height = width (>= 1).
        sampling_ratio: samples per bin along each axis; <= 0 adaptive, ceil(roi size / output_size).
        aligned: shift by -0.5 pixel (pixel-centre model) and allow RoIs smaller than 1 pixel.

    Returns:
        float32 (K, C, output_size, output_size).
    """
    out: NDArray[np.float32] = _C.roi_align(feature, rois, spatial_scale, output_size, sampling_ratio, aligned)
    return out


def multilevel_roi_align(
    feats: Sequence[NDArray[np.float32]],
    rois: NDArray[np.float32],
    featmap_strides: Sequence[int],
    finest_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> NDArray[np.float32]:
    """mmdet ``SingleRoIExtractor`` on one image: RoIAlign from the FPN level of each RoI.

    The level of a RoI is ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` (float32, w and h
    without +1) clamped to [0, L - 1]; it is then pooled with :func:`roi_align` semantics at
    spatial scale ``1 / featmap_strides[level]``.

    Args:
        feats: per level, float32 (C, H_l, W_l), the same C on every level.
        rois: float32 (K, 4) as (x1, y1, x2, y2) in input pixels.
        featmap_strides: per level stride in input pixels.
        finest_scale: RoI scale of level 0 (56 in mmdet).
        output_size, sampling_ratio, aligned: as for :func:`roi_align`.

    Returns:
        float32 (K, C, output_size, output_size).
    """
    out: NDArray[np.float32] = _C.multilevel_roi_align(
        feats, rois, featmap_strides, finest_scale, output_size, sampling_ratio, aligned
    )
    return out


# ---------------------------------------------------------------------------------------------
# Landmark ops: face-crop warp, heatmap flip merge and decoding.
# ---------------------------------------------------------------------------------------------


