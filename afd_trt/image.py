"""Image inputs: paths and arrays in, a C-contiguous BGR uint8 (H, W, 3) array out.

Accepted, with documented conversions:
- ``str`` / ``os.PathLike``: read with ``cv2.imread(path, cv2.IMREAD_COLOR)`` exactly as upstream
  does (so EXIF orientation is applied, 16-bit files are scaled to 8 bit, palettes expanded, alpha
  dropped, grayscale replicated).
- ``np.ndarray`` uint8 of shape (H, W, 3) BGR: used as is (copied only if not C-contiguous, e.g.
  ``img[:, ::-1]``).
- (H, W) or (H, W, 1) grayscale uint8: replicated to three channels.
- (H, W, 4) BGRA uint8: alpha dropped (not blended), like ``cv2.IMREAD_COLOR`` does for files.

Anything else raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, empty,
unreadable or too large file), naming the input and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInput", "load_image", "to_bgr"]

ImageInput = np.ndarray | str | os.PathLike[str]

# Refuse decoding images above this many pixels (decompression bombs); override per call.
DEFAULT_MAX_PIXELS = 20_000 * 20_000


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def to_bgr(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an array to C-contiguous BGR uint8 (H, W, 3) or raise naming ``name``.

    Args:
        image: uint8 (H, W, 3) BGR, (H, W) / (H, W, 1) gray, or (H, W, 4) BGRA.
        name: how errors refer to this input.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{name}: expected dtype uint8 (8-bit BGR), got {image.dtype}; "
            "convert explicitly, e.g. np.clip(img, 0, 255).astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(
            f"{name}: expected shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def _read_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG/JPEG header without decoding, or None when unknown."""
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seg_len = int.from_bytes(head[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h = int.from_bytes(head[i + 5 : i + 7], "big")
                w = int.from_bytes(head[i + 7 : i + 9], "big")
                return w, h
            i += 2 + seg_len
    return None


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load a path or convert an array into C-contiguous BGR uint8 (H, W, 3).

    Args:
        image: a path or an array (see the module docstring for accepted forms).
        max_pixels: files whose header declares more pixels are refused before decoding.
    """
    if isinstance(image, np.ndarray):
        return to_bgr(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image {str(path)!r}: no such file")
        if path.stat().st_size == 0:
            raise ValueError(f"image {str(path)!r}: empty file (0 bytes)")
        size = _read_header_size(path)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ValueError(
                f"image {str(path)!r}: declared size {size[0]}x{size[1]} exceeds the limit of {max_pixels} pixels"
            )
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError(
                f"image {str(path)!r}: OpenCV could not decode it (corrupt, truncated or unsupported)"
            )
        return to_bgr(decoded, name=f"image {str(path)!r}")
    raise TypeError(f"image: expected a numpy array or a path, got {_describe(image)}")
