"""Our networks against the oracle's: identical state-dict layout, identical raw outputs, traceable."""

from __future__ import annotations

import pytest
import torch
from anime_face_detector._face import FasterRCNNFaceDetector, YOLOv3FaceDetector
from anime_face_detector._landmark import LandmarkModel
from torch import nn

from afd_trt.models import MODEL_NAMES, FasterRCNN, HRNetV2, YOLOv3, build_model

ORACLE = {"yolov3": YOLOv3FaceDetector, "faster-rcnn": FasterRCNNFaceDetector, "hrnetv2": LandmarkModel}
REL_TOL = 1e-5
# torch 2.14 deprecates torch.jit.trace (FutureWarning); the integrator still traces for export.
IGNORE_TRACE_DEPRECATION = pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:FutureWarning")


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict for ``model``: fan-in scaled weights, non-trivial BN stats and biases."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, ref in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(ref)
        elif key.endswith("running_var"):
            out[key] = torch.rand(ref.shape, generator=gen) * 1.5 + 0.5
        elif ref.dim() > 1:  # conv / linear weight
            fan_in = ref[0].numel()
            out[key] = torch.randn(ref.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(".weight"):  # BN gamma
            out[key] = torch.rand(ref.shape, generator=gen) * 0.5 + 0.5
        else:  # biases, BN beta, running_mean
            out[key] = torch.randn(ref.shape, generator=gen) * 0.1
    return out


def paired(name: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(ours, oracle) with the same random weights, both in eval mode."""
    ours = build_model(name)
    oracle = ORACLE[name]().eval()
    sd = random_state_dict(ours, seed)
    ours.load_state_dict(sd, strict=True)
    oracle.load_state_dict(sd, strict=True)
    return ours, oracle


def max_rel_dev(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def assert_close_all(ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert torch.isfinite(a).all()
        dev = max_rel_dev(a, b)
        assert dev <= REL_TOL, dev


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_layout_equals_oracle(name: str) -> None:
    ours = {k: (tuple(v.shape), v.dtype) for k, v in build_model(name).state_dict().items()}
    ref = {k: (tuple(v.shape), v.dtype) for k, v in ORACLE[name]().state_dict().items()}
    assert list(ours) == list(ref)
    assert ours == ref


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="'yolo5'"):
        build_model("yolo5")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_eval_mode(name: str) -> None:
    model = build_model(name)
    assert not any(m.training for m in model.modules())


@pytest.mark.oracle
@pytest.mark.parametrize("shape", [(1, 3, 352, 608), (2, 3, 96, 160)])
def test_yolov3_matches_oracle(shape: tuple[int, ...]) -> None:
    ours, oracle = paired("yolov3")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).abs()
    with torch.inference_mode():
        got = ours(x)
        ref = oracle.bbox_head(oracle.neck(oracle.backbone(x)))[0]
    for out, stride in zip(got, (32, 16, 8), strict=True):
        assert out.shape == (shape[0], 18, shape[2] // stride, shape[3] // stride)
    assert_close_all(got, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("shape", [(1, 3, 128, 192), (2, 3, 64, 96)])
def test_faster_rcnn_matches_oracle(shape: tuple[int, ...]) -> None:
    ours, oracle = paired("faster-rcnn")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        feats, cls, reg = ours(x)
        ref_feats = oracle.neck(oracle.backbone(x))
        ref_cls, ref_reg = oracle.rpn_head(ref_feats)
    assert len(feats) == 4
    assert len(cls) == len(reg) == 5
    for i, stride in enumerate((4, 8, 16, 32, 64)):
        h, w = -(-shape[2] // stride), -(-shape[3] // stride)
        assert cls[i].shape == (shape[0], 3, h, w)
        assert reg[i].shape == (shape[0], 12, h, w)
    assert_close_all(feats, tuple(ref_feats[:4]))
    assert_close_all(cls, tuple(ref_cls))
    assert_close_all(reg, tuple(ref_reg))


@pytest.mark.oracle
def test_faster_rcnn_box_head_matches_oracle() -> None:
    ours, oracle = paired("faster-rcnn", seed=3)
    assert isinstance(ours, FasterRCNN)
    rois = torch.randn(37, 256, 7, 7, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        cls, reg = ours.box_head(rois)
        ref_cls, ref_reg = oracle.roi_head.bbox_head(rois)
    assert cls.shape == (37, 2)
    assert reg.shape == (37, 4)
    assert_close_all((cls, reg), (ref_cls, ref_reg))


@pytest.mark.oracle
@pytest.mark.parametrize("batch", [1, 3])
def test_hrnet_matches_oracle(batch: int) -> None:
    ours, oracle = paired("hrnetv2", seed=5)
    x = torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        got = ours(x)
        ref = oracle.keypoint_head.forward(oracle.backbone(x))
    assert got.shape == (batch, 28, 64, 64)
    assert_close_all((got,), (ref,))


def _flat(out: object) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    assert isinstance(out, tuple | list)
    return tuple(t for o in out for t in _flat(o))


@IGNORE_TRACE_DEPRECATION
@pytest.mark.parametrize(
    ("name", "traced_shape", "run_shape"),
    [
        ("yolov3", (1, 3, 96, 160), (2, 3, 160, 96)),
        ("faster-rcnn", (1, 3, 96, 128), (2, 3, 128, 224)),
        ("hrnetv2", (1, 3, 256, 256), (4, 3, 256, 256)),
    ],
)
def test_trace_matches_eager_on_other_shape(
    name: str, traced_shape: tuple[int, ...], run_shape: tuple[int, ...]
) -> None:
    model = build_model(name)
    model.load_state_dict(random_state_dict(model, seed=7), strict=True)
    gen = torch.Generator().manual_seed(8)
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.randn(traced_shape, generator=gen), check_trace=False)
        x = torch.randn(run_shape, generator=gen)
        got, ref = _flat(traced(x)), _flat(model(x))
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert_close_all(got, ref)


@IGNORE_TRACE_DEPRECATION
def test_box_head_traces_with_other_roi_count() -> None:
    model = build_model("faster-rcnn")
    model.load_state_dict(random_state_dict(model, seed=9), strict=True)
    assert isinstance(model, FasterRCNN)
    gen = torch.Generator().manual_seed(10)
    with torch.inference_mode():
        traced = torch.jit.trace(model.roi_head.bbox_head, torch.randn(5, 256, 7, 7, generator=gen))
        rois = torch.randn(23, 256, 7, 7, generator=gen)
        assert_close_all(traced(rois), model.box_head(rois))


def test_model_classes_exported() -> None:
    assert isinstance(build_model("yolov3"), YOLOv3)
    assert isinstance(build_model("faster-rcnn"), FasterRCNN)
    assert isinstance(build_model("hrnetv2"), HRNetV2)
