"""RoIAlign in torch, on whatever device the feature maps live (for CUDA: no map crosses PCIe).

The same operation as the C++ ``ops.multilevel_roi_align`` (torchvision ``roi_align`` semantics
per level, mmdet's ``SingleRoIExtractor`` level choice), computed differently: the samples of a
bin form a grid, and a bilinear weight is a row weight times a column weight (and a sample outside
the map is outside along one axis), so a bin's average is ``A @ F @ B.T / count``, with ``A``
(bins x rows) and ``B`` (bins x columns) sparse weights. Each RoI is contracted over the window of
rows and columns it touches. Sums are ordered differently from torchvision's loop: results agree
to float32 rounding (~1e-6 relative), not bit for bit; the CPU pipeline keeps the C++ op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["axis_weights", "multilevel_roi_align_torch", "roi_levels"]

MAX_SAMPLES_PER_ROI = 1 << 20
"""As the C++ op: a RoI needing more sample points than this is refused, not allocated."""

_SCRATCH_FLOATS = 1 << 24
"""Budget of one contraction's gathered windows (64 MiB of float32)."""


def _div(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """``t / divisor`` by true division on every device. CUDA divides by a host scalar as a
    multiplication by its reciprocal (1 ulp off for some values); by a tensor on the device it
    divides, as the CPU and the C++ op do."""
    return t / torch.tensor(divisor, dtype=t.dtype, device=t.device)


def roi_levels(rois: torch.Tensor, num_levels: int, finest_scale: float) -> torch.Tensor:
    """mmdet ``map_roi_levels`` in float32: ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))``
    clamped to ``[0, num_levels - 1]``; int64 (K,), -1 where that is NaN (the RoI pools zeros).

    Args:
        rois: float32 (K, 4) as (x1, y1, x2, y2).
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 2] - rois[:, 0]))
    lvl = torch.floor(torch.log2(_div(scale, finest_scale) + 1e-6))
    return lvl.clamp(0, num_levels - 1).nan_to_num(-1.0).to(torch.int64)  # clamp keeps NaN


def axis_weights(
    start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, size: int, pooled: int, gmax: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis of the RoIs' sample points, torchvision's rules per point.

    Args:
        start, bin_size: float32 (K,) in feature-map pixels (aligned offset already applied).
        grid: int64 (K,) samples per bin along this axis (<= 0: none).
        size: the map's extent along the axis.
        gmax: at least ``grid.max()``.

    Returns:
        low, high: int64 (K, pooled, gmax) the two neighbouring pixel indices;
        w_low, w_high: float32 (K, pooled, gmax) their weights, zero for points outside
        ``[-1, size]`` (and NaN) and for padding points beyond the RoI's own grid;
        used: bool (K, pooled, gmax), False for those points.
    """
    dev = start.device
    p = torch.arange(pooled, device=dev, dtype=torch.float32).view(1, -1, 1)
    i = torch.arange(gmax, device=dev, dtype=torch.float32).view(1, 1, -1)
    g = grid.clamp(min=1).to(torch.float32).view(-1, 1, 1)
    pos = start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) + (i + 0.5) * bin_size.view(-1, 1, 1) / g
    used = (
        (torch.arange(gmax, device=dev).view(1, 1, -1) < grid.view(-1, 1, 1)) & (pos >= -1.0) & (pos <= size)
    )
    pos = torch.where(used, pos.clamp(min=0.0), torch.zeros_like(pos))
    low = pos.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(torch.float32), pos)
    frac = pos - low.to(torch.float32)
    zero = torch.zeros_like(frac)
    return low, high, torch.where(used, 1.0 - frac, zero), torch.where(used, frac, zero), used


def _window(low: torch.Tensor, high: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 (K,) first pixel and extent of each RoI's used taps along the axis (0, 1 if none)."""
    big = torch.iinfo(torch.int64).max
    first = low.masked_fill(~used, big).amin(dim=(1, 2))
    last = high.masked_fill(~used, -1).amax(dim=(1, 2))
    none = last < 0
    first = torch.where(none, torch.zeros_like(first), first)
    return first, torch.where(none, torch.ones_like(last), last - first + 1)


def _dense(
    low: torch.Tensor,
    high: torch.Tensor,
    w_low: torch.Tensor,
    w_high: torch.Tensor,
    origin: torch.Tensor,
    extent: int,
) -> torch.Tensor:
    """float32 (K, pooled, extent): each bin's summed weight per pixel of the RoI's window."""
    k, pooled, _ = low.shape
    out = torch.zeros(k, pooled, extent, device=low.device, dtype=torch.float32)
    o = origin.view(-1, 1, 1)
    # unused points carry zero weight; their indices are only kept inside the window
    for idx, w in (((low - o).clamp(0, extent - 1), w_low), ((high - o).clamp(0, extent - 1), w_high)):
        # One sample point per call: within a call no two weights meet in one element, so the
        # sums are made in the same order on every device (CUDA adds colliding ones atomically,
        # in a different order each run).
        for g in range(idx.shape[2]):
            out.scatter_add_(2, idx[:, :, g : g + 1], w[:, :, g : g + 1])
    return out


def _level(
    feature: torch.Tensor, rois: torch.Tensor, scale: float, pooled: int, sampling_ratio: int, aligned: bool
) -> torch.Tensor:
    """RoIAlign of float32 (K, 4) ``rois`` on one float32 (C, H, W) map: (K, C, pooled, pooled)."""
    c, h, w = feature.shape
    k = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    s = rois * scale - offset
    roi_w, roi_h = s[:, 2] - s[:, 0], s[:, 3] - s[:, 1]
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = _div(roi_w, pooled), _div(roi_h, pooled)
    if sampling_ratio > 0:
        gh = gw = torch.full((k,), sampling_ratio, dtype=torch.int64, device=rois.device)
    else:
        gh = torch.ceil(bin_h).nan_to_num(0.0).clamp(-1, MAX_SAMPLES_PER_ROI + 1).to(torch.int64)
        gw = torch.ceil(bin_w).nan_to_num(0.0).clamp(-1, MAX_SAMPLES_PER_ROI + 1).to(torch.int64)
    samples = gh.clamp(min=0) * gw.clamp(min=0) * pooled * pooled
    if k and int(samples.max()) > MAX_SAMPLES_PER_ROI:
        i = int(samples.argmax())
        raise ValueError(
            f"rois[{i}] needs {int(gh[i])} x {int(gw[i])} samples per bin; pass a positive "
            "sampling_ratio or a smaller RoI"
        )
    count = (gh * gw).clamp(min=1).to(torch.float32)
    out = torch.zeros(k, c, pooled, pooled, device=feature.device, dtype=torch.float32)
    if k == 0:
        return out
    gmax_h, gmax_w = max(int(gh.max()), 1), max(int(gw.max()), 1)
    ylo, yhi, wyl, wyh, yused = axis_weights(s[:, 1], bin_h, gh, h, pooled, gmax_h)
    xlo, xhi, wxl, wxh, xused = axis_weights(s[:, 0], bin_w, gw, w, pooled, gmax_w)
    # each RoI's window of rows / columns, RoIs grouped (smallest first) under the scratch budget
    y0, ny = _window(ylo, yhi, yused)
    x0, nx = _window(xlo, xhi, xused)
    span_h, span_w = ny.tolist(), nx.tolist()
    order = sorted(range(k), key=lambda j: span_h[j] * span_w[j])
    start = 0
    while start < k:
        end, wh, ww = start, 1, 1
        while end < k:
            j = order[end]
            nh, nw = max(wh, span_h[j]), max(ww, span_w[j])
            if end > start and (end - start + 1) * c * nh * nw > _SCRATCH_FLOATS:
                break
            wh, ww, end = nh, nw, end + 1
        idx = torch.tensor(order[start:end], device=feature.device)
        a = _dense(ylo[idx], yhi[idx], wyl[idx], wyh[idx], y0[idx], wh)  # (n, P, wh)
        b = _dense(xlo[idx], xhi[idx], wxl[idx], wxh[idx], x0[idx], ww)  # (n, P, ww)
        rows = (y0[idx].view(-1, 1) + torch.arange(wh, device=feature.device)).clamp(max=h - 1)
        cols = (x0[idx].view(-1, 1) + torch.arange(ww, device=feature.device)).clamp(max=w - 1)
        win = feature[:, rows[:, :, None], cols[:, None, :]]  # (C, n, wh, ww)
        pooled_rows = torch.einsum("npr,cnrs->ncps", a, win)
        res = torch.einsum("ncps,nqs->ncpq", pooled_rows, b)
        out[idx] = res / count[idx].view(-1, 1, 1, 1)
        start = end
    return out


def multilevel_roi_align_torch(
    feats: Sequence[torch.Tensor],
    rois: torch.Tensor,
    featmap_strides: Sequence[int],
    finest_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """mmdet ``SingleRoIExtractor`` for one image, on the maps' device.

    Args:
        feats: per level, float32 (C, H_l, W_l) on one device.
        rois: float32 (K, 4) as (x1, y1, x2, y2) in input pixels (moved to the maps' device).

    Returns:
        float32 (K, C, output_size, output_size) on the maps' device.
    """
    if len(feats) != len(featmap_strides):
        raise ValueError(f"featmap_strides must have {len(feats)} entries, got {len(featmap_strides)}")
    if rois.ndim != 2 or rois.shape[1] != 4:
        raise ValueError(f"rois must have shape (K, 4), got {tuple(rois.shape)}")
    dev = feats[0].device
    rois = rois.to(dev, torch.float32)
    c = feats[0].shape[0]
    out = torch.zeros(rois.shape[0], c, output_size, output_size, device=dev, dtype=torch.float32)
    levels = roi_levels(rois, len(feats), finest_scale)
    for lvl, (f, stride) in enumerate(zip(feats, featmap_strides, strict=True)):
        idx = torch.nonzero(levels == lvl).flatten()
        if idx.numel():
            scale = float(torch.tensor(1.0 / stride, dtype=torch.float32))
            out[idx] = _level(f.float(), rois[idx], scale, output_size, sampling_ratio, aligned)
    return out
