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


OPENCV_LANES = 8  # float32 lanes of OpenCV's AVX2 separable filter (the tail of a row is scalar)


def blur_like_opencv(heatmap: NDArray[np.float32], kernel: int) -> NDArray[np.float32]:
    """What upstream gets from ``cv2.GaussianBlur(np.pad(heatmap, kernel // 2), (kernel, kernel), 0)``
    cropped back to (H, W): float32 (H, W), rounded like OpenCV 5's float32 separable filter on
    AVX2/FMA CPUs (the zero padding hides OpenCV's border rule).

    Kernel: ``cv2.getGaussianKernel(kernel, 0, CV_32F)``. Rows (over the padded width
    Wp = W + kernel - 1): taps accumulated left to right with fma; kernel 3 and 5 (OpenCV's small
    symmetric row filter): ``fma(pair2, k, fma(centre, k, k * pair1))``. Columns: ``k[r] * centre``,
    then ``fma(k[r + j], up_j + down_j, acc)`` for j = 1..r, except in the last ``Wp % 8`` padded
    columns, where the product is rounded before the add.
    """
    k = cv2.getGaussianKernel(kernel, 0, ktype=cv2.CV_32F)[:, 0]
    r = kernel // 2
    h, w = heatmap.shape
    padded = np.pad(heatmap.astype(np.float32), r)  # (H + 2r, W + 2r)
    wp = w + 2 * r

    def full(v: np.float32, like: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.full_like(like, v)

    cols = [padded[:, j : j + w] for j in range(kernel)]  # tap j of each kept column
    if kernel <= 5:
        centre = cols[r]
        rows = fma32(centre, full(k[r], centre), (k[r + 1] * (cols[r - 1] + cols[r + 1])).astype(np.float32))
        if kernel == 5:
            rows = fma32(cols[4] + cols[0], full(k[4], centre), rows)
    else:
        rows = np.zeros_like(cols[0])
        for j in range(kernel):
            rows = fma32(full(k[j], rows), cols[j], rows)
    rows = rows.astype(np.float32)  # (H + 2r, W): row-filtered, padding rows included (zeros)
    out = (k[r] * rows[r : r + h]).astype(np.float32)
    tail = np.arange(w) + r >= wp - wp % OPENCV_LANES  # padded-width tail: mul + add
    for j in range(1, r + 1):
        pair = (rows[r - j : r - j + h] + rows[r + j : r + j + h]).astype(np.float32)
        fused = fma32(full(k[r + j], pair), pair, out)
        unfused = (out + (k[r + j] * pair).astype(np.float32)).astype(np.float32)
        out = np.where(tail[None, :], unfused, fused).astype(np.float32)
    return out


def inverse_like_numpy(h: NDArray[np.float32]) -> NDArray[np.float32]:
    """``np.linalg.inv`` of a float32 (2, 2) matrix as numpy 2.x with its OpenBLAS returns it:
    the partial-pivoting LU inverse computed in double, rounded to float32."""
    return np.linalg.inv(h.astype(np.float64)).astype(np.float32)


def _dark_offset(heatmap: NDArray[np.float32], px: int, py: int, kernel: int) -> NDArray[np.float32] | None:
    """Upstream's float32 DARK step at integer peak (px, py): float32 (2,) offset, or None where
    the float32 Hessian determinant is 0."""
    f32 = np.float32
    blurred = blur_like_opencv(heatmap, kernel)
    blurred *= heatmap.max() / blurred.max()  # float32 scalar ratio, float32 products
    lg = np.log(np.maximum(blurred, f32(1e-10)))  # numpy's own float32 log
    dx = f32(0.5) * (lg[py, px + 1] - lg[py, px - 1])
    dy = f32(0.5) * (lg[py + 1, px] - lg[py - 1, px])
    dxx = f32(0.25) * (lg[py, px + 2] - f32(2) * lg[py, px] + lg[py, px - 2])
    dxy = f32(0.25) * (lg[py + 1, px + 1] - lg[py - 1, px + 1] - lg[py + 1, px - 1] + lg[py - 1, px - 1])
    dyy = f32(0.25) * (lg[py + 2, px] - f32(2) * lg[py, px] + lg[py - 2, px])
    if dxx * dyy - dxy**2 == 0:  # float32 scalar power (libm powf) as upstream; NaN goes on
        return None
    inv = inverse_like_numpy(np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float32))
    derivative = np.array([dx, dy], dtype=np.float32)
    return -(inv[:, 0] * derivative[0] + inv[:, 1] * derivative[1])  # float32 products, then sum


def decode(
    heatmaps: NDArray[np.float32],
    centers: NDArray[np.float32],
    box_sizes: NDArray[np.float32],
    mode: str,
    kernel: int = 11,
) -> NDArray[np.float32]:
    """(N, K, 3) (x, y, score) in image pixels, float32 as upstream ("dark": see _dark_offset)."""
    n, k, h, w = heatmaps.shape
    out = np.zeros((n, k, 3), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            hm = heatmaps[i, j]
            idx = int(np.argmax(hm))
            score = hm.reshape(-1)[idx]
            xy = np.array([idx % w, idx // w] if score > 0 else [-1, -1], dtype=np.float32)
            px, py = int(xy[0]), int(xy[1])
            if mode == "dark" and 1 < px < w - 2 and 1 < py < h - 2:
                with np.errstate(all="ignore"):
                    offset = _dark_offset(hm, px, py, kernel)
                if offset is not None:
                    xy += offset
            elif mode == "quarter" and 1 < px < w - 1 and 1 < py < h - 1:
                xy[0] += np.float32(0.25) * np.sign(hm[py, px + 1] - hm[py, px - 1])
                xy[1] += np.float32(0.25) * np.sign(hm[py + 1, px] - hm[py - 1, px])
            bw, bh = box_sizes[i]
            out[i, j, 0] = xy[0] * (bw / np.float32(w)) + centers[i, 0] - bw * np.float32(0.5)
            out[i, j, 1] = xy[1] * (bh / np.float32(h)) + centers[i, 1] - bh * np.float32(0.5)
            out[i, j, 2] = score
    return out


def numpy_log_model(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """numpy's float32 ``np.log`` on x86-64 with AVX2/FMA3 or AVX512F (its SIMD loop), for x > 0:
    x = m * 2^e with m in (sqrt(1/2), sqrt(2)], log = fma(e, ln2, P(m - 1) / Q(m - 1)), P and Q
    degree-5 Horner chains of fma. (libm's logf rounds differently on ~14% of inputs.)"""
    f32 = np.float32
    p = [
        f32(v)
        for v in (
            0.0,
            0.9999999999999998702752,
            2.112677543073053063722,
            1.480000633576506585156,
            0.3808837741388407920751,
            0.02589979117907922693523,
        )
    ]
    q = [
        f32(v)
        for v in (
            1.0,
            2.612677543073109236779,
            2.453006071784736363091,
            0.9864942958519418960339,
            0.1546476374983906719538,
            0.005875095403124574342950,
        )
    ]
    m, e = np.frexp(np.asarray(x, dtype=f32))  # m in [0.5, 1)
    m, e = m.astype(f32), e.astype(f32)
    low = m <= f32(0.707106781186547524400844362104849039)
    m = np.where(low, m + m, m).astype(f32)
    e = np.where(low, e - f32(1), e).astype(f32)
    y = (m - f32(1)).astype(f32)
    num, den = np.full_like(y, p[5]), np.full_like(y, q[5])
    for i in range(4, -1, -1):
        num = fma32(num, y, np.full_like(y, p[i]))
        den = fma32(den, y, np.full_like(y, q[i]))
    return fma32(e, np.full_like(y, f32(0.693147180559945309417232121458176568)), (num / den).astype(f32))


def flat_heatmaps(rng: np.random.Generator, n: int, k: int, h: int = 64, w: int = 64) -> NDArray[np.float32]:
    """Nearly flat maps like those of randomly initialised networks: a plateau (0.02-0.2), a wide
    low bump (<= 0.01) and noise of 1e-5 to 3e-4, so the DARK Newton step is ill-conditioned and
    amplifies any rounding difference (to whole pixels)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((n, k, h, w), dtype=np.float32)
    for i in range(n):
        for j in range(k):
            cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
            s = rng.uniform(6, 30)
            bump = rng.uniform(0.0, 0.01) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
            noise = rng.normal(0.0, 10 ** rng.uniform(-5, -3.5), (h, w))
            out[i, j] = (rng.uniform(0.02, 0.2) + bump + noise).astype(np.float32)
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
