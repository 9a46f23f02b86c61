"""Plain numpy references for the landmark ops (face-crop warp, flip merge, heatmap decoding).

Written from the semantics of OpenCV's warpAffine and mmpose 0.x's top-down decoding; slow and
simple on purpose. Conventions: images are (H, W, 3) uint8, pixel centres at integer coordinates;
affine matrices are float64 (2, 3) forward maps source -> crop; heatmaps are float32 (N, K, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

PIXEL_STD = 200.0


# ---------------------------------------------------------------------------------------------
# Crop matrices
# ---------------------------------------------------------------------------------------------


def box_center_scale(box_xyxy: Sequence[float], aspect: float = 1.0, padding: float = 1.25):
    """mmpose ``bbox_xywh2cs`` of an (x1, y1, x2, y2) box: float32 center (2,), scale (2,)."""
    box = np.asarray(box_xyxy, dtype=np.float32)
    x, y = box[0], box[1]
    w, h = box[2] - box[0], box[3] - box[1]
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect * h:
        h = w * 1.0 / aspect
    elif w < aspect * h:
        w = h * aspect
    scale = np.array([w, h], dtype=np.float32) / PIXEL_STD * padding
    return center, scale.astype(np.float32)


def face_affine(
    center: NDArray[np.float32], scale: NDArray[np.float32], out_size: tuple[int, int], rot_deg: float = 0.0
) -> NDArray[np.float64]:
    """Forward affine (2, 3) float64 mapping the box of ``scale * 200`` px around ``center`` onto an
    ``out_size`` crop, built from three float32 point pairs like mmpose ``get_affine_transform``."""
    size = scale * PIXEL_STD
    w_out, h_out = out_size
    rad = np.pi * rot_deg / 180.0
    sn, cs = np.sin(rad), np.cos(rad)
    src_dir = np.array([-(size[0] * -0.5) * sn, (size[0] * -0.5) * cs])

    def third(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        d = a - b
        return b + np.array([-d[1], d[0]], dtype=np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + src_dir
    src[2] = third(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [w_out * 0.5, h_out * 0.5]
    dst[1] = np.array([w_out * 0.5, h_out * 0.5]) + np.array([0.0, w_out * -0.5])
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def invert_affine(m: NDArray[np.float64]) -> NDArray[np.float64]:
    """The inverse cv::warpAffine samples with (double math, reciprocal determinant)."""
    m = np.asarray(m, dtype=np.float64).reshape(6)
    d = m[0] * m[4] - m[1] * m[3]
    d = 1.0 / d if d != 0 else 0.0
    r = np.zeros(6)
    r[0], r[1], r[3], r[4] = m[4] * d, m[1] * -d, m[3] * -d, m[0] * d
    r[2] = -r[0] * m[2] - r[1] * m[5]
    r[5] = -r[3] * m[2] - r[4] * m[5]
    return r


def _gather_zero(image: NDArray[np.uint8], iy: NDArray[np.int64], ix: NDArray[np.int64]) -> NDArray[np.int64]:
    """image[iy, ix] (int64, (h, w, 3)) with 0 where (iy, ix) is outside the image."""
    rows, cols = image.shape[:2]
    inside = (iy >= 0) & (iy < rows) & (ix >= 0) & (ix < cols)
    vals = image[np.clip(iy, 0, rows - 1), np.clip(ix, 0, cols - 1)].astype(np.int64)
    return np.where(inside[..., None], vals, 0)


# ---------------------------------------------------------------------------------------------
# Warp: OpenCV 4.x fixed point
# ---------------------------------------------------------------------------------------------


def warp_opencv4(
    image: NDArray[np.uint8], m: NDArray[np.float64], out_size: tuple[int, int]
) -> NDArray[np.uint8]:
    """cv2.warpAffine(image, m, out_size, INTER_LINEAR, BORDER_CONSTANT 0) of OpenCV 4.x:
    coordinates rounded to 1/1024 px, floored to 1/32 px, 15-bit bilinear weights."""
    w_out, h_out = out_size
    inv = invert_affine(m)
    xs = np.arange(w_out, dtype=np.float64)
    ys = np.arange(h_out, dtype=np.float64)
    x0 = np.rint((inv[1] * ys + inv[2]) * 1024.0).astype(np.int64) + 16
    y0 = np.rint((inv[4] * ys + inv[5]) * 1024.0).astype(np.int64) + 16
    ax_ = np.rint(inv[0] * xs * 1024.0).astype(np.int64)
    ay_ = np.rint(inv[3] * xs * 1024.0).astype(np.int64)
    gx = (x0[:, None] + ax_[None, :]) >> 5
    gy = (y0[:, None] + ay_[None, :]) >> 5
    ix, iy, fx, fy = gx >> 5, gy >> 5, gx & 31, gy & 31
    w00 = ((32 - fx) * (32 - fy) * 32)[..., None]
    w01 = (fx * (32 - fy) * 32)[..., None]
    w10 = ((32 - fx) * fy * 32)[..., None]
    w11 = (fx * fy * 32)[..., None]
    s = (
        _gather_zero(image, iy, ix) * w00
        + _gather_zero(image, iy, ix + 1) * w01
        + _gather_zero(image, iy + 1, ix) * w10
        + _gather_zero(image, iy + 1, ix + 1) * w11
    )
    return np.clip((s + (1 << 14)) >> 15, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Warp: OpenCV 5.x float32
# ---------------------------------------------------------------------------------------------


def fma32(a: NDArray[np.float32], b: NDArray[np.float32], c: NDArray[np.float32]) -> NDArray[np.float32]:
    """Correctly rounded float32 a * b + c (one rounding), via float64 and round-to-odd.

    a * b is exact in float64 (24 + 24 bits); the float64 sum is made "sticky" (its last bit
    set when inexact) so that the final rounding to float32 is the correctly rounded one.
    """
    a64 = np.asarray(a, np.float32).astype(np.float64)
    b64 = np.asarray(b, np.float32).astype(np.float64)
    c64 = np.asarray(c, np.float32).astype(np.float64)
    p = a64 * b64
    s = p + c64
    # TwoSum error of s = p + c (exact): s + err == p + c.
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    bits = s.view(np.int64)
    inexact = err != 0
    even = (bits & 1) == 0
    toward = np.where(err > 0, np.inf, -np.inf)
    s = np.where(inexact & even, np.nextafter(s, toward), s)
    return s.astype(np.float32)


def warp_opencv5(
    image: NDArray[np.uint8], m: NDArray[np.float64], out_size: tuple[int, int], lanes: int = 16
) -> NDArray[np.uint8]:
    """cv2.warpAffine(image, m, out_size, INTER_LINEAR, BORDER_CONSTANT 0) of OpenCV 5.x:
    float32 inverse matrix, x = fma(M0, x, fl(y*M1) + M2) (the last ``out_w % lanes`` columns:
    fl(fma(x, M0, fl(y*M1)) + M2)), fma lerps, round half to even."""
    w_out, h_out = out_size
    mf = invert_affine(m).astype(np.float32)
    xs = np.arange(w_out, dtype=np.float32)[None, :].repeat(h_out, 0)
    ys = np.arange(h_out, dtype=np.float32)[:, None].repeat(w_out, 1)
    row_x = ys * mf[1] + mf[2]
    row_y = ys * mf[4] + mf[5]
    sx = fma32(np.full_like(xs, mf[0]), xs, row_x)
    sy = fma32(np.full_like(xs, mf[3]), xs, row_y)
    tail = slice(w_out - w_out % lanes, w_out)
    sx[:, tail] = fma32(xs[:, tail], np.full_like(xs[:, tail], mf[0]), ys[:, tail] * mf[1]) + mf[2]
    sy[:, tail] = fma32(xs[:, tail], np.full_like(xs[:, tail], mf[3]), ys[:, tail] * mf[4]) + mf[5]
    outside = ~((sx >= -1) & (sx < image.shape[1]) & (sy >= -1) & (sy < image.shape[0]))
    sx = np.where(outside, 0, sx).astype(np.float32)
    sy = np.where(outside, 0, sy).astype(np.float32)
    flx, fly = np.floor(sx), np.floor(sy)
    ix, iy = flx.astype(np.int64), fly.astype(np.int64)
    ax = (sx - flx)[..., None].astype(np.float32)
    ay = (sy - fly)[..., None].astype(np.float32)
    p00 = _gather_zero(image, iy, ix).astype(np.float32)
    p01 = _gather_zero(image, iy, ix + 1).astype(np.float32)
    p10 = _gather_zero(image, iy + 1, ix).astype(np.float32)
    p11 = _gather_zero(image, iy + 1, ix + 1).astype(np.float32)
    top = fma32(np.broadcast_to(ax, p00.shape), p01 - p00, p00)
    bottom = fma32(np.broadcast_to(ax, p00.shape), p11 - p10, p10)
    v = fma32(np.broadcast_to(ay, p00.shape), bottom - top, top)
    out = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    out[outside] = 0
    return out


def normalise_like_upstream(
    crops_rgb: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """anime-face-detector's batch: uint8 (N, h, w, 3) RGB -> float32 (N, 3, h, w),
    ``/ 255``, ``- mean``, ``/ std`` with torch float32 ops, as LandmarkModel.detect does."""
    import torch

    batch = torch.from_numpy(crops_rgb.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)
    batch.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))
    return np.ascontiguousarray(batch.numpy())


# ---------------------------------------------------------------------------------------------
# Heatmaps
# ---------------------------------------------------------------------------------------------


def merge_flip(
    heatmaps: NDArray[np.float32],
    flipped: NDArray[np.float32],
    flip_pairs: Sequence[Sequence[int]],
    shift: bool,
) -> NDArray[np.float32]:
    """(heatmaps + back) / 2, back = flipped with paired channels swapped, mirrored in x, and
    (shift) moved one column right with column 0 kept."""
    back = flipped.copy()
    for left, right in flip_pairs:
        back[:, left] = flipped[:, right]
        back[:, right] = flipped[:, left]
    back = back[..., ::-1].copy()
    if shift:
        back[..., 1:] = back[..., :-1].copy()
    return ((heatmaps + back) / np.float32(2)).astype(np.float32)


def blur_zero_padded(heatmap: NDArray[np.float32], kernel: int) -> NDArray[np.float64]:
    """Separable Gaussian blur (cv2.getGaussianKernel(kernel, 0)) of one (H, W) map with zeros
    outside, in float64."""
    k = cv2.getGaussianKernel(kernel, 0, ktype=cv2.CV_32F)[:, 0].astype(np.float64)
    r = kernel // 2
    padded = np.pad(heatmap.astype(np.float64), r)
    rows = np.stack([np.convolve(row, k, mode="valid") for row in padded])
    return np.stack([np.convolve(col, k, mode="valid") for col in rows.T]).T


def _dark_offset(heatmap: NDArray[np.float32], px: int, py: int, kernel: int) -> tuple[float, float]:
    blurred = blur_zero_padded(heatmap, kernel)
    blurred *= float(heatmap.max()) / blurred.max()
    lg = np.log(np.maximum(blurred, 1e-10))
    dx = 0.5 * (lg[py, px + 1] - lg[py, px - 1])
    dy = 0.5 * (lg[py + 1, px] - lg[py - 1, px])
    dxx = 0.25 * (lg[py, px + 2] - 2 * lg[py, px] + lg[py, px - 2])
    dyy = 0.25 * (lg[py + 2, px] - 2 * lg[py, px] + lg[py - 2, px])
    dxy = 0.25 * (lg[py + 1, px + 1] - lg[py - 1, px + 1] - lg[py + 1, px - 1] + lg[py - 1, px - 1])
    det = dxx * dyy - dxy * dxy
    if abs(det) < 1e-12:
        return 0.0, 0.0
    return -(dyy * dx - dxy * dy) / det, -(dxx * dy - dxy * dx) / det


def decode(
    heatmaps: NDArray[np.float32],
    centers: NDArray[np.float32],
    box_sizes: NDArray[np.float32],
    mode: str,
    kernel: int = 11,
) -> NDArray[np.float32]:
    """(N, K, 3) (x, y, score) in image pixels; "dark" in float64 (a singular Hessian, |det| <
    1e-12, means no offset), "quarter" / "none" exact."""
    n, k, h, w = heatmaps.shape
    out = np.zeros((n, k, 3), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j]
            idx = int(np.argmax(hm))
            score = hm.reshape(-1)[idx]
            x, y = (float(idx % w), float(idx // w)) if score > 0 else (-1.0, -1.0)
            px, py = int(x), int(y)
            if mode == "dark" and 1 < px < w - 2 and 1 < py < h - 2:
                ox, oy = _dark_offset(hm, px, py, kernel)
                x, y = x + ox, y + oy
            elif mode == "quarter" and 1 < px < w - 1 and 1 < py < h - 1:
                x += 0.25 * float(np.sign(hm[py, px + 1] - hm[py, px - 1]))
                y += 0.25 * float(np.sign(hm[py + 1, px] - hm[py - 1, px]))
            bw, bh = box_sizes[i]
            out[i, j, 0] = np.float32(x) * (bw / np.float32(w)) + centers[i, 0] - bw * np.float32(0.5)
            out[i, j, 1] = np.float32(y) * (bh / np.float32(h)) + centers[i, 1] - bh * np.float32(0.5)
            out[i, j, 2] = score
    return out


def smooth_heatmaps(
    rng: np.random.Generator, n: int, k: int, h: int = 64, w: int = 64
) -> NDArray[np.float32]:
    """Random heatmaps: 1-3 Gaussian blobs (centres may be off the map) plus noise; ~10% of maps
    shifted to a non-positive maximum."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((n, k, h, w), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            for _ in range(int(rng.integers(1, 4))):
                cx, cy = rng.uniform(-3, w + 2), rng.uniform(-3, h + 2)
                s = rng.uniform(0.8, 4.0)
                amp = rng.uniform(0.05, 1.0)
                out[i, j] += (amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))).astype(
                    np.float32
                )
            noise = float(rng.choice([0.0, 1e-3, 1e-2]))
            out[i, j] += rng.normal(0.0, noise, (h, w)).astype(np.float32)
            if rng.random() < 0.1:
                out[i, j] -= np.float32(2.0)
    return out
