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

MAX_OP_THREADS = 256
"""Most worker threads the crop warp and heatmap decode take (``kMaxThreads`` in ``csrc/``)."""

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
    out: NDArray[np.float32] = _C.roi_align(
        feature, rois, spatial_scale, output_size, sampling_ratio, aligned
    )
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


def _whole(value: object, name: str) -> int:
    """``value`` as an int when it is a whole number (a Python or numpy integer, or a float with
    no fractional part) that fits 32 bits; ``ValueError`` naming ``name`` otherwise (``int()``
    would silently truncate 8.7 to 8)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        v = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        v = int(float(value))
    else:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"{name} must fit in 32 bits, got {v}")
    return v


def _size_pair(out_size: tuple[int, int]) -> tuple[int, int]:
    if isinstance(out_size, (str, bytes)) or len(out_size) != 2:
        raise ValueError(f"out_size must be (w, h), got {out_size!r}")
    w, h = out_size
    return _whole(w, "out_size width"), _whole(h, "out_size height")


def _float32_values(values: Sequence[float] | NDArray[np.float32], name: str) -> NDArray[np.float32]:
    """``values`` as float32, refusing numbers float32 cannot hold (which numpy would turn into
    inf with only a warning)."""
    arr = np.asarray(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (np.abs(arr) > np.finfo(np.float32).max).any():
        raise ValueError(f"{name}: values beyond float32's range: {np.asarray(values).tolist()}")
    return np.asarray(arr, dtype=np.float32)


def warp_crops(
    image: NDArray[np.uint8],
    matrices: NDArray[np.float64],
    out_size: tuple[int, int],
    mean: Sequence[float] | NDArray[np.float32],
    std: Sequence[float] | NDArray[np.float32],
    threads: int = 0,
    mode: str = "opencv5",
) -> NDArray[np.float32]:
    """Bilinear affine face crops, normalised, as the landmark model's input batch.

    Equal, value for value, to upstream's ``cv2.warpAffine(cv2.cvtColor(image, BGR2RGB), M,
    out_size, flags=INTER_LINEAR)`` per face (constant 0 border), then float32 ``/ 255``,
    ``- mean``, ``/ std``, stacked NCHW.

    Args:
        image: uint8 (H, W, 3) BGR, C-contiguous (no silent copies: pass
            ``np.ascontiguousarray`` yourself).
        matrices: float64 (N, 2, 3) forward affines, source pixel (x, y) -> crop pixel, as
            ``cv2.getAffineTransform`` / mmpose ``get_affine_transform`` return them. Pixel
            centres are at integer coordinates (OpenCV convention). Non-finite or singular
            matrices raise ``ValueError`` naming the face index.
        out_size: (w, h) of every crop in pixels.
        mean, std: 3 floats each, RGB order, applied in float32 (e.g. ImageNet 0.485... / 0.229...).
        threads: worker threads over faces x rows; 0 = one per core. The GIL is released.
        mode: ``"opencv5"`` reproduces OpenCV 5.x's float32 warp kernel (bit-exact with
            opencv-python-headless 5.0.0; measured 0 differing uint8 values over ~2e7 values,
            random images and face-box matrices incl. boxes off the image, tiny and huge boxes,
            rotations, odd crop sizes). ``"opencv4"`` reproduces OpenCV 4.x's fixed-point warp
            (1/32 px coordinates, 15-bit weights; bit-exact with opencv-python-headless 4.10,
            4.11 and 4.12 on the same data). The two models disagree on ~7% of the uint8 values of
            face crops of a real anime image (mostly by 1 level, at most 4) and on ~57% of an
            enlarged noise image (at most 7), so pick the one your reference ran with.

    Returns:
        float32 (N, 3, h, w), channels R, G, B.
    """
    w, h = _size_pair(out_size)
    mean32, std32 = _float32_values(mean, "mean"), _float32_values(std, "std")
    return _C.warp_crops(image, matrices, w, h, mean32, std32, mode, _whole(threads, "threads"))


def warp_crops_u8(
    image: NDArray[np.uint8],
    matrices: NDArray[np.float64],
    out_size: tuple[int, int],
    threads: int = 0,
    mode: str = "opencv5",
) -> NDArray[np.uint8]:
    """The uint8 crops behind :func:`warp_crops`, for inspection and saving.

    Args: as :func:`warp_crops` (no normalisation).

    Returns:
        uint8 (N, h, w, 3) in the input's channel order; ``out[i]`` equals
        ``cv2.warpAffine(image, matrices[i], out_size, flags=cv2.INTER_LINEAR)`` under ``mode``.
    """
    w, h = _size_pair(out_size)
    return _C.warp_crops_u8(image, matrices, w, h, mode, _whole(threads, "threads"))


def _pairs_array(
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer] | None,
) -> NDArray[np.int64] | None:
    if flip_pairs is None:
        return None
    pairs = np.asarray(flip_pairs)
    if pairs.size == 0 and pairs.shape in ((0,), (0, 2)):
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.size == 0:
        raise ValueError(f"flip_pairs must have shape (P, 2), got {pairs.shape}")
    if pairs.dtype.kind not in "iu":
        raise ValueError(f"flip_pairs must hold integers, got dtype {pairs.dtype}")
    return np.ascontiguousarray(pairs, dtype=np.int64)


def merge_flip(
    heatmaps: NDArray[np.float32],
    flipped: NDArray[np.float32],
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer],
    shift: bool = True,
) -> NDArray[np.float32]:
    """Flip-test merge of mmpose's top-down heatmap head.

    ``(heatmaps + back) / 2`` in float32, where ``back`` is ``flip_back(flipped, flip_pairs)``
    (channels of each pair swapped, later pairs winning on repeats, then mirrored in x) and, with
    ``shift``, moved right by one column (``back[..., 1:] = back[..., :-1]``; column 0 keeps its
    own value), exactly upstream's ``shift_heatmap=True``.

    Args:
        heatmaps: float32 (N, K, H, W) from the unflipped crops, C-contiguous.
        flipped: float32 (N, K, H, W) from the horizontally flipped crops.
        flip_pairs: int (P, 2) keypoint index pairs in [0, K), e.g. ``FLIP_PAIRS`` of the config.
        shift: apply the one-column shift.

    Returns:
        float32 (N, K, H, W).
    """
    pairs = _pairs_array(flip_pairs)
    if pairs is None:
        raise ValueError("flip_pairs is required (pass [] for no channel swaps)")
    return _C.merge_flip(heatmaps, flipped, pairs, bool(shift))


def decode_heatmaps(
    heatmaps: NDArray[np.float32],
    centers: NDArray[np.float32],
    box_sizes: NDArray[np.float32],
    mode: str = "dark",
    blur_kernel: int = 11,
    flipped: NDArray[np.float32] | None = None,
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer] | None = None,
    shift: bool = True,
    threads: int = 0,
) -> NDArray[np.float32]:
    """Keypoints from heatmaps, as mmpose 0.x ``keypoints_from_heatmaps`` (use_udp=False).

    Per map: optional flip merge (:func:`merge_flip`), the first maximum in row-major order
    (np.argmax) and its value as the score; a non-positive (or NaN) maximum gives heatmap
    coordinate (-1, -1) and no refinement. Refinement by ``mode``:

    - ``"dark"`` (upstream ``'unbiased'``): the map zero-padded and Gaussian-blurred
      (``cv2.GaussianBlur`` with ``ksize = blur_kernel``, sigma 0 -> 0.3 * ((k - 1) / 2 - 1) + 0.8),
      rescaled so its maximum equals the original one, ``log(max(., 1e-10))``, then one Newton
      step from finite differences at the peak when 2 <= px <= W-3 and 2 <= py <= H-3. The
      rescale is kept (not dropped as a constant in log space) because the 1e-10 clamp and a
      non-positive blurred maximum make it matter. Every step rounds as upstream's float32 code
      (on flat maps, e.g. from random weights, the Newton step turns 1-ulp differences into
      whole pixels): the blur like OpenCV 5's float32 separable filter on AVX2/FMA CPUs, the log
      like numpy's float32 SIMD ``np.log``, ``dxy**2`` with libm ``powf``, the 2x2 inverse as
      numpy's ``np.linalg.inv`` returns it (LAPACK LU in double, rounded to float32), then the
      float32 matrix-vector product. Measured against upstream: bit-identical on random peaky,
      crafted flat and random-init HRNetV2 maps (x86-64 with AVX2/FMA; other CPUs give other
      roundings in OpenCV and numpy themselves). A float32 Hessian determinant of 0 (or an
      exactly singular LU, where upstream raises) means no offset.
    - ``"quarter"`` (upstream ``'default'``): +-0.25 px toward the larger neighbour in x and y
      when 1 < px < W-1 and 1 < py < H-1 (0 on ties).
    - ``"none"``: the integer argmax.

    Then to image pixels in float32: ``x * (box_w / W) + center_x - box_w * 0.5``, same for y.

    Args:
        heatmaps: float32 (N, K, H, W), C-contiguous.
        centers: float32 (N, 2) box centres (x, y) in image pixels (mmpose ``center``).
        box_sizes: float32 (N, 2) box (w, h) in image pixels that the heatmap spans: mmpose's
            ``scale * 200`` computed in float32 (pixel_std = 200).
        mode: ``"dark"``, ``"quarter"`` or ``"none"``.
        blur_kernel: odd Gaussian kernel size >= 3 for ``"dark"`` (11 for sigma-2 heatmaps).
        flipped: optional float32 (N, K, H, W) heatmaps of the flipped crops, merged first.
        flip_pairs: int (P, 2) pairs for ``flipped`` (None: no channel swaps).
        shift: shift the flipped-back maps by one column (upstream ``shift_heatmap``).
        threads: worker threads over the N * K maps; 0 = one per core. The GIL is released.

    Returns:
        float32 (N, K, 3) as (x, y, score), x and y in image pixels.
    """
    pairs = _pairs_array(flip_pairs)
    return _C.decode_heatmaps(
        heatmaps,
        centers,
        box_sizes,
        mode,
        _whole(blur_kernel, "blur_kernel"),
        flipped,
        pairs,
        bool(shift),
        _whole(threads, "threads"),
    )
