"""Detector input preparation: upstream's mmdet test pipeline, step for step.

Keep-ratio resize with ``cv2.resize(INTER_LINEAR)``, BGR->RGB, ``(x - mean) / std`` in float32,
zero padding on the bottom/right to a multiple of the pad divisor.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .config import InputConfig
from .device_ops import Pixels, resize_linear

__all__ = ["DetInput", "prepare_detector_input", "rescale_size"]


def rescale_size(width: int, height: int, img_scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio target (width, height) fitting (max long edge, max short edge) = ``img_scale``."""
    long_edge, short_edge = max(img_scale), min(img_scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


@dataclass(frozen=True)
class DetInput:
    """One prepared image.

    Attributes:
        tensor: float32 (Hp, Wp, 3) normalised RGB, zero padded, channels last (networks get it
            as an NCHW view with channels-last strides, the layout upstream feeds them); or,
            prepared with ``normalize=False``, the resized BGR uint8 (h, w, 3) (a tensor on the
            image's device for an image decoded there), normalised and padded later where the
            network runs (``device_ops.normalize_pad``).
        img_shape: (h, w) of the resized, unpadded image.
        scale_factor: float32 (4,) = (w_scale, h_scale, w_scale, h_scale), resized / original.
        ori_shape: (h, w) of the input image.
        pad_shape: (Hp, Wp), the padded network input size.
    """

    tensor: np.ndarray | torch.Tensor
    img_shape: tuple[int, int]
    scale_factor: np.ndarray
    ori_shape: tuple[int, int]
    pad_shape: tuple[int, int]

    @property
    def normalized(self) -> bool:
        """True when ``tensor`` is the float32 network input, False for resized uint8 pixels."""
        return isinstance(self.tensor, np.ndarray) and self.tensor.dtype == np.float32


def prepare_detector_input(image: Pixels, cfg: InputConfig, normalize: bool = True) -> DetInput:
    """Resize, normalise and pad one BGR uint8 (H, W, 3) image for a detector (only resize with
    ``normalize=False``: the rest then happens on the network's device). A tensor image (decoded
    on a device) is resized there by ``device_ops.resize_linear``, OpenCV's arithmetic."""
    height, width = int(image.shape[0]), int(image.shape[1])
    new_w, new_h = rescale_size(width, height, cfg.img_scale)
    if new_w < 1 or new_h < 1:
        raise ValueError(
            f"image of size {width}x{height} resizes to {new_w}x{new_h}: too thin to detect faces in"
        )
    resized: Pixels
    if isinstance(image, torch.Tensor):
        resized = resize_linear(image, (new_w, new_h))
        if normalize:
            resized = resized.cpu().numpy()
    else:
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    div = cfg.pad_divisor
    pad_h, pad_w = -(-new_h // div) * div, -(-new_w // div) * div
    scale_factor = np.array([new_w / width, new_h / height, new_w / width, new_h / height], dtype=np.float32)
    if not normalize:
        return DetInput(
            tensor=resized if isinstance(resized, torch.Tensor) else np.ascontiguousarray(resized),
            img_shape=(new_h, new_w),
            scale_factor=scale_factor,
            ori_shape=(height, width),
            pad_shape=(pad_h, pad_w),
        )
    assert isinstance(resized, np.ndarray)
    rgb = resized[:, :, ::-1].astype(np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    normed = (rgb - mean) / std
    tensor = np.zeros((pad_h, pad_w, 3), dtype=np.float32)
    tensor[:new_h, :new_w] = normed
    return DetInput(
        tensor=tensor,
        img_shape=(new_h, new_w),
        scale_factor=scale_factor,
        ori_shape=(height, width),
        pad_shape=(pad_h, pad_w),
    )
