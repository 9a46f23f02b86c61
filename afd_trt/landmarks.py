"""28-point landmarks with HRNetV2: upstream's top-down path, batched over all faces.

Boxes -> (center, scale) with 1.25 padding at the crop's aspect ratio -> affine crops (C++ warp,
normalised in the same pass) -> one network forward for all faces (the flip test doubles the
batch instead of running twice) -> flip merge, argmax and sub-pixel refinement (C++).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from . import device_ops, ops
from .config import HRNetConfig
from .engines import Engine
from .timing import StageTimes

__all__ = [
    "WARP_MODELS",
    "WARP_MODES",
    "LandmarkEstimator",
    "boxes_to_center_scale",
    "crop_matrices",
    "cv2_crops_u8",
    "default_warp_mode",
    "warp_crops",
]

logger = logging.getLogger(__name__)


WARP_MODELS = ("opencv5", "opencv4")
"""The arithmetic models of ``cv2.warpAffine`` that the C++ warp (``ops.warp_crops``) and the
GPU image path (``device_ops.warp_crops``) reproduce; ``"cv2"`` calls the installed OpenCV."""

WARP_MODES = (*WARP_MODELS, "cv2")


def _probe_cases() -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Fixed face-crop warps that tell OpenCV's arithmetics apart: uint8 (H, W, 3) images (noise,
    and blurred noise whose smooth ramps put many bilinear values near k + 0.5), float64 (2, 3)
    forward maps (inside, rotated, partly and wholly off the image, enlarged), crop size (w, h).
    About 1.2e6 output values: the models differ from each other on 1e-4 (OpenCV 5.0 against
    5.1) to 7% (4.x against 5.x) of them."""
    rng = np.random.default_rng(20261202)
    noise = rng.integers(0, 256, (181, 233, 3), dtype=np.uint8)
    blurred = np.ascontiguousarray(cv2.GaussianBlur(noise, (0, 0), 2.0))
    cases = []
    for image, (cx, cy, side, degrees) in [
        (blurred, (110.3, 95.7, 140.0, 0.0)),
        (blurred, (60.1, 130.4, 90.0, 33.0)),
        (noise, (200.9, 20.2, 170.0, -71.0)),
        (noise, (117.5, 88.25, 23.0, 0.0)),
        (blurred, (17.7, 170.3, 301.0, 145.0)),
        (blurred, (101.2, 66.6, 61.0, 0.0)),
    ]:
        s = 256.0 / side
        a, b = s * np.cos(np.radians(degrees)), s * np.sin(np.radians(degrees))
        m = np.array([[a, b, 128.0 - a * cx - b * cy], [-b, a, 128.0 + b * cx - a * cy]])
        cases.append((image, m, (256, 256)))
    return cases


@functools.cache
def default_warp_mode() -> str:
    """The warp that gives the installed OpenCV's ``cv2.warpAffine`` values, as upstream's crops
    come from whatever OpenCV is installed: the first of :data:`WARP_MODELS` that equals it value
    for value on :func:`_probe_cases`, else ``"cv2"`` (call OpenCV itself). opencv-python-headless
    5.1.0 gets ``"cv2"``: it hands the warp to Intel IPP, whose coordinates round differently on
    about 1 value in 10,000 and depend on OpenCV's thread count (IPP splits the rows into bands);
    with ``cv2.ipp.setUseIPP(False)`` its own kernel equals ``"opencv5"``. Decided once per
    process, in a few milliseconds, with the IPP and thread settings of that moment."""
    cases = _probe_cases()
    wanted = [cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR) for image, m, size in cases]
    for mode in WARP_MODELS:
        got = [ops.warp_crops_u8(image, m[None], size, mode=mode)[0] for image, m, size in cases]
        if all(np.array_equal(a, b) for a, b in zip(got, wanted, strict=True)):
            logger.debug("OpenCV %s: face crops by the C++ warp, model %s", cv2.__version__, mode)
            return mode
    logger.info(
        "OpenCV %s's warpAffine (IPP %s) rounds unlike afd_trt's models %s: face crops are made "
        "by cv2.warpAffine itself (the same values; the device image path, where not bit-exact, "
        "warps on the device with the opencv5 model)",
        cv2.__version__,
        "on" if cv2.ipp.useIPP() else "off",
        ", ".join(WARP_MODELS),
    )
    return "cv2"


def cv2_crops_u8(image: np.ndarray, mats: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Face crops by the installed OpenCV itself: ``cv2.warpAffine`` (INTER_LINEAR, constant 0
    border) per face.

    Args:
        image: uint8 (H, W, 3).
        mats: float64 (N, 2, 3) forward crop maps.
        size: crop (w, h).

    Returns:
        uint8 (N, h, w, 3), the image's channel order.
    """
    w, h = size
    maps = np.asarray(mats, dtype=np.float64).reshape(-1, 2, 3)
    out = np.empty((len(maps), h, w, 3), dtype=np.uint8)
    for i, m in enumerate(maps):
        cv2.warpAffine(image, m, (w, h), dst=out[i], flags=cv2.INTER_LINEAR)
    return out


def warp_crops(
    image: np.ndarray,
    mats: np.ndarray,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    mode: str,
    threads: int = 0,
) -> np.ndarray:
    """Normalised face crops: the C++ op for a model of :data:`WARP_MODELS`, or for ``"cv2"``
    :func:`cv2_crops_u8` normalised by ``device_ops.normalize_crops`` (the same values).

    Args:
        image: uint8 (H, W, 3) BGR, C-contiguous.
        mats: float64 (N, 2, 3) forward crop maps.
        size: crop (w, h).
        mean, std: 3 floats each, RGB order.
        mode: one of :data:`WARP_MODES`.
        threads: the C++ op's threads (0: one per core); OpenCV uses its own pool.

    Returns:
        float32 (N, 3, h, w), channels R, G, B: ``(x / 255 - mean) / std`` in float32, as
        upstream's torch ops compute it.
    """
    if mode != "cv2":
        return ops.warp_crops(image, mats, size, mean, std, threads=threads, mode=mode)
    u8 = torch.from_numpy(cv2_crops_u8(image, mats, size))
    mean32, std32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    return device_ops.normalize_crops(u8, mean32, std32).numpy()


def boxes_to_center_scale(
    boxes: np.ndarray, aspect_ratio: float, padding: float, pixel_std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes to crop centers and scales, as mmpose's top-down pipeline.

    Args:
        boxes: float32 (N, >=4) ``[x1, y1, x2, y2, ...]`` in pixels.
        aspect_ratio: crop width / height.
        padding: scale multiplier (1.25).
        pixel_std: scale unit in pixels (200).

    Returns:
        centers float32 (N, 2) (x, y) and scales float32 (N, 2) (w, h) in units of ``pixel_std``.
    """
    b = np.asarray(boxes, dtype=np.float32)
    x, y = b[:, 0], b[:, 1]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    centers = np.stack([x + w * np.float32(0.5), y + h * np.float32(0.5)], axis=1).astype(np.float32)
    ar = np.float32(aspect_ratio)
    wider = w > ar * h
    narrower = w < ar * h
    h = np.where(wider, w * np.float32(1.0) / ar, h)
    w = np.where(narrower, h * ar, w)
    scales = (np.stack([w, h], axis=1).astype(np.float32) / np.float32(pixel_std)) * np.float32(padding)
    return centers, scales.astype(np.float32)


def crop_matrices(
    centers: np.ndarray, scales: np.ndarray, out_size: tuple[int, int], pixel_std: float
) -> np.ndarray:
    """Forward affine maps (image -> crop) putting each center at the crop center.

    Built from three point pairs and ``cv2.getAffineTransform`` with float32 points, the same
    construction upstream uses, so the float64 matrices are bit-identical to its own.

    Args:
        centers: float32 (N, 2); scales: float32 (N, 2) in ``pixel_std`` units.
        out_size: crop (w, h).

    Returns:
        float64 (N, 2, 3).
    """
    out_w, out_h = out_size
    dst = np.array(
        [[out_w * 0.5, out_h * 0.5], [out_w * 0.5, out_h * 0.5 - out_w * 0.5], [0.0, 0.0]], np.float32
    )
    dst[2] = dst[1] + np.array([-(dst[0, 1] - dst[1, 1]), dst[0, 0] - dst[1, 0]], np.float32)
    mats = np.empty((len(centers), 2, 3), np.float64)
    for i, (c, s) in enumerate(zip(centers, scales, strict=True)):
        src_w = (s * np.float32(pixel_std))[0]
        src = np.zeros((3, 2), np.float32)
        src[0] = c
        src[1] = c + np.array([0.0, float(src_w * np.float32(-0.5))])
        d = src[0] - src[1]
        src[2] = src[1] + np.array([-d[1], d[0]], np.float32)
        mats[i] = cv2.getAffineTransform(src, dst)
    return mats


_IDENTITY = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])


def degenerate_maps(mats: np.ndarray) -> np.ndarray:
    """Crop maps of boxes with zero width and height (whole-image mode on a 1x1 image, or a
    detection that collapsed to a point): ``cv2.getAffineTransform`` returns all zeros for them,
    and ``cv2.warpAffine`` then samples image pixel (0, 0) for every crop pixel, which is what
    upstream feeds HRNetV2 (its keypoints all land on the box's point).

    Args:
        mats: float64 (N, 2, 3) forward crop maps.

    Returns:
        bool (N,): True where the 2x2 part is singular.
    """
    m = np.asarray(mats, dtype=np.float64).reshape(-1, 2, 3)
    return np.asarray(m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0] == 0)


class LandmarkEstimator:
    """HRNetV2 landmarks for boxes in one or many images, all faces in one batch."""

    def __init__(
        self, cfg: HRNetConfig, engine: Engine, max_batch: int = 64, threads: int = 0, warp_mode: str = "auto"
    ) -> None:
        if warp_mode != "auto" and warp_mode not in WARP_MODES:
            raise ValueError(f"warp_mode must be 'auto' or one of {WARP_MODES}, got {warp_mode!r}")
        self.warp_mode = default_warp_mode() if warp_mode == "auto" else warp_mode
        self.cfg = cfg
        self.engine = engine
        self.max_batch = max_batch
        self.threads = threads
        self._flip_pairs = np.asarray(cfg.flip_pairs, dtype=np.int64).reshape(-1, 2)
        self.fuse_flip = False
        """Run the mirrored crops in the same network batch as the crops (one forward of 2N
        instead of two of N): fewer launches, but not upstream's batch composition, so the last
        bits of the heatmaps may change; :class:`~afd_trt.Detector` turns it on except for the
        bit-exact CPU path (eager or exact TorchScript at fp32)."""
        self.exact_crops = True
        """Whether the device path's crops must be the installed OpenCV's ``warpAffine`` values
        even where no C++ model reproduces them (:attr:`warp_mode` ``"cv2"``: they are then made
        on the host and uploaded). :class:`~afd_trt.Detector` sets it False where results are
        not bit-exact anyway (all but eager and exact TorchScript at fp32 on the CPU): the device
        then warps with the ``"opencv5"`` model (OpenCV's own kernel, which IPP's rounding departs from on about 1
        value in 10,000), so images stay on the device and no host warp serialises a GPU stream.
        """
        self.crop_device: torch.device | None = None
        """Where crops are made: None on the host (C++ warp); a device (the GPU HRNetV2 runs on)
        to send each image there once as uint8 and warp, mirror and merge the flip test there,
        so only the merged heatmaps come back (``afd_trt.device_ops``, the same values)."""
        self._flip_sources = device_ops.flip_sources(cfg.num_keypoints, self._flip_pairs)
        self.timer = StageTimes()  # Detector shares its own

    def _geometry(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Crop affines float64 (N, 2, 3) ready for the warp, bool (N,) point boxes, centers float32
        (N, 2) and box sizes float32 (N, 2) px. A point box's zero map (``degenerate_maps``) is
        replaced by the identity; its crop is then filled with pixel (0, 0) (see :meth:`crops`)."""
        cfg = self.cfg
        w, h = cfg.input_size
        with np.errstate(over="ignore", invalid="ignore"):
            centers, scales = boxes_to_center_scale(boxes, w / h, cfg.bbox_padding, cfg.pixel_std)
            sizes = scales * np.float32(cfg.pixel_std)
        bad = ~(np.isfinite(centers).all(axis=1) & np.isfinite(sizes).all(axis=1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"box {i} {boxes[i, :4].tolist()} is too large: padded to the crop's aspect ratio "
                f"(x{cfg.bbox_padding}) its size overflows float32"
            )
        mats = crop_matrices(centers, scales, (w, h), cfg.pixel_std)
        flat = degenerate_maps(mats)
        if flat.any():
            logger.warning(
                "boxes %s have zero width and height: every keypoint lies on the box's point, "
                "scored on a crop of image pixel (0, 0) (upstream's answer)",
                np.flatnonzero(flat).tolist(),
            )
            mats[flat] = _IDENTITY
        return mats, flat, centers, sizes.astype(np.float32)

    def crops(self, image: device_ops.Pixels, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised crops float32 (N, 3, h, w), centers float32 (N, 2), box sizes float32 (N, 2) px."""
        cfg = self.cfg
        mats, flat, centers, sizes = self._geometry(boxes)
        host = device_ops.to_host(image)

        def warp(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            return warp_crops(host, m, size, cfg.mean, cfg.std, self.warp_mode, threads=self.threads)

        crops = warp(mats, cfg.input_size)
        if flat.any():  # cv2's warp by a zero map: pixel (0, 0) everywhere, normalised as any crop
            crops[flat] = warp(_IDENTITY, (1, 1))[0]
        return crops, centers, sizes

    @property
    def device_warp_mode(self) -> str:
        """The warp of the device path: :attr:`warp_mode`, but ``"opencv5"`` for ``"cv2"`` when
        not :attr:`exact_crops`."""
        return "opencv5" if self.warp_mode == "cv2" and not self.exact_crops else self.warp_mode

    def _crops_on(
        self, device: torch.device, image: device_ops.Pixels, boxes: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """:meth:`crops` made on ``device`` from the image sent there once as uint8 (same values
        for :attr:`device_warp_mode`). With the ``"cv2"`` warp, OpenCV makes the uint8 crops on
        the host and they are sent there to be normalised (no model of that OpenCV's arithmetic
        runs on the device)."""
        cfg = self.cfg
        mats, flat, centers, sizes = self._geometry(boxes)
        mean, std = np.asarray(cfg.mean, dtype=np.float32), np.asarray(cfg.std, dtype=np.float32)
        mode = self.device_warp_mode
        if mode == "cv2":
            host = device_ops.to_host(image)

            def warp(m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
                u8 = device_ops.upload(cv2_crops_u8(host, m, size), device)
                return device_ops.normalize_crops(u8, mean, std)

        else:
            pixels = device_ops.upload(image, device)

            def warp(m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
                return device_ops.warp_crops(pixels, m, size, cfg.mean, cfg.std, mode=mode)

        crops = warp(mats, cfg.input_size)
        if flat.any():  # as in crops()
            crops[torch.from_numpy(flat).to(crops.device)] = warp(_IDENTITY, (1, 1))[0]
        return crops, centers, sizes

    def _heatmaps(self, crops: torch.Tensor, flip_test: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Network heatmaps float32 (N, K, h, w) of the crops and, with the flip test, of the
        mirrored crops (raw, not yet flipped back), on the engine's device.

        The crops go in as an NHWC-strided (channels-last) tensor, the layout upstream's
        ``permute(0, 3, 1, 2)`` of its stacked crops has: convolutions take the channels-last
        path then, and the heatmaps are bit-identical to upstream's. Mirrored crops run as
        their own batch of the same size, as upstream runs them, unless :attr:`fuse_flip`.
        """
        outs: list[torch.Tensor] = []
        flips: list[torch.Tensor] = []
        for s in range(0, len(crops), self.max_batch):
            x = crops[s : s + self.max_batch].contiguous(memory_format=torch.channels_last)
            if flip_test and self.fuse_flip:
                both = self.engine(torch.cat([x, x.flip(3)]))[0].detach()
                outs.append(both[: len(x)])
                flips.append(both[len(x) :])
                continue
            outs.append(self.engine(x)[0].detach())
            if flip_test:
                flips.append(self.engine(x.flip(3))[0].detach())
        return torch.cat(outs), (torch.cat(flips) if flip_test else None)

    def estimate(
        self, images: Sequence[device_ops.Pixels], boxes: Sequence[np.ndarray], flip_test: bool
    ) -> list[np.ndarray]:
        """Landmarks for every box of every image.

        Args:
            images: BGR uint8 (H, W, 3) arrays (or tensors, see ``device_ops.Pixels``).
            boxes: per image, float32 (N_i, >=4) boxes in that image's pixels.
            flip_test: average with the horizontally flipped crops.

        Returns:
            Per image, float32 (N_i, K, 3) = (x, y, score) in image pixels.
        """
        cfg = self.cfg
        k = cfg.num_keypoints
        counts = [len(b) for b in boxes]
        out: list[np.ndarray] = [np.zeros((0, k, 3), np.float32) for _ in images]
        if sum(counts) == 0:
            return out
        dev = self.crop_device
        with torch.inference_mode():
            with self.timer.stage("warp"):
                if dev is not None:
                    on_dev = [
                        self._crops_on(dev, img, b) for img, b in zip(images, boxes, strict=True) if len(b)
                    ]
                    crops = torch.cat([p[0] for p in on_dev])
                    centers = np.concatenate([p[1] for p in on_dev])
                    sizes = np.concatenate([p[2] for p in on_dev])
                else:
                    parts = [self.crops(img, b) for img, b in zip(images, boxes, strict=True) if len(b)]
                    crops = torch.from_numpy(np.concatenate([p[0] for p in parts]))
                    centers = np.concatenate([p[1] for p in parts])
                    sizes = np.concatenate([p[2] for p in parts])
            with self.timer.stage("landmarks"):
                heat_t, flipped_t = self._heatmaps(crops, flip_test)
            with self.timer.stage("heatmap_decode"):
                flipped: np.ndarray | None = None
                if flipped_t is not None and dev is not None:
                    # merged where the heatmaps are: half the bytes come back
                    heat = device_ops.download(
                        device_ops.merge_flip(heat_t, flipped_t, self._flip_sources, cfg.shift_heatmap)
                    )
                else:
                    heat = device_ops.download(heat_t)
                    flipped = device_ops.download(flipped_t) if flipped_t is not None else None
                kpts = ops.decode_heatmaps(
                    heat,
                    centers,
                    sizes,
                    mode=cfg.decode,
                    blur_kernel=cfg.blur_kernel,
                    flipped=flipped,
                    flip_pairs=self._flip_pairs if flipped is not None else None,
                    shift=cfg.shift_heatmap,
                    threads=self.threads,
                )
        start = 0
        for i, n in enumerate(counts):
            if n:
                out[i] = kpts[start : start + n]
                start += n
        return out
