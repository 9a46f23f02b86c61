"""afd_trt.Detector against upstream anime-face-detector 0.1.0 on the same seeded checkpoints.

Tolerances (the contract): same face count; boxes <= 1e-3 px, box scores <= 1e-5;
keypoints <= 0.05 px, keypoint scores <= 1e-4. Worst measured values are printed (-s to see).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from images import synthetic, tadne_crop

import afd_trt

anime_face_detector = pytest.importorskip(
    "anime_face_detector",
    reason="the oracle: pip install --no-deps --ignore-requires-python anime-face-detector==0.1.0",
)

pytestmark = pytest.mark.oracle

BOX_TOL, BOX_SCORE_TOL, KPT_TOL, KPT_SCORE_TOL = 1e-3, 1e-5, 0.05, 1e-4

WORST: dict[str, float] = {"box": 0.0, "box_score": 0.0, "kpt": 0.0, "kpt_score": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_worst() -> Iterator[None]:
    yield
    print(f"\nworst deviation vs upstream: {WORST}")


@pytest.fixture(scope="module", params=[0, 7], ids=lambda s: f"seed{s}")
def weights(
    request: pytest.FixtureRequest, seeded_weights: Callable[[int], dict[str, dict[str, Path]]]
) -> dict[str, dict[str, Path]]:
    return seeded_weights(request.param)


def _oracle(weights: dict[str, dict[str, Path]], detector: str | None, flip: bool, factor: float) -> Any:
    return anime_face_detector.LandmarkDetector(
        weights["hrnetv2"]["pth"],
        face_detector_name=detector,
        face_detector_checkpoint_path=weights[detector]["pth"] if detector else None,
        device="cpu",
        flip_test=flip,
        box_scale_factor=factor,
    )


def _ours(
    weights: dict[str, dict[str, Path]], detector: str | None, flip: bool, factor: float, fmt: str
) -> Any:
    return afd_trt.Detector(
        face_detector=detector,
        face_detector_checkpoint=weights[detector][fmt] if detector else None,
        landmark_checkpoint=weights["hrnetv2"][fmt],
        device="cpu",
        flip_test=flip,
        box_scale_factor=factor,
    )


def assert_same_faces(ours: list[dict[str, np.ndarray]], ref: list[dict[str, np.ndarray]], what: str) -> None:
    assert len(ours) == len(ref), f"{what}: {len(ours)} faces, upstream {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a["bbox"].dtype == np.float32
        assert a["keypoints"].dtype == np.float32
        assert a["bbox"].shape == b["bbox"].shape, f"{what} face {i}: bbox shape"
        assert a["keypoints"].shape == b["keypoints"].shape == (28, 3)
        d_box = float(np.abs(a["bbox"][:4] - b["bbox"][:4]).max())
        d_score = float(np.abs(a["bbox"][4:] - b["bbox"][4:]).max(initial=0.0))
        d_kpt = float(np.abs(a["keypoints"][:, :2] - b["keypoints"][:, :2]).max())
        d_kscore = float(np.abs(a["keypoints"][:, 2] - b["keypoints"][:, 2]).max())
        for k, v in (("box", d_box), ("box_score", d_score), ("kpt", d_kpt), ("kpt_score", d_kscore)):
            WORST[k] = max(WORST[k], v)
        assert d_box <= BOX_TOL, f"{what} face {i}: box off by {d_box} px"
        assert d_score <= BOX_SCORE_TOL, f"{what} face {i}: box score off by {d_score}"
        assert d_kpt <= KPT_TOL, f"{what} face {i}: keypoints off by {d_kpt} px"
        assert d_kscore <= KPT_SCORE_TOL, f"{what} face {i}: keypoint scores off by {d_kscore}"


IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "tadne_720p": lambda: tadne_crop(0, 512, 3072, 1728, (1280, 720)),
    "tadne_tile": lambda: tadne_crop(2048, 1536, 512, 512),
    "tadne_odd": lambda: tadne_crop(700, 300, 517, 389),
    "tadne_wide": lambda: tadne_crop(0, 1024, 3072, 400, (1536, 200)),
    "tiny": lambda: tadne_crop(2300, 1600, 37, 29),
    "synthetic_tall": lambda: synthetic(700, 333, seed=3),
}


@pytest.mark.parametrize("image_name", list(IMAGES))
def test_yolov3_matches_upstream(weights: dict[str, dict[str, Path]], image_name: str) -> None:
    image = IMAGES[image_name]()
    ref = _oracle(weights, "yolov3", True, 1.1)(image)
    ours = _ours(weights, "yolov3", True, 1.1, "pth")(image)
    assert_same_faces(ours, ref, f"yolov3/{image_name}")


@pytest.mark.parametrize(
    ("flip", "factor", "fmt"), [(False, 1.1, "safetensors"), (True, 1.35, "pth"), (False, 0.9, "pth")]
)
def test_yolov3_options_match_upstream(
    weights: dict[str, dict[str, Path]], flip: bool, factor: float, fmt: str
) -> None:
    image = IMAGES["tadne_odd"]()
    ref = _oracle(weights, "yolov3", flip, factor)(image)
    ours = _ours(weights, "yolov3", flip, factor, fmt)(image)
    assert_same_faces(ours, ref, f"yolov3 flip={flip} factor={factor}")


@pytest.mark.slow
@pytest.mark.parametrize(("image_name", "flip"), [("tadne_720p", True), ("tadne_odd", False), ("tiny", True)])
def test_faster_rcnn_matches_upstream(
    weights: dict[str, dict[str, Path]], image_name: str, flip: bool
) -> None:
    image = IMAGES[image_name]()
    ref = _oracle(weights, "faster-rcnn", flip, 1.1)(image)
    ours = _ours(weights, "faster-rcnn", flip, 1.1, "safetensors")(image)
    assert_same_faces(ours, ref, f"faster-rcnn/{image_name}")


def test_user_boxes_match_upstream(weights: dict[str, dict[str, Path]]) -> None:
    image = IMAGES["tadne_720p"]()
    boxes = [
        np.array([100.5, 80.25, 260.0, 250.0, 0.9], np.float32),
        np.array([600.0, 300.0, 690.0, 410.0], np.float32),  # 4 values: returned as given
        np.array([-30.0, -20.0, 90.0, 70.0, 0.5], np.float32),  # partly outside the image
        np.array([1200.0, 650.0, 1400.0, 800.0, 0.2], np.float32),
    ]
    four = [boxes[1], boxes[1] + np.float32(3)]
    five = [boxes[0], boxes[2], boxes[3]]
    for flip in (True, False):
        for group in (five, four):
            ref = _oracle(weights, None, flip, 1.1)(image, boxes=group)
            ours = _ours(weights, None, flip, 1.1, "pth")(image, boxes=group)
            assert_same_faces(ours, ref, f"user boxes flip={flip}")
    assert _ours(weights, None, True, 1.1, "pth")(image, boxes=[]) == []


def test_whole_image_without_detector_matches_upstream(weights: dict[str, dict[str, Path]]) -> None:
    image = IMAGES["tadne_odd"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = _oracle(weights, None, True, 1.1)(image)
    with pytest.warns(UserWarning, match="entire image"):
        ours = _ours(weights, None, True, 1.1, "pth")(image)
    assert_same_faces(ours, ref, "whole image")


@pytest.mark.parametrize("device_pipeline", [False, True], ids=["host", "device-pipeline"])
@pytest.mark.parametrize("flip", [True, False], ids=["flip", "noflip"])
def test_whole_image_of_a_single_pixel_matches_upstream(
    weights: dict[str, dict[str, Path]], flip: bool, device_pipeline: bool
) -> None:
    """A 1x1 image's whole-image box has zero width and height: upstream's zero crop map samples
    pixel (0, 0) everywhere and puts every keypoint at (0, 0). Same here, in a batch beside images
    whose boxes are ordinary (so the degenerate crop sits among real ones)."""
    rng = np.random.default_rng(int(flip) + 2 * int(device_pipeline))
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1, 1, 3), (2, 1, 3), (1, 1, 3), (5, 3, 3))
    ]
    images[2][:] = (255, 0, 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        oracle = _oracle(weights, None, flip, 1.1)
        refs = [oracle(img) for img in images]
        ours = afd_trt.Detector(
            None,
            None,
            weights["hrnetv2"]["pth"],
            device="cpu",
            flip_test=flip,
            device_pipeline=device_pipeline,
        ).detect_batch(images)
    for i, (a, r) in enumerate(zip(ours, refs, strict=True)):
        assert_same_faces(a, r, f"image {i} {images[i].shape}")
        np.testing.assert_array_equal(a[0]["keypoints"], r[0]["keypoints"])
    assert not ours[0][0]["keypoints"][:, :2].any()
    # The two single-pixel images differ only in colour, so the scores (from the crop) differ.
    assert not np.array_equal(ours[0][0]["keypoints"][:, 2], ours[2][0]["keypoints"][:, 2])


@pytest.mark.parametrize(
    "factor",
    [1.1, 1.35, 0.9, 2, np.float32(1.1), np.float64(1.1), np.float64(1.2345678912345), np.int64(2)],
    ids=repr,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_expansion_bit_equals_upstream(factor: Any, seed: int) -> None:
    """Detected boxes are scaled with upstream's arithmetic to the bit, whatever number type the
    factor is given as (under numpy 2 an ``np.float64`` factor makes upstream compute in float64;
    converting it to a Python float first, as we did, rounded differently)."""
    rng = np.random.default_rng(seed)
    tl = rng.uniform(-50, 1000, (64, 2))
    wh = rng.uniform(0, 400, (64, 2))
    boxes = np.hstack([tl, tl + wh, rng.uniform(0, 1, (64, 1))]).astype(np.float32)
    upstream = anime_face_detector.LandmarkDetector._update_pred_box
    ref = np.stack(upstream(types.SimpleNamespace(box_scale_factor=factor), boxes.copy()))
    ours = afd_trt.detector.expand_boxes(boxes, factor)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
