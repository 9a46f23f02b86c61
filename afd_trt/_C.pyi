"""Type stubs of the native ops module (see afd_trt/ops.py for the documented wrappers)."""

import collections.abc
import typing

import numpy
import numpy.typing

__version__: str

def decode_heatmaps(
    heatmaps: object,
    centers: object,
    box_sizes: object,
    mode: str,
    blur_kernel: typing.SupportsInt | typing.SupportsIndex,
    flipped: object,
    flip_pairs: object,
    shift: bool,
    threads: typing.SupportsInt | typing.SupportsIndex,
) -> numpy.typing.NDArray[numpy.float32]: ...
def merge_flip(
    heatmaps: object, flipped: object, flip_pairs: object, shift: bool
) -> numpy.typing.NDArray[numpy.float32]: ...
def multilevel_roi_align(
    feats: object,
    rois: object,
    featmap_strides: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    finest_scale: typing.SupportsFloat | typing.SupportsIndex,
    output_size: typing.SupportsInt | typing.SupportsIndex,
    sampling_ratio: typing.SupportsInt | typing.SupportsIndex,
    aligned: bool,
) -> numpy.typing.NDArray[numpy.float32]: ...
def nms(
    boxes: object,
    scores: object,
    iou_threshold: typing.SupportsFloat | typing.SupportsIndex,
    idxs: object = None,
) -> numpy.typing.NDArray[numpy.int64]: ...
def rcnn_postprocess(
    rois: object,
    cls_score: object,
    bbox_pred: object,
    img_shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    scale_factor: object,
    target_means: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
    target_stds: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
    score_thr: typing.SupportsFloat | typing.SupportsIndex,
    nms_iou: typing.SupportsFloat | typing.SupportsIndex,
    max_per_img: typing.SupportsInt | typing.SupportsIndex,
) -> numpy.typing.NDArray[numpy.float32]: ...
def roi_align(
    feature: object,
    rois: object,
    spatial_scale: typing.SupportsFloat | typing.SupportsIndex,
    output_size: typing.SupportsInt | typing.SupportsIndex,
    sampling_ratio: typing.SupportsInt | typing.SupportsIndex,
    aligned: bool,
) -> numpy.typing.NDArray[numpy.float32]: ...
def rpn_proposals(
    cls_scores: object,
    bbox_preds: object,
    strides: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    ratios: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
    scales: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
    img_shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    nms_pre: typing.SupportsInt | typing.SupportsIndex,
    nms_iou: typing.SupportsFloat | typing.SupportsIndex,
    max_per_img: typing.SupportsInt | typing.SupportsIndex,
    min_bbox_size: typing.SupportsFloat | typing.SupportsIndex,
    target_means: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
    target_stds: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex],
) -> numpy.typing.NDArray[numpy.float32]: ...
def warp_crops(
    image: object,
    matrices: object,
    out_w: typing.SupportsInt | typing.SupportsIndex,
    out_h: typing.SupportsInt | typing.SupportsIndex,
    mean: object,
    std: object,
    mode: str,
    threads: typing.SupportsInt | typing.SupportsIndex,
) -> numpy.typing.NDArray[numpy.float32]: ...
def warp_crops_u8(
    image: object,
    matrices: object,
    out_w: typing.SupportsInt | typing.SupportsIndex,
    out_h: typing.SupportsInt | typing.SupportsIndex,
    mode: str,
    threads: typing.SupportsInt | typing.SupportsIndex,
) -> numpy.typing.NDArray[numpy.uint8]: ...
def yolo_postprocess(
    pred_maps: object,
    strides: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    base_sizes: object,
    scale_factor: object,
    conf_thr: typing.SupportsFloat | typing.SupportsIndex,
    score_thr: typing.SupportsFloat | typing.SupportsIndex,
    nms_iou: typing.SupportsFloat | typing.SupportsIndex,
    max_per_img: typing.SupportsInt | typing.SupportsIndex,
) -> numpy.typing.NDArray[numpy.float32]: ...
