"""Typed model configs, loaded from the TOML files in ``configs/``.

Every hyperparameter of a model's test path lives in its config file; code never guesses a
model's kind from tensor shapes. ``load_config("yolov3")`` reads the packaged file,
``load_config("my.toml")`` a user's own, and ``dataclasses.replace`` tweaks one in code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class InputConfig:
    """Detector input: keep-ratio resize into ``img_scale`` = (max long edge, max short edge),
    BGR->RGB, ``(x - mean) / std`` per RGB channel, zero padding to a multiple of ``pad_divisor``."""

    img_scale: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_divisor: int = 32


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


@dataclass(frozen=True)
class HRNetConfig:
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bbox_padding: float
    pixel_std: float
    flip_test: bool
    shift_heatmap: bool
    flip_pairs: tuple[tuple[int, int], ...]
    decode: str
    blur_kernel: int
    weights: WeightsSpec
    num_keypoints: int = 28
    type: str = "hrnetv2"
    engine: EngineConfig = EngineConfig()

    def __post_init__(self) -> None:
        if self.decode not in ("dark", "quarter", "none"):
            raise ValueError(
                f"hrnetv2 config: decode must be 'dark', 'quarter' or 'none', got {self.decode!r}"
            )
        if self.blur_kernel % 2 != 1 or self.blur_kernel < 1:
            raise ValueError(f"hrnetv2 config: blur_kernel must be odd and >= 1, got {self.blur_kernel}")
        for a, b in self.flip_pairs:
            if not (0 <= a < self.num_keypoints and 0 <= b < self.num_keypoints):
                raise ValueError(
                    f"hrnetv2 config: flip pair {(a, b)} out of range for {self.num_keypoints} keypoints"
                )


ModelConfig = YOLOv3Config | FasterRCNNConfig | HRNetConfig


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def _section(raw: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    sec = raw.get(name)
    if not isinstance(sec, Mapping):
        raise ValueError(f"config {source}: missing [{name}] section")
    return sec


def _get(sec: Mapping[str, Any], key: str, source: str, section: str) -> Any:
    if key not in sec:
        raise ValueError(f"config {source}: missing key '{key}' in [{section}]")
    return _tuple(sec[key])


def _weights(raw: Mapping[str, Any], source: str) -> WeightsSpec:
    sec = raw.get("weights", {})
    return WeightsSpec(
        file=str(sec.get("file", "")), url=str(sec.get("url", "")), sha256=str(sec.get("sha256", ""))
    )


def _input(raw: Mapping[str, Any], source: str) -> InputConfig:
    sec = _section(raw, "input", source)
    return InputConfig(
        img_scale=_get(sec, "img_scale", source, "input"),
        mean=_get(sec, "mean", source, "input"),
        std=_get(sec, "std", source, "input"),
        pad_divisor=int(sec.get("pad_divisor", 32)),
    )


def _engine(raw: Mapping[str, Any], source: str) -> EngineConfig:
    """The optional ``[engine]`` section: ``[engine.profiles.<input>]`` tables of min/opt/max shapes."""
    sec = raw.get("engine", {})
    if not isinstance(sec, Mapping):
        raise ValueError(f"config {source}: [engine] must be a table, got {sec!r}")
    tables = sec.get("profiles", {})
    if not isinstance(tables, Mapping):
        raise ValueError(f"config {source}: [engine.profiles] must be a table, got {tables!r}")
    profiles = []
    for name, tab in tables.items():
        where = f"[engine.profiles.{name}]"
        if not isinstance(tab, Mapping):
            raise ValueError(f"config {source}: {where} must be a table with min, opt, max, got {tab!r}")
        shapes = []
        for k in ("min", "opt", "max"):
            v = _get(tab, k, source, f"engine.profiles.{name}")
            if not (isinstance(v, tuple) and v and all(isinstance(d, int) and d > 0 for d in v)):
                raise ValueError(
                    f"config {source}: {where} {k} must be a list of positive integers, got {v!r}"
                )
            shapes.append(v)
        lo, opt, hi = shapes
        if not len(lo) == len(opt) == len(hi):
            raise ValueError(f"config {source}: {where} min/opt/max ranks differ: {lo}, {opt}, {hi}")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ValueError(
                f"config {source}: {where} needs min <= opt <= max per axis, got {lo}, {opt}, {hi}"
            )
        profiles.append((str(name), ShapeProfile(min=lo, opt=opt, max=hi)))
    return EngineConfig(profiles=tuple(profiles))


def _from_raw(raw: Mapping[str, Any], source: str) -> ModelConfig:
    model = _section(raw, "model", source)
    kind = model.get("type")
    if kind == "yolov3":
        anchors, test = _section(raw, "anchors", source), _section(raw, "test", source)
        return YOLOv3Config(
            input=_input(raw, source),
            strides=_get(anchors, "strides", source, "anchors"),
            base_sizes=_get(anchors, "base_sizes", source, "anchors"),
            conf_thr=float(_get(test, "conf_thr", source, "test")),
            score_thr=float(_get(test, "score_thr", source, "test")),
            nms_iou=float(_get(test, "nms_iou", source, "test")),
            max_per_img=int(_get(test, "max_per_img", source, "test")),
            weights=_weights(raw, source),
            num_classes=int(model.get("num_classes", 1)),
            engine=_engine(raw, source),
        )
    if kind == "faster-rcnn":
        anchors = _section(raw, "anchors", source)
        rpn, roi, test = (_section(raw, s, source) for s in ("rpn", "roi", "test"))
        return FasterRCNNConfig(
            input=_input(raw, source),
            anchor_strides=_get(anchors, "strides", source, "anchors"),
            anchor_ratios=_get(anchors, "ratios", source, "anchors"),
            anchor_scales=_get(anchors, "scales", source, "anchors"),
            rpn_nms_pre=int(_get(rpn, "nms_pre", source, "rpn")),
            rpn_nms_iou=float(_get(rpn, "nms_iou", source, "rpn")),
            rpn_max_per_img=int(_get(rpn, "max_per_img", source, "rpn")),
            rpn_min_bbox_size=float(_get(rpn, "min_bbox_size", source, "rpn")),
            rpn_target_means=_get(rpn, "target_means", source, "rpn"),
            rpn_target_stds=_get(rpn, "target_stds", source, "rpn"),
            roi_output_size=int(_get(roi, "output_size", source, "roi")),
            roi_sampling_ratio=int(_get(roi, "sampling_ratio", source, "roi")),
            roi_featmap_strides=_get(roi, "featmap_strides", source, "roi"),
            roi_finest_scale=float(_get(roi, "finest_scale", source, "roi")),
            roi_aligned=bool(roi.get("aligned", True)),
            score_thr=float(_get(test, "score_thr", source, "test")),
            nms_iou=float(_get(test, "nms_iou", source, "test")),
            max_per_img=int(_get(test, "max_per_img", source, "test")),
            rcnn_target_means=_get(test, "target_means", source, "test"),
            rcnn_target_stds=_get(test, "target_stds", source, "test"),
            weights=_weights(raw, source),
            num_classes=int(model.get("num_classes", 1)),
            engine=_engine(raw, source),
        )
    if kind == "hrnetv2":
        inp, test = _section(raw, "input", source), _section(raw, "test", source)
        return HRNetConfig(
            input_size=_get(inp, "size", source, "input"),
            heatmap_size=_get(inp, "heatmap_size", source, "input"),
            mean=_get(inp, "mean", source, "input"),
            std=_get(inp, "std", source, "input"),
            bbox_padding=float(_get(inp, "bbox_padding", source, "input")),
            pixel_std=float(_get(inp, "pixel_std", source, "input")),
            flip_test=bool(test.get("flip_test", True)),
            shift_heatmap=bool(test.get("shift_heatmap", True)),
            flip_pairs=_get(test, "flip_pairs", source, "test"),
            decode=str(test.get("decode", "dark")),
            blur_kernel=int(test.get("blur_kernel", 11)),
            weights=_weights(raw, source),
            num_keypoints=int(model.get("num_keypoints", 28)),
            engine=_engine(raw, source),
        )
    raise ValueError(f"config {source}: [model] type must be one of {CONFIG_NAMES}, got {kind!r}")


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
    return _from_raw(raw, source)


def config_hash(cfg: ModelConfig) -> str:
    """Stable sha256 of a config's values (not of its file's text): a cache key part."""
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
