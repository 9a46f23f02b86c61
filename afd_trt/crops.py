"""Face crops for dataset curation: aligned by landmarks, or the (expanded, squared) box.

Coordinates: image points are OpenCV pixel-centre coordinates (pixel ``(i, j)`` is the point
``x = j, y = i``; the image spans ``[-0.5, W - 0.5]``), as are keypoints and boxes of
``Detector`` results. A crop of ``size`` pixels spans ``[-0.5, size - 0.5]`` the same way.
Every crop is ``cv2.warpAffine`` of the image by a 2x3 float64 matrix mapping image points to
crop points; when the crop shrinks the face (scale < 1) the source region is first reduced with
``cv2.INTER_AREA`` so that small crops of large faces are not aliased.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "ALIGN_TEMPLATE",
    "BORDERS",
    "MAX_CROP_SIZE",
    "aligned_crop_matrix",
    "alignment_points",
    "box_crop_matrix",
    "crop_name",
    "similarity_transform",
    "source_tag",
    "warp_crop",
]

# Five alignment points: the two eye centres (means of each eye's six lid points, 11-16 and
# 17-22), the nose (23) and the two mouth corners (24, 26). Template: a symmetrised frontal face
# measured on upstream's demo face, eye distance a quarter of the crop, eye line at mid-height,
# in units of the crop side (0 = left/top edge, 1 = right/bottom edge). "Right" is the
# character's right, i.e. the image's left.
ALIGN_TEMPLATE = np.array(
    [
        [0.375, 0.5],  # right eye centre
        [0.625, 0.5],  # left eye centre
        [0.5, 0.565],  # nose
        [0.4675, 0.615],  # right mouth corner
        [0.5325, 0.615],  # left mouth corner
    ],
    dtype=np.float64,
)

BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}


def alignment_points(keypoints: np.ndarray) -> np.ndarray:
    """The five alignment points of one face.

    Args:
        keypoints: (28, 2) or (28, 3) ``[x, y(, score)]`` in image pixel-centre coordinates.

    Returns:
        float64 (5, 2): right eye centre, left eye centre, nose, right and left mouth corners.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[0] != 28 or kp.shape[1] not in (2, 3):
        raise ValueError(f"alignment_points: keypoints must have shape (28, 2) or (28, 3), got {kp.shape}")
    xy = kp[:, :2]
    return np.stack([xy[11:17].mean(axis=0), xy[17:23].mean(axis=0), xy[23], xy[24], xy[26]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    ``src`` to ``dst``: minimises ``sum |M @ [src_i, 1] - dst_i|^2``.

    Args:
        src, dst: (N, 2) points, N >= 2, not all ``src`` equal.

    Returns:
        float64 (2, 3) ``[[a, -b, tx], [b, a, ty]]``.
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape != d.shape or len(s) < 2:
        raise ValueError(
            f"similarity_transform: src and dst must both be (N >= 2, 2), got {s.shape} and {d.shape}"
        )
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise ValueError("similarity_transform: points must be finite")
    ms, md = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - ms, d - md
    norm = float((sc**2).sum())
    if norm <= 1e-12:
        raise ValueError("similarity_transform: the source points coincide")
    a = float((sc[:, 0] * dc[:, 0] + sc[:, 1] * dc[:, 1]).sum()) / norm
    b = float((sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum()) / norm
    rot = np.array([[a, -b], [b, a]])
    t = md - rot @ ms
    return np.hstack([rot, t[:, None]])


def aligned_crop_matrix(keypoints: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """Image -> crop matrix aligning a face's landmarks to ``ALIGN_TEMPLATE``.

    Args:
        keypoints: (28, 2) or (28, 3) face landmarks, image pixel-centre coordinates.
        size: crop side in pixels.
        scale: zoom about the crop centre (2.0: the face twice as large, a tighter crop).

    Returns:
        float64 (2, 3) for ``warp_crop``.
    """
    _check_size(size)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"aligned_crop_matrix: scale must be a positive number, got {scale!r}")
    template = (0.5 + (ALIGN_TEMPLATE - 0.5) * scale) * size - 0.5
    return similarity_transform(alignment_points(keypoints), template)


def box_crop_matrix(bbox: np.ndarray, size: int, margin: float = 1.0) -> np.ndarray:
    """Image -> crop matrix of a square around a box: side ``max(w, h) * margin``, same centre.

    Args:
        bbox: ``[x0, y0, x1, y1(, score)]`` image coordinates.
        size: crop side in pixels.
        margin: enlargement of the square about the box centre.

    Returns:
        float64 (2, 3): the square's edges map to the crop's edges (``-0.5`` and ``size - 0.5``).
    """
    _check_size(size)
    b = np.asarray(bbox, dtype=np.float64).reshape(-1)
    if b.shape[0] < 4 or not np.isfinite(b[:4]).all():
        raise ValueError(f"box_crop_matrix: bbox must be 4 or 5 finite numbers, got {b.tolist()}")
    side = max(b[2] - b[0], b[3] - b[1]) * margin
    if not side > 0:
        raise ValueError(f"box_crop_matrix: empty box {b[:4].tolist()} (margin {margin})")
    s = size / side
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    c = (size - 1) / 2
    return np.array([[s, 0.0, c - s * cx], [0.0, s, c - s * cy]])


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int, border: str = "constant") -> np.ndarray:
    """Warp ``image`` into a ``size`` x ``size`` crop by ``matrix`` (image -> crop points).

    Args:
        image: uint8 (H, W, 3) BGR (or (H, W) / (H, W, C)).
        matrix: float64 (2, 3) similarity, e.g. from ``aligned_crop_matrix``.
        size: crop side in pixels.
        border: ``"constant"`` (black), ``"replicate"`` or ``"reflect"`` outside the image.

    Returns:
        (size, size, C) array of ``image``'s dtype. Bilinear sampling; when the matrix shrinks
        (scale < 1) the covered source region is first reduced with ``INTER_AREA``.
    """
    _check_size(size)
    if border not in BORDERS:
        raise ValueError(f"warp_crop: border must be one of {sorted(BORDERS)}, got {border!r}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"warp_crop: matrix must be a finite (2, 3) array, got shape {m.shape}")
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale <= 0:
        raise ValueError("warp_crop: singular matrix")
    src = image
    if scale < 1.0:
        # Source rectangle covering the crop (plus a pixel of context), clipped to the image.
        inv = cv2.invertAffineTransform(m)
        corners = np.array(
            [[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]]
        )
        pts = corners @ inv.T
        h, w = image.shape[:2]
        x0 = int(np.clip(np.floor(pts[:, 0].min()) - 2, 0, w))
        y0 = int(np.clip(np.floor(pts[:, 1].min()) - 2, 0, h))
        x1 = int(np.clip(np.ceil(pts[:, 0].max()) + 3, 0, w))
        y1 = int(np.clip(np.ceil(pts[:, 1].max()) + 3, 0, h))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            region = image[y0:y1, x0:x1]
            rw, rh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            src = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
            fx, fy = rw / (x1 - x0), rh / (y1 - y0)
            # region point p (pixel centres) -> reduced point (p + 0.5) * f - 0.5; image point q -> q - (x0, y0).
            reduce = np.array([[fx, 0.0, fx * (0.5 - x0) - 0.5], [0.0, fy, fy * (0.5 - y0) - 0.5], [0, 0, 1]])
            # crop = m @ image = (m @ reduce^-1) @ reduced
            m = m @ np.linalg.inv(reduce)
    return cv2.warpAffine(
        src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=BORDERS[border], borderValue=(0, 0, 0)
    )


def source_tag(source: str, frame: int | None = None) -> str:
    """A stable, file-name-safe tag of an input: ``<stem>_<8 hex of sha1(path)>[_frame<N>]``.

    ``source`` is the input's path as recorded (the journal key); the hash is of its absolute
    form, so the same file gives the same tag in every run, and equal stems from different
    folders stay apart, also when runs given relative paths from different working folders share
    one crops folder (hashing the path as typed gave both ``a.png`` the same names: the second
    run's crops replaced the first's).
    """
    stem = Path(source).stem or "input"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    digest = hashlib.sha1(os.fsencode(os.path.abspath(source))).hexdigest()[:8]
    tag = f"{safe}_{digest}"
    return tag if frame is None else f"{tag}_frame{frame:06d}"


def crop_name(source: str, face_index: int, frame: int | None = None, ext: str = "png") -> str:
    """File name of a face crop: ``<source_tag>_f<face index>.<ext>``."""
    return f"{source_tag(source, frame)}_f{face_index:02d}.{ext}"


MAX_CROP_SIZE = 8192
"""The largest crop side: 192 MiB of BGR pixels (OpenCV was asked for terabytes, and failed)."""


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 1 <= size <= MAX_CROP_SIZE:
        raise ValueError(f"crop size must be an integer from 1 to {MAX_CROP_SIZE}, got {size!r}")
