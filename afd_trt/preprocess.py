"""Detector input preparation: upstream's mmdet test pipeline, step for step.

Keep-ratio resize with ``cv2.resize(INTER_LINEAR)``, BGR->RGB, ``(x - mean) / std`` in float32,
zero padding on the bottom/right to a multiple of the pad divisor.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import InputConfig

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
            as an NCHW view with channels-last strides, the layout upstream feeds them).
        img_shape: (h, w) of the resized, unpadded image.
        scale_factor: float32 (4,) = (w_scale, h_scale, w_scale, h_scale), resized / original.
        ori_shape: (h, w) of the input image.
    """

    tensor: np.ndarray
    img_shape: tuple[int, int]
    scale_factor: np.ndarray
    ori_shape: tuple[int, int]

    @property
    def pad_shape(self) -> tuple[int, int]:
        return int(self.tensor.shape[0]), int(self.tensor.shape[1])


def prepare_detector_input(image: np.ndarray, cfg: InputConfig) -> DetInput:
    """Resize, normalise and pad one BGR uint8 (H, W, 3) image for a detector."""
    height, width = image.shape[:2]
    new_w, new_h = rescale_size(width, height, cfg.img_scale)
    if new_w < 1 or new_h < 1:
        raise ValueError(
            f"image of size {width}x{height} resizes to {new_w}x{new_h}: too thin to detect faces in"
        )
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].astype(np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    normed = (rgb - mean) / std
    div = cfg.pad_divisor
    pad_h, pad_w = -(-new_h // div) * div, -(-new_w // div) * div
    tensor = np.zeros((pad_h, pad_w, 3), dtype=np.float32)
    tensor[:new_h, :new_w] = normed
    scale_factor = np.array([new_w / width, new_h / height, new_w / width, new_h / height], dtype=np.float32)
    return DetInput(
        tensor=tensor, img_shape=(new_h, new_w), scale_factor=scale_factor, ori_shape=(height, width)
    )
