"""Model config files: every value type- and range-checked, with the file, table and key named;
keys and tables a config does not read are refused, not silently left at their defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from afd_trt.config import CONFIG_NAMES, FasterRCNNConfig, HRNetConfig, YOLOv3Config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The packaged config ``name`` with the line starting ``old`` replaced by ``new``."""
    text = (CONFIGS / f"{name}.toml").read_text()
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith(old)]
    assert len(hits) == 1, f"{old!r} is not one line of {name}.toml"
    lines[hits[0]] = new
    path = tmp_path / f"edited-{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_packaged_configs_load_and_reload_the_same(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    copy = tmp_path / "copy.toml"
    copy.write_text((CONFIGS / f"{name}.toml").read_text())
    assert load_config(copy) == cfg


BAD = [
    # a misspelt or unknown key keeps nothing silently
    (
        "yolov3",
        "nms_iou",
        "nms_iou = 0.45\nnms_thr = 0.9",
        r"unknown key\(s\) 'nms_thr' in \[test\] \(known: ",
    ),
    ("yolov3", "nms_iou", "nms_thr = 0.45", r"missing key 'nms_iou' in \[test\]"),
    ("hrnetv2", "decode", 'decodr = "quarter"', r"unknown key\(s\) 'decodr' in \[test\]"),
    ("yolov3", "[test]", "[tests]", r"unknown section\(s\) \[tests\]"),
    (
        "hrnetv2",
        "shift_heatmap",
        "shift_heatmap = true\nflip_test = false",
        r"\[test\] flip_test = false has no effect",
    ),
    # TOML types are not coerced
    (
        "hrnetv2",
        "shift_heatmap",
        'shift_heatmap = "false"',
        r"\[test\] shift_heatmap must be true or false, got 'false'",
    ),
    ("faster-rcnn", "aligned", 'aligned = "false"', r"\[roi\] aligned must be true or false"),
    ("yolov3", "max_per_img", "max_per_img = 100.7", r"\[test\] max_per_img must be an integer, got 100.7"),
    ("yolov3", "max_per_img", 'max_per_img = "100"', r"max_per_img must be an integer, got '100'"),
    ("hrnetv2", "blur_kernel", "blur_kernel = 11.9", r"blur_kernel must be an integer, got 11.9"),
    ("yolov3", "score_thr", "score_thr = true", r"score_thr must be a finite number, got True"),
    ("yolov3", "nms_iou", "nms_iou = nan", r"nms_iou must be a finite number, got nan"),
    # ranges
    ("yolov3", "score_thr", "score_thr = 2.0", r"score_thr must be a number in \[0, 1\], got 2.0"),
    ("faster-rcnn", "nms_iou = 0.5", "nms_iou = 1.5", r"nms_iou must be a number in \[0, 1\], got 1.5"),
    ("yolov3", "std", "std = [0.0, 255.0, 255.0]", r"std must be 3 positive numbers"),
    ("yolov3", "img_scale", "img_scale = [-608, 608]", r"img_scale must be 2 positive integers"),
    ("yolov3", "img_scale", "img_scale = [608, 608, 1]", r"img_scale must be a list of 2 integers"),
    ("faster-rcnn", "pad_divisor", "pad_divisor = 0", r"pad_divisor must be a positive integer, got 0"),
    ("yolov3", "pad_divisor", "pad_divisor = 16", r"pad_divisor must be a multiple of 32"),
    ("hrnetv2", "bbox_padding", "bbox_padding = -1.25", r"bbox_padding must be a positive number"),
    ("hrnetv2", "pixel_std", "pixel_std = 0.0", r"pixel_std must be a positive number"),
    ("faster-rcnn", "max_per_img = 1000", "max_per_img = 0", r"rpn max_per_img must be a positive integer"),
    ("faster-rcnn", "sampling_ratio", "sampling_ratio = -2", r"sampling_ratio must be an integer >= 0"),
    (
        "faster-rcnn",
        "target_stds = [0.1",
        "target_stds = [0.1, 0.1, 0.0, 0.2]",
        r"rcnn_target_stds must be 4 positive",
    ),
    # what the networks fix
    ("yolov3", "strides", "strides = [8, 16, 32]", r"strides must be \[32, 16, 8\]"),
    ("yolov3", "num_classes", "num_classes = 3", r"num_classes must be 1"),
    ("faster-rcnn", "ratios", "ratios = [0.5, 1.0]", r"ratios x scales must be 3 anchors"),
    ("faster-rcnn", "output_size", "output_size = 5", r"output_size must be 7"),
    (
        "faster-rcnn",
        "featmap_strides",
        "featmap_strides = [4, 8, 16]",
        r"featmap_strides must be \[4, 8, 16, 32\]",
    ),
    ("hrnetv2", "num_keypoints", "num_keypoints = 27", r"num_keypoints must be 28"),
    ("hrnetv2", "heatmap_size", "heatmap_size = [-64, 64]", r"heatmap_size must be the input size / 4"),
    ("hrnetv2", "size", "size = [250, 256]", r"input size must be 2 positive multiples of 32"),
    (
        "hrnetv2",
        "flip_pairs",
        "flip_pairs = [[0, 4], [0, 1]]",
        r"flip pair \[0, 1\]: a keypoint may be in one pair only",
    ),
    (
        "hrnetv2",
        "flip_pairs",
        "flip_pairs = [[0, 28]]",
        r"flip pair \(0, 28\) must be 2 keypoint indices in 0..27",
    ),
    ("hrnetv2", "sha256", 'sha256 = "abc"', r"\[weights\] sha256 must be empty or 64 hex digits"),
    ("hrnetv2", "file", 'file = "../x.pth"', r"\[weights\] file must be a bare file name .*got '../x.pth'"),
    ("yolov3", "file", 'file = "/tmp/x.pth"', r"\[weights\] file must be a bare file name"),
    # TensorRT profiles that do not fit the network failed only at the engine build, unnamed
    (
        "hrnetv2",
        "max = ",
        "max = [128, 3, 512, 512]",
        r"\[engine.profiles.crops\] max \[128, 3, 512, 512\] does not fit the input's shape \(\*, 3, 256, 256\)",
    ),
    (
        "yolov3",
        "min = ",
        "min = [1, 1, 32, 32]",
        r"\[engine.profiles.image\] min \[1, 1, 32, 32\] does not fit the input's shape \(\*, 3, \*, \*\)",
    ),
    (
        "faster-rcnn",
        "[engine.profiles.rois]",
        "[engine.profiles.boxes]",
        r"\[engine.profiles.boxes\]: faster-rcnn has no input 'boxes' \(its inputs: \['image', 'rois'\]\)",
    ),
]


@pytest.mark.parametrize(("name", "old", "new", "match"), BAD, ids=[f"{b[0]}:{b[2]}" for b in BAD])
def test_bad_values_name_the_file_and_key(tmp_path: Path, name: str, old: str, new: str, match: str) -> None:
    path = _edited(tmp_path, name, old, new)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path)
    assert str(info.value).startswith(f"config {path}: "), str(info.value)


def test_an_old_copy_with_flip_test_true_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Configs copied before 2026-12-05 carry ``flip_test = true``, never read: they still load
    (what every Detector does unless told otherwise), with a warning to remove it."""
    path = _edited(tmp_path, "hrnetv2", "shift_heatmap", "shift_heatmap = true\nflip_test = true")
    with caplog.at_level("WARNING", logger="afd_trt.config"):
        assert load_config(path) == load_config("hrnetv2")
    assert "[test] flip_test is not a model setting" in caplog.text


def test_values_made_in_code_are_checked_too() -> None:
    """``dataclasses.replace`` (the documented way to tweak a config in code) runs the same
    range checks as a file."""
    yolo = load_config("yolov3")
    assert isinstance(yolo, YOLOv3Config)
    with pytest.raises(
        ValueError, match=re.escape("yolov3 config: score_thr must be a number in [0, 1], got 2.0")
    ):
        dataclasses.replace(yolo, score_thr=2.0)
    with pytest.raises(ValueError, match="pad_divisor must be a positive integer, got 0"):
        dataclasses.replace(yolo.input, pad_divisor=0)
    frcnn = load_config("faster-rcnn")
    assert isinstance(frcnn, FasterRCNNConfig)
    with pytest.raises(ValueError, match="faster-rcnn config: rpn_nms_iou must be a number in"):
        dataclasses.replace(frcnn, rpn_nms_iou=float("nan"))
    hrnet = load_config("hrnetv2")
    assert isinstance(hrnet, HRNetConfig)
    with pytest.raises(ValueError, match="blur_kernel must be an odd integer >= 3, got 4"):
        dataclasses.replace(hrnet, blur_kernel=4)
    assert dataclasses.replace(yolo, max_per_img=-1).max_per_img == -1  # upstream's "no limit"
    # numpy scalars, as code computing a setting makes them, are numbers like any other
    tweaked = dataclasses.replace(yolo, score_thr=np.float32(0.3), max_per_img=np.int64(5))
    assert (tweaked.score_thr, tweaked.max_per_img) == (np.float32(0.3), 5)
