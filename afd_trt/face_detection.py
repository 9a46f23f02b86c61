"""Face detectors: network forward through an engine, post-processing in the C++ ops.

Each detector takes BGR uint8 images and returns, per image, float32 (K, 5) boxes
``[x1, y1, x2, y2, score]`` in original-image pixels, sorted by score, as upstream's
``detect`` does. Images whose padded input shapes agree share one network forward.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from . import ops
from .config import FasterRCNNConfig, YOLOv3Config
from .engines import Engine
from .preprocess import DetInput, prepare_detector_input

__all__ = ["FaceDetector", "FasterRCNNFaceDetector", "YOLOv3FaceDetector", "group_by_shape"]

logger = logging.getLogger(__name__)


class FaceDetector(Protocol):
    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]: ...

    def prepare(self, image: np.ndarray) -> DetInput: ...


def group_by_shape(inputs: Sequence[DetInput], max_batch: int) -> list[list[int]]:
    """Indices of ``inputs`` grouped by padded shape, each group at most ``max_batch`` long."""
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, inp in enumerate(inputs):
        by_shape[inp.pad_shape].append(i)
    groups: list[list[int]] = []
    for idx in by_shape.values():
        groups.extend(idx[s : s + max_batch] for s in range(0, len(idx), max_batch))
    return groups


def _stack(inputs: Sequence[DetInput], idx: Sequence[int]) -> torch.Tensor:
    """float32 (B, 3, Hp, Wp) with channels-last strides (see ``DetInput.tensor``)."""
    return torch.from_numpy(np.stack([inputs[i].tensor for i in idx])).permute(0, 3, 1, 2)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


class YOLOv3FaceDetector:
    """YOLOv3 (Darknet-53): raw head maps from the engine, fused decode + NMS in C++."""

    def __init__(self, cfg: YOLOv3Config, engine: Engine, max_batch: int = 8) -> None:
        self.cfg = cfg
        self.engine = engine
        self.max_batch = max_batch
        self._base_sizes = np.asarray(cfg.base_sizes, dtype=np.float32)

    def prepare(self, image: np.ndarray) -> DetInput:
        return prepare_detector_input(image, self.cfg.input)

    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]:
        results: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        cfg = self.cfg
        for idx in group_by_shape(inputs, self.max_batch):
            maps = [_to_numpy(m) for m in self.engine(_stack(inputs, idx))]
            for j, i in enumerate(idx):
                results[i] = ops.yolo_postprocess(
                    [np.ascontiguousarray(m[j]) for m in maps],
                    cfg.strides,
                    self._base_sizes,
                    inputs[i].scale_factor,
                    cfg.conf_thr,
                    cfg.score_thr,
                    cfg.nms_iou,
                    cfg.max_per_img,
                )
        return results


class FasterRCNNFaceDetector:
    """Faster R-CNN (R50-FPN): stage 1 on the engine, proposals and RoIAlign in C++,
    the box head on all images' RoIs at once, final decode + NMS in C++."""

    def __init__(self, cfg: FasterRCNNConfig, stage1: Engine, box_head: Engine, max_batch: int = 4) -> None:
        self.cfg = cfg
        self.stage1 = stage1
        self.box_head = box_head
        self.max_batch = max_batch

    def prepare(self, image: np.ndarray) -> DetInput:
        return prepare_detector_input(image, self.cfg.input)

    def _proposals_and_rois(self, inputs: Sequence[DetInput]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cfg = self.cfg
        n_feat = len(cfg.roi_featmap_strides)
        n_lvl = len(cfg.anchor_strides)
        proposals: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        roi_feats: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(inputs)
        for idx in group_by_shape(inputs, self.max_batch):
            outs = [_to_numpy(t) for t in self.stage1(_stack(inputs, idx))]
            feats, cls, reg = outs[:n_feat], outs[n_feat : n_feat + n_lvl], outs[n_feat + n_lvl :]
            for j, i in enumerate(idx):
                props = ops.rpn_proposals(
                    [np.ascontiguousarray(c[j]) for c in cls],
                    [np.ascontiguousarray(r[j]) for r in reg],
                    cfg.anchor_strides,
                    cfg.anchor_ratios,
                    cfg.anchor_scales,
                    inputs[i].img_shape,
                    cfg.rpn_nms_pre,
                    cfg.rpn_nms_iou,
                    cfg.rpn_max_per_img,
                    cfg.rpn_min_bbox_size,
                    cfg.rpn_target_means,
                    cfg.rpn_target_stds,
                )
                proposals[i] = props
                roi_feats[i] = ops.multilevel_roi_align(
                    [np.ascontiguousarray(f[j]) for f in feats],
                    np.ascontiguousarray(props[:, :4]),
                    cfg.roi_featmap_strides,
                    cfg.roi_finest_scale,
                    cfg.roi_output_size,
                    cfg.roi_sampling_ratio,
                    cfg.roi_aligned,
                )
        return proposals, roi_feats

    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]:
        cfg = self.cfg
        proposals, roi_feats = self._proposals_and_rois(inputs)
        counts = [len(p) for p in proposals]
        results: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        if sum(counts) == 0:
            return results
        cls_all, reg_all = (
            _to_numpy(t)
            for t in self.box_head(torch.from_numpy(np.concatenate([r for r in roi_feats if len(r)])))
        )
        start = 0
        for i, n in enumerate(counts):
            if n == 0:
                continue
            results[i] = ops.rcnn_postprocess(
                np.ascontiguousarray(proposals[i][:, :4]),
                np.ascontiguousarray(cls_all[start : start + n]),
                np.ascontiguousarray(reg_all[start : start + n]),
                inputs[i].img_shape,
                inputs[i].scale_factor,
                cfg.rcnn_target_means,
                cfg.rcnn_target_stds,
                cfg.score_thr,
                cfg.nms_iou,
                cfg.max_per_img,
            )
            start += n
        return results
