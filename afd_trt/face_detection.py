"""Face detectors: network forward through an engine; box decoding in torch on upstream's tensor
layouts (bit-identical answers), thresholds, NMS and RoIAlign in the C++ ops.

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

from . import device_ops, ops
from .config import FasterRCNNConfig, InputConfig, YOLOv3Config
from .engines import Engine
from .preprocess import DetInput, prepare_detector_input
from .roi_torch import multilevel_roi_align_torch
from .timing import StageTimes

__all__ = ["FaceDetector", "FasterRCNNFaceDetector", "YOLOv3FaceDetector", "group_by_shape"]

logger = logging.getLogger(__name__)


class FaceDetector(Protocol):
    timer: StageTimes
    pipeline_device: torch.device | None

    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]: ...

    def prepare(self, image: device_ops.Pixels) -> DetInput: ...


def group_by_shape(inputs: Sequence[DetInput], max_batch: int) -> list[list[int]]:
    """Indices of ``inputs`` grouped by padded shape, each group at most ``max_batch`` long."""
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, inp in enumerate(inputs):
        by_shape[inp.pad_shape].append(i)
    groups: list[list[int]] = []
    for idx in by_shape.values():
        groups.extend(idx[s : s + max_batch] for s in range(0, len(idx), max_batch))
    return groups


def _stack(
    inputs: Sequence[DetInput], idx: Sequence[int], cfg: InputConfig, device: torch.device | None
) -> torch.Tensor:
    """float32 (B, 3, Hp, Wp), NCHW-contiguous.

    With B == 1 this is the layout whose convolutions give upstream's exact numbers (upstream's
    ``permute(2, 0, 1).unsqueeze(0)`` view takes the same kernels; a channels-last copy or a
    batch of several images does not, and moves raw outputs by ~1e-4).

    Inputs prepared as resized uint8 (``DetInput.normalized`` False) go to ``device`` as they
    are and are normalised and padded there (the same values, a quarter of the bytes).
    """
    if device is not None and not any(inputs[i].normalized for i in idx):
        return torch.stack(
            [
                device_ops.normalize_pad(
                    device_ops.upload(inputs[i].tensor, device), cfg.mean, cfg.std, inputs[i].pad_shape
                )
                for i in idx
            ]
        )
    if len(idx) == 1:
        return torch.from_numpy(np.ascontiguousarray(_host_input(inputs[idx[0]], cfg)[None]))
    return torch.from_numpy(np.ascontiguousarray(np.stack([_host_input(inputs[i], cfg) for i in idx])))


def _at_most(keep: np.ndarray, max_per_img: int) -> np.ndarray:
    """The first ``max_per_img`` of the kept indices; all of them for ``max_per_img <= 0``, as
    mmdet's ``multiclass_nms`` (``max_num``) reads it."""
    return keep[:max_per_img] if max_per_img > 0 else keep


def _host_input(inp: DetInput, cfg: InputConfig) -> np.ndarray:
    """float32 (3, Hp, Wp) view of a prepared input (normalised here if it was not yet)."""
    if inp.normalized:
        assert isinstance(inp.tensor, np.ndarray)
        return inp.tensor
    pixels = device_ops.upload(inp.tensor, torch.device("cpu"))
    return device_ops.normalize_pad(pixels, cfg.mean, cfg.std, inp.pad_shape).numpy()


class YOLOv3FaceDetector:
    """YOLOv3 (Darknet-53): raw head maps from the engine, box decoding in torch, NMS in C++.

    The decode's sigmoids and exponentials run in torch on tensors laid out exactly as
    upstream's (per image, levels flattened to (1, M, 6)): torch vectorises some of them
    (SIMD exp differs from libm's by an ulp here and there), so this is the way to get
    bit-identical boxes, which the landmark crops are sensitive to. Thresholds and NMS (the
    C++ op, torchvision semantics) follow. ``ops.yolo_postprocess`` fuses it all in C++ when
    last-ulp agreement with upstream is not needed.
    """

    def __init__(self, cfg: YOLOv3Config, engine: Engine, max_batch: int = 8) -> None:
        self.cfg = cfg
        self.engine = engine
        self.max_batch = max_batch
        self.timer = StageTimes()  # Detector shares its own
        self._anchor_cache: dict[
            tuple[tuple[tuple[int, int], ...], str], tuple[torch.Tensor, torch.Tensor]
        ] = {}
        self.pipeline_device: torch.device | None = None
        """None: inputs are normalised and padded on the host, raw head maps decoded there. A
        device (the GPU the network runs on): resized uint8 images go there instead of float32
        tensors, and the head maps are decoded there, so only the boxes that pass the score
        thresholds come back for NMS."""

    def prepare(self, image: device_ops.Pixels) -> DetInput:
        return prepare_detector_input(image, self.cfg.input, normalize=self.pipeline_device is None)

    def _anchors(
        self, sizes: tuple[tuple[int, int], ...], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchors float32 (M, 4) and strides float32 (M,) on ``device`` for feature map sizes
        (h, w) per level, flattened in (y, x, anchor) order, level after level."""
        cached = self._anchor_cache.get((sizes, str(device)))
        if cached is not None:
            return cached
        anchors, strides = [], []
        for (h, w), stride, base_sizes in zip(sizes, self.cfg.strides, self.cfg.base_sizes, strict=True):
            c = stride / 2.0
            base = torch.tensor(
                [[c - 0.5 * bw, c - 0.5 * bh, c + 0.5 * bw, c + 0.5 * bh] for bw, bh in base_sizes]
            )
            sx = torch.arange(w, dtype=torch.float32) * stride
            sy = torch.arange(h, dtype=torch.float32) * stride
            xx, yy = sx.repeat(h), sy.view(-1, 1).repeat(1, w).view(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1)
            anchors.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4))
            strides.append(torch.full((h * w * len(base_sizes),), float(stride)))
        result = (torch.cat(anchors).to(device), torch.cat(strides).to(device))
        self._anchor_cache[(sizes, str(device))] = result
        return result

    def _decode(self, maps: Sequence[torch.Tensor], scale_factor: np.ndarray) -> np.ndarray:
        """One image's head maps, each float32 (1, A*6, h, w) on any device -> float32 (K, 5) final
        boxes on the host."""
        cfg = self.cfg
        flat = []
        for m in maps:
            pred = m.permute(0, 2, 3, 1).reshape(1, -1, 5 + cfg.num_classes)
            pred[..., :2].sigmoid_()
            flat.append(pred)
        preds = torch.cat(flat, dim=1)
        anchors, strides = self._anchors(
            tuple((int(m.shape[2]), int(m.shape[3])) for m in maps), preds.device
        )
        deltas = preds[..., :4]
        objectness = preds[..., 4].sigmoid()
        cls_scores = preds[..., 5:].sigmoid()
        centers = (anchors[..., :2] + anchors[..., 2:]) * 0.5 + (deltas[..., :2] - 0.5) * strides.unsqueeze(
            -1
        )
        half = (anchors[..., 2:] - anchors[..., :2]) * 0.5 * deltas[..., 2:].exp()
        boxes = torch.stack(
            (
                centers[..., 0] - half[..., 0],
                centers[..., 1] - half[..., 1],
                centers[..., 0] + half[..., 0],
                centers[..., 1] + half[..., 1],
            ),
            dim=-1,
        )
        boxes /= torch.from_numpy(scale_factor).to(boxes.device).unsqueeze(0)
        boxes, cls_scores, objectness = boxes[0], cls_scores[0, :, 0], objectness[0]
        if cfg.conf_thr > 0:
            keep = objectness >= cfg.conf_thr
            boxes, cls_scores, objectness = boxes[keep], cls_scores[keep], objectness[keep]
        valid = cls_scores > cfg.score_thr
        boxes_np = np.ascontiguousarray(boxes[valid].cpu().numpy())
        scores_np = np.ascontiguousarray((cls_scores * objectness)[valid].cpu().numpy())
        if len(scores_np) == 0:
            return np.zeros((0, 5), np.float32)
        keep_idx = _at_most(ops.nms(boxes_np, scores_np, cfg.nms_iou), cfg.max_per_img)
        return np.concatenate([boxes_np[keep_idx], scores_np[keep_idx, None]], axis=1)

    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]:
        if self.cfg.num_classes != 1:
            raise ValueError(f"yolov3 config: only num_classes == 1 is supported, got {self.cfg.num_classes}")
        results: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        for idx in group_by_shape(inputs, self.max_batch):
            with torch.inference_mode():
                with self.timer.stage("detector"):
                    x = _stack(inputs, idx, self.cfg.input, self.pipeline_device)
                    # decoded where they are with the device pipeline, else on the host
                    to = self.pipeline_device or torch.device("cpu")
                    maps = [m.detach().to(to, torch.float32) for m in self.engine(x)]
                with self.timer.stage("nms"):
                    for j, i in enumerate(idx):
                        results[i] = self._decode([m[j : j + 1] for m in maps], inputs[i].scale_factor)
        return results


def delta_to_boxes(
    rois: torch.Tensor,
    deltas: torch.Tensor,
    means: Sequence[float],
    stds: Sequence[float],
    max_shape: tuple[int, int],
    wh_ratio_clip: float = 16 / 1000,
) -> torch.Tensor:
    """Apply (dx, dy, dw, dh) deltas to boxes, clipped to ``max_shape`` = (h, w).

    Args:
        rois: float32 (N, 4) boxes ``(x1, y1, x2, y2)``.
        deltas: float32 (N, 4) encoded offsets, denormalised by ``* stds + means``.

    Returns:
        float32 (N, 4). The op sequence is mmdet's DeltaXYWHBBoxCoder's, so torch takes the
        same (partly vectorised) exp and the boxes match upstream bit for bit.
    """
    rois = rois.repeat(1, 1).reshape(-1, 4)
    deltas = deltas.reshape(-1, 4)
    denorm = deltas * deltas.new_tensor(stds).view(1, -1) + deltas.new_tensor(means).view(1, -1)
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = float(np.abs(np.log(wh_ratio_clip)))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - (gwh * 0.5), gxy + (gwh * 0.5)], dim=-1)
    boxes[..., 0::2].clamp_(min=0, max=max_shape[1])
    boxes[..., 1::2].clamp_(min=0, max=max_shape[0])
    return boxes


class FasterRCNNFaceDetector:
    """Faster R-CNN (R50-FPN): stage 1 on the engine; proposals (top-k, decode, batched NMS in
    C++), RoIAlign (C++), the box head on the engine, final decode + NMS (C++).

    As for YOLOv3, the sigmoids, softmax, exponentials and the top-k sort run in torch on
    upstream's tensor layouts, which makes the results bit-identical to upstream's; thresholds,
    NMS and RoIAlign are the C++ ops (``ops.rpn_proposals`` / ``ops.rcnn_postprocess`` fuse all of
    it when last-ulp agreement is not needed).
    """

    def __init__(self, cfg: FasterRCNNConfig, stage1: Engine, box_head: Engine, max_batch: int = 4) -> None:
        if cfg.num_classes != 1:
            raise ValueError(f"faster-rcnn config: only num_classes == 1 is supported, got {cfg.num_classes}")
        self.cfg = cfg
        self.stage1 = stage1
        self.box_head = box_head
        self.max_batch = max_batch
        self.roi_align_on_device = False
        """RoIAlign in torch where the feature maps are (:mod:`afd_trt.roi_torch`) instead of
        copying them to the host for the C++ op; the :class:`~afd_trt.Detector` turns it on for
        CUDA. Agrees with the C++ op to float32 rounding, not bit for bit."""
        self.timer = StageTimes()  # Detector shares its own
        self._anchor_cache: dict[tuple[tuple[tuple[int, int], ...], str], list[torch.Tensor]] = {}
        self.pipeline_device: torch.device | None = None
        """As :attr:`YOLOv3FaceDetector.pipeline_device` (RPN maps: only their top-k per level
        comes back)."""

    def prepare(self, image: device_ops.Pixels) -> DetInput:
        return prepare_detector_input(image, self.cfg.input, normalize=self.pipeline_device is None)

    def _anchors(self, sizes: tuple[tuple[int, int], ...], device: torch.device) -> list[torch.Tensor]:
        """Per level float32 (h*w*A, 4) anchors on ``device`` in (y, x, anchor) order (mmdet's
        AnchorGenerator)."""
        cached = self._anchor_cache.get((sizes, str(device)))
        if cached is not None:
            return cached
        cfg = self.cfg
        ratios, scales = torch.tensor(cfg.anchor_ratios), torch.tensor(cfg.anchor_scales)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        out = []
        for (h, w), stride in zip(sizes, cfg.anchor_strides, strict=True):
            ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
            hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
            base = torch.stack([0.0 - 0.5 * ws, 0.0 - 0.5 * hs, 0.0 + 0.5 * ws, 0.0 + 0.5 * hs], dim=-1)
            sx = torch.arange(0, w).to(torch.float32) * stride
            sy = torch.arange(0, h).to(torch.float32) * stride
            xx, yy = sx.repeat(h), sy.view(-1, 1).repeat(1, w).view(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1)
            out.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4).to(device))
        self._anchor_cache[(sizes, str(device))] = out
        return out

    def _proposals(
        self, cls: Sequence[torch.Tensor], reg: Sequence[torch.Tensor], img_shape: tuple[int, int]
    ) -> np.ndarray:
        """One image's RPN maps, (A, h, w) and (4A, h, w) per level on any device -> float32 (K, 5)
        proposals on the host (the top-k per level comes back for NMS)."""
        cfg = self.cfg
        dev = cls[0].device
        anchors = self._anchors(tuple((int(c.shape[1]), int(c.shape[2])) for c in cls), dev)
        scores_l, deltas_l, anchors_l, ids_l = [], [], [], []
        for level, (c, r) in enumerate(zip(cls, reg, strict=True)):
            scores = c.permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = r.permute(1, 2, 0).reshape(-1, 4)
            lvl_anchors = anchors[level]
            if 0 < cfg.rpn_nms_pre < scores.shape[0]:
                # Sorted on the host: CUDA orders equal scores (common where the sigmoid
                # saturates) unlike the CPU's sort, upstream's, and the NMS keeps that order.
                ranked, order = scores.cpu().sort(descending=True)
                top = order[: cfg.rpn_nms_pre].to(dev)
                scores = ranked[: cfg.rpn_nms_pre].to(dev)
                deltas, lvl_anchors = deltas[top, :], lvl_anchors[top, :]
            scores_l.append(scores)
            deltas_l.append(deltas)
            anchors_l.append(lvl_anchors)
            ids_l.append(torch.full((scores.size(0),), level, dtype=torch.long, device=dev))
        scores, ids = torch.cat(scores_l), torch.cat(ids_l)
        boxes = delta_to_boxes(
            torch.cat(anchors_l), torch.cat(deltas_l), cfg.rpn_target_means, cfg.rpn_target_stds, img_shape
        )
        if cfg.rpn_min_bbox_size >= 0:
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            valid = (w > cfg.rpn_min_bbox_size) & (h > cfg.rpn_min_bbox_size)
            if not bool(valid.all()):
                boxes, scores, ids = boxes[valid], scores[valid], ids[valid]
        if boxes.numel() == 0:
            return np.zeros((0, 5), np.float32)
        b, sc = np.ascontiguousarray(boxes.cpu().numpy()), np.ascontiguousarray(scores.cpu().numpy())
        keep = ops.nms(b, sc, cfg.rpn_nms_iou, idxs=np.ascontiguousarray(ids.cpu().numpy()))[
            : cfg.rpn_max_per_img
        ]
        return np.concatenate([b[keep], sc[keep, None]], axis=1)

    def _final(
        self, proposals: np.ndarray, cls_score: torch.Tensor, bbox_pred: torch.Tensor, inp: DetInput
    ) -> np.ndarray:
        """One image's box-head outputs -> float32 (K, 5) detections in original pixels."""
        cfg = self.cfg
        scores = torch.softmax(cls_score, dim=-1)
        boxes = delta_to_boxes(
            torch.from_numpy(proposals[:, :4]),
            bbox_pred,
            cfg.rcnn_target_means,
            cfg.rcnn_target_stds,
            inp.img_shape,
        )
        boxes = (boxes.view(boxes.size(0), -1, 4) / torch.from_numpy(inp.scale_factor)).view(
            boxes.size(0), -1
        )
        face = scores[:, 0]
        valid = face > cfg.score_thr
        b = np.ascontiguousarray(boxes[valid].numpy())
        sc = np.ascontiguousarray(face[valid].numpy())
        if len(sc) == 0:
            return np.zeros((0, 5), np.float32)
        keep = _at_most(ops.nms(b, sc, cfg.nms_iou), cfg.max_per_img)
        return np.concatenate([b[keep], sc[keep, None]], axis=1)

    def detect_prepared(self, inputs: Sequence[DetInput]) -> list[np.ndarray]:
        cfg = self.cfg
        n_feat, n_lvl = len(cfg.roi_featmap_strides), len(cfg.anchor_strides)
        results: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        proposals: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(inputs)
        roi_feats: list[torch.Tensor] = [torch.zeros(0)] * len(inputs)
        pool_args = (
            cfg.roi_featmap_strides,
            cfg.roi_finest_scale,
            cfg.roi_output_size,
            cfg.roi_sampling_ratio,
            cfg.roi_aligned,
        )
        with torch.inference_mode():
            for idx in group_by_shape(inputs, self.max_batch):
                with self.timer.stage("detector"):
                    x = _stack(inputs, idx, self.cfg.input, self.pipeline_device)
                    outs = [t.detach() for t in self.stage1(x)]
                    # the RPN maps are decoded on the device with the device pipeline
                    to = self.pipeline_device or torch.device("cpu")
                    host = [t.to(to, torch.float32) for t in outs[n_feat:]]
                    feats = [
                        t.float() if self.roi_align_on_device else t.to("cpu", torch.float32)
                        for t in outs[:n_feat]
                    ]
                cls, reg = host[:n_lvl], host[n_lvl:]
                with self.timer.stage("nms"):
                    for j, i in enumerate(idx):
                        proposals[i] = self._proposals(
                            [c[j] for c in cls], [r[j] for r in reg], inputs[i].img_shape
                        )
                        rois = np.ascontiguousarray(proposals[i][:, :4])
                        if self.roi_align_on_device:
                            roi_feats[i] = multilevel_roi_align_torch(
                                [f[j] for f in feats], torch.from_numpy(rois), *pool_args
                            )
                        else:
                            roi_feats[i] = torch.from_numpy(
                                ops.multilevel_roi_align(
                                    [np.ascontiguousarray(f[j].numpy()) for f in feats], rois, *pool_args
                                )
                            )
            counts = [len(p) for p in proposals]
            if sum(counts) == 0:
                return results
            # On the CPU (max_batch 1) each image's RoIs go through the head on their own, as upstream.
            for idx in group_by_shape(inputs, self.max_batch):
                with_rois = [i for i in idx if counts[i]]
                if not with_rois:
                    continue
                feats_all = torch.cat([roi_feats[i] for i in with_rois])
                with self.timer.stage("detector"):
                    cls_all, reg_all = (t.detach().to("cpu", torch.float32) for t in self.box_head(feats_all))
                with self.timer.stage("nms"):
                    start = 0
                    for i in with_rois:
                        n = counts[i]
                        results[i] = self._final(
                            proposals[i], cls_all[start : start + n], reg_all[start : start + n], inputs[i]
                        )
                        start += n
        return results
