"""Typed model configs, loaded from the TOML files in ``configs/``.

Every hyperparameter of a model's test path lives in its config file; code never guesses a
model's kind from tensor shapes. ``load_config("yolov3")`` reads the packaged file,
``load_config("my.toml")`` a user's own, and ``dataclasses.replace`` tweaks one in code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAMES",
    "EngineConfig",
    "FasterRCNNConfig",
    "HRNetConfig",
    "InputConfig",
    "ModelConfig",
    "ShapeProfile",
    "WeightsSpec",
    "YOLOv3Config",
    "config_hash",
    "load_config",
]

CONFIG_NAMES = ("yolov3", "faster-rcnn", "hrnetv2")

# What the networks' architectures fix (afd_trt.models); a config can only restate them.
YOLO_STRIDES = (32, 16, 8)
FRCNN_ANCHOR_STRIDES = (4, 8, 16, 32, 64)
HRNET_KEYPOINTS = 28
HRNET_STRIDE = 4  # heatmap pixels per crop pixel
HRNET_SIZE_DIVISOR = 32  # HRNet's four branches (strides 4 to 32) must meet at equal sizes


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's released checkpoint comes from. ``sha256`` empty: not pinned."""

    file: str
    url: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class ShapeProfile:
    """Shapes one network input may take in a TensorRT engine: ``min <= opt <= max`` per axis,
    all of the same rank (e.g. ``(batch, channels, height, width)``); ``opt`` is tuned for."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineConfig:
    """The ``[engine]`` section: per network input name, its TensorRT optimisation profile
    (``[engine.profiles.<input>]`` with ``min``, ``opt``, ``max``). Empty when the section is absent."""

    profiles: tuple[tuple[str, ShapeProfile], ...] = ()

    def profile(self, input_name: str) -> ShapeProfile | None:
        """The profile of input ``input_name``, None when the config names none."""
        return dict(self.profiles).get(input_name)


def _check(ok: bool, what: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{what}: {message}")


def _real(v: Any) -> bool:
    """A real number (numpy's scalars too, for configs made in code), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(values: Any, n: int) -> bool:
    """Whether ``values`` is a sequence of ``n`` finite real numbers (not bools)."""
    try:
        return len(values) == n and all(_real(v) and math.isfinite(v) for v in values)
    except TypeError:
        return False


def _positive_ints(values: Any, n: int) -> bool:
    try:
        return len(values) == n and all(_whole(v) and v > 0 for v in values)
    except TypeError:
        return False


def _unit(value: float) -> bool:
    """A threshold: a finite number in [0, 1]."""
    return _real(value) and 0.0 <= value <= 1.0


def _check_mean_std(what: str, mean: Any, std: Any) -> None:
    _check(_finite(mean, 3), what, f"mean must be 3 finite numbers (RGB), got {mean!r}")
    _check(
        _finite(std, 3) and all(v > 0 for v in std),
        what,
        f"std must be 3 positive numbers (RGB), got {std!r}",
    )


@dataclass(frozen=True)
class InputConfig:
    """Detector input: keep-ratio resize into ``img_scale`` = (max long edge, max short edge),
    BGR->RGB, ``(x - mean) / std`` per RGB channel, zero padding to a multiple of ``pad_divisor``."""

    img_scale: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_divisor: int = 32

    def __post_init__(self) -> None:
        what = "detector input config"
        _check(
            _positive_ints(self.img_scale, 2),
            what,
            f"img_scale must be 2 positive integers, got {self.img_scale!r}",
        )
        _check_mean_std(what, self.mean, self.std)
        _check(
            _positive_ints((self.pad_divisor,), 1),
            what,
            f"pad_divisor must be a positive integer, got {self.pad_divisor!r}",
        )


@dataclass(frozen=True)
class YOLOv3Config:
    input: InputConfig
    strides: tuple[int, ...]
    base_sizes: tuple[tuple[tuple[float, float], ...], ...]
    conf_thr: float
    score_thr: float
    nms_iou: float
    max_per_img: int
    weights: WeightsSpec
    num_classes: int = 1
    type: str = "yolov3"
    engine: EngineConfig = EngineConfig()

    def __post_init__(self) -> None:
        what = "yolov3 config"
        _check(
            self.num_classes == 1, what, f"num_classes must be 1 (one class, face), got {self.num_classes!r}"
        )
        _check(
            tuple(self.strides) == YOLO_STRIDES,
            what,
            f"strides must be {list(YOLO_STRIDES)} (the network's output levels, in head order), got {self.strides!r}",
        )
        _check(
            len(self.base_sizes) == 3
            and all(len(lv) == 3 and all(_finite(a, 2) and min(a) > 0 for a in lv) for lv in self.base_sizes),
            what,
            f"base_sizes must be 3 levels of 3 (w, h) anchor sizes > 0 (the head predicts 3 per level), got {self.base_sizes!r}",
        )
        _check(
            self.input.pad_divisor % YOLO_STRIDES[0] == 0,
            what,
            f"pad_divisor must be a multiple of {YOLO_STRIDES[0]} (the network's largest stride), got {self.input.pad_divisor}",
        )
        for name in ("conf_thr", "score_thr", "nms_iou"):
            value = getattr(self, name)
            _check(_unit(value), what, f"{name} must be a number in [0, 1], got {value!r}")
        _check(
            _whole(self.max_per_img),
            what,
            f"max_per_img must be an integer (<= 0: no limit), got {self.max_per_img!r}",
        )


@dataclass(frozen=True)
class FasterRCNNConfig:
    input: InputConfig
    anchor_strides: tuple[int, ...]
    anchor_ratios: tuple[float, ...]
    anchor_scales: tuple[float, ...]
    rpn_nms_pre: int
    rpn_nms_iou: float
    rpn_max_per_img: int
    rpn_min_bbox_size: float
    rpn_target_means: tuple[float, float, float, float]
    rpn_target_stds: tuple[float, float, float, float]
    roi_output_size: int
    roi_sampling_ratio: int
    roi_featmap_strides: tuple[int, ...]
    roi_finest_scale: float
    roi_aligned: bool
    score_thr: float
    nms_iou: float
    max_per_img: int
    rcnn_target_means: tuple[float, float, float, float]
    rcnn_target_stds: tuple[float, float, float, float]
    weights: WeightsSpec
    num_classes: int = 1
    type: str = "faster-rcnn"
    engine: EngineConfig = EngineConfig()

    def __post_init__(self) -> None:
        what = "faster-rcnn config"
        _check(
            self.num_classes == 1, what, f"num_classes must be 1 (one class, face), got {self.num_classes!r}"
        )
        _check(
            tuple(self.anchor_strides) == FRCNN_ANCHOR_STRIDES,
            what,
            f"anchor strides must be {list(FRCNN_ANCHOR_STRIDES)} (the FPN levels), got {self.anchor_strides!r}",
        )
        ok = _finite(self.anchor_ratios, len(self.anchor_ratios)) and _finite(
            self.anchor_scales, len(self.anchor_scales)
        )
        _check(
            ok
            and len(self.anchor_ratios) * len(self.anchor_scales) == 3
            and min(self.anchor_ratios + self.anchor_scales) > 0,
            what,
            "anchor ratios x scales must be 3 anchors (the RPN head predicts 3 per location), all > 0, "
            f"got ratios {self.anchor_ratios!r} and scales {self.anchor_scales!r}",
        )
        _check(
            tuple(self.roi_featmap_strides) == FRCNN_ANCHOR_STRIDES[:4],
            what,
            f"roi featmap_strides must be {list(FRCNN_ANCHOR_STRIDES[:4])}, got {self.roi_featmap_strides!r}",
        )
        _check(
            self.roi_output_size == 7,
            what,
            f"roi output_size must be 7 (the box head's input is 256 x 7 x 7), got {self.roi_output_size!r}",
        )
        _check(
            _whole(self.roi_sampling_ratio) and self.roi_sampling_ratio >= 0,
            what,
            f"roi sampling_ratio must be an integer >= 0 (0: adaptive), got {self.roi_sampling_ratio!r}",
        )
        _check(
            _finite((self.roi_finest_scale,), 1) and self.roi_finest_scale > 0,
            what,
            f"roi finest_scale must be a positive number, got {self.roi_finest_scale!r}",
        )
        for name in ("rpn_nms_iou", "score_thr", "nms_iou"):
            value = getattr(self, name)
            _check(_unit(value), what, f"{name} must be a number in [0, 1], got {value!r}")
        _check(
            _positive_ints((self.rpn_max_per_img,), 1),
            what,
            f"rpn max_per_img must be a positive integer, got {self.rpn_max_per_img!r}",
        )
        for name in ("rpn_nms_pre", "max_per_img"):
            value = getattr(self, name)
            _check(
                _whole(value),
                what,
                f"{name} must be an integer (<= 0: no limit), got {value!r}",
            )
        _check(
            _finite((self.rpn_min_bbox_size,), 1),
            what,
            f"rpn min_bbox_size must be a finite number (< 0: no minimum), got {self.rpn_min_bbox_size!r}",
        )
        for name in ("rpn_target_means", "rpn_target_stds", "rcnn_target_means", "rcnn_target_stds"):
            value = getattr(self, name)
            positive = name.endswith("stds")
            _check(
                _finite(value, 4) and (not positive or min(value) > 0),
                what,
                f"{name} must be 4 {'positive' if positive else 'finite'} numbers, got {value!r}",
            )


@dataclass(frozen=True)
class HRNetConfig:
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bbox_padding: float
    pixel_std: float
    shift_heatmap: bool
    flip_pairs: tuple[tuple[int, int], ...]
    decode: str
    blur_kernel: int
    weights: WeightsSpec
    num_keypoints: int = 28
    type: str = "hrnetv2"
    engine: EngineConfig = EngineConfig()

    def __post_init__(self) -> None:
        what = "hrnetv2 config"
        _check(
            self.num_keypoints == HRNET_KEYPOINTS,
            what,
            f"num_keypoints must be {HRNET_KEYPOINTS} (the network's outputs), got {self.num_keypoints!r}",
        )
        _check(
            _positive_ints(self.input_size, 2) and all(v % HRNET_SIZE_DIVISOR == 0 for v in self.input_size),
            what,
            f"input size must be 2 positive multiples of {HRNET_SIZE_DIVISOR} (w, h), got {self.input_size!r}",
        )
        want = tuple(v // HRNET_STRIDE for v in self.input_size)
        _check(
            tuple(self.heatmap_size) == want,
            what,
            f"heatmap_size must be the input size / {HRNET_STRIDE} (the network's output), "
            f"{list(want)}, got {self.heatmap_size!r}",
        )
        _check_mean_std(what, self.mean, self.std)
        for name in ("bbox_padding", "pixel_std"):
            value = getattr(self, name)
            _check(
                _finite((value,), 1) and value > 0, what, f"{name} must be a positive number, got {value!r}"
            )
        _check(
            isinstance(self.shift_heatmap, bool),
            what,
            f"shift_heatmap must be true or false, got {self.shift_heatmap!r}",
        )
        _check(
            self.decode in ("dark", "quarter", "none"),
            what,
            f"decode must be 'dark', 'quarter' or 'none', got {self.decode!r}",
        )
        _check(
            _whole(self.blur_kernel) and self.blur_kernel % 2 == 1 and self.blur_kernel >= 3,
            what,
            f"blur_kernel must be an odd integer >= 3, got {self.blur_kernel!r}",
        )
        seen: set[int] = set()
        for pair in self.flip_pairs:
            _check(
                len(pair) == 2 and all(_whole(k) and 0 <= k < self.num_keypoints for k in pair),
                what,
                f"flip pair {pair!r} must be 2 keypoint indices in 0..{self.num_keypoints - 1}",
            )
            a, b = pair
            _check(
                a != b and not {a, b} & seen,
                what,
                f"flip pair {[a, b]}: a keypoint may be in one pair only, mirrored to another",
            )
            seen |= {a, b}


ModelConfig = YOLOv3Config | FasterRCNNConfig | HRNetConfig


_MISSING: Any = object()


class _Table:
    """One table of a config file, read key by key: every value's TOML type is checked, with the
    file, table and key in the message (``"false"`` is a string, not false; ``100.7`` is not a
    count), and :meth:`done` refuses keys never read: a misspelt key would otherwise leave the
    default it meant to change, silently."""

    def __init__(self, raw: Mapping[str, Any], name: str, source: str, *, required: bool = True) -> None:
        sec = raw.get(name, _MISSING)
        if sec is _MISSING:
            if required:
                raise ValueError(f"config {source}: missing [{name}] section")
            sec = {}
        if not isinstance(sec, Mapping):
            raise ValueError(f"config {source}: [{name}] must be a table, got {sec!r}")
        self.sec, self.name, self.source = sec, name, source
        self.read: set[str] = set()

    def _value(self, key: str, default: Any) -> Any:
        self.read.add(key)
        if key in self.sec:
            return self.sec[key]
        if default is _MISSING:
            raise ValueError(f"config {self.source}: missing key '{key}' in [{self.name}]")
        return default

    def _bad(self, key: str, what: str, value: Any) -> ValueError:
        return ValueError(f"config {self.source}: [{self.name}] {key} must be {what}, got {value!r}")

    def integer(self, key: str, default: Any = _MISSING) -> int:
        v = self._value(key, default)
        if not _whole(v):
            raise self._bad(key, "an integer", v)
        return int(v)

    def number(self, key: str, default: Any = _MISSING) -> float:
        v = self._value(key, default)
        if not _real(v) or not math.isfinite(v):
            raise self._bad(key, "a finite number", v)
        return float(v)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        v = self._value(key, default)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def text(self, key: str, default: Any = _MISSING) -> str:
        v = self._value(key, default)
        if not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def integers(self, key: str, n: int | None = None) -> tuple[int, ...]:
        v = self._value(key, _MISSING)
        if not isinstance(v, list) or not all(map(_whole, v)) or (n is not None and len(v) != n):
            raise self._bad(key, f"a list of {n or 'some'} integers", v)
        return tuple(int(x) for x in v)

    def numbers(self, key: str, n: int | None = None) -> tuple[float, ...]:
        v = self._value(key, _MISSING)
        ok = isinstance(v, list) and all(_real(x) and math.isfinite(x) for x in v)
        if not ok or (n is not None and len(v) != n):
            raise self._bad(key, f"a list of {n or 'some'} finite numbers", v)
        return tuple(float(x) for x in v)

    def nested(self, key: str, depth: int, leaf: Any) -> Any:
        """A list of lists (``depth`` levels) whose leaves satisfy ``leaf``, as nested tuples."""
        v = self._value(key, _MISSING)

        def convert(x: Any, d: int) -> Any:
            if d == 0:
                if not leaf(x):
                    raise self._bad(key, f"nested lists ({depth} deep) of numbers", v)
                return x
            if not isinstance(x, list):
                raise self._bad(key, f"nested lists ({depth} deep) of numbers", v)
            return tuple(convert(y, d - 1) for y in x)

        return convert(v, depth)

    def done(self) -> None:
        unknown = sorted(set(self.sec) - self.read)
        if unknown:
            raise ValueError(
                f"config {self.source}: unknown key(s) {', '.join(map(repr, unknown))} in [{self.name}] "
                f"(known: {', '.join(sorted(self.read))})"
            )


def _weights(raw: Mapping[str, Any], source: str) -> WeightsSpec:
    t = _Table(raw, "weights", source, required=False)
    spec = WeightsSpec(file=t.text("file", ""), url=t.text("url", ""), sha256=t.text("sha256", ""))
    t.done()
    if spec.file and (spec.file != Path(spec.file).name or spec.file in (".", "..")):
        raise ValueError(
            f"config {source}: [weights] file must be a bare file name (looked up in $AFD_TRT_WEIGHTS "
            f"and the cache), got {spec.file!r}; pass a checkpoint elsewhere by its path"
        )
    if spec.sha256 and (
        len(spec.sha256) != 64 or any(c not in "0123456789abcdef" for c in spec.sha256.lower())
    ):
        raise ValueError(
            f"config {source}: [weights] sha256 must be empty or 64 hex digits, got {spec.sha256!r}"
        )
    return spec


def _input(raw: Mapping[str, Any], source: str) -> InputConfig:
    t = _Table(raw, "input", source)
    img_scale = t.integers("img_scale", 2)
    mean, std = t.numbers("mean", 3), t.numbers("std", 3)
    pad = t.integer("pad_divisor", 32)
    t.done()
    return InputConfig(img_scale=img_scale, mean=mean, std=std, pad_divisor=pad)  # type: ignore[arg-type]


def _engine(raw: Mapping[str, Any], source: str) -> EngineConfig:
    """The optional ``[engine]`` section: ``[engine.profiles.<input>]`` tables of min/opt/max shapes."""
    sec = _Table(raw, "engine", source, required=False)
    tables = sec.sec.get("profiles", {})
    sec.read.add("profiles")
    sec.done()
    if not isinstance(tables, Mapping):
        raise ValueError(f"config {source}: [engine.profiles] must be a table, got {tables!r}")
    profiles = []
    for name, tab in tables.items():
        where = f"[engine.profiles.{name}]"
        if not isinstance(tab, Mapping):
            raise ValueError(f"config {source}: {where} must be a table with min, opt, max, got {tab!r}")
        t = _Table(tables, str(name), source)
        t.name = f"engine.profiles.{name}"
        shapes = []
        for k in ("min", "opt", "max"):
            v = t._value(k, _MISSING)
            if not (isinstance(v, list) and v and all(_whole(d) and d > 0 for d in v)):
                raise ValueError(
                    f"config {source}: {where} {k} must be a list of positive integers, got {v!r}"
                )
            shapes.append(tuple(v))
        t.done()
        lo, opt, hi = shapes
        if not len(lo) == len(opt) == len(hi):
            raise ValueError(f"config {source}: {where} min/opt/max ranks differ: {lo}, {opt}, {hi}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ValueError(
                f"config {source}: {where} needs min <= opt <= max per axis, got {lo}, {opt}, {hi}"
            )
        profiles.append((str(name), ShapeProfile(min=lo, opt=opt, max=hi)))
    return EngineConfig(profiles=tuple(profiles))


_SECTIONS = {
    "yolov3": ("model", "input", "anchors", "test", "weights", "engine"),
    "faster-rcnn": ("model", "input", "anchors", "rpn", "roi", "test", "weights", "engine"),
    "hrnetv2": ("model", "input", "test", "weights", "engine"),
}


def _from_raw(raw: Mapping[str, Any], source: str) -> ModelConfig:
    model = _Table(raw, "model", source)
    kind = model._value("type", _MISSING)
    if kind not in _SECTIONS:
        raise ValueError(f"config {source}: [model] type must be one of {CONFIG_NAMES}, got {kind!r}")
    unknown = sorted(set(raw) - set(_SECTIONS[kind]))
    if unknown:
        raise ValueError(
            f"config {source}: unknown section(s) {', '.join(f'[{u}]' for u in unknown)} for a {kind} "
            f"config (known: {', '.join(f'[{k}]' for k in _SECTIONS[kind])})"
        )
    try:
        cfg = _build(kind, raw, model, source)
    except ValueError as e:
        if str(e).startswith("config "):
            raise
        raise ValueError(f"config {source}: {e}") from None
    return cfg


def _build(kind: str, raw: Mapping[str, Any], model: _Table, source: str) -> ModelConfig:
    """The config of ``kind`` from its file's tables (each table's unknown keys refused)."""

    def positive_number(x: Any) -> bool:
        return _real(x) and math.isfinite(x) and x > 0

    if kind == "yolov3":
        num_classes = model.integer("num_classes", 1)
        model.done()
        inp = _input(raw, source)
        anchors, test = _Table(raw, "anchors", source), _Table(raw, "test", source)
        strides, base_sizes = anchors.integers("strides"), anchors.nested("base_sizes", 3, positive_number)
        anchors.done()
        conf_thr, score_thr, nms_iou = (test.number(k) for k in ("conf_thr", "score_thr", "nms_iou"))
        max_per_img = test.integer("max_per_img")
        test.done()
        return YOLOv3Config(
            input=inp,
            strides=strides,
            base_sizes=base_sizes,
            conf_thr=conf_thr,
            score_thr=score_thr,
            nms_iou=nms_iou,
            max_per_img=max_per_img,
            weights=_weights(raw, source),
            num_classes=num_classes,
            engine=_engine(raw, source),
        )
    if kind == "faster-rcnn":
        num_classes = model.integer("num_classes", 1)
        model.done()
        inp = _input(raw, source)
        anchors = _Table(raw, "anchors", source)
        strides, ratios, scales = (
            anchors.integers("strides"),
            anchors.numbers("ratios"),
            anchors.numbers("scales"),
        )
        anchors.done()
        rpn, roi, test = (_Table(raw, name, source) for name in ("rpn", "roi", "test"))
        cfg = FasterRCNNConfig(
            input=inp,
            anchor_strides=strides,
            anchor_ratios=ratios,
            anchor_scales=scales,
            rpn_nms_pre=rpn.integer("nms_pre"),
            rpn_nms_iou=rpn.number("nms_iou"),
            rpn_max_per_img=rpn.integer("max_per_img"),
            rpn_min_bbox_size=rpn.number("min_bbox_size"),
            rpn_target_means=rpn.numbers("target_means", 4),  # type: ignore[arg-type]
            rpn_target_stds=rpn.numbers("target_stds", 4),  # type: ignore[arg-type]
            roi_output_size=roi.integer("output_size"),
            roi_sampling_ratio=roi.integer("sampling_ratio"),
            roi_featmap_strides=roi.integers("featmap_strides"),
            roi_finest_scale=roi.number("finest_scale"),
            roi_aligned=roi.flag("aligned", True),
            score_thr=test.number("score_thr"),
            nms_iou=test.number("nms_iou"),
            max_per_img=test.integer("max_per_img"),
            rcnn_target_means=test.numbers("target_means", 4),  # type: ignore[arg-type]
            rcnn_target_stds=test.numbers("target_stds", 4),  # type: ignore[arg-type]
            weights=_weights(raw, source),
            num_classes=num_classes,
            engine=_engine(raw, source),
        )
        for t in (rpn, roi, test):
            t.done()
        return cfg
    num_keypoints = model.integer("num_keypoints", HRNET_KEYPOINTS)
    model.done()
    inp_t, test = _Table(raw, "input", source), _Table(raw, "test", source)
    # Copies of the configs of 2026-12-04 and before carry flip_test = true, which was never
    # read: true (what every Detector does unless told otherwise) is let through with a warning;
    # false, which would never have turned the flip test off, is refused.
    if test.flag("flip_test", True) is False:
        raise ValueError(
            f"config {source}: [test] flip_test = false has no effect: the flip test is chosen per "
            "Detector (Detector(flip_test=False), afd-trt --no-flip); remove it from the file"
        )
    if "flip_test" in test.sec:
        logger.warning(
            "config %s: [test] flip_test is not a model setting (the flip test is chosen per Detector): "
            "ignored; remove it from the file",
            source,
        )
    cfg_h = HRNetConfig(
        input_size=inp_t.integers("size", 2),  # type: ignore[arg-type]
        heatmap_size=inp_t.integers("heatmap_size", 2),  # type: ignore[arg-type]
        mean=inp_t.numbers("mean", 3),  # type: ignore[arg-type]
        std=inp_t.numbers("std", 3),  # type: ignore[arg-type]
        bbox_padding=inp_t.number("bbox_padding"),
        pixel_std=inp_t.number("pixel_std"),
        shift_heatmap=test.flag("shift_heatmap", True),
        flip_pairs=test.nested("flip_pairs", 2, _whole),
        decode=test.text("decode", "dark"),
        blur_kernel=test.integer("blur_kernel", 11),
        weights=_weights(raw, source),
        num_keypoints=num_keypoints,
        engine=_engine(raw, source),
    )
    inp_t.done()
    test.done()
    return cfg_h


def _packaged_config_text(name: str) -> str:
    try:
        return (resources.files("afd_trt.configs") / f"{name}.toml").read_text(encoding="utf-8")
    except ModuleNotFoundError:  # running from a source checkout: configs/ beside the package
        return (Path(__file__).resolve().parent.parent / "configs" / f"{name}.toml").read_text(
            encoding="utf-8"
        )


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Load a model config: a packaged name (``yolov3``, ``faster-rcnn``, ``hrnetv2``) or a TOML path."""
    if isinstance(name_or_path, str) and name_or_path in CONFIG_NAMES:
        text, source = _packaged_config_text(name_or_path), f"'{name_or_path}'"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {str(name_or_path)!r} is neither one of {CONFIG_NAMES} nor an existing TOML file"
            )
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {source}: not valid TOML: {e}") from e
    cfg = _from_raw(raw, source)
    _check_profiles(cfg, source)
    return cfg


def _profile_templates(cfg: ModelConfig) -> dict[str, tuple[int | None, ...]]:
    """Per network input that takes a TensorRT profile, its shape with the axes the network fixes
    (None: free, within the profile)."""
    if isinstance(cfg, HRNetConfig):
        w, h = cfg.input_size
        return {"crops": (None, 3, h, w)}
    if isinstance(cfg, FasterRCNNConfig):
        return {"image": (None, 3, None, None), "rois": (None, 256, 7, 7)}
    return {"image": (None, 3, None, None)}


def _check_profiles(cfg: ModelConfig, source: str) -> None:
    """Each ``[engine.profiles.<input>]`` names an input of the network and fits its fixed axes
    (TensorRT failed much later on one that did not, naming neither the config nor the key)."""
    templates = _profile_templates(cfg)
    for name, prof in cfg.engine.profiles:
        where = f"config {source}: [engine.profiles.{name}]"
        if name not in templates:
            raise ValueError(f"{where}: {cfg.type} has no input {name!r} (its inputs: {sorted(templates)})")
        want = templates[name]
        for k, shape in (("min", prof.min), ("opt", prof.opt), ("max", prof.max)):
            if len(shape) != len(want) or any(
                w is not None and d != w for d, w in zip(shape, want, strict=False)
            ):
                spec = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
                raise ValueError(f"{where} {k} {list(shape)} does not fit the input's shape {spec}")


def config_hash(cfg: ModelConfig) -> str:
    """Stable sha256 of a config's values (not of its file's text): a cache key part."""
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
