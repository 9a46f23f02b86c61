"""Straightforward numpy references for the detection ops of ``afd_trt._C``.

Written from the upstream semantics (torchvision NMS / RoIAlign, mmdet YOLOv3 / RPN / R-CNN
post-processing), vectorised with numpy where that is the plain way to say it, float32 throughout
(numpy keeps float32 when combined with Python scalars). They are slow and meant for tests only.
Boxes are (x1, y1, x2, y2) float32 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

F32 = np.float32
WH_RATIO_CLIP_LOG = F32(abs(np.log(16 / 1000)))


def sigmoid(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """float32 logistic function, (any shape) -> same shape."""
    with np.errstate(over="ignore"):
        return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def ref_nms(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], iou_threshold: float
) -> NDArray[np.int64]:
    """Greedy NMS: boxes float32 (N, 4), scores float32 (N,) -> kept int64 (K,) by decreasing score.

    Stable descending sort; IoU in float32 (areas without +1) compared with the threshold as double.
    """
    n = boxes.shape[0]
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, j] for j in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(F32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(F32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.astype(np.float64) > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def ref_batched_nms(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], idxs: NDArray[np.int64], iou_threshold: float
) -> NDArray[np.int64]:
    """mmcv batched_nms: boxes shifted by float32(idx) * (max coordinate + 1), then ref_nms."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = idxs.astype(F32) * (boxes.max() + F32(1))
    return ref_nms(boxes + offsets[:, None], scores, iou_threshold)


def _dets(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], keep: NDArray[np.int64]
) -> NDArray[np.float32]:
    return np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(F32).reshape(-1, 5)


def ref_yolo_postprocess(
    pred_maps: Sequence[NDArray[np.float32]],
    strides: Sequence[int],
    base_sizes: NDArray[np.float32],
    scale_factor: NDArray[np.float32],
    conf_thr: float,
    score_thr: float,
    nms_iou: float,
    max_per_img: int,
) -> NDArray[np.float32]:
    """YOLOv3 post-processing of one image; see ``afd_trt.ops.yolo_postprocess`` for the contract."""
    num_anchors = base_sizes.shape[1]
    all_boxes, all_scores = [], []
    for pred, stride, sizes in zip(pred_maps, strides, base_sizes, strict=True):
        _, h, w = pred.shape
        p = pred.reshape(num_anchors, 6, h, w).transpose(2, 3, 0, 1).reshape(-1, 6)  # (y, x, a) rows
        centre = stride / 2.0
        base = np.stack(
            [
                centre - 0.5 * sizes[:, 0],
                centre - 0.5 * sizes[:, 1],
                centre + 0.5 * sizes[:, 0],
                centre + 0.5 * sizes[:, 1],
            ],
            axis=1,
        ).astype(F32)  # (A, 4), from float64 like torch.Tensor of Python floats
        sx = np.arange(w, dtype=F32) * F32(stride)
        sy = np.arange(h, dtype=F32) * F32(stride)
        shifts = np.stack(
            np.broadcast_arrays(sx[None, :], sy[:, None], sx[None, :], sy[:, None]), axis=-1
        )  # (H, W, 4)
        anchors = (shifts[:, :, None, :] + base[None, None]).reshape(-1, 4)
        st = F32(stride)
        cx = (anchors[:, 0] + anchors[:, 2]) * F32(0.5) + (sigmoid(p[:, 0]) - F32(0.5)) * st
        cy = (anchors[:, 1] + anchors[:, 3]) * F32(0.5) + (sigmoid(p[:, 1]) - F32(0.5)) * st
        with np.errstate(over="ignore"):
            hw = (anchors[:, 2] - anchors[:, 0]) * F32(0.5) * np.exp(p[:, 2])
            hh = (anchors[:, 3] - anchors[:, 1]) * F32(0.5) * np.exp(p[:, 3])
        all_boxes.append(np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1))
        obj, cls = sigmoid(p[:, 4]), sigmoid(p[:, 5])
        all_scores.append(np.stack([obj, cls], axis=1))
    boxes = np.concatenate(all_boxes) / scale_factor
    obj, cls = np.concatenate(all_scores).T
    mask = cls > F32(score_thr)
    if conf_thr > 0:
        mask &= obj >= F32(conf_thr)
    boxes, scores = boxes[mask], (cls * obj)[mask]
    keep = ref_batched_nms(boxes, scores, np.zeros(len(scores), np.int64), nms_iou)[:max_per_img]
    return _dets(boxes, scores, keep)


def ref_delta2bbox(
    anchors: NDArray[np.float32],
    deltas: NDArray[np.float32],
    means: Sequence[float],
    stds: Sequence[float],
    img_shape: tuple[int, int],
) -> NDArray[np.float32]:
    """mmdet delta2bbox: anchors/deltas float32 (N, 4) -> boxes float32 (N, 4) clipped to (h, w)."""
    d = deltas * np.asarray(stds, F32) + np.asarray(means, F32)
    pxy = (anchors[:, :2] + anchors[:, 2:]) * F32(0.5)
    pwh = anchors[:, 2:] - anchors[:, :2]
    dxy = pwh * d[:, :2]
    dwh = np.clip(d[:, 2:], -WH_RATIO_CLIP_LOG, WH_RATIO_CLIP_LOG)
    gxy = pxy + dxy
    gwh = pwh * np.exp(dwh)
    boxes = np.concatenate([gxy - gwh * F32(0.5), gxy + gwh * F32(0.5)], axis=1)
    h, w = img_shape
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], F32(0), F32(w))
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], F32(0), F32(h))
    return boxes.astype(F32)


def ref_rpn_anchors(
    stride: int, ratios: Sequence[float], scales: Sequence[float], h: int, w: int
) -> NDArray[np.float32]:
    """mmdet AnchorGenerator grid of one level, float32 (H * W * A, 4) in (y, x, anchor) order."""
    h_ratios = np.sqrt(np.asarray(ratios, F32))
    w_ratios = F32(1) / h_ratios
    sc = np.asarray(scales, F32)
    ws = (F32(stride) * w_ratios[:, None] * sc[None, :]).ravel()
    hs = (F32(stride) * h_ratios[:, None] * sc[None, :]).ravel()
    base = np.stack([-(F32(0.5) * ws), -(F32(0.5) * hs), F32(0.5) * ws, F32(0.5) * hs], axis=1)
    sx = np.arange(w, dtype=F32) * F32(stride)
    sy = np.arange(h, dtype=F32) * F32(stride)
    shifts = np.stack(
        np.broadcast_arrays(sx[None, :], sy[:, None], sx[None, :], sy[:, None]), axis=-1
    ).reshape(-1, 4)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


def ref_rpn_proposals(
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
    """RPN proposals of one image; see ``afd_trt.ops.rpn_proposals`` for the contract."""
    boxes_l, scores_l, ids_l = [], [], []
    for level, (cls, reg, stride) in enumerate(zip(cls_scores, bbox_preds, strides, strict=True)):
        _, h, w = cls.shape
        scores = sigmoid(cls.transpose(1, 2, 0).reshape(-1))
        deltas = reg.transpose(1, 2, 0).reshape(-1, 4)
        anchors = ref_rpn_anchors(stride, ratios, scales, h, w)
        if nms_pre < scores.shape[0]:
            top = np.argsort(-scores, kind="stable")[:nms_pre]
            scores, deltas, anchors = scores[top], deltas[top], anchors[top]
        boxes_l.append(ref_delta2bbox(anchors, deltas, target_means, target_stds, img_shape))
        scores_l.append(scores)
        ids_l.append(np.full(scores.shape[0], level, np.int64))
    boxes, scores, ids = np.concatenate(boxes_l), np.concatenate(scores_l), np.concatenate(ids_l)
    if min_bbox_size >= 0:
        m = F32(min_bbox_size)
        valid = ((boxes[:, 2] - boxes[:, 0]) > m) & ((boxes[:, 3] - boxes[:, 1]) > m)
        boxes, scores, ids = boxes[valid], scores[valid], ids[valid]
    keep = ref_batched_nms(boxes, scores, ids, nms_iou)[:max_per_img]
    return _dets(boxes, scores, keep)


def ref_rcnn_postprocess(
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
    """Faster R-CNN box-head post-processing of one image; see ``afd_trt.ops.rcnn_postprocess``."""
    e = np.exp(cls_score - cls_score.max(axis=1, keepdims=True))
    probs = e * (F32(1) / e.sum(axis=1, keepdims=True))
    boxes = ref_delta2bbox(rois, bbox_pred, target_means, target_stds, img_shape) / scale_factor
    scores = probs[:, 0]
    valid = scores > F32(score_thr)
    boxes, scores = boxes[valid], scores[valid]
    keep = ref_batched_nms(boxes, scores, np.zeros(len(scores), np.int64), nms_iou)[:max_per_img]
    return _dets(boxes, scores, keep)


def ref_roi_align(
    feature: NDArray[np.float32],
    rois: NDArray[np.float32],
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> NDArray[np.float32]:
    """torchvision roi_align on feature float32 (C, H, W), rois float32 (K, 4) -> (K, C, out, out)."""
    c, height, width = feature.shape
    out = np.zeros((rois.shape[0], c, output_size, output_size), F32)
    scale, offset, n = F32(spatial_scale), F32(0.5 if aligned else 0.0), F32(output_size)
    for k, roi in enumerate(rois):
        x1, y1, x2, y2 = (v * scale - offset for v in roi)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_w, bin_h = roi_w / n, roi_h / n
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / n))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / n))
        if gh <= 0 or gw <= 0:
            continue
        cells = np.arange(output_size, dtype=F32)
        ys = y1 + cells[:, None] * bin_h + (np.arange(gh, dtype=F32) + F32(0.5))[None, :] * bin_h / F32(gh)
        xs = x1 + cells[:, None] * bin_w + (np.arange(gw, dtype=F32) + F32(0.5))[None, :] * bin_w / F32(gw)
        y = ys.reshape(output_size, gh, 1, 1)
        x = xs.reshape(1, 1, output_size, gw)
        y, x = np.broadcast_arrays(y, x)
        inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
        y, x = np.maximum(y, F32(0)), np.maximum(x, F32(0))
        y0, x0 = y.astype(np.int64), x.astype(np.int64)
        top_y, top_x = y0 >= height - 1, x0 >= width - 1
        y0, x0 = np.where(top_y, height - 1, y0), np.where(top_x, width - 1, x0)
        y, x = np.where(top_y, F32(height - 1), y), np.where(top_x, F32(width - 1), x)
        y1i, x1i = np.where(top_y, y0, y0 + 1), np.where(top_x, x0, x0 + 1)
        ly, lx = y - y0.astype(F32), x - x0.astype(F32)
        hy, hx = F32(1) - ly, F32(1) - lx
        val = (
            (hy * hx) * feature[:, y0, x0]
            + (hy * lx) * feature[:, y0, x1i]
            + (ly * hx) * feature[:, y1i, x0]
            + (ly * lx) * feature[:, y1i, x1i]
        )
        val = np.where(inside, val, F32(0))  # (C, out, gh, out, gw)
        out[k] = val.sum(axis=(2, 4), dtype=F32) / F32(gh * gw)
    return out


def ref_roi_levels(rois: NDArray[np.float32], num_levels: int, finest_scale: float) -> NDArray[np.int64]:
    """mmdet map_roi_levels: float32 (K, 4) -> int64 (K,) in [0, num_levels - 1] (-1 for NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 2] - rois[:, 0]))
        lvl = np.floor(np.log2(scale / F32(finest_scale) + F32(1e-6)))
    lvl = np.clip(lvl, 0, num_levels - 1)
    return np.where(np.isnan(lvl), -1, lvl).astype(np.int64)


def ref_multilevel_roi_align(
    feats: Sequence[NDArray[np.float32]],
    rois: NDArray[np.float32],
    featmap_strides: Sequence[int],
    finest_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> NDArray[np.float32]:
    """SingleRoIExtractor on one image: (K, C, out, out) float32."""
    levels = ref_roi_levels(rois, len(feats), finest_scale)
    out = np.zeros((rois.shape[0], feats[0].shape[0], output_size, output_size), F32)
    for lvl, (feat, stride) in enumerate(zip(feats, featmap_strides, strict=True)):
        sel = np.flatnonzero(levels == lvl)
        if sel.size:
            out[sel] = ref_roi_align(feat, rois[sel], 1.0 / stride, output_size, sampling_ratio, aligned)
    return out
