"""ops.warp_crops / ops.warp_crops_u8 against cv2.warpAffine, numpy references and upstream's batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import ref_landmarks as ref

from afd_trt import landmarks, ops

INSTALLED_MODE = landmarks.default_warp_mode()
"""The pipeline's warp for the installed OpenCV: a model of the C++ op, or "cv2"."""
INSTALLED_MODEL = INSTALLED_MODE if INSTALLED_MODE in landmarks.WARP_MODELS else None


@contextlib.contextmanager
def opencv_own_kernel() -> Iterator[str]:
    """OpenCV's own warp kernel, and the C++ op's model that equals it. Where the installed
    OpenCV matches no model because it hands warpAffine to Intel IPP (5.1.0 does), IPP is
    switched off meanwhile: the C++ models are still checked against the real cv2."""
    if INSTALLED_MODEL is not None:
        yield INSTALLED_MODEL
        return
    previous = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        mode = landmarks.default_warp_mode.__wrapped__()
        if mode not in landmarks.WARP_MODELS:
            pytest.skip(
                f"OpenCV {cv2.__version__}'s warpAffine, even without IPP, matches no model of the C++ op"
            )
        yield mode
    finally:
        cv2.ipp.setUseIPP(previous)


IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A random image and 1-4 face-crop matrices: boxes inside, partly or wholly outside, tiny
    (1-3 px) and huge (several times the image), every third case rotated; crop sizes 256 or odd."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 320, 2))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if seed % 2:
        image = np.ascontiguousarray(cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 3.0))))
    out_size = (256, 256) if seed % 4 else (int(rng.integers(1, 90)), int(rng.integers(1, 90)))
    mats = []
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(0, 4)
        bw, bh = {
            0: (rng.uniform(0.1, 1.0) * w, rng.uniform(0.1, 1.0) * h),
            1: (rng.uniform(1.0, 3.0), rng.uniform(1.0, 3.0)),
            2: (rng.uniform(2.0, 6.0) * w, rng.uniform(2.0, 6.0) * h),
            3: (rng.uniform(0.2, 1.0) * w, rng.uniform(0.2, 1.0) * h),
        }[int(kind)]
        x1 = rng.uniform(-bw, w) if kind == 3 else rng.uniform(-0.2 * w, w)
        y1 = rng.uniform(-bh, h) if kind == 3 else rng.uniform(-0.2 * h, h)
        center, scale = ref.box_center_scale([x1, y1, x1 + bw, y1 + bh])
        rot = float(rng.uniform(-180, 180)) if seed % 3 == 0 else 0.0
        mats.append(ref.face_affine(center, scale, out_size, rot))
    return image, np.stack(mats), out_size


@pytest.mark.parametrize("seed", range(24))
def test_u8_matches_installed_cv2(seed: int) -> None:
    image, mats, out_size = _case(seed)
    with opencv_own_kernel() as mode:
        got = ops.warp_crops_u8(image, mats, out_size, mode=mode)
        wants = [cv2.warpAffine(image, m, out_size, flags=cv2.INTER_LINEAR) for m in mats]
    assert got.shape == (len(mats), out_size[1], out_size[0], 3)
    assert got.dtype == np.uint8
    # OpenCV's vector loop covers the first out_w - out_w % 16 columns on x86-64/AVX2 (8 on NEON);
    # the scalar tail rounds the coordinates once more. Exact on the vector part everywhere, and
    # measured exact on the tail too on x86-64.
    vec = out_size[0] - out_size[0] % 16
    for i, want in enumerate(wants):
        np.testing.assert_array_equal(got[i][:, :vec], want[:, :vec])
        assert np.abs(got[i].astype(int) - want).max() <= 1


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("mode", ["opencv5", "opencv4"])
def test_u8_matches_numpy_reference(seed: int, mode: str) -> None:
    image, mats, out_size = _case(seed)
    got = ops.warp_crops_u8(image, mats, out_size, mode=mode)
    reference = ref.warp_opencv5 if mode == "opencv5" else ref.warp_opencv4
    for i, m in enumerate(mats):
        np.testing.assert_array_equal(got[i], reference(image, m, out_size))


def test_modes_really_differ() -> None:
    """The two OpenCV models round differently; a test that cannot tell them apart is useless."""
    image, mats, out_size = _case(5)
    a = ops.warp_crops_u8(image, mats, out_size, mode="opencv5").astype(int)
    b = ops.warp_crops_u8(image, mats, out_size, mode="opencv4").astype(int)
    assert 0 < (a != b).mean() < 0.5
    assert np.abs(a - b).max() <= 8


def test_probe_tells_the_models_apart() -> None:
    """The probe that picks the installed OpenCV's model would see either model's rounding."""
    cases = landmarks._probe_cases()
    assert sum(np.prod(size) * 3 for _, _, size in cases) > 1_000_000
    for i, a in enumerate(landmarks.WARP_MODELS):
        for b in landmarks.WARP_MODELS[i + 1 :]:
            assert any(
                not np.array_equal(
                    ops.warp_crops_u8(image, m[None], size, mode=a),
                    ops.warp_crops_u8(image, m[None], size, mode=b),
                )
                for image, m, size in cases
            )


@pytest.mark.oracle
@pytest.mark.parametrize("mode", sorted({INSTALLED_MODE, "cv2"}))
@pytest.mark.parametrize("seed", range(6))
def test_normalised_batch_matches_upstream_preprocessing(seed: int, mode: str) -> None:
    """Upstream: cvtColor BGR->RGB, get_affine_transform, cv2.warpAffine, torch /255 -mean /std.
    The pipeline's warp (``landmarks.warp_crops`` with the mode picked for the installed OpenCV)
    and the cv2 fallback give it value for value, whatever OpenCV is installed."""
    from anime_face_detector._vendor.mmpose import bbox_xywh2cs, bbox_xyxy2xywh, get_affine_transform

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    boxes = np.array(
        [[rng.uniform(-50, 350), rng.uniform(-50, 250), 0, 0] for _ in range(3)], dtype=np.float32
    )
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(5, 250, (3, 2)).astype(np.float32)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    mats, crops = [], []
    for box in bbox_xyxy2xywh(boxes):
        center, scale = bbox_xywh2cs(box, aspect_ratio=1.0, padding=1.25)
        m = get_affine_transform(center, scale, 0, (256, 256))
        mats.append(m)
        crops.append(cv2.warpAffine(rgb, m, (256, 256), flags=cv2.INTER_LINEAR))
    want = ref.normalise_like_upstream(np.stack(crops), IMAGE_MEAN, IMAGE_STD)
    got = landmarks.warp_crops(image, np.stack(mats), (256, 256), IMAGE_MEAN, IMAGE_STD, mode)
    assert got.dtype == np.float32
    assert got.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["opencv5", "opencv4"])
def test_normalised_is_u8_through_float32_formula(mode: str) -> None:
    image, mats, out_size = _case(7)
    mean, std = (0.1, 0.5, 0.9), (0.3, 0.2, 0.7)
    u8 = ops.warp_crops_u8(image, mats, out_size, mode=mode)
    want = ref.normalise_like_upstream(np.ascontiguousarray(u8[..., ::-1]), mean, std)
    np.testing.assert_array_equal(ops.warp_crops(image, mats, out_size, mean, std, mode=mode), want)


def test_threads_do_not_change_results() -> None:
    image, mats, out_size = _case(9)
    one = ops.warp_crops(image, mats, out_size, IMAGE_MEAN, IMAGE_STD, threads=1)
    many = ops.warp_crops(image, mats, out_size, IMAGE_MEAN, IMAGE_STD, threads=5)
    np.testing.assert_array_equal(one, many)


def test_no_faces() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    out = ops.warp_crops(image, np.zeros((0, 2, 3)), (32, 16), IMAGE_MEAN, IMAGE_STD)
    assert out.shape == (0, 3, 16, 32)
    assert out.dtype == np.float32
    assert ops.warp_crops_u8(image, np.zeros((0, 2, 3)), (32, 16)).shape == (0, 16, 32, 3)


@pytest.mark.parametrize("mode", ["opencv5", "opencv4"])
def test_identity_and_border_edges(mode: str) -> None:
    """Identity copies; a half-pixel shift averages; the last row/column blend with the 0 border."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    ident = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])
    np.testing.assert_array_equal(ops.warp_crops_u8(image, ident, (23, 17), mode=mode)[0], image)
    shifted = np.array([[[1.0, 0, -0.5], [0, 1.0, 0]]])  # crop x = source x - 0.5
    got = ops.warp_crops_u8(image, shifted, (24, 17), mode=mode)[0].astype(int)
    img = image.astype(int)
    assert np.abs(got[:, :22] - (img[:, :-1] + img[:, 1:]) / 2).max() <= 0.5
    assert np.abs(got[:, 22] - img[:, 22] / 2).max() <= 0.5  # right neighbour outside: blends with 0
    assert (got[:, 23] == 0).all()  # both neighbours outside


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------

GOOD_IMAGE = np.zeros((8, 8, 3), np.uint8)
GOOD_MATS = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])


@pytest.mark.parametrize(
    ("image", "mats", "match"),
    [
        (GOOD_IMAGE.astype(np.float32), GOOD_MATS, "image must have dtype uint8"),
        (np.zeros((8, 8, 4), np.uint8), GOOD_MATS, "3 channels"),
        (np.zeros((8, 8), np.uint8), GOOD_MATS, "image must be 3-D"),
        (np.zeros((0, 8, 3), np.uint8), GOOD_MATS, "at least 1x1"),
        (np.zeros((8, 8, 3), np.uint8)[:, ::-1], GOOD_MATS, "C-contiguous"),
        ([[0]], GOOD_MATS, "image must be a numpy array"),
        (GOOD_IMAGE, GOOD_MATS.astype(np.float32), "matrices must have dtype float64"),
        (GOOD_IMAGE, GOOD_MATS[0], "matrices must be 3-D"),
        (GOOD_IMAGE, np.zeros((1, 3, 3)), r"matrices must have shape \(N, 2, 3\)"),
        (GOOD_IMAGE, np.concatenate([GOOD_MATS, np.zeros((1, 2, 3))]), r"matrices\[1\] is singular"),
        (GOOD_IMAGE, np.array([[[1.0, 2, 0], [2, 4, 0]]]), r"matrices\[0\] is singular"),
        (
            GOOD_IMAGE,
            np.array([GOOD_MATS[0], [[1.0, 0, np.nan], [0, 1, 0]]]),
            r"matrices\[1\] has a non-finite",
        ),
        (GOOD_IMAGE, np.array([[[np.inf, 0, 0], [0, 1, 0]]]), r"matrices\[0\] has a non-finite"),
    ],
)
def test_input_errors(image: object, mats: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ops.warp_crops_u8(image, mats, (4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        ops.warp_crops(image, mats, (4, 4), IMAGE_MEAN, IMAGE_STD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"out_size": (0, 4)}, "out_size must be two ints"),
        ({"out_size": (4, 40000)}, "out_size must be two ints"),
        ({"out_size": (4,)}, r"out_size must be \(w, h\)"),
        ({"out_size": (8.7, 8)}, "out_size width must be an integer, got 8.7"),  # was cut to 8
        ({"out_size": (8, float("nan"))}, "out_size height must be an integer, got nan"),
        ({"out_size": (2**64, 8)}, "out_size width must fit in 32 bits"),
        ({"out_size": (True, 8)}, "out_size width must be an integer, got True"),
        ({"threads": 1.5}, "threads must be an integer, got 1.5"),
        ({"mode": "opencv3"}, "mode must be 'opencv5' or 'opencv4', got 'opencv3'"),
        ({"mean": (0.1, 0.2)}, r"mean must have shape \(3,\)"),
        ({"std": (0.1, 0.0, 0.2)}, r"std\[1\] must be finite and non-zero, got 0"),
        ({"mean": (0.1, np.nan, 0.2)}, r"mean\[1\] must be finite"),
        ({"mean": (0.1, 1e300, 0.2)}, r"mean: values beyond float32's range: \[0.1, 1e\+300, 0.2\]"),
        ({"std": np.array([1.0, -1e39, 1.0])}, r"std: values beyond float32's range"),
    ],
)
def test_argument_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"out_size": (4, 4), "mean": IMAGE_MEAN, "std": IMAGE_STD, "mode": "opencv5"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.warp_crops(GOOD_IMAGE, GOOD_MATS, **args)  # type: ignore[arg-type]
