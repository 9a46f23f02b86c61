"""Seeded stand-ins for the released checkpoints, in their exact formats and key layouts.

The released weights cannot be downloaded everywhere we test, so tests, demos and benchmarks use
generated checkpoints that load with ``strict=True`` into our networks and into upstream's. They
detect nothing real. They are calibrated, though, so that the whole pipeline is exercised the way
real weights would exercise it:

* activations stay well scaled through the deep nets: He-initialised convs, residual branches
  ending in a small-gamma BN, and BN running statistics measured on synthetic pictures (see
  :func:`_calibrate_bn` for why ``running_var`` is the mean square, not the variance);
* head rows are rescaled and their biases shifted from the logits they produce on *other*
  synthetic pictures (BN statistics overfit the images they were measured on), so that a typical
  image yields a handful of final detections (not 0, not 100) and landmark heatmaps have clear,
  varied, positive peaks. Detections are deliberately large boxes (~400 px in YOLO's 608 input,
  ~36x the proposal in Faster R-CNN): NMS bounds how many coexist, which keeps the count stable
  across images where a far tail of the logit distribution would not.

Observed with the oracle pipelines (seeds 0-2): YOLOv3 4-15 detections on TADNE crops and
synthetic pictures of 640x480 to 1920x1080, Faster R-CNN 3-10.

Everything random comes from ``torch.Generator``/``numpy.random.Generator`` objects seeded with
``seed``; the global RNG state is neither used nor changed. The same seed gives the same tensors on
the same software and CPU (BN statistics are float32 reductions, so another BLAS may differ in the
last bits).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import FasterRCNNConfig, HRNetConfig, YOLOv3Config, load_config
from .models import MODEL_NAMES, FasterRCNN, HRNetV2, YOLOv3, build_model

__all__ = [
    "MAX_SEED",
    "TEST_WEIGHT_STEMS",
    "NotTestWeightsError",
    "make_test_state_dict",
    "safetensors_bytes",
    "synthetic_image",
    "write_test_weights",
]

logger = logging.getLogger(__name__)

TEST_WEIGHT_STEMS = {
    "yolov3": "mmdet_anime-face_yolov3",
    "faster-rcnn": "mmdet_anime-face_faster-rcnn",
    "hrnetv2": "mmpose_anime-face_hrnetv2",
}
_MODEL_SALT = {"yolov3": 1, "faster-rcnn": 2, "hrnetv2": 3}

# Head calibration targets, tuned with the oracle pipelines on TADNE crops and synthetic images
# (see the module docstring). The "gate" logit (YOLO class, Faster R-CNN face-vs-background) is
# thresholded at score_thr 0.05; the fraction of calibration positions clearing it is set here.
# Boxes are made large (NMS then bounds how many coexist), so the final count is a handful and
# depends little on how far an image pushes the gate logits: that is what keeps it in range.
_LOGIT_005 = math.log(0.05 / 0.95)
_YOLO_PASS_FRACTION = (0.06, 0.006, 0.0006)  # strides 32, 16, 8
_YOLO_BOX_SIDE = 400.0  # decoded box side, network-input pixels (input long side <= 608)
_FRCNN_PASS_FRACTION = 0.05  # of calibration RoIs (real, NMS-spread proposals pass more often)
_FRCNN_CALIB_ROIS = 500  # top-scoring anchors per calibration image used as RoIs
_FRCNN_BOX_GROWTH = 36.0  # final box / proposal side (dw, dh ~ ln 36 / 0.2; mmdet clamps at ln 62.5)
_VAR_FLOOR = 0.2
_WARN = "afd_trt test weights (seed %d, %s): random, calibrated stand-ins; they detect nothing real."


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic test picture in a line-art style: gradient background, flat-coloured shapes
    with dark outlines (large "heads" with eye-like ellipses, polygons, strokes), slight blur and noise.

    Returns uint8 ``(height, width, 3)``, BGR channel order (like ``cv2.imread``).
    """
    if height < 8 or width < 8:
        raise ValueError(f"synthetic_image: height and width must be >= 8, got {height}x{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0
    img = np.ascontiguousarray(c0 * (1 - t[..., None]) + c1 * t[..., None], dtype=np.float32)
    scale = min(height, width)

    def colour() -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(0, 255, 3))  # type: ignore[return-value]

    def point() -> tuple[int, int]:
        return int(rng.integers(0, width)), int(rng.integers(0, height))

    outline = (20.0, 15.0, 25.0)
    for _ in range(int(rng.integers(25, 50))):  # polygons and strokes
        (px, py), r = point(), rng.uniform(0.03, 0.25) * scale
        pts = np.array([(px, py)] * int(rng.integers(3, 7)), np.float64) + rng.uniform(-r, r, (1, 2))
        pts = (pts + rng.uniform(-r, r, pts.shape)).astype(np.int32)
        if rng.random() < 0.6:
            cv2.fillPoly(img, [pts], colour())
            cv2.polylines(img, [pts], True, outline, int(rng.integers(1, 4)))
        else:
            cv2.polylines(img, [pts], False, colour(), int(rng.integers(1, 8)))
    for _ in range(int(rng.integers(2, 6))):  # heads: outlined ellipse, two eyes with pupils
        (cx, cy), r = point(), int(rng.uniform(0.08, 0.3) * scale) + 4
        cv2.ellipse(img, (cx, cy), (r, int(r * rng.uniform(0.9, 1.2))), 0, 0, 360, colour(), -1)
        cv2.ellipse(img, (cx, cy), (r, int(r * rng.uniform(0.9, 1.2))), 0, 0, 360, outline, 2)
        iris = colour()
        for side in (-1, 1):
            ex, ey = cx + side * r // 3, cy
            cv2.ellipse(img, (ex, ey), (max(r // 7, 1), max(r // 5, 1)), 0, 0, 360, iris, -1)
            cv2.ellipse(img, (ex, ey), (max(r // 7, 1), max(r // 5, 1)), 0, 0, 360, outline, 1)
            cv2.circle(img, (ex, ey), max(r // 14, 1), outline, -1)
            cv2.circle(img, (ex - r // 20, ey - r // 12), max(r // 30, 1), (250.0, 250.0, 250.0), -1)
    blurred = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.2)))
    noisy = blurred + rng.normal(0, rng.uniform(0, 4), img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# generic initialisation


# The last BN of a residual branch (Darknet res blocks, ResNet/HRNet bottlenecks and basic blocks).
_RESIDUAL_LAST_BN = re.compile(r"(\.res\d+\.conv2\.bn|\.bn3|branches\.\d+\.\d+\.bn2)$")
_RESIDUAL_GAMMA = 0.1


def _init_params(model: nn.Module, gen: torch.Generator) -> None:
    """He-normal conv/linear weights, small biases, BN gamma in [0.5, 1.0], beta ~ N(0, 0.1).

    Residual branches end in a BN with gamma scaled by ``_RESIDUAL_GAMMA``: each block then
    nudges its input instead of replacing it, which keeps the random nets out of the chaotic
    regime (outputs depending smoothly on the image).
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.5 + 0.5)
                if _RESIDUAL_LAST_BN.search(name):
                    module.weight.mul_(_RESIDUAL_GAMMA)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)


def _calibrate_bn(model: nn.Module, batch: torch.Tensor, run: Callable[[torch.Tensor], object]) -> None:
    """Set every BN layer's running stats from the input it sees on ``batch``, in one eval-mode pass.

    A pre-forward hook measures each layer's input per channel just before the layer runs, so
    later layers are calibrated on already-normalised inputs -- what they will see in use.
    ``running_var`` is the channel's mean square (variance + mean^2), not its variance: dividing
    by the bare spread would amplify small input differences layer after layer (random deep nets
    with BN are chaotic), making head logits swing by 10x between images. It is floored at
    ``_VAR_FLOOR`` times the layer's median, so near-constant channels are not blown up either.
    """

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        bn = cast(nn.BatchNorm2d, module)
        x = args[0]
        mean = x.mean(dim=(0, 2, 3))
        power = x.square().mean(dim=(0, 2, 3))  # var + mean^2
        cast(torch.Tensor, bn.running_mean).copy_(mean)
        cast(torch.Tensor, bn.running_var).copy_(power.clamp_min(_VAR_FLOOR * float(power.median()) + 1e-6))

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    model.eval()
    try:
        with torch.no_grad():
            run(batch)
    finally:
        for h in handles:
            h.remove()


def _capture_inputs(module: nn.Module, run: Callable[[], object]) -> list[torch.Tensor]:
    """The inputs ``module`` receives while ``run()`` executes (one per call)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


def _wb(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a conv or linear layer that has a bias."""
    if not isinstance(module, nn.Conv2d | nn.Linear) or module.bias is None:
        raise TypeError(f"expected a Conv2d/Linear with bias, got {module}")
    return module.weight, module.bias


def _row_logits(weight: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Logits (without bias) of a 1x1 conv / linear ``weight (O, C[,1,1])`` on features.
    ``feats``: ``(B, C, H, W)`` or ``(N, C)``. Returns ``(O, num positions)``."""
    w = weight.reshape(weight.shape[0], -1)
    x = feats.permute(1, 0, 2, 3).reshape(feats.shape[1], -1) if feats.dim() == 4 else feats.t()
    return w @ x


def _set_row(
    weight: torch.Tensor, bias: torch.Tensor, row: int, logits: torch.Tensor, std: float, mean: float
) -> None:
    """Rescale ``weight[row]`` so its logits have std ``std``, and set ``bias[row]`` for mean ``mean``."""
    z = logits[row]
    k = std / float(z.std().clamp_min(1e-6))
    weight[row] *= k
    bias[row] = _round(mean - k * float(z.mean()))


def _set_gate_row(
    weight: torch.Tensor, bias: torch.Tensor, row: int, logits: torch.Tensor, std: float, fraction: float
) -> None:
    """Rescale ``weight[row]`` to logit std ``std`` and set ``bias[row]`` so that a ``fraction`` of
    the calibration positions clear ``_LOGIT_005`` (empirical quantile)."""
    z = logits[row]
    k = std / float(z.std().clamp_min(1e-6))
    weight[row] *= k
    quantile = float(torch.quantile(z.double() * k, 1.0 - fraction))
    bias[row] = _round(_LOGIT_005 - quantile)


def _round(x: float) -> float:
    """Head biases to 1/1024 so near-equal reductions on other machines give the same value."""
    return round(x * 1024) / 1024


def _to_tensor(images: Iterable[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """BGR uint8 images (same size) -> float32 ``(B, 3, H, W)`` RGB, ``(x - mean) / std`` (0..255 scale)."""
    rgb = np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images]).astype(np.float32)
    normed = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(normed).permute(0, 3, 1, 2).contiguous()


def _calibration_images(seed: int, salt: int, count: int, height: int, width: int) -> list[np.ndarray]:
    return [synthetic_image(height, width, seed * 7919 + salt * 101 + i) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# per-model calibration


def _calibrate_yolov3(model: YOLOv3, seed: int) -> None:
    """Boxes about ``_YOLO_BOX_SIDE`` input pixels at every level, and a gate passing a sizeable
    fraction of the priors: the final count is then set by how many such boxes NMS (IoU 0.45)
    lets coexist in a 608-pixel input -- a handful -- rather than by a far, image-dependent
    tail of the logit distribution."""
    cfg = load_config("yolov3")
    assert isinstance(cfg, YOLOv3Config)
    images = _calibration_images(seed, 1, 4, 288, 448)
    _calibrate_bn(model, _to_tensor(images[:2], cfg.input.mean, cfg.input.std), model)
    batch = _to_tensor(images[2:], cfg.input.mean, cfg.input.std)  # held out: BN stats overfit theirs
    head = model.bbox_head
    necks = model.neck(model.backbone(batch))
    for level, (bridge, pred) in enumerate(zip(head.convs_bridge, head.convs_pred, strict=True)):
        feats = bridge(necks[level])
        weight, bias = _wb(pred)
        logits = _row_logits(weight, feats)
        for anchor, (aw, ah) in enumerate(cfg.base_sizes[level]):
            r = anchor * 6
            for k in (0, 1):  # centre offsets: sigmoid spread over the cell
                _set_row(weight, bias, r + k, logits, std=1.0, mean=0.0)
            for k, side in ((2, aw), (3, ah)):  # log size ratios
                _set_row(weight, bias, r + k, logits, std=0.03, mean=math.log(_YOLO_BOX_SIDE / side))
            _set_row(weight, bias, r + 4, logits, std=1.0, mean=2.0)  # objectness
            _set_gate_row(weight, bias, r + 5, logits, 2.0, _YOLO_PASS_FRACTION[level])


def _roi_sample(feats: tuple[torch.Tensor, ...], boxes: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Approximate RoIAlign (one bilinear sample per bin centre) for calibration only.

    ``boxes``: ``(K, 4)`` x1, y1, x2, y2 in input pixels of image 0; level by mmdet's
    ``floor(log2(sqrt(area) / 56))`` rule over strides 4..32. Returns ``(K, 256, size, size)``.
    """
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()
    out = torch.zeros(len(boxes), feats[0].shape[1], size, size)
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    for lvl in range(4):
        idx = torch.nonzero(levels == lvl).flatten()
        if len(idx) == 0:
            continue
        fmap = feats[lvl]
        stride = 4 * 2**lvl
        b = boxes[idx] / stride
        xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * steps  # (k, size) feature-pixel coords
        ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * steps
        h, w = fmap.shape[2:]
        gx = xs / w * 2 - 1  # aligned RoIAlign: feature pixel i covers [i, i+1) -> grid_sample coords
        gy = ys / h * 2 - 1
        grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], -1)
        sampled = F.grid_sample(fmap.expand(len(idx), -1, -1, -1), grid, align_corners=False)
        out[idx] = sampled
    return out


def _calibrate_faster_rcnn(model: FasterRCNN, seed: int) -> None:
    """RPN: well-spread objectness (it only ranks proposals) and small deltas. Box head: the face
    logit (against a zero background logit) clears score_thr on ``_FRCNN_PASS_FRACTION`` of
    anchor-like RoIs of held-out images; small refinement deltas."""
    cfg = load_config("faster-rcnn")
    assert isinstance(cfg, FasterRCNNConfig)
    height, width = 384, 640  # synthetic 192x320 pictures upscaled 2x, as the pipeline upscales
    images = [
        cv2.resize(im, (width, height)) for im in _calibration_images(seed, 2, 4, height // 2, width // 2)
    ]
    _calibrate_bn(model, _to_tensor(images[:2], cfg.input.mean, cfg.input.std), model)
    batch = _to_tensor(images[2:], cfg.input.mean, cfg.input.std)  # held out: BN stats overfit theirs
    rpn, box = model.rpn_head, model.roi_head.bbox_head
    pyramid = model.neck(model.backbone(batch))
    hidden = torch.cat([F.relu(rpn.rpn_conv(f)).flatten(2) for f in pyramid], 2)
    weight, bias = _wb(rpn.rpn_cls)
    logits = _row_logits(weight, hidden[..., None])
    for a in range(3):  # objectness only ranks proposals (no threshold): keep it well spread
        _set_row(weight, bias, a, logits, std=2.0, mean=-2.0)
    weight, bias = _wb(rpn.rpn_reg)
    logits = _row_logits(weight, hidden[..., None])
    for r in range(12):  # proposals stay near their anchors
        _set_row(weight, bias, r, logits, std=0.2, mean=0.0)

    # RoIs like the real proposals: the anchors the RPN ranks highest (top _FRCNN_CALIB_ROIS per image).
    feats = pyramid[:4]
    rpn_cls = [rpn.rpn_cls(F.relu(rpn.rpn_conv(f))) for f in pyramid]
    roi_feats = []
    for b in range(batch.shape[0]):
        boxes, scores = [], []
        for level, stride in enumerate(cfg.anchor_strides):
            cls = rpn_cls[level][b]  # (3, h, w)
            h, w = cls.shape[1:]
            ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
            for a, ratio in enumerate(cfg.anchor_ratios):
                side = cfg.anchor_scales[0] * stride
                half_w, half_h = side / math.sqrt(ratio) / 2, side * math.sqrt(ratio) / 2
                cx, cy = xs.flatten().float(), ys.flatten().float()
                boxes.append(torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1))
                scores.append(cls[a].flatten())
        all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
        top = all_boxes[torch.topk(all_scores, min(_FRCNN_CALIB_ROIS, len(all_scores))).indices]
        top[:, 0::2] = top[:, 0::2].clamp(0, width)
        top[:, 1::2] = top[:, 1::2].clamp(0, height)
        keep = ((top[:, 2] - top[:, 0]) > 4) & ((top[:, 3] - top[:, 1]) > 4)
        roi_feats.append(_roi_sample(tuple(f[b : b + 1] for f in feats), top[keep]))
    rois = torch.cat(roi_feats)
    (fc_in,) = _capture_inputs(box.fc_cls, lambda: box(rois))
    # softmax over [face, background]: background logit fixed at 0, the face logit is the gate.
    weight, bias = _wb(box.fc_cls)
    weight[1].zero_()
    bias[1] = 0.0
    logits = _row_logits(weight, fc_in)
    _set_gate_row(weight, bias, 0, logits, 2.0, _FRCNN_PASS_FRACTION)
    weight, bias = _wb(box.fc_reg)
    logits = _row_logits(weight, fc_in)
    for r in range(2):  # centre shifts (x target std 0.1 when decoded)
        _set_row(weight, bias, r, logits, std=0.5, mean=0.0)
    for r in range(2, 4):  # log size (x target std 0.2): boxes ~_FRCNN_BOX_GROWTH x their proposal
        _set_row(weight, bias, r, logits, std=0.5, mean=math.log(_FRCNN_BOX_GROWTH) / 0.2)


def _calibrate_hrnet(model: HRNetV2, seed: int) -> None:
    """Heatmap channels with logit std 0.25 around 0 on held-out crops: clear positive peaks at
    varied places (raw maxima ~0.3-1.6), so the DARK decoding and keypoint scores are exercised."""
    cfg = load_config("hrnetv2")
    assert isinstance(cfg, HRNetConfig)
    width, height = cfg.input_size
    images = _calibration_images(seed, 3, 3, height, width)
    mean = tuple(255.0 * m for m in cfg.mean)
    std = tuple(255.0 * s for s in cfg.std)
    _calibrate_bn(model, _to_tensor(images[:2], mean, std), model)
    batch = _to_tensor(images[2:], mean, std)  # held out: BN stats overfit theirs
    final = model.keypoint_head.final_layer[3]
    (feats,) = _capture_inputs(final, lambda: model(batch))
    weight, bias = _wb(final)
    logits = _row_logits(weight, feats)
    for k in range(weight.shape[0]):
        _set_row(weight, bias, k, logits, std=0.25, mean=0.0)


_CALIBRATORS: dict[str, Callable[[Any, int], None]] = {
    "yolov3": _calibrate_yolov3,
    "faster-rcnn": _calibrate_faster_rcnn,
    "hrnetv2": _calibrate_hrnet,
}


def make_test_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A calibrated random state dict for network ``name`` (``yolov3``, ``faster-rcnn``, ``hrnetv2``).

    Keys, shapes and dtypes are exactly those of the released checkpoint. Deterministic for a seed;
    the global RNG state is not used. Takes a few seconds on a CPU (calibration forward passes).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"make_test_state_dict: name must be one of {MODEL_NAMES}, got {name!r}")
    _check_seed(seed)
    logger.warning(_WARN, seed, name)
    gen = torch.Generator().manual_seed(seed * 1000 + _MODEL_SALT[name])
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = build_model(name)
    _init_params(model, gen)
    with torch.no_grad():
        _CALIBRATORS[name](model, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise RuntimeError(f"make_test_state_dict({name!r}, {seed}): non-finite values in {key}")
    return state


class NotTestWeightsError(FileExistsError):
    """A file under a released checkpoint name that is not afd_trt's test weights is in the way."""


MAX_SEED = 2**52
"""The largest seed: a model's generator is seeded with ``seed * 1000 + salt``, which must fit
in 64 bits."""


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"test weights: seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file's bytes, the same in every process: ``safetensors`` writes its header's
    keys (the metadata's above all) in a per-process hash order, so the file's sha256 changed
    from run to run. The header is re-written with sorted keys; it keeps its length, so the
    tensors' offsets do not move."""
    from safetensors.torch import save

    raw = save(state, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canonical) > n:  # not expected (the same members, compact): keep safetensors' own
        return raw
    return raw[:8] + canonical.ljust(n) + raw[8 + n :]


def write_test_weights(
    out_dir: str | Path,
    seed: int = 0,
    formats: tuple[str, ...] = ("pth", "safetensors"),
    *,
    overwrite: bool = False,
) -> dict[str, dict[str, Path]]:
    """Write the three test checkpoints into ``out_dir`` under the released file names.

    ``pth``: ``{"meta": {...}, "state_dict": {...}}`` (the mm*-era layout, loadable with
    ``torch.load(weights_only=True)``); ``safetensors``: the bare state dict, with metadata
    ``{"afd_trt_test_weights": "1", "seed": ..., "model": ...}``. Both are the same bytes for
    the same seed, and written atomically (a killed run leaves no part of a file under a
    released name).

    Earlier test weights there are replaced; any other file under a released name (a real
    checkpoint, above all) raises :class:`NotTestWeightsError` before anything is written, unless
    ``overwrite``. Returns ``{model name: {format: path}}``.
    """
    from .outputs import write_bytes_atomic
    from .weights import TEST_WEIGHTS_KEY, CheckpointError, forget_checksum, is_test_weights

    bad = [f for f in formats if f not in ("pth", "safetensors")]
    if bad or not formats:
        raise ValueError(
            f"write_test_weights: formats must be a non-empty subset of ('pth', 'safetensors'), got {formats}"
        )
    _check_seed(seed)
    out = Path(out_dir)
    targets = {
        name: {fmt: out / f"{TEST_WEIGHT_STEMS[name]}.{fmt}" for fmt in formats} for name in MODEL_NAMES
    }
    if not overwrite:
        for path in (p for paths in targets.values() for p in paths.values()):
            if not path.exists() and not path.is_symlink():
                continue
            try:
                ours = path.is_file() and is_test_weights(path) is not None
            except (CheckpointError, OSError):
                ours = False
            if not ours:
                raise NotTestWeightsError(
                    f"{path} exists and is not afd_trt's test weights (a real checkpoint?): "
                    "refusing to replace it with random weights (overwrite=True / --overwrite to do it)"
                )
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_NAMES:
        state = make_test_state_dict(name, seed)
        meta = {TEST_WEIGHTS_KEY: "1", "seed": str(seed), "model": name}
        paths = targets[name]
        if "pth" in paths:
            buf = io.BytesIO()
            torch.save({"meta": dict(meta), "state_dict": state}, buf)
            write_bytes_atomic(paths["pth"], buf.getvalue())
        if "safetensors" in paths:
            write_bytes_atomic(paths["safetensors"], safetensors_bytes(state, meta))
        for path in paths.values():  # written into a weights cache: its old record would say corrupt
            forget_checksum(path)
        logger.warning(
            "wrote test weights for %s to %s: they detect nothing real",
            name,
            sorted(map(str, paths.values())),
        )
    return targets
