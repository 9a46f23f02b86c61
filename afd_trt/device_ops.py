"""Torch versions of the pipeline's image ops, for keeping images on the GPU.

On a GPU the host-side path would send every face crop up (3x256x256 float32, twice with the
flip test) and both heatmap sets down. These functions run on whatever device their tensors
live on, so the decoded image goes up once (as uint8) and only the merged heatmaps come back.

Each one reproduces its host counterpart value for value, on any device (the tests compare
them with the C++ ops and OpenCV on the CPU):

- :func:`warp_crops` = ``ops.warp_crops`` (OpenCV 4's fixed-point or OpenCV 5's float32 warp
  arithmetic, then the float32 normalisation). OpenCV 5's kernel uses fused multiply-adds,
  which torch has no operator for: :func:`fma_f32` computes them exactly in float64 with
  round-to-odd, so the final rounding to float32 is the single rounding of a real FMA.
- :func:`merge_flip` = ``ops.merge_flip`` (the flip-test average).
- :func:`normalize_pad` = the float part of ``preprocess.prepare_detector_input``.
- :func:`resize_linear` = ``cv2.resize(INTER_LINEAR)`` of uint8 images (11-bit fixed-point
  weights and OpenCV's vectorised rounding; exact 2x reductions switch to its area average),
  for images decoded on the GPU (``Detector(jpeg_decoder="torchvision")``); host images are
  resized by OpenCV itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "Pixels",
    "download",
    "flip_sources",
    "fma_f32",
    "invert_affines",
    "is_out_of_memory",
    "merge_flip",
    "normalize_pad",
    "resize_linear",
    "to_host",
    "upload",
    "warp_crops",
    "with_index",
]

_OPENCV5_LANES = 16  # see csrc/warp_affine.cpp: OpenCV's vector loop width, scalar loop after it
_CHUNK = 16  # crops warped per step: bounds the temporaries (~100 B per output pixel)


Pixels = np.ndarray | torch.Tensor
"""A decoded BGR uint8 (H, W, 3) image: a host array, or a tensor on a device (decoded there)."""


def with_index(device: torch.device) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> ``cuda:<current device>``), so that
    runtimes told a device index (ONNX Runtime, TensorRT, CUDA graphs) use the GPU torch uses;
    other devices unchanged."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device())


# The allocator's message, and cuBLAS's / cuDNN's when the caching allocator holds the memory
# they try to allocate for themselves (CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED).
_OOM_MESSAGES = ("out of memory", "status_alloc_failed")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e``, or an exception it was raised from or while handling, is a device running
    out of memory (``torch.OutOfMemoryError``, a runtime's "out of memory", a CUDA library's
    allocation failure)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, torch.cuda.OutOfMemoryError) or (
            isinstance(cur, RuntimeError) and any(m in str(cur).lower() for m in _OOM_MESSAGES)
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def to_host(image: Pixels) -> np.ndarray:
    """``image`` as a host numpy array (a tensor is copied back; an array is returned as is)."""
    if isinstance(image, torch.Tensor):
        return np.ascontiguousarray(image.cpu().numpy())
    return image


def download(t: torch.Tensor) -> np.ndarray:
    """``t`` as a C-contiguous float32 host array, once the work queued before it has run.

    From a GPU the copy lands in pinned (page-locked) memory from torch's pinned-memory cache,
    which the DMA engine writes directly (a pageable copy is staged through a driver buffer at
    about half the rate; the heatmaps of a 16-image batch are some 60 MB). The array keeps its
    buffer alive, and the buffer returns to the cache when the array is freed.

    Args:
        t: any tensor (not differentiated), on any device.
    """
    t = t.detach()
    if t.is_cuda:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()  # the copy runs on t's device's stream
        t = host
    return np.ascontiguousarray(t.to("cpu", torch.float32).numpy())


def upload(array: Pixels, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``. To a GPU it goes through pinned (page-locked)
    memory with an asynchronous copy, so the transfer overlaps the work already queued; torch's
    pinned-memory cache keeps the staging buffer until the copy has run.

    Args:
        array: any numpy array (made C-contiguous if it is not), or a tensor (moved if needed).
    """
    if isinstance(array, torch.Tensor):
        # Non-blocking only towards a GPU: a GPU tensor brought to the host is read at once.
        return array.to(device, non_blocking=device.type == "cuda")
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32, as a hardware FMA does.

    Args:
        a, b, c: float32 tensors (broadcastable), on any device.

    Returns:
        float32. The product of two float32 values is exact in float64; the sum is rounded to
        float64 and, where that was inexact, moved to the neighbour with an odd last bit
        (round-to-odd, error from TwoSum). Rounding a round-to-odd float64 (53 bits >= 24 + 2)
        to float32 gives the correctly rounded result (Boldo & Melquiond 2008), which a plain
        float64 sum would not always (double rounding).
    """
    p = a.double() * b.double()
    cc = c.double()
    s = p + cc
    bb = s - p
    err = (p - (s - bb)) + (cc - bb)
    even = (s.view(torch.int64) & 1) == 0
    inexact = err != 0
    toward = torch.where(err > 0, torch.full_like(s, float("inf")), torch.full_like(s, float("-inf")))
    s = torch.where(inexact & even, torch.nextafter(s, toward), s)
    return s.float()


def invert_affines(matrices: np.ndarray) -> np.ndarray:
    """Inverses of forward affines, computed as ``cv2.warpAffine`` does before sampling.

    Args:
        matrices: float64 (N, 2, 3), source pixel -> crop pixel.

    Returns:
        float64 (N, 6): crop pixel -> source pixel, row-major.

    Raises:
        ValueError: a non-finite or singular matrix, naming its index.
    """
    m = np.asarray(matrices)
    if m.dtype != np.float64 or m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"matrices must be float64 (N, 2, 3), got {m.dtype} {m.shape}")
    m = m.reshape(-1, 6)
    bad = ~np.isfinite(m).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"matrices[{i}] has a non-finite entry: {m[i].tolist()}")
    det = m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3]
    with np.errstate(divide="ignore"):
        recip = 1.0 / det
    bad = (det == 0) | ~np.isfinite(recip)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"matrices[{i}] is singular (determinant {det[i]})")
    inv = np.empty_like(m)
    inv[:, 0] = m[:, 4] * recip
    inv[:, 1] = m[:, 1] * -recip
    inv[:, 3] = m[:, 3] * -recip
    inv[:, 4] = m[:, 0] * recip
    inv[:, 2] = -inv[:, 0] * m[:, 2] - inv[:, 1] * m[:, 5]
    inv[:, 5] = -inv[:, 3] * m[:, 2] - inv[:, 4] * m[:, 5]
    return inv


def _sample_coords_opencv5(inv: torch.Tensor, out_w: int, out_h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV 5's float32 source coordinates (sx, sy), each float32 (N, h, w), of every crop
    pixel; ``inv`` is float64 (N, 6) (:func:`invert_affines`)."""
    m = inv.float()[:, :, None, None]  # (N, 6, 1, 1)
    dev = inv.device
    fy = torch.arange(out_h, device=dev, dtype=torch.float32).view(1, out_h, 1)
    fx = torch.arange(out_w, device=dev, dtype=torch.float32).view(1, 1, out_w)
    m0, m1, m2, m3, m4, m5 = (m[:, i] for i in range(6))  # each (N, 1, 1)
    row_x = fy * m1 + m2  # two float32 roundings, as the C++ (no contraction)
    row_y = fy * m4 + m5
    sx = fma_f32(m0, fx, row_x)
    sy = fma_f32(m3, fx, row_y)
    tail = out_w - out_w % _OPENCV5_LANES
    if tail < out_w:  # OpenCV's scalar loop: fma(x, M0, y*M1) + M2
        ft = fx[..., tail:]
        sx[..., tail:] = fma_f32(ft, m0, fy * m1) + m2
        sy[..., tail:] = fma_f32(ft, m3, fy * m4) + m5
    return sx, sy


def warp_crops(
    image: torch.Tensor,
    matrices: np.ndarray,
    out_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    mode: str = "opencv5",
    *,
    rgb_u8: bool = False,
) -> torch.Tensor:
    """Normalised face crops from an image already on the device: ``ops.warp_crops`` in torch.

    Args:
        image: uint8 (H, W, 3) BGR, on any device.
        matrices: float64 (N, 2, 3) forward affines (source pixel -> crop pixel), on the host.
        out_size: (w, h) of every crop.
        mean, std: 3 floats each, RGB order, applied in float32 after ``/ 255``.
        mode: ``"opencv5"`` or ``"opencv4"``, the arithmetic model (see ``ops.warp_crops``).
        rgb_u8: return the uint8 crops (N, h, w, 3) in the input's channel order instead
            (``ops.warp_crops_u8``).

    Returns:
        float32 (N, 3, h, w) R, G, B on ``image.device``; equal value for value to the C++ op.
    """
    if mode not in ("opencv5", "opencv4"):
        raise ValueError(f"mode must be 'opencv5' or 'opencv4', got {mode!r}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"image must be at least 1x1, got shape {tuple(image.shape)}")
    out_w, out_h = (int(v) for v in out_size)
    if not (1 <= out_w <= 32767 and 1 <= out_h <= 32767):
        raise ValueError(f"out_size must be two ints in [1, 32767], got {out_size!r}")
    mean32 = np.asarray(mean, np.float32).reshape(-1)
    std32 = np.asarray(std, np.float32).reshape(-1)
    if mean32.shape != (3,) or std32.shape != (3,):
        raise ValueError(f"mean and std must hold 3 values each, got {mean32.shape} and {std32.shape}")
    if not np.isfinite(mean32).all() or not np.isfinite(std32).all() or (std32 == 0).any():
        raise ValueError(f"mean must be finite and std finite and non-zero, got {mean32} and {std32}")
    inv_np = invert_affines(matrices)
    dev = image.device
    n = len(inv_np)
    if n == 0:
        if rgb_u8:
            return torch.zeros((0, out_h, out_w, 3), dtype=torch.uint8, device=dev)
        return torch.zeros((0, 3, out_h, out_w), dtype=torch.float32, device=dev)
    inv = torch.from_numpy(inv_np).to(dev)
    u8 = torch.cat([_warp_u8(image, inv[s : s + _CHUNK], out_w, out_h, mode) for s in range(0, n, _CHUNK)])
    if rgb_u8:
        return u8.contiguous()
    return normalize_crops(u8, mean32, std32)


def normalize_crops(u8: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """The landmark network's input from uint8 crops, on their device: ``(u / 255 - mean) / std``
    in float32, with upstream's torch operations (a scalar division, then a broadcast tensor
    subtraction and division), so the values equal upstream's and the C++ op's.

    Args:
        u8: uint8 (N, h, w, 3) crops, B, G, R.
        mean, std: float32 (3,), R, G, B.

    Returns:
        float32 (N, 3, h, w), R, G, B.
    """
    dev = u8.device
    rgb = u8.permute(0, 3, 1, 2).flip(1).contiguous().to(torch.float32)  # planar bytes, then floats
    # By a tensor on the device: CUDA divides by a host scalar as a multiplication by its
    # reciprocal, 1 ulp off true division for about half of the 256 values (the CPU divides).
    rgb.div_(torch.tensor(255.0, device=dev))
    mean_t, std_t = (torch.from_numpy(v).to(dev).view(1, 3, 1, 1) for v in (mean, std))
    return rgb.sub_(mean_t).div_(std_t)


def _warp_u8(image: torch.Tensor, inv: torch.Tensor, out_w: int, out_h: int, mode: str) -> torch.Tensor:
    """uint8 (n, h, w, 3) crops, input channel order, for inverse affines float64 (n, 6) on
    ``image.device`` (about 100 bytes of temporaries per output pixel: call in chunks)."""
    rows, cols = int(image.shape[0]), int(image.shape[1])
    dev = image.device
    if mode == "opencv5":
        sx, sy = _sample_coords_opencv5(inv, out_w, out_h)
        inside = (sx >= -1) & (sx < cols) & (sy >= -1) & (sy < rows)  # NaN compares False
        sx = torch.where(inside, sx, torch.zeros_like(sx))
        sy = torch.where(inside, sy, torch.zeros_like(sy))
        flx, fly = sx.floor(), sy.floor()
        ix, iy = flx.long(), fly.long()
        ax, ay = sx - flx, sy - fly
    else:
        ix, iy, wx, wy, inside = _sample_coords_opencv4(inv, out_w, out_h, rows, cols)
    taps = []
    flat = image.reshape(-1)
    step = 3 * cols
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = iy + dy, ix + dx
            ok = inside & (xx >= 0) & (xx < cols) & (yy >= 0) & (yy < rows)
            at = torch.where(ok, yy * step + xx * 3, torch.zeros_like(yy))[..., None]
            at = at + torch.arange(3, device=dev)
            px = flat[at.reshape(-1)].reshape(at.shape)
            taps.append(torch.where(ok[..., None], px, torch.zeros_like(px)))  # (N, h, w, 3) uint8
    p00, p01, p10, p11 = taps
    if mode == "opencv5":
        f00, f01, f10, f11 = (t.float() for t in taps)
        axc, ayc = ax[..., None], ay[..., None]
        top = fma_f32(axc, f01 - f00, f00)
        bottom = fma_f32(axc, f11 - f10, f10)
        v = fma_f32(ayc, bottom - top, top)
        u8 = v.round().clamp(0, 255).to(torch.uint8)  # round half to even, as nearbyint
    else:
        wxc, wyc = wx[..., None], wy[..., None]
        w00, w01 = (32 - wxc) * (32 - wyc) * 32, wxc * (32 - wyc) * 32
        w10, w11 = (32 - wxc) * wyc * 32, wxc * wyc * 32
        s = p00.long() * w00 + p01.long() * w01 + p10.long() * w10 + p11.long() * w11
        u8 = ((s + (1 << 14)) >> 15).clamp(0, 255).to(torch.uint8)
    return torch.where(inside[..., None], u8, torch.zeros_like(u8))


def _round_sat_i32(v: torch.Tensor) -> torch.Tensor:
    """cvRound of float64 values saturated to int32, as int64 (NaN -> INT32_MIN, as the C++)."""
    r = v.round()
    r = torch.where(r > -2147483648.0, r, torch.full_like(r, -2147483648.0))  # NaN included
    return r.clamp(max=2147483647.0).long()


def _sample_coords_opencv4(
    inv: torch.Tensor, out_w: int, out_h: int, rows: int, cols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV 4's fixed point: source pixel (ix, iy) int64 (N, h, w), 5-bit fractions (wx, wy)
    int64 and the in-range mask (N, h, w)."""
    dev = inv.device
    m = inv[:, :, None, None]  # (N, 6, 1, 1) float64
    y = torch.arange(out_h, device=dev, dtype=torch.float64).view(1, out_h, 1)
    x = torch.arange(out_w, device=dev, dtype=torch.float64).view(1, 1, out_w)
    x0 = _round_sat_i32((m[:, 1] * y + m[:, 2]) * 1024.0) + 16
    y0 = _round_sat_i32((m[:, 4] * y + m[:, 5]) * 1024.0) + 16
    gx = (x0 + _round_sat_i32(m[:, 0] * x * 1024.0)) >> 5
    gy = (y0 + _round_sat_i32(m[:, 3] * x * 1024.0)) >> 5
    ix, iy = gx >> 5, gy >> 5
    inside = (ix < cols) & (ix + 1 >= 0) & (iy < rows) & (iy + 1 >= 0)
    return ix, iy, gx & 31, gy & 31, inside


def flip_sources(num_keypoints: int, flip_pairs: np.ndarray) -> list[int]:
    """For each keypoint k, the channel of the mirrored crop's heatmaps that lands on k after
    ``flip_back`` (pairs applied in order on the un-swapped input: the last pair naming k wins).

    Args:
        num_keypoints: K.
        flip_pairs: int (P, 2) index pairs in [0, K).
    """
    src = list(range(num_keypoints))
    for left, right in np.asarray(flip_pairs, dtype=np.int64).reshape(-1, 2).tolist():
        if not (0 <= left < num_keypoints and 0 <= right < num_keypoints):
            raise ValueError(f"flip_pairs ({left}, {right}) is out of range for K = {num_keypoints}")
        src[left], src[right] = right, left
    return src


def merge_flip(
    heatmaps: torch.Tensor, flipped: torch.Tensor, sources: Sequence[int], shift: bool
) -> torch.Tensor:
    """The flip-test average on the device: ``ops.merge_flip`` in torch, value for value.

    Args:
        heatmaps: float32 (N, K, H, W) of the crops.
        flipped: float32 (N, K, H, W) of the mirrored crops, raw.
        sources: K channel indices from :func:`flip_sources`.
        shift: move the flipped-back maps right by one column (column 0 keeps its value).

    Returns:
        float32 (N, K, H, W) = ``(heatmaps + back) / 2``.
    """
    if flipped.shape != heatmaps.shape:
        raise ValueError(
            f"flipped must have the shape of heatmaps {tuple(heatmaps.shape)}, got {tuple(flipped.shape)}"
        )
    index = torch.as_tensor(list(sources), dtype=torch.long, device=flipped.device)
    back = flipped.index_select(1, index).flip(3)
    if shift and back.shape[3] > 1:
        back = torch.cat([back[..., :1], back[..., :-1]], dim=3)
    return (heatmaps + back) / 2


def normalize_pad(
    resized: torch.Tensor, mean: Sequence[float], std: Sequence[float], pad_shape: tuple[int, int]
) -> torch.Tensor:
    """A resized BGR uint8 image to the detector's input, on its device.

    Args:
        resized: uint8 (h, w, 3) BGR (``cv2.resize`` output), on any device.
        mean, std: 3 floats each, RGB order, applied in float32 to 0..255 values.
        pad_shape: (Hp, Wp) >= (h, w); zeros below and right.

    Returns:
        float32 (3, Hp, Wp) RGB, contiguous; equal to ``prepare_detector_input(...).tensor``.
    """
    h, w = int(resized.shape[0]), int(resized.shape[1])
    hp, wp = pad_shape
    if hp < h or wp < w:
        raise ValueError(f"pad_shape {pad_shape} is smaller than the image ({h}, {w})")
    dev = resized.device
    m = torch.tensor(np.asarray(mean, np.float32), device=dev).view(3, 1, 1)
    s = torch.tensor(np.asarray(std, np.float32), device=dev).view(3, 1, 1)
    rgb = resized.flip(2).permute(2, 0, 1).float()
    out = torch.zeros((3, hp, wp), dtype=torch.float32, device=dev)
    out[:, :h, :w] = (rgb - m) / s
    return out


def _linear_taps(
    dst: int, src: int, clamp_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: source indices i0, i1 int64 (dst,) and 11-bit
    weights w0, w1 int64 (dst,).

    The fraction is float32 ``(d + 0.5) * scale - 0.5`` minus its floor; each weight is
    ``round(float32(w) * 2048)`` on its own (they may not sum to 2048). Along x a sample left
    of the first or right of the last pixel takes that pixel with weights (2048, 0)
    (``clamp_weights``); along y the weights stay and the row indices are clamped instead.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low, high = i0 < 0, i0 >= src - 1
        f[low | high] = 0
        i0[low] = 0
        i0[high] = src - 1
    w0 = np.round((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.round(f * np.float32(2048)).astype(np.int64)
    return np.clip(i0, 0, src - 1), np.clip(i0 + 1, 0, src - 1), w0, w1


def resize_linear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)`` for uint8, on any device.

    Args:
        image: uint8 (H, W, C), on any device.
        size: (w, h) of the result, each >= 1.

    Returns:
        uint8 (h, w, C) on ``image.device``, equal value for value to OpenCV (measured 0
        differing values against opencv-python-headless 5.0.0 over random sizes from 1 px to
        3072 px, up and down; the tests check it): horizontal sums ``p0*w0 + p1*w1`` exact in
        integers, then the vertical blend as OpenCV's SIMD kernel rounds it,
        ``((((s0 >> 4) * v0) >> 16) + (((s1 >> 4) * v1) >> 16) + 2) >> 2``; an exact halving of
        both sides is OpenCV's 2x2 area average ``(a + b + c + d + 2) >> 2``.
    """
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 (H, W, C), got {image.dtype} {tuple(image.shape)}")
    src_h, src_w = int(image.shape[0]), int(image.shape[1])
    w, h = (int(v) for v in size)
    if w < 1 or h < 1 or src_h < 1 or src_w < 1:
        raise ValueError(f"cannot resize an image of shape {tuple(image.shape)} to {size!r}")
    dev = image.device
    if src_w == 2 * w and src_h == 2 * h:  # OpenCV: INTER_LINEAR at exactly 1/2 is INTER_AREA
        q = image.long()
        s = q[0::2, 0::2] + q[0::2, 1::2] + q[1::2, 0::2] + q[1::2, 1::2]
        return ((s + 2) >> 2).to(torch.uint8)
    x0, x1, a0, a1 = (torch.from_numpy(v).to(dev) for v in _linear_taps(w, src_w, True))
    y0, y1, b0, b1 = (torch.from_numpy(v).to(dev) for v in _linear_taps(h, src_h, False))
    rows = torch.unique(torch.cat([y0, y1]))  # only the source rows that are used
    q = image.index_select(0, rows).long()
    sums = q[:, x0] * a0[None, :, None] + q[:, x1] * a1[None, :, None]  # (R, w, C)
    where = torch.searchsorted(rows, torch.cat([y0, y1]))
    s0, s1 = sums[where[:h]] >> 4, sums[where[h:]] >> 4
    v = (((s0 * b0[:, None, None]) >> 16) + ((s1 * b1[:, None, None]) >> 16) + 2) >> 2
    return v.clamp(0, 255).to(torch.uint8)
