"""Detector API behaviour: accepted image forms, clear errors, batches that lose nothing,
custom configs (checked against upstream with the same hyperparameters), weight resolution."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import pickle
import re
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from images import tadne_crop

import afd_trt
from afd_trt.config import YOLOv3Config, load_config
from afd_trt.weights import CheckpointUnavailableError

Weights = dict[str, dict[str, Path]]


@pytest.fixture(scope="module")
def weights(seeded_weights: Callable[[int], Weights]) -> Weights:
    return seeded_weights(0)


@pytest.fixture(scope="module")
def det(weights: Weights) -> afd_trt.Detector:
    return afd_trt.Detector(
        "yolov3", weights["yolov3"]["pth"], weights["hrnetv2"]["safetensors"], device="cpu", flip_test=False
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tadne_crop(2048, 1536, 512, 512, (320, 320))


@pytest.fixture(scope="module")
def image_faces(det: afd_trt.Detector, image: np.ndarray) -> list[dict[str, np.ndarray]]:
    """``det(image)``, computed once: what other forms of the same pixels must give."""
    return det(image)


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa["bbox"], fb["bbox"])
        np.testing.assert_array_equal(fa["keypoints"], fb["keypoints"])


def test_result_schema(det: afd_trt.Detector, image: np.ndarray) -> None:
    faces = det(image)
    assert faces, "the seeded weights are calibrated to find a few boxes on this crop"
    for f in faces:
        assert set(f) == {"bbox", "keypoints"}
        assert f["bbox"].dtype == np.float32
        assert f["bbox"].shape == (5,)
        assert f["keypoints"].dtype == np.float32
        assert f["keypoints"].shape == (28, 3)
    scores = [float(f["bbox"][4]) for f in faces]
    assert scores == sorted(scores, reverse=True)


def test_path_and_array_inputs_agree(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), image)
    from_array = image_faces
    _same(det(str(path)), from_array)
    _same(det(path), from_array)
    _same(det(np.asfortranarray(image)), from_array)  # non-contiguous memory is copied, not misread


def test_gray_and_bgra_conversions(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]]
) -> None:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    expected = det(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    _same(det(gray), expected)
    _same(det(gray[:, :, None]), expected)
    bgra = np.concatenate([image, np.full((*image.shape[:2], 1), 7, np.uint8)], axis=2)
    _same(det(bgra), image_faces)


def test_flipped_view_is_read_correctly(det: afd_trt.Detector, image: np.ndarray) -> None:
    view = image[:, ::-1]
    _same(det(view), det(np.ascontiguousarray(view)))


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (np.zeros((32, 32, 3), np.float32), TypeError, "dtype uint8"),
        (np.zeros((32, 32, 3), np.uint16), TypeError, "dtype uint8"),
        (np.zeros((32, 32, 2), np.uint8), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((2, 32, 32, 3), np.uint8), ValueError, "shape"),
        (np.zeros((0, 32, 3), np.uint8), ValueError, "empty image"),
        ([[1, 2], [3, 4]], TypeError, "numpy array or a path"),
        (12, TypeError, "numpy array or a path"),
        ("/nonexistent/face.jpg", ValueError, "no such file"),
    ],
)
def test_bad_images_raise_clear_errors(det: afd_trt.Detector, bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        det(bad)  # type: ignore[arg-type]


def test_unreadable_files(det: afd_trt.Detector, tmp_path: Path, image: np.ndarray) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        det(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="could not decode"):
        det(text)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    bomb = tmp_path / "bomb.png"
    raw = bytearray(buf.tobytes())
    raw[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")
    bomb.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="exceeds the limit"):
        det(bomb)
    # a NUL byte: os.stat's bare "embedded null byte" named no image
    with pytest.raises(ValueError, match=r"image '.*a\\x00b\.png': not a usable file name"):
        det(str(tmp_path / "a\x00b.png"))


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        ([[0, 0, 10]], "4 or 5 values"),
        ([[0, 0, float("nan"), 10]], "non-finite"),
        ([[0, 0, 10, float("inf"), 1]], "non-finite"),
        ([["a", 0, 10, 10]], "numbers"),
    ],
)
def test_bad_user_boxes(
    det: afd_trt.Detector, image: np.ndarray, boxes: list[list[object]], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        det(image, boxes=boxes)


def test_detect_batch_keeps_good_results_when_items_fail(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]]
) -> None:
    other = tadne_crop(0, 0, 512, 512, (256, 256))
    items = [image, "/nonexistent.png", other, np.zeros((4, 4), np.float64)]
    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch(items)
    err = info.value
    assert sorted(err.errors) == [1, 3]
    assert err.results[1] is None
    assert err.results[3] is None
    _same(err.results[0] or [], image_faces)
    _same(err.results[2] or [], det(other))
    assert "item 1" in str(err)
    with pytest.raises(afd_trt.BatchError) as info2:
        det.detect_batch([image, other], boxes=[None, [[0, 0, float("nan"), 5]]])
    assert list(info2.value.errors) == [1]
    _same(info2.value.results[0] or [], image_faces)


class _BrokenPath(os.PathLike[str]):
    def __fspath__(self) -> str:
        raise RuntimeError("no path here")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_path_like_that_fails_is_that_items_error(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]], workers: int
) -> None:
    """A path-like whose ``__fspath__`` raises was taken for a failure of the input iterable:
    the stream stopped and ``detect_batch`` lost every result."""
    results = list(det.stream([_BrokenPath(), image], workers=workers))
    assert [r.index for r in results] == [0, 1]
    assert results[0].source is None
    assert isinstance(results[0].error, Exception)
    assert "no path here" in str(results[0].error)
    _same(results[1].faces or [], image_faces)
    with pytest.raises(TypeError, match="keep_images must be True or False, got str 'no'"):
        next(det.stream([image], keep_images="no"))  # type: ignore[arg-type]


def test_detect_batch_equals_single_calls(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]]
) -> None:
    # Three input shapes (detector buckets), one of them a 37x29 image padded far up.
    imgs = [
        image,
        tadne_crop(0, 0, 700, 500),
        tadne_crop(1000, 2000, 333, 777),
        tadne_crop(2300, 1600, 37, 29),
    ]
    batch = det.detect_batch(imgs)
    _same(batch[0], image_faces)
    for got, img in zip(batch[1:], imgs[1:], strict=True):
        _same(got, det(img))
    assert det.detect_batch([]) == []


def test_one_detector_serves_concurrent_threads(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]]
) -> None:
    """A server calls one Detector from many request threads: each call gets its own image's
    answer, the same as a call alone (single calls and batches interleaved)."""
    other = tadne_crop(0, 0, 400, 300)
    alone = det(other)
    jobs = [image, other, [image, other], other, image, [other, image]]

    def call(job: np.ndarray | list[np.ndarray]) -> list[list[dict[str, np.ndarray]]]:
        return det.detect_batch(job) if isinstance(job, list) else [det(job)]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, jobs))
    for job, got in zip(jobs, answers, strict=True):
        images = job if isinstance(job, list) else [job]
        for img, faces in zip(images, got, strict=True):
            _same(faces, image_faces if img is image else alone)


def test_constructor_errors(weights: Weights) -> None:
    lm = weights["hrnetv2"]["pth"]
    with pytest.raises(ValueError, match="face_detector must be one of"):
        afd_trt.Detector("retinaface", None, lm, device="cpu")
    for kwargs in ({"face_detector_checkpoint": lm}, {"face_detector_config": "yolov3"}):
        with pytest.raises(ValueError, match="given with face_detector=None: name the detector"):
            afd_trt.Detector(None, landmark_checkpoint=lm, device="cpu", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="box_scale_factor"):
        afd_trt.Detector(None, None, lm, device="cpu", box_scale_factor=0)
    for bad in (float("nan"), -1.1, float("inf")):
        with pytest.raises(
            ValueError, match=re.escape(f"box_scale_factor must be a positive number, got {bad}")
        ):
            afd_trt.Detector(None, None, lm, device="cpu", box_scale_factor=bad)
    with pytest.raises(
        TypeError, match=re.escape("box_scale_factor must be a positive number, got str '1.2'")
    ):
        afd_trt.Detector(None, None, lm, device="cpu", box_scale_factor="1.2")  # type: ignore[arg-type]
    # bool("no") is True: a string flag would silently mean the opposite of what it says
    with pytest.raises(TypeError, match="flip_test must be True or False, got str 'no'"):
        afd_trt.Detector(None, None, lm, device="cpu", flip_test="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cuda_graphs must be True or False, got int 2"):
        afd_trt.Detector(None, None, lm, device="cpu", cuda_graphs=2)  # type: ignore[arg-type]
    for flag, want in ((np.bool_(False), False), (0, False), (1, True), (True, True)):
        assert afd_trt.Detector(None, None, lm, device="cpu", flip_test=flag).flip_test is want  # type: ignore[arg-type]
    assert (
        afd_trt.Detector(None, None, lm, device="cpu", box_scale_factor=np.float32(1.5)).box_scale_factor
        == 1.5
    )
    # refused when built, not at the first face as an error blamed on each image
    for kwargs, exc, msg in (
        ({"max_batch": 0}, ValueError, "max_batch must be an integer >= 1, got 0"),
        ({"max_batch": -1}, ValueError, "max_batch must be an integer >= 1, got -1"),
        ({"max_batch": 1.5}, TypeError, "max_batch must be an integer >= 1, got float 1.5"),
        ({"threads": -1}, ValueError, "threads must be an integer >= 0, got -1"),
        ({"threads": 257}, ValueError, "threads must be from 0 to 256 (0: one per core), got 257"),
        ({"threads": "4"}, TypeError, "threads must be an integer >= 0, got str '4'"),
    ):
        with pytest.raises(exc, match=re.escape(msg)):
            afd_trt.Detector(None, None, lm, device="cpu", **kwargs)  # type: ignore[arg-type]
    assert afd_trt.Detector(None, None, lm, device="cpu", threads=np.int64(256), max_batch=1) is not None
    with pytest.raises(ValueError, match="backend must be one of"):
        afd_trt.Detector(None, None, lm, device="cpu", backend="tvm")
    with pytest.raises(ValueError, match="describes a 'faster-rcnn' model"):
        afd_trt.Detector(
            "yolov3", weights["yolov3"]["pth"], lm, device="cpu", face_detector_config="faster-rcnn"
        )
    with pytest.raises(ValueError, match=r"does not match|[Mm]issing"):
        afd_trt.Detector("yolov3", weights["faster-rcnn"]["pth"], lm, device="cpu")


def test_a_pickled_detector_is_rebuilt_from_its_files(
    weights: Weights, image: np.ndarray, image_faces: list[dict[str, np.ndarray]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Cluster jobs hand a Detector to workers (multiprocessing, Ray): it pickles as its
    construction arguments, relative checkpoint paths made absolute, with its current flip test
    and box scale, and the rebuilt one (here in another working folder) answers alike."""
    folder = weights["yolov3"]["pth"].parent
    monkeypatch.chdir(folder)
    det = afd_trt.Detector(
        "yolov3", "mmdet_anime-face_yolov3.pth", "mmpose_anime-face_hrnetv2.safetensors", device="cpu"
    )
    det.flip_test = False  # changed after construction: travels too
    data = pickle.dumps(det)
    assert len(data) < 10_000  # arguments, not networks
    monkeypatch.chdir(tmp_path)
    again = pickle.loads(data)
    assert isinstance(again, afd_trt.Detector)
    assert again is not det
    assert again.flip_test is False
    assert again.box_scale_factor == det.box_scale_factor
    _same(again(image), image_faces)


@pytest.mark.slow
def test_a_detector_goes_to_a_spawned_worker(
    det: afd_trt.Detector, image: np.ndarray, image_faces: list[dict[str, np.ndarray]]
) -> None:
    """A process of its own (spawn: nothing inherited) gets the Detector through pickle and
    gives the same faces as here."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(afd_trt.Detector.__call__, (det, image))
    _same(got, image_faces)


def test_missing_weights_offline_error_names_file_and_places(
    weights: Weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFD_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AFD_TRT_WEIGHTS", raising=False)
    with pytest.raises(CheckpointUnavailableError, match=r"mmdet_anime-face_yolov3\.pth") as info:
        afd_trt.Detector("yolov3", None, weights["hrnetv2"]["pth"], device="cpu", download=False)
    assert "AFD_TRT_WEIGHTS" in str(info.value)
    # The same files found through AFD_TRT_WEIGHTS work without any explicit path.
    monkeypatch.setenv("AFD_TRT_WEIGHTS", str(weights["yolov3"]["pth"].parent))
    d = afd_trt.create_detector("yolov3", device="cpu", download=False)
    assert d.face_detector_name == "yolov3"


@pytest.mark.oracle
def test_custom_yolo_config_matches_upstream_with_same_settings(weights: Weights, image: np.ndarray) -> None:
    """YOLO at 416 with score_thr 0.3: our config file vs upstream patched to the same values."""
    anime_face_detector = pytest.importorskip("anime_face_detector")
    base = load_config("yolov3")
    assert isinstance(base, YOLOv3Config)
    custom = dataclasses.replace(
        base, input=dataclasses.replace(base.input, img_scale=(416, 416)), score_thr=0.3
    )
    img = tadne_crop(0, 512, 3072, 1728, (960, 540))
    ref = anime_face_detector.LandmarkDetector(
        weights["hrnetv2"]["pth"], "yolov3", weights["yolov3"]["pth"], device="cpu", flip_test=True
    )
    ref.face_detector.IMG_SCALE = (416, 416)
    ref.face_detector.bbox_head.test_cfg = {**ref.face_detector.bbox_head.test_cfg, "score_thr": 0.3}
    ours = afd_trt.Detector(
        "yolov3",
        weights["yolov3"]["pth"],
        weights["hrnetv2"]["pth"],
        device="cpu",
        face_detector_config=custom,
    )
    got, exp = ours(img), ref(img)
    assert len(got) == len(exp)
    for a, b in zip(got, exp, strict=True):
        assert np.abs(a["bbox"] - b["bbox"]).max() <= 1e-3
        assert np.abs(a["keypoints"][:, :2] - b["keypoints"][:, :2]).max() <= 0.05
    default = afd_trt.Detector("yolov3", weights["yolov3"]["pth"], weights["hrnetv2"]["pth"], device="cpu")
    assert [f["bbox"].tolist() for f in default(img)] != [f["bbox"].tolist() for f in got]


@pytest.mark.oracle
def test_max_per_img_zero_or_less_is_no_limit_as_upstream(weights: Weights) -> None:
    """``max_per_img = -1`` keeps every face after NMS, as mmdet's ``multiclass_nms`` reads it
    (a Python slice ``[:-1]`` dropped the last one)."""
    anime_face_detector = pytest.importorskip("anime_face_detector")
    base = load_config("yolov3")
    assert isinstance(base, YOLOv3Config)
    img = tadne_crop(0, 512, 3072, 1728, (960, 540))
    ref = anime_face_detector.LandmarkDetector(
        weights["hrnetv2"]["pth"], "yolov3", weights["yolov3"]["pth"], device="cpu", flip_test=False
    )
    ref.face_detector.bbox_head.test_cfg = {**ref.face_detector.bbox_head.test_cfg, "max_per_img": -1}
    ours = afd_trt.Detector(
        "yolov3",
        weights["yolov3"]["pth"],
        weights["hrnetv2"]["pth"],
        device="cpu",
        flip_test=False,
        face_detector_config=dataclasses.replace(base, max_per_img=-1),
    )
    exp = ref(img)
    got = ours(img)
    assert len(exp) >= 2
    assert [f["bbox"].tolist() for f in got] == [f["bbox"].tolist() for f in exp]


def test_custom_config_file(weights: Weights, tmp_path: Path, image: np.ndarray) -> None:
    from afd_trt.config import _packaged_config_text

    text = _packaged_config_text("yolov3")
    cfg_file = tmp_path / "yolo416.toml"
    cfg_file.write_text(text.replace("img_scale = [608, 608]", "img_scale = [416, 416]"))
    cfg = load_config(cfg_file)
    assert isinstance(cfg, YOLOv3Config)
    assert cfg.input.img_scale == (416, 416)
    broken = tmp_path / "broken.toml"
    broken.write_text("[model]\ntype = 'yolov3'\n")
    with pytest.raises(ValueError, match=r"missing \[(anchors|input)\] section"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match="neither one of"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
def test_dropped_detector_is_freed_at_once(weights: Weights, image: np.ndarray, device: str) -> None:
    """No reference cycle keeps a used Detector alive: dropping the last reference frees it (and
    on a GPU its memory) without waiting for the cycle collector."""
    d = afd_trt.Detector(
        "yolov3", weights["yolov3"]["pth"], weights["hrnetv2"]["pth"], device=device, flip_test=False
    )
    d.timings.enabled = True
    d(image)
    list(d.stream([image, image], batch_size=2))
    ref = weakref.ref(d)
    gc.disable()
    try:
        del d
        assert ref() is None
    finally:
        gc.enable()
