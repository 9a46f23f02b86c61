"""JPEG files decoded by torchvision, on the GPU (nvJPEG) or the CPU: ``Detector(jpeg_decoder=
"torchvision")``.

Decoding 1280x720 JPEGs costs a CPU core about 5 ms each; at a thousand images a second that
is most of a server's cores. nvJPEG decodes them on the GPU, into memory the networks read
directly. The result is the image ``cv2.imread`` gives: BGR uint8 (H, W, 3), EXIF orientation
applied (parsed here, as nvJPEG ignores it), grayscale replicated. On the CPU torchvision's
libjpeg-turbo decode equals OpenCV's value for value (tested). nvJPEG's IDCT may differ from it
by a level here and there, and it upsamples subsampled chroma (4:2:0, most JPEGs) without
libjpeg-turbo's smoothing, so colours differ more along sharp colour edges: on a GPU the
results are close on average, not bit-exact, and so are the faces found on them.

Files that are not JPEGs, CMYK/YCCK or 12-bit JPEGs (whose colours torchvision converts
differently), truncated JPEGs and those torchvision cannot decode return ``None`` and are decoded by OpenCV as usual (``afd_trt.image.load_image``). The
same checks as OpenCV's path run first: missing files, directories, empty files and declared
sizes over the pixel limit raise the same errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .device_ops import with_index
from .image import ImageInput, _check_file, max_pixels_limit

__all__ = [
    "apply_orientation",
    "decode_jpeg",
    "exif_orientation",
    "plain_8bit_color",
    "torchvision_jpeg_available",
]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION_TAG = 0x0112


def _image_ops() -> Any:
    """torchvision's image extension module (its import registers ``torch.ops.image``)."""
    import torchvision.io.image as tv_image

    return tv_image


_warned_fallback: set[str] = set()


def _log_fallback(label: str, device: torch.device, error: Exception) -> None:
    """A JPEG torchvision refused goes to OpenCV: said at WARNING the first time per device type
    (on CUDA a refusal may mean nvJPEG is missing, and every image would then be decoded by
    OpenCV unnoticed), at DEBUG after."""
    first = device.type not in _warned_fallback
    _warned_fallback.add(device.type)
    level = logging.WARNING if first else logging.DEBUG
    more = " (said once; later ones at DEBUG)" if first else ""
    logger.log(
        level, "%s: torchvision could not decode it on %s (%s); OpenCV will%s", label, device, error, more
    )


def torchvision_jpeg_available() -> str | None:
    """None when torchvision can decode JPEGs here, else why not."""
    try:
        _image_ops()  # its import registers torch.ops.image
    except ImportError as e:
        return f"torchvision is not installed ({e})"
    # the op itself, not torchvision's private _has_image_ops, which other versions may lack
    if not hasattr(torch.ops.image, "decode_jpeg"):
        return "torchvision's image extension did not load (built without libjpeg?)"
    return None


def _segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of a JPEG's segments up to the image data (bounded by the bytes)."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            return
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return
        yield marker, data[pos + 4 : pos + 2 + length]
        pos += 2 + length


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def plain_8bit_color(data: bytes) -> bool:
    """True for an 8-bit JPEG with 1 (gray) or 3 (YCbCr/RGB) components: what torchvision
    decodes to OpenCV's pixels. CMYK/YCCK (4 components) and 12-bit files go to OpenCV, whose
    colour conversion torchvision's does not match."""
    for marker, body in _segments(data):
        if marker in _SOF:
            return len(body) >= 6 and body[0] == 8 and body[5] in (1, 3)
    return False


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG's APP1 segment; 1 when absent or unreadable.

    Args:
        data: the file's bytes (only the segments before the image data are read).
    """
    for marker, body in _segments(data):
        if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            return _tiff_orientation(body[6:])
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    if tiff[:4] == b"II*\x00":
        order = "little"
    elif tiff[:4] == b"MM\x00*":
        order = "big"
    else:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)  # type: ignore[arg-type]
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)  # type: ignore[arg-type]
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            break
        if int.from_bytes(tiff[at : at + 2], order) == _EXIF_ORIENTATION_TAG:  # type: ignore[arg-type]
            value = int.from_bytes(tiff[at + 8 : at + 10], order)  # type: ignore[arg-type]
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded (H, W, C) image upright for its EXIF orientation (1-8), as image viewers
    and ``cv2.imread`` do: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise."""
    if orientation == 2:
        return image.flip(1)
    if orientation == 3:
        return image.flip(0).flip(1)
    if orientation == 4:
        return image.flip(0)
    if orientation == 5:
        return image.transpose(0, 1)
    if orientation == 6:
        return image.transpose(0, 1).flip(1)
    if orientation == 7:
        return image.transpose(0, 1).flip(0).flip(1)
    if orientation == 8:
        return image.transpose(0, 1).flip(0)
    return image


def decode_jpeg(
    image: ImageInput, device: torch.device, *, max_pixels: int | None = None, name: str = "image"
) -> torch.Tensor | None:
    """A JPEG file as BGR uint8 (H, W, 3) on ``device``, or None for anything else.

    Args:
        image: a path (anything else returns None: arrays need no decoding).
        device: where to decode: ``cuda:N`` uses nvJPEG, ``cpu`` libjpeg-turbo.
        max_pixels: as ``load_image``.
        name: unused for paths (they are named by themselves); kept for symmetry.

    Raises:
        ValueError: as ``load_image`` for missing, unreadable, empty or too large files.
    """
    if not isinstance(image, (str, os.PathLike)):
        return None
    raw_path = os.fspath(image)
    if not isinstance(raw_path, str) or not raw_path:
        return None  # load_image gives the error
    path = Path(raw_path)
    label = f"image {raw_path!r}"
    limit = max_pixels_limit(max_pixels)
    truncated = _check_file(path, limit, label)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{label}: cannot read it: {e.strerror or e}") from e
    if data[:3] != b"\xff\xd8\xff" or truncated or not plain_8bit_color(data):
        return None
    tv_image = _image_ops()
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rgb_mode = tv_image.ImageReadMode.RGB.value
    try:
        # the ops behind torchvision.io.decode_jpeg, whose wrapper warns (deprecated in 0.29 in
        # favour of TorchCodec) on every call
        if device.type == "cuda":
            # with its index always: torchvision keeps one nvJPEG decoder and makes a new one
            # whenever the device it is given changes, "cuda" and "cuda:0" included
            device = with_index(device)
            rgb = torch.ops.image.decode_jpegs_cuda([encoded], rgb_mode, device)[0]
        else:
            rgb = torch.ops.image.decode_jpeg(encoded, rgb_mode, False)
    except RuntimeError as e:
        _log_fallback(label, device, e)
        return None
    h, w = int(rgb.shape[1]), int(rgb.shape[2])
    if h * w > limit:
        raise ValueError(f"{label}: decoded size {w}x{h} exceeds the limit of {limit} pixels")
    bgr = apply_orientation(rgb.permute(1, 2, 0).flip(2), exif_orientation(data))
    return bgr.contiguous()
