"""Seeded test checkpoints: formats, key layouts, determinism, and their calibration (via the oracle)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anime_face_detector._face import FasterRCNNFaceDetector, YOLOv3FaceDetector, load_face_detector
from anime_face_detector._landmark import LandmarkModel, load_landmark_model
from anime_face_detector._weights import load_state_dict_from_path
from paths import TADNE_GRID
from safetensors import safe_open

from afd_trt.models import MODEL_NAMES, build_model
from afd_trt.test_weights import (
    TEST_WEIGHT_STEMS,
    NotTestWeightsError,
    make_test_state_dict,
    synthetic_image,
    write_test_weights,
)

FORMATS = ("pth", "safetensors")
ORACLE = {"yolov3": YOLOv3FaceDetector, "faster-rcnn": FasterRCNNFaceDetector, "hrnetv2": LandmarkModel}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Path]]]:
    out = tmp_path_factory.mktemp("test_weights")
    return out, write_test_weights(out, seed=0)


@pytest.fixture(scope="session")
def yolo_seed1() -> dict[str, torch.Tensor]:
    return make_test_state_dict("yolov3", seed=1)


def seed0_state(paths: dict[str, dict[str, Path]], name: str) -> dict[str, torch.Tensor]:
    return load_state_dict_from_path(paths[name]["safetensors"])


def tadne_or_synthetic(height: int, width: int, crop: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """A resized crop (y0, y1, x0, x1) of the TADNE grid if present, else a synthetic picture."""
    if TADNE_GRID.is_file():
        grid = cv2.imread(str(TADNE_GRID))
        y0, y1, x0, x1 = crop
        return cv2.resize(grid[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_AREA)
    return synthetic_image(height, width, seed)


def test_files_have_released_names_and_layouts(weights_dir: tuple[Path, dict[str, dict[str, Path]]]) -> None:
    out, paths = weights_dir
    assert set(paths) == set(MODEL_NAMES)
    for name, by_format in paths.items():
        assert set(by_format) == set(FORMATS)
        for fmt, path in by_format.items():
            assert path == out / f"{TEST_WEIGHT_STEMS[name]}.{fmt}"
            assert path.is_file()
        ckpt = torch.load(by_format["pth"], map_location="cpu", weights_only=True)
        assert set(ckpt) == {"meta", "state_dict"}
        assert ckpt["meta"]["afd_trt_test_weights"] == "1"
        assert ckpt["meta"]["seed"] == "0"
        with safe_open(str(by_format["safetensors"]), framework="pt") as f:
            meta = f.metadata()
        assert meta == {"afd_trt_test_weights": "1", "seed": "0", "model": name}
        st = load_state_dict_from_path(by_format["safetensors"])
        assert st.keys() == ckpt["state_dict"].keys()
        assert all(torch.equal(st[k], ckpt["state_dict"][k]) for k in st)
    assert {p.name for p in out.iterdir()} == {
        "mmdet_anime-face_yolov3.pth",
        "mmdet_anime-face_yolov3.safetensors",
        "mmdet_anime-face_faster-rcnn.pth",
        "mmdet_anime-face_faster-rcnn.safetensors",
        "mmpose_anime-face_hrnetv2.pth",
        "mmpose_anime-face_hrnetv2.safetensors",
    }


@pytest.mark.oracle
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loads_strict_into_ours_and_oracle(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]], name: str
) -> None:
    ours = build_model(name)
    oracle = ORACLE[name]()
    layout = {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()}
    for fmt in FORMATS:
        state = load_state_dict_from_path(weights_dir[1][name][fmt])  # the oracle's own loader
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == layout
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        ours.load_state_dict(state, strict=True)
        oracle.load_state_dict(state, strict=True)


def test_deterministic_independent_of_global_rng_and_warns(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]], caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="afd_trt.test_weights"):
        again = make_test_state_dict("yolov3", seed=0)
    assert any("detect nothing real" in r.getMessage() for r in caplog.records)
    assert torch.equal(torch.get_rng_state(), before)
    first = seed0_state(weights_dir[1], "yolov3")
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)


def test_different_seeds_differ(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]], yolo_seed1: dict[str, torch.Tensor]
) -> None:
    seed0 = seed0_state(weights_dir[1], "yolov3")
    float_keys = [k for k, v in seed0.items() if v.is_floating_point()]
    differing = [k for k in float_keys if not torch.equal(seed0[k], yolo_seed1[k])]
    assert len(differing) == len(float_keys)


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'yolo5'"):
        make_test_state_dict("yolo5")
    with pytest.raises(ValueError, match="-1"):
        make_test_state_dict("hrnetv2", seed=-1)
    with pytest.raises(ValueError, match="onnx"):
        write_test_weights(tmp_path, formats=("onnx",))
    with pytest.raises(ValueError, match=r"\(\)"):
        write_test_weights(tmp_path, formats=())
    with pytest.raises(ValueError, match="3x9"):
        synthetic_image(3, 9)
    assert not list(tmp_path.iterdir())


def test_same_seed_same_bytes_in_every_process(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]], tmp_path: Path
) -> None:
    """safetensors writes its header in a per-process hash order (the file's sha256 changed run
    to run); afd_trt's header is sorted. Written atomically, with a plain file's mode."""
    code = (
        "import hashlib, torch; from afd_trt.test_weights import safetensors_bytes; "
        "s = {'w': torch.arange(6.0).view(2, 3), 'b': torch.ones(2)}; "
        "print(hashlib.sha256(safetensors_bytes(s, {'seed': '0', 'model': 'x', 'afd_trt_test_weights': '1'})).hexdigest())"
    )
    import afd_trt

    root = Path(afd_trt.__file__).resolve().parent.parent  # the afd_trt these tests import
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=False
        )
        for _ in range(4)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    digests = {r.stdout for r in runs}
    assert len(digests) == 1, digests
    umask = os.umask(0)
    os.umask(umask)
    for files in weights_dir[1].values():
        for path in files.values():
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    with safe_open(str(weights_dir[1]["hrnetv2"]["safetensors"]), framework="pt") as f:
        assert f.metadata() == {"afd_trt_test_weights": "1", "seed": "0", "model": "hrnetv2"}


def test_a_real_checkpoint_is_not_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file under a released name that is not test weights (the user's real checkpoint) stops
    ``make-test-weights`` before anything is written (it was replaced, exit 0)."""
    from afd_trt.cli import main

    real = tmp_path / f"{TEST_WEIGHT_STEMS['faster-rcnn']}.pth"
    real.write_bytes(b"REAL CHECKPOINT BYTES")
    with pytest.raises(NotTestWeightsError, match=f"{real} exists and is not afd_trt's test weights"):
        write_test_weights(tmp_path, seed=0)
    assert main(["make-test-weights", str(tmp_path)]) == 2
    assert "refusing to replace it with random weights" in caplog.text
    assert real.read_bytes() == b"REAL CHECKPOINT BYTES"
    assert sorted(p.name for p in tmp_path.iterdir()) == [real.name]
    # seeds out of range: a usage error, and no folder made
    with pytest.raises(SystemExit) as info:
        main(["make-test-weights", str(tmp_path / "a"), "--seed", "-1"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["make-test-weights", str(tmp_path / "b"), "--seed", str(10**17)])
    assert info.value.code == 2
    with pytest.raises(
        ValueError, match="seed must be an integer from 0 to 4503599627370496, got 100000000000000000"
    ):
        write_test_weights(tmp_path / "b", seed=10**17)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_synthetic_image_deterministic() -> None:
    a, b, c = synthetic_image(90, 160, 3), synthetic_image(90, 160, 3), synthetic_image(90, 160, 4)
    assert a.shape == (90, 160, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 10  # not flat


# --- calibration, checked with the oracle's full pipelines ------------------------------------

TADNE_1280x720 = ((0, 1728, 0, 3072), 1280, 720)


def detector_images() -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    """(label, BGR image, allowed (min, max) number of final detections)."""
    crop, w, h = TADNE_1280x720
    return [
        ("tadne-1280x720", tadne_or_synthetic(h, w, crop, 21), (3, 15)),
        ("synthetic-1280x720", synthetic_image(720, 1280, 22), (1, 30)),
        ("tadne-640x480", tadne_or_synthetic(480, 640, (512, 2048, 1024, 3072), 23), (1, 30)),
        ("synthetic-512x512", synthetic_image(512, 512, 24), (1, 30)),
        ("synthetic-1920x1080", synthetic_image(1080, 1920, 25), (1, 30)),
    ]


def check_detections(dets: np.ndarray, image: np.ndarray, allowed: tuple[int, int], label: str) -> None:
    assert dets.ndim == 2
    assert dets.shape[1] == 5
    assert np.isfinite(dets).all(), label
    assert allowed[0] <= len(dets) <= allowed[1], (label, len(dets))
    assert (dets[:, 4] >= 0.0).all()
    assert (dets[:, 4] <= 1.0).all()
    assert (dets[:, 2] > dets[:, 0]).all()
    assert (dets[:, 3] > dets[:, 1]).all()


@pytest.mark.oracle
@pytest.mark.slow
def test_yolov3_detection_counts(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]], yolo_seed1: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    torch.save({"state_dict": yolo_seed1}, tmp_path / "seed1.pth")
    images = detector_images()
    for path, subset in ((weights_dir[1]["yolov3"]["pth"], images), (tmp_path / "seed1.pth", images[::4])):
        detector = load_face_detector("yolov3", str(path))
        for label, image, allowed in subset:
            check_detections(detector.detect(image), image, allowed, f"{path.name} {label}")


@pytest.mark.oracle
@pytest.mark.slow
def test_faster_rcnn_detection_counts(weights_dir: tuple[Path, dict[str, dict[str, Path]]]) -> None:
    detector = load_face_detector("faster-rcnn", str(weights_dir[1]["faster-rcnn"]["safetensors"]))
    for label, image, allowed in detector_images()[:4:3]:  # tadne 1280x720 and synthetic 512x512
        check_detections(detector.detect(image), image, allowed, label)


@pytest.mark.slow
def test_yolov3_finite_at_1280x736(weights_dir: tuple[Path, dict[str, dict[str, Path]]]) -> None:
    model = build_model("yolov3")
    model.load_state_dict(seed0_state(weights_dir[1], "yolov3"))
    image = cv2.cvtColor(synthetic_image(736, 1280, 26), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        outs = model(x)
    for out in outs:
        assert torch.isfinite(out).all()
        assert out.abs().max() < 1e3


@pytest.mark.oracle
@pytest.mark.slow
def test_hrnet_heatmaps_have_varied_positive_peaks(
    weights_dir: tuple[Path, dict[str, dict[str, Path]]],
) -> None:
    model = load_landmark_model(str(weights_dir[1]["hrnetv2"]["pth"]))
    crop, w, h = TADNE_1280x720
    image = tadne_or_synthetic(h, w, crop, 27)
    boxes = np.array(
        [[100, 100, 300, 320, 0.9], [600, 200, 900, 500, 0.8], [1000, 50, 1200, 400, 0.7]], np.float32
    )
    keypoints, heatmaps = model.detect(image, boxes, return_heatmap=True)
    heatmaps = np.asarray(heatmaps)
    assert keypoints.shape == (3, 28, 3)
    assert heatmaps.shape == (3, 28, 64, 64)
    assert np.isfinite(heatmaps).all()
    peaks = heatmaps.reshape(3, 28, -1)
    assert (peaks.max(-1) > 0.05).mean() >= 0.9  # clear positive peaks
    assert (heatmaps > 0).mean() < 0.7  # ... over a background that is not all positive
    for b in range(2):
        assert len(set(peaks[b].argmax(-1).tolist())) >= 14  # peaks at varied places
        x0, y0, x1, y1 = boxes[b, :4]
        pad_w, pad_h = 0.75 * (x1 - x0), 0.75 * (y1 - y0)  # crop = box padded 1.25x, made square
        assert (keypoints[b, :, 0] > x0 - pad_w).all()
        assert (keypoints[b, :, 0] < x1 + pad_w).all()
        assert (keypoints[b, :, 1] > y0 - pad_h).all()
        assert (keypoints[b, :, 1] < y1 + pad_h).all()
    assert keypoints[..., 2].std() > 0.1
