"""Image inputs: paths and arrays in, a C-contiguous BGR uint8 (H, W, 3) array out.

Accepted, with documented conversions (docs/reliability.md lists every case and its test):

- ``str`` / ``os.PathLike``: read with ``cv2.imread(path, cv2.IMREAD_COLOR)`` exactly as upstream
  does, so the format is sniffed from the content (not the extension), EXIF orientation is
  applied, 16-bit samples are scaled to 8 bit (``>> 8``), palettes expanded, alpha dropped (not
  blended), grayscale replicated and CMYK converted to BGR. Before decoding, the size declared in
  the header (PNG, JPEG, GIF, BMP, WebP) is checked against a pixel limit (decompression bombs);
  other formats are checked after decoding (OpenCV itself refuses more than 2**30 pixels).
  A JPEG that does not end with an end-of-image marker is decoded as far as OpenCV can (the
  missing rows grey, as upstream) with a logged warning.
- ``np.ndarray`` uint8 of shape (H, W, 3) BGR: used as is (copied only if not C-contiguous, e.g.
  ``img[:, ::-1]`` or a Fortran-ordered array, so views give the results of their copies).
- (H, W) or (H, W, 1) grayscale uint8: replicated to three channels.
- (H, W, 4) BGRA uint8: alpha dropped (not blended), like ``cv2.IMREAD_COLOR`` does for files.

Anything else raises ``TypeError`` (wrong type or dtype: no silent casts of float, int16 or bool
arrays) or ``ValueError`` (wrong shape, empty, unreadable, undecodable or too large file), the
message starting with the input's name (``image '<path>'`` or ``image``).

The pixel limit is ``max_pixels`` when given, else ``$AFD_TRT_MAX_PIXELS``, else
``DEFAULT_MAX_PIXELS`` (400 Mpx: a 20000 x 20000 image, 1.2 GB decoded).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "ImageInput",
    "load_image",
    "max_pixels_limit",
    "opencv_can_open",
    "to_bgr",
]

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike[str]

DEFAULT_MAX_PIXELS = 20_000 * 20_000
ENV_MAX_PIXELS = "AFD_TRT_MAX_PIXELS"


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$AFD_TRT_MAX_PIXELS``, else
    ``DEFAULT_MAX_PIXELS``. Raises ``ValueError`` for a non-positive or non-integer value."""
    source = "max_pixels"
    value: object = max_pixels
    if max_pixels is None:
        env = os.environ.get(ENV_MAX_PIXELS)
        if env is None or not env.strip():
            return DEFAULT_MAX_PIXELS
        source, value = f"${ENV_MAX_PIXELS}", env.strip().replace("_", "")
        try:
            value = int(str(value))
        except ValueError:
            raise ValueError(f"{source} must be a positive integer, got {env!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{source} must be a positive integer, got {value!r}")
    return int(value)


def to_bgr(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an array to C-contiguous BGR uint8 (H, W, 3) or raise naming ``name``.

    Args:
        image: uint8 (H, W, 3) BGR, (H, W) / (H, W, 1) gray, or (H, W, 4) BGRA; any strides.
        name: how errors refer to this input.

    Returns:
        ``image`` itself when already C-contiguous BGR, else a new array.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{name}: expected dtype uint8 (8-bit BGR), got {image.dtype}; "
            "convert explicitly, e.g. np.clip(img, 0, 255).astype(np.uint8)"
        )
    shape = image.shape
    if image.ndim == 3 and shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and shape[2] == 4:
        image = image[:, :, :3]
    elif not (image.ndim == 3 and shape[2] == 3):
        hint = "; for several images use Detector.detect_batch" if image.ndim == 4 else ""
        raise ValueError(
            f"{name}: expected shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got {shape}{hint}"
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {shape}")
    return np.ascontiguousarray(image)


# -- header sizes (width, height) without decoding -------------------------------------------

_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    """(width, height) of the first SOF segment, walking segment lengths from after SOI."""
    f.seek(2)
    for _ in range(100_000):  # bounded: a crafted file cannot loop forever
        b = f.read(1)
        if b != b"\xff":  # every segment starts with a marker
            return None
        while b == b"\xff":  # fill bytes before the marker code
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no payload
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        seg = f.read(2)
        if len(seg) < 2:
            return None
        seg_len = int.from_bytes(seg, "big")
        if marker in _JPEG_SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            return int.from_bytes(sof[3:5], "big"), int.from_bytes(sof[1:3], "big")
        if seg_len < 2:
            return None
        f.seek(seg_len - 2, os.SEEK_CUR)
    return None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) declared by a PNG, JPEG, GIF, BMP or WebP header, or None when unknown."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:3] == b"\xff\xd8\xff":
            return _jpeg_size(f)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:2] == b"BM" and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # OS/2 core header: 16-bit sizes
            return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
        w = int.from_bytes(head[18:22], "little", signed=True)
        h = int.from_bytes(head[22:26], "little", signed=True)
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(
                head[28:30], "little"
            ) & 0x3FFF
    return None


def _jpeg_looks_truncated(path: Path) -> bool:
    """True for a JPEG without its end-of-image marker (FF D9): not at the end (trailing NULs
    and whitespace ignored), nor after its first scan. Phones' "motion photos" and other files
    append data (a video) after a complete JPEG: the marker is then found where the scan ends.
    The whole file is read only when its end is not the marker."""
    with path.open("rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            return False
        f.seek(max(0, path.stat().st_size - 4096))
        if f.read().rstrip(b"\x00 \t\r\n").endswith(b"\xff\xd9"):
            return False
        f.seek(0)
        data = f.read()
    return data.find(b"\xff\xd9", _first_scan(data)) < 0


def _first_scan(data: bytes) -> int:
    """Offset of a JPEG's first SOS (start of scan) marker, found by walking the header segments
    by their lengths (an EXIF thumbnail in them holds an FF D9 of its own); after it, FF D9 can
    only be the end of the image (entropy-coded data escapes FF as FF 00). Where the segments
    do not parse, the offset reached so far."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:
            return pos
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return min(pos, len(data))


def _check_file(path: Path, limit: int, name: str) -> bool:
    """Refuse what cannot or must not be decoded (missing, not a regular file, empty, declared
    size over ``limit`` or empty); returns whether the file is a JPEG without its end marker."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot access it: {e.strerror or e}") from e
    except ValueError as e:  # "embedded null byte": not a name a file can have
        raise ValueError(f"{name}: not a usable file name ({e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{name}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name}: not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ValueError(f"{name}: empty file (0 bytes)")
    try:
        size = _header_size(path)
        truncated = _jpeg_looks_truncated(path)
    except OSError as e:
        raise ValueError(f"{name}: cannot read it: {e.strerror or e}") from e
    if size is not None and size[0] * size[1] > limit:
        raise ValueError(
            f"{name}: declared size {size[0]}x{size[1]} = {size[0] * size[1]} pixels exceeds the "
            f"limit of {limit} pixels (a decompression bomb?); raise it with max_pixels or ${ENV_MAX_PIXELS}"
        )
    if size is not None and min(size) == 0:
        raise ValueError(f"{name}: header declares an empty image ({size[0]}x{size[1]})")
    return truncated


def opencv_can_open(path: str | os.PathLike[str]) -> bool:
    """Whether OpenCV can be given ``path`` by name: its bindings pass names as UTF-8, and a name
    that is not (a Linux file name with undecodable bytes, held by Python as lone surrogates,
    e.g. ``os.fsdecode(b"x\\xff.png")``) crashes the process inside ``cv2.imread`` and
    ``cv2.VideoCapture`` (a segmentation fault with OpenCV 5.1)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_file(path: Path, limit: int) -> np.ndarray:
    name = f"image {str(path)!r}"
    truncated = _check_file(path, limit, name)
    if opencv_can_open(path):
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    else:  # the same decoder on the file's bytes (EXIF orientation, 16-bit scaling alike)
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as e:
            raise ValueError(f"{name}: cannot read it: {e.strerror or e}") from e
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f"{name}: OpenCV could not decode it (corrupt, truncated or unsupported format)")
    if truncated:
        logger.warning(
            "%s: JPEG without an end-of-image marker (truncated?); decoded as far as OpenCV could, "
            "like upstream, the missing part grey",
            name,
        )
    if decoded.shape[0] * decoded.shape[1] > limit:
        raise ValueError(
            f"{name}: decoded size {decoded.shape[1]}x{decoded.shape[0]} exceeds the limit of {limit} pixels"
        )
    return to_bgr(decoded, name=name)


def load_image(image: ImageInput, *, max_pixels: int | None = None, name: str = "image") -> np.ndarray:
    """Load a path or convert an array into C-contiguous BGR uint8 (H, W, 3).

    Args:
        image: a path or an array (see the module docstring for accepted forms and conversions).
        max_pixels: files whose header (or, for formats without a parsed header, decoded image)
            has more pixels are refused; ``None``: ``$AFD_TRT_MAX_PIXELS`` or ``DEFAULT_MAX_PIXELS``.
            Arrays are already in memory and not limited.
        name: how errors refer to an array input (paths are named by themselves).

    Raises:
        TypeError: not an array or path, or an array whose dtype is not uint8.
        ValueError: bad shape, empty, missing, unreadable, undecodable or too large.
    """
    if isinstance(image, np.ndarray):
        return to_bgr(image, name=name)
    if isinstance(image, (str, os.PathLike)):
        raw = os.fspath(image)
        if not isinstance(raw, str):
            raise TypeError(f"{name}: expected a str path, got bytes {raw!r}"[:200])
        if not raw:
            raise ValueError(f"{name}: empty path")
        return _load_file(Path(raw), max_pixels_limit(max_pixels))
    raise TypeError(f"{name}: expected a numpy array or a path, got {_describe(image)}")
