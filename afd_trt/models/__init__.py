"""The three networks, written in plain torch.nn with the released checkpoints' key layout.

``build_model(name)`` returns an eval-mode network whose ``forward`` gives raw head tensors only
(no decoding, thresholds or NMS), ready for ``torch.jit.trace`` / ONNX export.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .faster_rcnn import FasterRCNN
from .hrnet import HRNetV2
from .yolov3 import YOLOv3

__all__ = ["MODEL_NAMES", "FasterRCNN", "HRNetV2", "YOLOv3", "build_model"]

_CONSTRUCTORS: dict[str, Callable[[], nn.Module]] = {
    "yolov3": YOLOv3,
    "faster-rcnn": FasterRCNN,
    "hrnetv2": HRNetV2,
}
MODEL_NAMES = tuple(_CONSTRUCTORS)


def build_model(name: str) -> nn.Module:
    """Build network ``name`` (one of :data:`MODEL_NAMES`) with uninitialised weights, in eval mode."""
    try:
        ctor = _CONSTRUCTORS[name]
    except KeyError:
        raise ValueError(f"build_model: name must be one of {MODEL_NAMES}, got {name!r}") from None
    return ctor().eval()
