"""ops.yolo_postprocess / rpn_proposals / rcnn_postprocess against the oracle's mmdet heads and
numpy references (tests/ref_detection.py), on random head outputs scaled so that a realistic share
of candidates passes the thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ref_detection import ref_rcnn_postprocess, ref_rpn_proposals, ref_yolo_postprocess

from afd_trt import ops
from afd_trt.config import FasterRCNNConfig, YOLOv3Config, load_config

F32 = np.float32
# torch's vectorised exp/sigmoid (Sleef) and libm's differ by an ulp here and there; through the
# decode that leaves boxes a few float32 ulps apart (1 ulp = 6.1e-5 px at 512-1024 px).
BOX_ATOL = 1e-4  # px
BOX_RTOL = 3e-7
SCORE_ATOL = 1e-6

YOLO = load_config("yolov3")
FRCNN = load_config("faster-rcnn")
assert isinstance(YOLO, YOLOv3Config)
assert isinstance(FRCNN, FasterRCNNConfig)


def assert_dets_close(ours: np.ndarray, expected: np.ndarray) -> None:
    """(K, 5) detections: same count and order, boxes within BOX_ATOL px + BOX_RTOL, scores within SCORE_ATOL."""
    assert ours.dtype == np.float32
    assert ours.ndim == 2
    assert ours.shape[1] == 5
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours[:, :4], expected[:, :4], rtol=BOX_RTOL, atol=BOX_ATOL)
    np.testing.assert_allclose(ours[:, 4], expected[:, 4], rtol=0, atol=SCORE_ATOL)


# ---------------------------------------------------------------------------------------------
# YOLOv3
# ---------------------------------------------------------------------------------------------


def yolo_maps(rng: np.random.Generator, pad_hw: tuple[int, int]) -> list[np.ndarray]:
    """Random (18, H, W) head outputs per level: ~1/3 pass the objectness threshold."""
    maps = []
    for stride in YOLO.strides:
        h, w = pad_hw[0] // stride, pad_hw[1] // stride
        m = rng.normal(0, 1, (3, 6, h, w))
        m[:, 4] = rng.normal(-6.5, 3, (3, h, w))  # objectness logits
        m[:, 5] = rng.normal(-1, 2, (3, h, w))  # class logits
        maps.append(m.reshape(18, h, w).astype(F32))
    return maps


def yolo_kwargs(maps: list[np.ndarray], scale_factor: np.ndarray, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "pred_maps": maps,
        "strides": YOLO.strides,
        "base_sizes": np.array(YOLO.base_sizes, F32),
        "scale_factor": scale_factor,
        "conf_thr": YOLO.conf_thr,
        "score_thr": YOLO.score_thr,
        "nms_iou": YOLO.nms_iou,
        "max_per_img": YOLO.max_per_img,
    }
    kw.update(over)
    return kw


def oracle_yolo(kw: dict[str, Any]) -> np.ndarray:
    from anime_face_detector._vendor.mmdet import YOLOAnchorGenerator, YOLOBBoxCoder, YOLOV3Head

    head = YOLOV3Head(
        num_classes=1,
        in_channels=[1] * len(kw["strides"]),
        out_channels=[1] * len(kw["strides"]),
        anchor_generator=YOLOAnchorGenerator(
            base_sizes=kw["base_sizes"].tolist(), strides=list(kw["strides"])
        ),
        bbox_coder=YOLOBBoxCoder(),
        featmap_strides=list(kw["strides"]),
        test_cfg={
            "nms_pre": 1000,
            "min_bbox_size": 0,
            "score_thr": kw["score_thr"],
            "conf_thr": kw["conf_thr"],
            "nms": {"type": "nms", "iou_threshold": kw["nms_iou"]},
            "max_per_img": kw["max_per_img"],
        },
    )
    preds = [torch.from_numpy(m[None].copy()) for m in kw["pred_maps"]]
    dets, _ = head.get_bboxes(preds, [{"scale_factor": kw["scale_factor"]}], rescale=True)[0]
    return dets.numpy()


def random_scale_factor(rng: np.random.Generator) -> np.ndarray:
    sx, sy = rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0)
    return np.array([sx, sy, sx, sy], F32)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pad_hw", [(608, 608), (416, 608), (608, 320)])
def test_yolo_matches_oracle_and_reference(seed: int, pad_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    kw = yolo_kwargs(yolo_maps(rng, pad_hw), random_scale_factor(rng))
    ours = ops.yolo_postprocess(**kw)
    expected = oracle_yolo(kw)
    assert len(expected) == YOLO.max_per_img  # enough candidates to fill the cap
    assert_dets_close(ours, expected)
    assert_dets_close(ours, ref_yolo_postprocess(**kw))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("conf_thr", "score_thr", "max_per_img"), [(0.0, 0.05, 300), (0.3, 0.5, 100), (0.5, 0.7, 5)]
)
def test_yolo_other_thresholds_match_oracle(
    seed: int, conf_thr: float, score_thr: float, max_per_img: int
) -> None:
    rng = np.random.default_rng(100 + seed)
    kw = yolo_kwargs(
        yolo_maps(rng, (320, 416)),
        random_scale_factor(rng),
        conf_thr=conf_thr,
        score_thr=score_thr,
        max_per_img=max_per_img,
    )
    ours = ops.yolo_postprocess(**kw)
    expected = oracle_yolo(kw)
    assert len(expected) > 0
    assert_dets_close(ours, expected)
    assert_dets_close(ours, ref_yolo_postprocess(**kw))


def single_anchor_maps(obj_logit: float, cls_logit: float) -> list[np.ndarray]:
    """One-level (18, 2, 2) map where only anchor 0 at (0, 0) has the given logits."""
    m = np.zeros((3, 6, 2, 2), F32)
    m[:, 4] = -30.0
    m[:, 5] = -30.0
    m[0, 4, 0, 0] = obj_logit
    m[0, 5, 0, 0] = cls_logit
    return [m.reshape(18, 2, 2)]


def single_level_kwargs(maps: list[np.ndarray], **over: Any) -> dict[str, Any]:
    return yolo_kwargs(
        maps, np.ones(4, F32), strides=(32,), base_sizes=np.array([YOLO.base_sizes[0]], F32), **over
    )


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@pytest.mark.parametrize(("delta", "kept"), [(1e-4, True), (-1e-4, False)])
def test_yolo_class_threshold_edge(delta: float, kept: bool) -> None:
    # class probability just above / below score_thr, objectness 1
    kw = single_level_kwargs(single_anchor_maps(30.0, logit(YOLO.score_thr) + delta))
    assert len(ops.yolo_postprocess(**kw)) == int(kept)
    assert len(ref_yolo_postprocess(**kw)) == int(kept)


@pytest.mark.parametrize(("delta", "kept"), [(1e-4, True), (-1e-4, False)])
def test_yolo_objectness_threshold_edge(delta: float, kept: bool) -> None:
    kw = single_level_kwargs(single_anchor_maps(logit(YOLO.conf_thr) + delta, 30.0))
    assert len(ops.yolo_postprocess(**kw)) == int(kept)
    # conf_thr = 0 disables the objectness filter
    assert len(ops.yolo_postprocess(**{**kw, "conf_thr": 0.0})) == 1


def test_yolo_class_threshold_applies_before_objectness() -> None:
    # class prob 0.9 > score_thr, objectness 0.04: kept although 0.9 * 0.04 < score_thr
    kw = single_level_kwargs(single_anchor_maps(logit(0.04), logit(0.9)))
    dets = ops.yolo_postprocess(**kw)
    assert dets.shape == (1, 5)
    assert dets[0, 4] == pytest.approx(0.036, abs=1e-6)


def test_yolo_decode_of_a_known_anchor() -> None:
    # zero offsets decode to the anchor itself: level stride 32, anchor (116, 90) centred at (16, 16),
    # cell (x=1, y=0) -> centre (48, 16); then divided by the scale factor
    m = np.full((3, 6, 2, 2), -30.0, F32)
    m[0, :4, 0, 1] = 0.0
    m[0, 4:, 0, 1] = 30.0
    sf = np.array([2.0, 0.5, 2.0, 0.5], F32)
    dets = ops.yolo_postprocess(**{**single_level_kwargs([m.reshape(18, 2, 2)]), "scale_factor": sf})
    np.testing.assert_allclose(
        dets[0, :4], [(48 - 58) / 2, (16 - 45) / 0.5, (48 + 58) / 2, (16 + 45) / 0.5], atol=1e-5
    )


def test_yolo_no_candidates_and_max_per_img() -> None:
    rng = np.random.default_rng(7)
    maps = yolo_maps(rng, (320, 320))
    none = ops.yolo_postprocess(**yolo_kwargs([np.full_like(m, -30.0) for m in maps], np.ones(4, F32)))
    assert none.shape == (0, 5)
    assert none.dtype == np.float32
    full = ops.yolo_postprocess(**yolo_kwargs(maps, np.ones(4, F32)))
    top3 = ops.yolo_postprocess(**yolo_kwargs(maps, np.ones(4, F32), max_per_img=3))
    np.testing.assert_array_equal(top3, full[:3])


YOLO_ERRORS = [
    ({"pred_maps": "x"}, "pred_maps must be a sequence of numpy arrays"),
    ({"pred_maps": np.zeros((3, 18, 2, 2), F32)}, "pred_maps must be a sequence of numpy arrays"),
    ({"pred_maps": []}, "pred_maps must hold at least one"),
    ({"pred_maps": [np.zeros((18, 2, 2), np.float64)] * 3}, r"pred_maps\[0\] must have dtype float32"),
    ({"pred_maps": [np.zeros((18, 4), F32)] * 3}, r"pred_maps\[0\] must be 3-D"),
    ({"pred_maps": [np.zeros((18, 2, 4), F32)[:, :, ::2]] * 3}, r"pred_maps\[0\] must be C-contiguous"),
    ({"pred_maps": [np.zeros((17, 2, 2), F32)] * 3}, r"pred_maps\[0\] must have A \* \(5 \+ num_classes\)"),
    ({"pred_maps": [np.zeros((21, 2, 2), F32)] * 3}, r"only num_classes = 1"),
    ({"pred_maps": [np.zeros((18, 2, 2), F32)] * 2}, "strides must have 2 entries"),
    ({"strides": (32, 0, 8)}, r"strides\[1\] must be >= 1"),
    ({"base_sizes": np.zeros((3, 3, 2), np.float64)}, "base_sizes must have dtype float32"),
    ({"base_sizes": np.zeros((2, 3, 2), F32)}, r"base_sizes must have shape \(L, A, 2\)"),
    ({"scale_factor": np.ones(2, F32)}, r"scale_factor must have shape \(4,\)"),
    ({"scale_factor": np.ones(4, np.float64)}, "scale_factor must have dtype float32"),
    ({"scale_factor": np.array([1, 0, 1, 1], F32)}, r"scale_factor\[1\] must be finite and > 0"),
    ({"conf_thr": -0.1}, "conf_thr must be a finite number >= 0"),
    ({"score_thr": float("nan")}, "score_thr must be a finite number >= 0"),
    ({"nms_iou": 1.2}, r"nms_iou must be in \[0, 1\]"),
    ({"max_per_img": 0}, "max_per_img must be >= 1"),
    ({"max_per_img": -1}, "max_per_img must be >= 1"),
]


@pytest.mark.parametrize(("over", "match"), YOLO_ERRORS)
def test_yolo_input_errors(over: dict[str, Any], match: str) -> None:
    kw = yolo_kwargs([np.zeros((18, 2, 2), F32)] * 3, np.ones(4, F32))
    kw.update(over)
    with pytest.raises(ValueError, match=match):
        ops.yolo_postprocess(**kw)


# ---------------------------------------------------------------------------------------------
# RPN
# ---------------------------------------------------------------------------------------------

NUM_RPN_ANCHORS = len(FRCNN.anchor_ratios) * len(FRCNN.anchor_scales)


def rpn_outputs(
    rng: np.random.Generator, pad_hw: tuple[int, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per level (A, H, W) logits and (4A, H, W) deltas.

    Logits are a shuffled linspace, so no two sigmoid scores are equal (torch's CPU sort is
    unstable: exact ties could be ordered differently), deltas mostly small with some beyond the
    wh clamp."""
    cls, reg = [], []
    for stride in FRCNN.anchor_strides:
        h, w = -(-pad_hw[0] // stride), -(-pad_hw[1] // stride)
        n = NUM_RPN_ANCHORS * h * w
        cls.append(rng.permutation(np.linspace(-6, 6, n)).reshape(NUM_RPN_ANCHORS, h, w).astype(F32))
        d = rng.normal(0, 0.4, (4 * NUM_RPN_ANCHORS, h, w))
        d[rng.random(d.shape) < 0.02] *= 15
        reg.append(d.astype(F32))
    return cls, reg


def rpn_kwargs(
    cls: list[np.ndarray], reg: list[np.ndarray], img_shape: tuple[int, int], **over: Any
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "cls_scores": cls,
        "bbox_preds": reg,
        "strides": FRCNN.anchor_strides,
        "ratios": FRCNN.anchor_ratios,
        "scales": FRCNN.anchor_scales,
        "img_shape": img_shape,
        "nms_pre": FRCNN.rpn_nms_pre,
        "nms_iou": FRCNN.rpn_nms_iou,
        "max_per_img": FRCNN.rpn_max_per_img,
        "min_bbox_size": FRCNN.rpn_min_bbox_size,
        "target_means": FRCNN.rpn_target_means,
        "target_stds": FRCNN.rpn_target_stds,
    }
    kw.update(over)
    return kw


def oracle_rpn(kw: dict[str, Any]) -> np.ndarray:
    from anime_face_detector._vendor.mmdet import AnchorGenerator, DeltaXYWHBBoxCoder, RPNHead

    head = RPNHead(
        in_channels=1,
        feat_channels=1,
        anchor_generator=AnchorGenerator(
            scales=list(kw["scales"]), ratios=list(kw["ratios"]), strides=list(kw["strides"])
        ),
        bbox_coder=DeltaXYWHBBoxCoder(target_means=kw["target_means"], target_stds=kw["target_stds"]),
        test_cfg={
            "nms_pre": kw["nms_pre"],
            "max_per_img": kw["max_per_img"],
            "nms": {"type": "nms", "iou_threshold": kw["nms_iou"]},
            "min_bbox_size": kw["min_bbox_size"],
        },
    )
    cls = [torch.from_numpy(c[None].copy()) for c in kw["cls_scores"]]
    reg = [torch.from_numpy(r[None].copy()) for r in kw["bbox_preds"]]
    return head.get_bboxes(cls, reg, img_metas=[{"img_shape": (*kw["img_shape"], 3)}])[0].numpy()


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_rpn_matches_oracle_and_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pad_hw = [(256, 320), (320, 224), (192, 192), (288, 352)][seed]
    img_shape = (pad_hw[0] - int(rng.integers(0, 31)), pad_hw[1] - int(rng.integers(0, 31)))
    kw = rpn_kwargs(*rpn_outputs(rng, pad_hw), img_shape)
    ours = ops.rpn_proposals(**kw)
    expected = oracle_rpn(kw)
    assert len(expected) == FRCNN.rpn_max_per_img
    assert_dets_close(ours, expected)
    assert_dets_close(ours, ref_rpn_proposals(**kw))


@pytest.mark.oracle
@pytest.mark.parametrize(
    "over",
    [
        {"nms_pre": 100_000},  # no top-k: candidates stay in anchor order
        {"nms_pre": 50, "max_per_img": 60},
        {"min_bbox_size": 12.0},
        {"min_bbox_size": -1.0},  # filter disabled
        {"nms_iou": 0.3, "target_stds": (0.5, 0.5, 1.0, 1.0), "target_means": (0.1, -0.1, 0.0, 0.2)},
    ],
)
def test_rpn_config_variants_match_oracle(over: dict[str, Any]) -> None:
    rng = np.random.default_rng(11)
    kw = rpn_kwargs(*rpn_outputs(rng, (128, 160)), (120, 150), **over)
    ours = ops.rpn_proposals(**kw)
    expected = oracle_rpn(kw)
    assert len(expected) > 0
    assert_dets_close(ours, expected)
    assert_dets_close(ours, ref_rpn_proposals(**kw))


@pytest.mark.parametrize("seed", range(3))
def test_rpn_tied_scores_follow_stable_order(seed: int) -> None:
    # few distinct logits: exact ties straddle the per-level top-k cut; equal scores are taken in
    # anchor order (stable sort; upstream's unstable torch.sort may pick other ones among ties)
    rng = np.random.default_rng(seed)
    cls, reg = rpn_outputs(rng, (128, 160))
    cls = [np.round(c / 3).astype(F32) for c in cls]
    kw = rpn_kwargs(cls, reg, (128, 160), nms_pre=37)
    ours = ops.rpn_proposals(**kw)
    assert len(ours) > 37
    assert_dets_close(ours, ref_rpn_proposals(**kw))


def test_rpn_levels_do_not_suppress_each_other() -> None:
    # the same strong box predicted on two levels survives on both (batched NMS by level)
    cls = [np.full((3, 2, 2), -20.0, F32), np.full((3, 1, 1), -20.0, F32)]
    reg = [np.zeros((12, 2, 2), F32), np.zeros((12, 1, 1), F32)]
    cls[0][1, 0, 0] = 5.0  # ratio 1 anchor, stride 8 * scale 8 = 64 px square at (0, 0)
    cls[1][1, 0, 0] = 4.0  # stride 16 level, 128 px; scale the delta to shrink it to 64 px
    reg[1][6:8, 0, 0] = np.log(0.5)
    kw = rpn_kwargs(cls, reg, (200, 200), strides=(8, 16), nms_pre=10, max_per_img=10)
    dets = ops.rpn_proposals(**kw)
    top = dets[dets[:, 4] > 0.9]
    assert len(top) == 2
    np.testing.assert_allclose(top[0, :4], top[1, :4])


RPN_ERRORS = [
    ({"cls_scores": np.zeros((3, 2, 2), F32)}, "cls_scores must be a sequence of numpy arrays"),
    ({"bbox_preds": [np.zeros((12, 2, 2), F32)]}, "bbox_preds must have 2 entries"),
    ({"bbox_preds": [np.zeros((12, 2, 3), F32)] * 2}, r"bbox_preds\[0\] must have shape \(12, 2, 2\)"),
    (
        {"cls_scores": [np.zeros((2, 2, 2), F32)] * 2},
        r"cls_scores\[0\] must have A = len\(ratios\) \* len\(scales\) = 3",
    ),
    ({"cls_scores": [np.zeros((3, 2, 2), np.float64)] * 2}, r"cls_scores\[0\] must have dtype float32"),
    ({"strides": (8,)}, "strides must have 2 entries"),
    ({"strides": (8, -16)}, r"strides\[1\] must be >= 1"),
    ({"ratios": (0.5, 0.0, 2.0)}, r"ratios\[1\] must be finite and > 0"),
    ({"scales": ()}, "scales must not be empty"),
    ({"img_shape": (0, 10)}, "img_shape must be positive"),
    ({"img_shape": (10,)}, "img_shape must have 2 entries"),
    ({"nms_pre": 0}, "nms_pre must be >= 1"),
    ({"nms_iou": -0.5}, r"nms_iou must be in \[0, 1\]"),
    ({"max_per_img": -3}, "max_per_img must be >= 1"),
    ({"min_bbox_size": float("nan")}, "min_bbox_size must be finite"),
    ({"target_means": (0.0, 0.0, 0.0)}, "target_means must have 4 entries"),
    ({"target_stds": (1.0, 1.0, 0.0, 1.0)}, r"target_stds\[2\] must be finite and > 0"),
]


@pytest.mark.parametrize(("over", "match"), RPN_ERRORS)
def test_rpn_input_errors(over: dict[str, Any], match: str) -> None:
    kw = rpn_kwargs(
        [np.zeros((3, 2, 2), F32)] * 2, [np.zeros((12, 2, 2), F32)] * 2, (16, 16), strides=(8, 16)
    )
    kw.update(over)
    with pytest.raises(ValueError, match=match):
        ops.rpn_proposals(**kw)


# ---------------------------------------------------------------------------------------------
# R-CNN box head
# ---------------------------------------------------------------------------------------------


def rcnn_inputs(rng: np.random.Generator, k: int, img_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    h, w = img_shape
    xy = rng.uniform(-10, [w, h], (k, 2))
    wh = rng.uniform(2, 200, (k, 2))
    rois = np.clip(np.concatenate([xy, xy + wh], 1), 0, [w, h, w, h]).astype(F32)
    cls = np.stack([rng.normal(-2, 2, k), rng.normal(1, 1, k)], 1).astype(F32)  # ~half pass 0.05
    bbox = rng.normal(0, 1, (k, 4)).astype(F32)
    bbox[rng.random(k) < 0.05, 2:] *= 30  # some beyond the wh clamp
    return {"rois": rois, "cls_score": cls, "bbox_pred": bbox}


def rcnn_kwargs(
    inputs: dict[str, np.ndarray], img_shape: tuple[int, int], sf: np.ndarray, **over: Any
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        **inputs,
        "img_shape": img_shape,
        "scale_factor": sf,
        "target_means": FRCNN.rcnn_target_means,
        "target_stds": FRCNN.rcnn_target_stds,
        "score_thr": FRCNN.score_thr,
        "nms_iou": FRCNN.nms_iou,
        "max_per_img": FRCNN.max_per_img,
    }
    kw.update(over)
    return kw


def oracle_rcnn(kw: dict[str, Any]) -> np.ndarray:
    from anime_face_detector._vendor.mmdet import DeltaXYWHBBoxCoder, Shared2FCBBoxHead

    head = Shared2FCBBoxHead(
        in_channels=1,
        fc_out_channels=1,
        roi_feat_size=7,
        num_classes=1,
        bbox_coder=DeltaXYWHBBoxCoder(target_means=kw["target_means"], target_stds=kw["target_stds"]),
        reg_class_agnostic=False,
    )
    rois = torch.from_numpy(np.concatenate([np.zeros((len(kw["rois"]), 1), F32), kw["rois"]], 1))
    dets, _ = head.get_bboxes(
        rois,
        torch.from_numpy(kw["cls_score"]),
        torch.from_numpy(kw["bbox_pred"]),
        (*kw["img_shape"], 3),
        kw["scale_factor"],
        rescale=True,
        cfg={
            "score_thr": kw["score_thr"],
            "nms": {"type": "nms", "iou_threshold": kw["nms_iou"]},
            "max_per_img": kw["max_per_img"],
        },
    )
    return dets.numpy()


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_rcnn_matches_oracle_and_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img_shape = (int(rng.integers(300, 800)), int(rng.integers(300, 1333)))
    kw = rcnn_kwargs(rcnn_inputs(rng, 1000, img_shape), img_shape, random_scale_factor(rng))
    ours = ops.rcnn_postprocess(**kw)
    expected = oracle_rcnn(kw)
    assert len(expected) == FRCNN.max_per_img
    assert_dets_close(ours, expected)
    assert_dets_close(ours, ref_rcnn_postprocess(**kw))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(3))
def test_rcnn_few_rois_match_oracle(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    kw = rcnn_kwargs(rcnn_inputs(rng, 40, (400, 600)), (400, 600), random_scale_factor(rng), score_thr=0.3)
    ours = ops.rcnn_postprocess(**kw)
    expected = oracle_rcnn(kw)
    assert 0 < len(expected) < 40
    assert_dets_close(ours, expected)


@pytest.mark.parametrize(("delta", "kept"), [(1e-4, True), (-1e-4, False)])
def test_rcnn_score_threshold_edge(delta: float, kept: bool) -> None:
    inputs = {
        "rois": np.array([[10, 10, 50, 60]], F32),
        "cls_score": np.array([[logit(FRCNN.score_thr) + delta, 0.0]], F32),
        "bbox_pred": np.zeros((1, 4), F32),
    }
    dets = ops.rcnn_postprocess(**rcnn_kwargs(inputs, (100, 100), np.ones(4, F32)))
    assert len(dets) == int(kept)
    if kept:
        np.testing.assert_allclose(dets[0, :4], [10, 10, 50, 60], atol=1e-5)  # zero deltas: the roi itself


def test_rcnn_empty_rois() -> None:
    empty = {
        "rois": np.zeros((0, 4), F32),
        "cls_score": np.zeros((0, 2), F32),
        "bbox_pred": np.zeros((0, 4), F32),
    }
    dets = ops.rcnn_postprocess(**rcnn_kwargs(empty, (100, 100), np.ones(4, F32)))
    assert dets.shape == (0, 5)


RCNN_ERRORS = [
    ({"rois": np.zeros((5, 5), F32)}, r"rois must have shape \(K, 4\)"),
    ({"rois": np.zeros((5, 4), np.float64)}, "rois must have dtype float32"),
    ({"cls_score": np.zeros((5, 3), F32)}, "only num_classes = 1"),
    ({"cls_score": np.zeros((4, 2), F32)}, r"cls_score must have shape \(K, num_classes \+ 1\) = \(5, 2\)"),
    ({"bbox_pred": np.zeros((5, 8), F32)}, r"bbox_pred must have shape \(K, 4 \* num_classes\)"),
    ({"bbox_pred": np.zeros((5, 4, 1), F32)}, "bbox_pred must be 2-D"),
    ({"bbox_pred": np.zeros((4, 5), F32).T}, "bbox_pred must be C-contiguous"),
    ({"img_shape": (-1, 5)}, "img_shape must be positive"),
    ({"scale_factor": np.array([1, 1, np.inf, 1], F32)}, r"scale_factor\[2\] must be finite and > 0"),
    ({"score_thr": -0.01}, "score_thr must be a finite number >= 0"),
    ({"nms_iou": 2.0}, r"nms_iou must be in \[0, 1\]"),
    ({"max_per_img": 0}, "max_per_img must be >= 1"),
    ({"target_stds": (0.1, 0.1, 0.2)}, "target_stds must have 4 entries"),
]


@pytest.mark.parametrize(("over", "match"), RCNN_ERRORS)
def test_rcnn_input_errors(over: dict[str, Any], match: str) -> None:
    inputs = {
        "rois": np.zeros((5, 4), F32),
        "cls_score": np.zeros((5, 2), F32),
        "bbox_pred": np.zeros((5, 4), F32),
    }
    kw = rcnn_kwargs(inputs, (100, 100), np.ones(4, F32))
    kw.update(over)
    with pytest.raises(ValueError, match=match):
        ops.rcnn_postprocess(**kw)
