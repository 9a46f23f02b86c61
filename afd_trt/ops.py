"""Typed wrappers over the native ops in ``afd_trt._C``.

Every function takes and returns numpy arrays, states shapes, dtypes and coordinate
conventions, and validates in C++ (a ``ValueError`` naming the bad argument and value).
Boxes are ``(x1, y1, x2, y2)`` in pixels, float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from . import _C

# ---------------------------------------------------------------------------------------------
# Detection ops: NMS, YOLOv3 / RPN / R-CNN post-processing, RoIAlign.
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# Landmark ops: face-crop warp, heatmap flip merge and decoding.
# ---------------------------------------------------------------------------------------------




def _size_pair(out_size: tuple[int, int]) -> tuple[int, int]:
    if len(out_size) != 2:
        raise ValueError(f"out_size must be (w, h), got {out_size!r}")
    w, h = out_size
    return int(w), int(h)


def warp_crops(
    image: NDArray[np.uint8],
    matrices: NDArray[np.float64],
    out_size: tuple[int, int],
    mean: Sequence[float] | NDArray[np.float32],
    std: Sequence[float] | NDArray[np.float32],
    threads: int = 0,
    mode: str = "opencv5",
) -> NDArray[np.float32]:
    """Bilinear affine face crops, normalised, as the landmark model's input batch.

    Equal, value for value, to upstream's ``cv2.warpAffine(cv2.cvtColor(image, BGR2RGB), M,
    out_size, flags=INTER_LINEAR)`` per face (constant 0 border), then float32 ``/ 255``,
    ``- mean``, ``/ std``, stacked NCHW.

    Args:
        image: uint8 (H, W, 3) BGR, C-contiguous (no silent copies: pass
            ``np.ascontiguousarray`` yourself).
        matrices: float64 (N, 2, 3) forward affines, source pixel (x, y) -> crop pixel, as
            ``cv2.getAffineTransform`` / mmpose ``get_affine_transform`` return them. Pixel
            centres are at integer coordinates (OpenCV convention). Non-finite or singular
            matrices raise ``ValueError`` naming the face index.
        out_size: (w, h) of every crop in pixels.
        mean, std: 3 floats each, RGB order, applied in float32 (e.g. ImageNet 0.485... / 0.229...).
        threads: worker threads over faces x rows; 0 = one per core. The GIL is released.
        mode: ``"opencv5"`` reproduces OpenCV 5.x's float32 warp kernel (bit-exact with
            opencv-python-headless 5.0.0; measured 0 differing uint8 values over ~2e7 values,
            random images and face-box matrices incl. boxes off the image, tiny and huge boxes,
            rotations, odd crop sizes). ``"opencv4"`` reproduces OpenCV 4.x's fixed-point warp
            (1/32 px coordinates, 15-bit weights; bit-exact with opencv-python-headless 4.10,
            4.11 and 4.12 on the same data). The two models disagree on ~7% of the uint8 values of
            face crops of a real anime image (mostly by 1 level, at most 4) and on ~57% of an
            enlarged noise image (at most 7), so pick the one your reference ran with.

    Returns:
        float32 (N, 3, h, w), channels R, G, B.
    """
    w, h = _size_pair(out_size)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return _C.warp_crops(image, matrices, w, h, mean32, std32, mode, threads)


def warp_crops_u8(
    image: NDArray[np.uint8],
    matrices: NDArray[np.float64],
    out_size: tuple[int, int],
    threads: int = 0,
    mode: str = "opencv5",
) -> NDArray[np.uint8]:
    """The uint8 crops behind :func:`warp_crops`, for inspection and saving.

    Args: as :func:`warp_crops` (no normalisation).

    Returns:
        uint8 (N, h, w, 3) in the input's channel order; ``out[i]`` equals
        ``cv2.warpAffine(image, matrices[i], out_size, flags=cv2.INTER_LINEAR)`` under ``mode``.
    """
    w, h = _size_pair(out_size)
    return _C.warp_crops_u8(image, matrices, w, h, mode, threads)


def _pairs_array(
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer] | None,
) -> NDArray[np.int64] | None:
    if flip_pairs is None:
        return None
    pairs = np.asarray(flip_pairs)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.dtype.kind not in "iu":
        raise ValueError(f"flip_pairs must hold integers, got dtype {pairs.dtype}")
    return np.ascontiguousarray(pairs, dtype=np.int64)


def merge_flip(
    heatmaps: NDArray[np.float32],
    flipped: NDArray[np.float32],
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer],
    shift: bool = True,
) -> NDArray[np.float32]:
    """Flip-test merge of mmpose's top-down heatmap head.

    ``(heatmaps + back) / 2`` in float32, where ``back`` is ``flip_back(flipped, flip_pairs)``
    (channels of each pair swapped, later pairs winning on repeats, then mirrored in x) and, with
    ``shift``, moved right by one column (``back[..., 1:] = back[..., :-1]``; column 0 keeps its
    own value), exactly upstream's ``shift_heatmap=True``.

    Args:
        heatmaps: float32 (N, K, H, W) from the unflipped crops, C-contiguous.
        flipped: float32 (N, K, H, W) from the horizontally flipped crops.
        flip_pairs: int (P, 2) keypoint index pairs in [0, K), e.g. ``FLIP_PAIRS`` of the config.
        shift: apply the one-column shift.

    Returns:
        float32 (N, K, H, W).
    """
    pairs = _pairs_array(flip_pairs)
    if pairs is None:
        raise ValueError("flip_pairs is required (pass [] for no channel swaps)")
    return _C.merge_flip(heatmaps, flipped, pairs, bool(shift))


def decode_heatmaps(
    heatmaps: NDArray[np.float32],
    centers: NDArray[np.float32],
    box_sizes: NDArray[np.float32],
    mode: str = "dark",
    blur_kernel: int = 11,
    flipped: NDArray[np.float32] | None = None,
    flip_pairs: Sequence[Sequence[int]] | NDArray[np.integer] | None = None,
    shift: bool = True,
    threads: int = 0,
) -> NDArray[np.float32]:
    """Keypoints from heatmaps, as mmpose 0.x ``keypoints_from_heatmaps`` (use_udp=False).

    Per map: optional flip merge (:func:`merge_flip`), the first maximum in row-major order
    (np.argmax) and its value as the score; a non-positive (or NaN) maximum gives heatmap
    coordinate (-1, -1) and no refinement. Refinement by ``mode``:

    - ``"dark"`` (upstream ``'unbiased'``): the map zero-padded and Gaussian-blurred
      (``cv2.GaussianBlur`` with ``ksize = blur_kernel``, sigma 0 -> 0.3 * ((k - 1) / 2 - 1) + 0.8),
      rescaled so its maximum equals the original one, ``log(max(., 1e-10))``, then one Newton
      step from finite differences at the peak when 2 <= px <= W-3 and 2 <= py <= H-3. The
      rescale is kept (not dropped as a constant in log space) because the 1e-10 clamp and a
      non-positive blurred maximum make it matter. Derivatives are rounded in float32 as
      upstream; the 2x2 solve is done in double (upstream: float32 LAPACK). Measured against
      upstream on random 64x64 maps: within 1 float32 ulp of the heatmap coordinate
      (<= 7.6e-6 heatmap px); ill-conditioned Hessians can amplify the LAPACK difference. A float32 Hessian
      determinant of 0 means no offset (as upstream).
    - ``"quarter"`` (upstream ``'default'``): +-0.25 px toward the larger neighbour in x and y
      when 1 < px < W-1 and 1 < py < H-1 (0 on ties).
    - ``"none"``: the integer argmax.

    Then to image pixels in float32: ``x * (box_w / W) + center_x - box_w * 0.5``, same for y.

    Args:
        heatmaps: float32 (N, K, H, W), C-contiguous.
        centers: float32 (N, 2) box centres (x, y) in image pixels (mmpose ``center``).
        box_sizes: float32 (N, 2) box (w, h) in image pixels that the heatmap spans: mmpose's
            ``scale * 200`` computed in float32 (pixel_std = 200).
        mode: ``"dark"``, ``"quarter"`` or ``"none"``.
        blur_kernel: odd Gaussian kernel size >= 3 for ``"dark"`` (11 for sigma-2 heatmaps).
        flipped: optional float32 (N, K, H, W) heatmaps of the flipped crops, merged first.
        flip_pairs: int (P, 2) pairs for ``flipped`` (None: no channel swaps).
        shift: shift the flipped-back maps by one column (upstream ``shift_heatmap``).
        threads: worker threads over the N * K maps; 0 = one per core. The GIL is released.

    Returns:
        float32 (N, K, 3) as (x, y, score), x and y in image pixels.
    """
    pairs = _pairs_array(flip_pairs)
    return _C.decode_heatmaps(
        heatmaps, centers, box_sizes, mode, int(blur_kernel), flipped, pairs, bool(shift), threads
    )
