"""afd_trt.jpeg (torchvision / nvJPEG decoding) against cv2.imread, and
Detector(jpeg_decoder="torchvision") against the default decoder."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from images import tadne_crop

import afd_trt
from afd_trt import jpeg
from afd_trt.image import load_image

Weights = dict[str, dict[str, Path]]
CPU = torch.device("cpu")


def _exif_app1(orientation: int, order: str) -> bytes:
    """An APP1 segment whose EXIF IFD0 holds one Orientation (0x0112) SHORT entry."""
    e = "<" if order == "II" else ">"
    magic = b"II*\x00" if order == "II" else b"MM\x00*"
    entry = struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = magic + struct.pack(e + "I", 8) + struct.pack(e + "H", 1) + entry + b"\x00" * 4
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tadne_crop(600, 900, 333, 517)


@pytest.mark.parametrize("quality", [60, 95])
def test_decode_equals_cv2_imread(image: np.ndarray, tmp_path: Path, quality: int) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes(image, quality))
    got = jpeg.decode_jpeg(path, CPU)
    assert got is not None
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_gray_jpeg_is_replicated(image: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "g.jpg"
    path.write_bytes(_jpeg_bytes(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)))
    got = jpeg.decode_jpeg(str(path), CPU)
    assert got is not None
    assert got.shape == (*image.shape[:2], 3)
    np.testing.assert_array_equal(got.numpy(), cv2.imread(str(path), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_cv2(
    image: np.ndarray, tmp_path: Path, orientation: int, order: str
) -> None:
    data = _jpeg_bytes(image)
    data = data[:2] + _exif_app1(orientation, order) + data[2:]
    assert jpeg.exif_orientation(data) == orientation
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(data)
    want = cv2.imread(str(path), cv2.IMREAD_COLOR)
    got = jpeg.decode_jpeg(path, CPU)
    assert got is not None
    assert tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xd9",
        b"\xff\xd8\xff\xe1\x00\x08Exif\x00\x00",  # APP1 cut short
        b"\xff\xd8\xff\xe1\x00\x16Exif\x00\x00XX*\x00\x08\x00\x00\x00\x00\x00\x00\x00",  # bad byte order
        b"\xff\xd8\xff\xe1\x00\x01",  # impossible segment length
        b"",
    ],
)
def test_exif_orientation_defaults_to_upright(data: bytes) -> None:
    assert jpeg.exif_orientation(data) == 1


def test_not_a_jpeg_or_truncated_falls_back(image: np.ndarray, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), image)
    assert jpeg.decode_jpeg(png, CPU) is None
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_jpeg_bytes(image)[:-600])
    assert jpeg.decode_jpeg(cut, CPU) is None  # OpenCV decodes what is there, as upstream
    assert jpeg.decode_jpeg(image, CPU) is None  # arrays need no decoding


def test_a_refusal_by_torchvision_is_warned_once(
    image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A JPEG whose headers pass but which torchvision refuses (here a component naming a
    quantisation table never defined) goes to OpenCV; the first refusal per device type is a
    WARNING naming the file (on CUDA it may mean nvJPEG is missing), later ones DEBUG."""
    data = bytearray(_jpeg_bytes(image))
    sof = data.index(b"\xff\xc0")
    data[sof + 12] = 3  # the first component's quantisation table: 3, never defined
    paths = [tmp_path / "q1.jpg", tmp_path / "q2.jpg"]
    for p in paths:
        p.write_bytes(bytes(data))
    assert jpeg.plain_8bit_color(bytes(data))
    monkeypatch.setattr(jpeg, "_warned_fallback", set())
    with caplog.at_level("DEBUG", logger="afd_trt.jpeg"):
        assert [jpeg.decode_jpeg(p, CPU) for p in paths] == [None, None]
    said = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if "torchvision could not decode" in r.getMessage()
    ]
    assert [level for level, _ in said] == ["WARNING", "DEBUG"]
    assert "q1.jpg" in said[0][1]
    assert "q2.jpg" in said[1][1]


def test_cmyk_and_progressive(image: np.ndarray, tmp_path: Path) -> None:
    """CMYK goes to OpenCV (torchvision's conversion differs from it); progressive and every
    chroma subsampling decode to OpenCV's pixels."""
    pil = pytest.importorskip("PIL.Image")
    rgb = pil.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    cmyk = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(cmyk, quality=95)
    assert not jpeg.plain_8bit_color(cmyk.read_bytes())
    assert jpeg.decode_jpeg(cmyk, CPU) is None
    for kw in ({"progressive": True}, {"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}):
        path = tmp_path / "p.jpg"
        rgb.save(path, quality=90, **kw)
        got = jpeg.decode_jpeg(path, CPU)
        assert got is not None, kw
        np.testing.assert_array_equal(got.numpy(), cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_bad_files_raise_as_load_image(image: np.ndarray, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ValueError, match="no such file") as ours:
        jpeg.decode_jpeg(missing, CPU)
    with pytest.raises(ValueError, match="no such file") as theirs:
        load_image(missing)
    assert str(ours.value) == str(theirs.value)
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg_bytes(image))
    with pytest.raises(ValueError, match="exceeds the limit of 1000 pixels"):
        jpeg.decode_jpeg(big, CPU, max_pixels=1000)
    with pytest.raises(ValueError, match="is a directory"):
        jpeg.decode_jpeg(tmp_path, CPU)


# -- through the Detector -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(seeded_weights: Callable[[int], Weights]) -> Weights:
    return seeded_weights(0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("jpegs")
    out = []
    for i, (x, y, w, h) in enumerate([(0, 0, 1280, 720), (1000, 500, 389, 517), (1600, 100, 1400, 1400)]):
        p = d / f"img{i}.jpg"
        p.write_bytes(_jpeg_bytes(tadne_crop(x, y, w, h)))
        out.append(str(p))
    png = d / "img3.png"
    cv2.imwrite(str(png), tadne_crop(500, 2000, 640, 480))
    out.append(str(png))
    return out


def _detector(weights: Weights, **kw: object) -> afd_trt.Detector:
    return afd_trt.Detector("yolov3", weights["yolov3"]["pth"], weights["hrnetv2"]["pth"], device="cpu", **kw)  # type: ignore[arg-type]


def test_detector_with_torchvision_decoding_equals_default(weights: Weights, files: list[str]) -> None:
    """On the CPU torchvision decodes to OpenCV's pixels, so the device pipeline (decode, resize,
    normalise, crop, merge in torch) gives the default Detector's results bit for bit, and so does
    the host path with torchvision decoding (on one JPEG: its pixels are what is new there); the
    PNG goes through OpenCV."""
    default = _detector(weights)
    on_device = _detector(weights, jpeg_decoder="torchvision", device_pipeline=True)
    host = _detector(weights, jpeg_decoder="torchvision")
    found = 0
    for i, (r, a) in enumerate(
        zip(default.stream(files, keep_images=True), on_device.stream(files, keep_images=True), strict=True)
    ):
        assert r.faces is not None
        assert a.faces is not None
        found += len(r.faces)
        assert isinstance(a.image, np.ndarray)
        np.testing.assert_array_equal(a.image, r.image)
        assert (a.height, a.width) == (r.height, r.width)
        for faces in [a.faces] if i != 1 else [a.faces, host(files[i])]:
            assert len(faces) == len(r.faces)
            for x, y in zip(r.faces, faces, strict=True):
                np.testing.assert_array_equal(x["bbox"], y["bbox"])
                np.testing.assert_array_equal(x["keypoints"], y["keypoints"])
    assert found > 0


def test_detector_torchvision_decoding_reports_bad_files(
    weights: Weights, files: list[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body")
    det = _detector(weights, jpeg_decoder="torchvision", device_pipeline=True)
    results = list(det.stream([files[1], str(bad), str(tmp_path / "none.jpg")]))
    assert results[0].ok
    assert results[1].error is not None
    assert "bad.jpg" in str(results[1].error)
    assert results[2].error is not None
    assert "no such file" in str(results[2].error)


def test_unknown_jpeg_decoder_is_refused(weights: Weights) -> None:
    with pytest.raises(
        ValueError, match=r"jpeg_decoder must be one of \('opencv', 'torchvision'\), got 'nvjpeg'"
    ):
        _detector(weights, jpeg_decoder="nvjpeg")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("chroma", ["420", "444"])
def test_nvjpeg_decode_close_to_cpu(image: np.ndarray, tmp_path: Path, chroma: str) -> None:
    """nvJPEG's IDCT may round differently from libjpeg-turbo's, and it upsamples subsampled
    (4:2:0, OpenCV's default) chroma without libjpeg-turbo's smoothing, which differs on sharp
    colour edges: close on average (torchvision's own check is a mean under 2 levels), within a
    few levels everywhere without subsampling. Orientation and channel order must be right."""
    ok, buf = cv2.imencode(
        ".jpg",
        image,
        [cv2.IMWRITE_JPEG_QUALITY, 90]
        + (
            [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
            if chroma == "444"
            else []
        ),
    )
    assert ok
    data = buf.tobytes()
    path = tmp_path / "o6.jpg"
    path.write_bytes(data[:2] + _exif_app1(6, "II") + data[2:])
    got = jpeg.decode_jpeg(path, torch.device("cuda"))
    assert got is not None
    assert got.device.type == "cuda"
    want = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert tuple(got.shape) == want.shape
    diff = np.abs(got.cpu().numpy().astype(np.int16) - want)
    print(f"\nnvJPEG vs OpenCV, {chroma}: mean {diff.mean():.3f}, max {diff.max()} levels")
    assert diff.mean() < (0.5 if chroma == "444" else 2.0)
    if chroma == "444":
        assert diff.max() <= 8
    swapped = np.abs(got.cpu().numpy()[..., ::-1].astype(np.int16) - want)
    assert swapped.mean() > 4 * diff.mean() + 1, "channel order: RGB where BGR is expected?"
