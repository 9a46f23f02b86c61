"""afd_trt.device_ops (the torch image ops of the GPU path) against the C++ ops, OpenCV and the
host preprocessing, value for value; and the Detector's device pipeline against its host one."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import ref_landmarks as ref
import torch
from images import synthetic, tadne_crop
from keypoints import assert_keypoints_close
from test_ops_warp import IMAGE_MEAN, IMAGE_STD, INSTALLED_MODEL, _case, opencv_own_kernel

import afd_trt
from afd_trt import device_ops, ops
from afd_trt.config import load_config
from afd_trt.preprocess import normalize_pad_chw, prepare_detector_input

Weights = dict[str, dict[str, Path]]
FLIP_PAIRS = np.array(load_config("hrnetv2").flip_pairs, dtype=np.int64).reshape(-1, 2)


def _round_f32(x: Fraction) -> np.float32:
    """The float32 nearest to an exact rational, ties to an even significand (reference)."""
    f = np.float32(float(x))
    best = f
    for cand in (np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))):
        d_best, d_cand = abs(Fraction(float(best)) - x), abs(Fraction(float(cand)) - x)
        if d_cand < d_best or (d_cand == d_best and int(cand.view(np.int32)) % 2 == 0):
            best = cand
    return best


def test_fma_f32_double_rounding_case() -> None:
    """a*b + c lands just above a float32 tie by less than a float64 ulp: a float64 sum rounds
    to the tie, then to even (256); a real FMA rounds up (256 + 2^-15)."""
    a = np.float32(1 + 2.0**-12)
    b = np.float32((1 - 2.0**-12 + 2.0**-24) * 2.0**-16)
    c = np.float32(256.0)
    naive = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    assert naive == np.float32(256.0)
    got = device_ops.fma_f32(*(torch.tensor([v]) for v in (a, b, c))).numpy()[0]
    assert got == np.float32(256 + 2.0**-15)
    assert got == _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


@pytest.mark.parametrize("seed", range(4))
def test_fma_f32_matches_exact_rounding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    scale = 2.0 ** rng.integers(-20, 20, (3, n))
    a, b, c = (rng.standard_normal(n) * scale[i] for i in range(3))
    a32, b32, c32 = (v.astype(np.float32) for v in (a, b, c))
    # near-cancellation cases: c close to -a*b
    c32[: n // 4] = (-(a32[: n // 4].astype(np.float64) * b32[: n // 4])).astype(np.float32)
    got = device_ops.fma_f32(torch.from_numpy(a32), torch.from_numpy(b32), torch.from_numpy(c32)).numpy()
    want = np.array(
        [
            _round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
            for x, y, z in zip(a32, b32, c32, strict=True)
        ],
        np.float32,
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("mode", ["opencv5", "opencv4"])
def test_warp_crops_equal_cpp_op(seed: int, mode: str) -> None:
    """Boxes inside, outside, tiny, huge, rotated; 256 px and odd crop sizes (OpenCV 5's scalar
    tail loop); every value equal, normalised and uint8."""
    image, mats, out_size = _case(seed)
    want = ops.warp_crops(image, mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode)
    got = device_ops.warp_crops(torch.from_numpy(image), mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want)
    want_u8 = ops.warp_crops_u8(image, mats, out_size, mode=mode)
    got_u8 = device_ops.warp_crops(
        torch.from_numpy(image), mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode, rgb_u8=True
    )
    np.testing.assert_array_equal(got_u8.numpy(), want_u8)


@pytest.mark.parametrize("seed", range(6))
def test_warp_crops_match_installed_cv2(seed: int) -> None:
    image, mats, out_size = _case(seed + 100)
    with opencv_own_kernel() as mode:
        got = device_ops.warp_crops(
            torch.from_numpy(image), mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode, rgb_u8=True
        )
        for i, m in enumerate(mats):
            np.testing.assert_array_equal(
                got[i].numpy(), cv2.warpAffine(image, m, out_size, flags=cv2.INTER_LINEAR)
            )


def test_warp_crops_empty_and_errors() -> None:
    image = torch.zeros((8, 8, 3), dtype=torch.uint8)
    assert device_ops.warp_crops(image, np.zeros((0, 2, 3)), (4, 5), IMAGE_MEAN, IMAGE_STD).shape == (
        0,
        3,
        5,
        4,
    )
    good = np.array([[[1.0, 0, 0], [0, 1, 0]]])
    with pytest.raises(ValueError, match=r"matrices\[1\] is singular"):
        device_ops.warp_crops(
            image, np.concatenate([good, np.zeros((1, 2, 3))]), (4, 4), IMAGE_MEAN, IMAGE_STD
        )
    with pytest.raises(ValueError, match=r"matrices\[0\] has a non-finite entry"):
        device_ops.warp_crops(image, np.full((1, 2, 3), np.nan), (4, 4), IMAGE_MEAN, IMAGE_STD)
    with pytest.raises(ValueError, match="mode must be"):
        device_ops.warp_crops(image, good, (4, 4), IMAGE_MEAN, IMAGE_STD, mode="opencv3")
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, 3\), got torch.float32"):
        device_ops.warp_crops(image.float(), good, (4, 4), IMAGE_MEAN, IMAGE_STD)
    with pytest.raises(ValueError, match="std finite and non-zero"):
        device_ops.warp_crops(image, good, (4, 4), IMAGE_MEAN, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="out_size must be"):
        device_ops.warp_crops(image, good, (0, 4), IMAGE_MEAN, IMAGE_STD)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shift", [True, False])
def test_merge_flip_equals_cpp_op(seed: int, shift: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), 28, int(rng.integers(1, 70)), int(rng.integers(1, 70)))
    heat, flipped = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    want = ops.merge_flip(heat, flipped, FLIP_PAIRS, shift)
    src = device_ops.flip_sources(28, FLIP_PAIRS)
    got = device_ops.merge_flip(torch.from_numpy(heat), torch.from_numpy(flipped), src, shift)
    np.testing.assert_array_equal(got.numpy(), want)


def test_flip_sources_last_pair_wins_and_errors() -> None:
    assert device_ops.flip_sources(4, np.array([[0, 1], [1, 2]])) == [1, 2, 1, 3]
    with pytest.raises(ValueError, match=r"flip_pairs \(0, 4\) is out of range for K = 4"):
        device_ops.flip_sources(4, np.array([[0, 4]]))


@pytest.mark.parametrize("model", ["yolov3", "faster-rcnn"])
@pytest.mark.parametrize("size", [(1, 1), (29, 37), (352, 608), (750, 1333)])
def test_normalize_pad_chw_is_upstreams_formula(model: str, size: tuple[int, int]) -> None:
    """The host detector input, written plane by plane, holds exactly upstream's
    ``(bgr[..., ::-1].astype(float32) - mean) / std`` in (H, W, 3), zero padded, transposed."""
    cfg = load_config(model).input  # type: ignore[attr-defined]
    bgr = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    pad = (size[0] + 5, size[1] + 31)
    want = np.zeros((*pad, 3), np.float32)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    want[: size[0], : size[1]] = (bgr[:, :, ::-1].astype(np.float32) - mean) / std
    got = normalize_pad_chw(bgr, cfg.mean, cfg.std, pad)
    assert got.dtype == np.float32
    assert got.shape == (3, *pad)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, want.transpose(2, 0, 1))


@pytest.mark.parametrize("model", ["yolov3", "faster-rcnn"])
@pytest.mark.parametrize("size", [(720, 1280), (517, 389), (29, 37), (200, 1536), (333, 700)])
def test_normalize_pad_equals_host_preprocessing(model: str, size: tuple[int, int]) -> None:
    cfg = load_config(model).input  # type: ignore[attr-defined]
    image = synthetic(*size, seed=size[0])
    host = prepare_detector_input(image, cfg)
    raw = prepare_detector_input(image, cfg, normalize=False)
    assert raw.tensor.dtype == np.uint8
    assert raw.tensor.shape == (*host.img_shape, 3)
    assert raw.pad_shape == host.pad_shape
    assert raw.img_shape == host.img_shape
    np.testing.assert_array_equal(raw.scale_factor, host.scale_factor)
    got = device_ops.normalize_pad(torch.from_numpy(raw.tensor), cfg.mean, cfg.std, raw.pad_shape)
    np.testing.assert_array_equal(got.numpy(), host.tensor)


def test_upload_to_cpu_copies_contiguously() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)[:, ::-1]
    t = device_ops.upload(a, torch.device("cpu"))
    assert t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), a)


# -- the Detector's device pipeline ------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(seeded_weights: Callable[[int], Weights]) -> Weights:
    return seeded_weights(0)


def _detector(weights: Weights, face_detector: str, device: str, **kw: object) -> afd_trt.Detector:
    return afd_trt.Detector(
        face_detector,
        weights[face_detector]["pth"],
        weights["hrnetv2"]["pth"],
        device=device,
        **kw,  # type: ignore[arg-type]
    )


IMAGES = [
    lambda: tadne_crop(0, 0, 1280, 720),
    lambda: tadne_crop(1024, 512, 517, 389),
    lambda: synthetic(333, 700, seed=3),
]


# The flip merge is the landmark stage's, the same after either detector: both flip settings
# with YOLOv3, flip on with Faster R-CNN on two of the images (its every run costs seconds here).
@pytest.mark.parametrize(
    ("face_detector", "flip_test"), [("yolov3", True), ("yolov3", False), ("faster-rcnn", True)]
)
def test_device_pipeline_on_cpu_equals_host_pipeline(
    weights: Weights, face_detector: str, flip_test: bool
) -> None:
    """The same numbers, bit for bit, through the torch image ops: what the GPU path runs."""
    host = _detector(weights, face_detector, "cpu", flip_test=flip_test)
    dev = _detector(weights, face_detector, "cpu", flip_test=flip_test, device_pipeline=True)
    # The torch warp must run even where the installed OpenCV matches no model (its crops
    # would then come from the host): both sides use one model.
    host.landmarks.warp_mode = dev.landmarks.warp_mode = INSTALLED_MODEL or "opencv5"
    assert not host.device_pipeline
    assert dev.device_pipeline
    assert dev.face_detector is not None
    images = [make() for make in (IMAGES if face_detector == "yolov3" else IMAGES[:2])]
    assert not dev.face_detector.prepare(images[0]).normalized  # the uint8 form really is what runs
    wants = []
    for image in images:
        want, got = host(image), dev(image)
        wants.append(want)
        assert len(got) == len(want)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a["bbox"], b["bbox"])
            np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    assert sum(len(w) for w in wants) > 0, "the seeded weights find faces on these images"
    # Faces of several images share a landmark batch here: equal within fp32 batch noise.
    for got, want in zip(dev.detect_batch(images), wants, strict=True):
        assert len(got) == len(want)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.05)


def test_device_path_with_cv2_warp_sends_host_crops(weights: Weights) -> None:
    """With no model of the installed OpenCV, the image path makes crops with cv2 on the host
    where results are bit-exact (eager fp32 on the CPU)."""
    det = afd_trt.Detector(None, None, weights["hrnetv2"]["pth"], device="cpu", device_pipeline=True)
    det.landmarks.warp_mode = "cv2"
    assert det.landmarks.exact_crops
    image = tadne_crop(300, 200, 640, 480)
    boxes = np.array([[100.5, 80.25, 260.0, 250.0], [-30.0, 300.0, 90.0, 470.0]], dtype=np.float32)
    got, centers, sizes = det.landmarks._crops_on(torch.device("cpu"), torch.from_numpy(image), boxes)
    want, want_centers, want_sizes = det.landmarks.crops(image, boxes)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(centers, want_centers)
    np.testing.assert_array_equal(sizes, want_sizes)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    m = det.landmarks._geometry(boxes)[0]
    crop = cv2.warpAffine(rgb, m[1], (256, 256), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(want[1], ref.normalise_like_upstream(crop[None], IMAGE_MEAN, IMAGE_STD)[0])


def test_inexact_device_path_warps_on_the_device(weights: Weights) -> None:
    """Where results are not bit-exact anyway (here ONNX Runtime), an OpenCV that no model
    reproduces does not send the device path's crops through the host: the device warps with
    the "opencv5" model, and the host path still calls cv2. Eager and TorchScript fp32 on the
    CPU are the bit-exact path, which keeps cv2's crops."""
    for exact in ("torch", "torchscript"):
        det = afd_trt.Detector(
            None, None, weights["hrnetv2"]["pth"], device="cpu", device_pipeline=True, backend=exact
        )
        assert det.landmarks.exact_crops, exact
    det = afd_trt.Detector(
        None, None, weights["hrnetv2"]["pth"], device="cpu", device_pipeline=True, backend="onnxruntime"
    )
    assert not det.landmarks.exact_crops
    det.landmarks.warp_mode = "cv2"
    assert det.landmarks.device_warp_mode == "opencv5"
    image = tadne_crop(300, 200, 640, 480)
    # the second box's crop has values where OpenCV 5.1's IPP warp and the "opencv5" model differ
    boxes = np.array([[100.5, 80.25, 260.0, 250.0], [114.3, -13.08, 310.45, 266.53]], dtype=np.float32)
    got, _, _ = det.landmarks._crops_on(torch.device("cpu"), torch.from_numpy(image), boxes)
    mats = det.landmarks._geometry(boxes)[0]
    want = ops.warp_crops(image, mats, (256, 256), IMAGE_MEAN, IMAGE_STD, mode="opencv5")
    np.testing.assert_array_equal(got.numpy(), want)
    host, _, _ = det.landmarks.crops(image, boxes)  # the host path keeps the installed cv2
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    crops = np.stack([cv2.warpAffine(rgb, m, (256, 256), flags=cv2.INTER_LINEAR) for m in mats])
    np.testing.assert_array_equal(host, ref.normalise_like_upstream(crops, IMAGE_MEAN, IMAGE_STD))
    if INSTALLED_MODEL != "opencv5":  # e.g. IPP's warp: the two paths' crops really differ here
        assert not np.array_equal(host, want)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["opencv5", "opencv4"])
def test_device_ops_on_cuda_equal_cpu(seed: int, mode: str) -> None:
    image, mats, out_size = _case(seed)
    cuda = torch.device("cuda")
    want = ops.warp_crops(image, mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode)
    got = device_ops.warp_crops(
        device_ops.upload(image, cuda), mats, out_size, IMAGE_MEAN, IMAGE_STD, mode=mode
    )
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    rng = np.random.default_rng(seed)
    heat, flipped = (rng.standard_normal((2, 28, 64, 64)).astype(np.float32) for _ in range(2))
    merged = device_ops.merge_flip(
        torch.from_numpy(heat).to(cuda),
        torch.from_numpy(flipped).to(cuda),
        device_ops.flip_sources(28, FLIP_PAIRS),
        True,
    )
    np.testing.assert_array_equal(merged.cpu().numpy(), ops.merge_flip(heat, flipped, FLIP_PAIRS, True))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("face_detector", ["yolov3", "faster-rcnn"])
def test_device_pipeline_on_cuda_agrees_with_host_path(weights: Weights, face_detector: str) -> None:
    """On a GPU the device pipeline is the default; its crops equal the host's made with the
    same warp, so it agrees with the GPU host path to the networks' own run-to-run differences
    (core tolerances): the same faces and boxes (the device decodes the detector's maps with
    CUDA's exp and sigmoid, the host with the CPU's), and on the same boxes the same keypoints
    (compared as tests/keypoints.py says)."""
    dev = _detector(weights, face_detector, "cuda")
    host = _detector(weights, face_detector, "cuda", device_pipeline=False)
    assert dev.device_pipeline
    assert not host.device_pipeline
    # with an OpenCV no model reproduces (IPP), the device warps with "opencv5", the host with cv2
    host.landmarks.warp_mode = dev.landmarks.device_warp_mode
    on_map = off_map = 0
    for make in IMAGES:
        image = make()
        want, got = host(image), dev(image)
        assert len(got) == len(want)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b["bbox"], a["bbox"], rtol=0, atol=1e-3)
        for a, b in zip(want, dev(image, boxes=[f["bbox"] for f in want]), strict=True):
            np.testing.assert_allclose(b["keypoints"][:, 2], a["keypoints"][:, 2], rtol=0, atol=1e-4)
            on, off = assert_keypoints_close(b["keypoints"], a["keypoints"], a["bbox"])
            on_map, off_map = on_map + on, off_map + off
    assert on_map > 0, "the seeded weights find faces on these images"
    assert off_map <= 0.02 * (on_map + off_map), f"{off_map} of {on_map + off_map} keypoints off the heatmap"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_download_gives_contiguous_float32(dtype: torch.dtype) -> None:
    """Heatmaps come back as C-contiguous float32 arrays with the tensor's values, whatever the
    tensor's dtype and strides (here a channels-last view, as the networks return)."""
    t = torch.randn(3, 28, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    t = t.contiguous(memory_format=torch.channels_last)
    got = device_ops.download(t)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, t.float().numpy())


@pytest.mark.needs_cuda
def test_download_from_cuda_lands_in_pinned_memory() -> None:
    t = torch.randn(16, 28, 64, 64, generator=torch.Generator().manual_seed(1))
    on_gpu = t.cuda() * 2  # queued work the copy must wait for
    got = device_ops.download(on_gpu)
    np.testing.assert_array_equal(got, (t * 2).numpy())
    assert torch.from_numpy(got).is_pinned()


def test_warp_crops_many_faces_in_chunks() -> None:
    """More crops than one chunk (16): every crop still lands in its own place."""
    image, _, _ = _case(5)
    mats = np.concatenate([_case(s)[1] for s in range(1, 40, 4)] * 3)
    assert len(mats) > 2 * device_ops._CHUNK
    want = ops.warp_crops(image, mats, (256, 256), IMAGE_MEAN, IMAGE_STD, mode="opencv5")
    got = device_ops.warp_crops(
        torch.from_numpy(image), mats, (256, 256), IMAGE_MEAN, IMAGE_STD, mode="opencv5"
    )
    np.testing.assert_array_equal(got.numpy(), want)


RESIZES = [
    (720, 1280, 342, 608),  # the YOLOv3 input of a 720p frame
    (1080, 1920, 342, 608),
    (704, 1216, 352, 608),  # exactly half: OpenCV's 2x2 area average
    (900, 900, 300, 300),  # exactly a third: still bilinear
    (512, 512, 608, 608),  # up
    (29, 37, 342, 437),
    (1, 1, 3, 5),
    (7, 3, 1, 1),
    (2, 40, 1, 20),
]


@pytest.mark.parametrize("size", RESIZES)
def test_resize_linear_equals_cv2(size: tuple[int, int, int, int]) -> None:
    h, w, th, tw = size
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = device_ops.resize_linear(torch.from_numpy(image), (tw, th))
    np.testing.assert_array_equal(got.numpy(), cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("seed", range(8))
def test_resize_linear_equals_cv2_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(25):
        h, w, th, tw = (int(v) for v in rng.integers(1, 90, 4))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if seed % 2:
            image = np.ascontiguousarray(cv2.GaussianBlur(image, (0, 0), 1.5))
        got = device_ops.resize_linear(torch.from_numpy(image), (tw, th)).numpy()
        np.testing.assert_array_equal(got, cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR))


def test_resize_linear_errors() -> None:
    with pytest.raises(ValueError, match="image must be uint8"):
        device_ops.resize_linear(torch.zeros((4, 4, 3)), (2, 2))
    with pytest.raises(ValueError, match=r"cannot resize an image of shape \(4, 4, 3\) to \(0, 2\)"):
        device_ops.resize_linear(torch.zeros((4, 4, 3), dtype=torch.uint8), (0, 2))


def test_tensor_images_prepare_like_arrays() -> None:
    """An image decoded on a device is resized there and prepares to the same detector input."""
    cfg = load_config("yolov3").input  # type: ignore[attr-defined]
    image = synthetic(517, 389, seed=9)
    host = prepare_detector_input(image, cfg)
    for normalize in (True, False):
        prep = prepare_detector_input(torch.from_numpy(image), cfg, normalize=normalize)
        assert prep.normalized is normalize
        got = (
            prep.tensor
            if normalize
            else device_ops.normalize_pad(prep.tensor, cfg.mean, cfg.std, prep.pad_shape)
        )  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.asarray(got), host.tensor)


def test_out_of_memory_is_found_in_the_exception_chain() -> None:
    """A failed CUDA graph capture surfaces as the end-of-capture error raised while handling
    the out-of-memory that broke it: that still counts (the Detector then splits the batch)."""
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert device_ops.is_out_of_memory(oom)
    assert device_ops.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert device_ops.is_out_of_memory(
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    )
    assert device_ops.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not device_ops.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not device_ops.is_out_of_memory(ValueError("out of memory"))  # not a runtime error
    during = RuntimeError("CUDA error: operation failed due to a previous error during capture")
    during.__context__ = oom  # raised while handling it
    assert device_ops.is_out_of_memory(during)
    other = RuntimeError("capture invalidated")
    other.__cause__ = ValueError("bad shape")
    assert not device_ops.is_out_of_memory(other)
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped
    assert not device_ops.is_out_of_memory(looped)
