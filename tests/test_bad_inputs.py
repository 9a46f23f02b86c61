"""Bad and unusual inputs through the Python API: each gets a clear error naming the input or a
documented conversion (docs/reliability.md lists every case with its test), never a crash, and a
batch keeps the results of its good images. All files are written here, at test time."""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import afd_trt
from afd_trt import jpeg
from afd_trt.image import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS, load_image, max_pixels_limit
from afd_trt.test_weights import synthetic_image

Weights = dict[str, dict[str, Path]]
Faces = list[dict[str, np.ndarray]]


# -- files written byte by byte ---------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    width: int, height: int, bit_depth: int, color_type: int, rows: bytes, plte: bytes | None = None
) -> bytes:
    """A PNG with valid CRCs; ``rows``: the unfiltered scanlines, each led by filter byte 0."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + (_chunk(b"PLTE", plte) if plte is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def scanlines(samples: np.ndarray) -> bytes:
    """uint8 / big-endian uint16 samples (H, W[, C]) -> filter-0 scanlines."""
    h = samples.shape[0]
    data = samples.astype(samples.dtype.newbyteorder(">")).view(np.uint8).reshape(h, -1)
    return np.concatenate([np.zeros((h, 1), np.uint8), data], axis=1).tobytes()


def encoded(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return bytes(buf.tobytes())


def jpeg_with_size(image: np.ndarray, width: int, height: int, app_segments: int = 0) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``, after
    ``app_segments`` 60 kB APP1 segments (pushing the frame header past the first 64 KiB)."""
    raw = bytearray(encoded(image, ".jpg"))
    app = b"\xff\xe1" + struct.pack(">H", 60_002) + b"\x00" * 60_000
    raw[2:2] = app * app_segments
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def webp_vp8x(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_with_size(image: np.ndarray, width: int, height: int) -> bytes:
    raw = bytearray(encoded(image, ".bmp"))
    raw[18:26] = struct.pack("<ii", width, height)
    return bytes(raw)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def det(seeded_weights: Callable[[int], Weights]) -> afd_trt.Detector:
    w = seeded_weights(0)
    return afd_trt.Detector(
        "yolov3", w["yolov3"]["pth"], w["hrnetv2"]["safetensors"], device="cpu", flip_test=False
    )


# Wide strips (YOLO resizes them to 608 px wide, padded to 64 or 96 rows) on which the seeded
# detector finds one face each: cheap calls whose results still carry a face.
@pytest.fixture(scope="module")
def good_a() -> np.ndarray:
    return synthetic_image(40, 330, seed=13)


@pytest.fixture(scope="module")
def good_b() -> np.ndarray:
    return synthetic_image(32, 320, seed=15)


@pytest.fixture(scope="module")
def expected(det: afd_trt.Detector, good_a: np.ndarray, good_b: np.ndarray) -> tuple[Faces, Faces]:
    a, b = det(good_a), det(good_b)
    assert len(a) == len(b) == 1
    return a, b


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return synthetic_image(24, 40, seed=3)


def same(a: Faces, b: Faces) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa["bbox"], fb["bbox"])
        np.testing.assert_array_equal(fa["keypoints"], fb["keypoints"])


def valid(faces: Faces) -> None:
    for f in faces:
        assert f["bbox"].dtype == f["keypoints"].dtype == np.float32
        assert f["bbox"].shape in ((4,), (5,))
        assert f["keypoints"].shape == (28, 3)


# -- inputs that must be refused --------------------------------------------------------------

Maker = Callable[[Path, np.ndarray], Any]


def _file(name: str, data: bytes | Callable[[np.ndarray], bytes]) -> Maker:
    def make(tmp: Path, img: np.ndarray) -> Path:
        p = tmp / name
        p.write_bytes(data(img) if callable(data) else data)
        return p

    return make


def _dir(tmp: Path, img: np.ndarray) -> Path:
    p = tmp / "folder.png"
    p.mkdir()
    return p


def _fifo(tmp: Path, img: np.ndarray) -> Path:
    p = tmp / "pipe.png"
    os.mkfifo(p)  # stat only: never opened (that would block)
    return p


BAD: list[tuple[str, Maker, type[Exception], str]] = [
    ("zero_byte_file", _file("empty.jpg", b""), ValueError, r"empty file \(0 bytes\)"),
    ("missing_file", lambda t, i: t / "missing.png", ValueError, "no such file"),
    ("directory", _dir, ValueError, "is a directory"),
    ("fifo", _fifo, ValueError, "not a regular file"),
    ("text_named_jpg", _file("notes.jpg", b"this is not an image\n" * 20), ValueError, "could not decode"),
    (
        "unsupported_pdf",
        _file("doc.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
        ValueError,
        "could not decode",
    ),
    (
        "truncated_png_half",
        _file("half.png", lambda i: encoded(i, ".png")[: len(encoded(i, ".png")) // 2]),
        ValueError,
        "could not decode",
    ),
    (
        "truncated_png_header_only",
        _file("head.png", lambda i: encoded(i, ".png")[:33]),
        ValueError,
        "could not decode",
    ),
    (
        "truncated_jpeg_header_only",
        _file("head.jpg", lambda i: encoded(i, ".jpg")[:20]),
        ValueError,
        "could not decode",
    ),
    (
        "png_declares_0x0",
        _file("zero.png", png_bytes(0, 0, 8, 2, b"")),
        ValueError,
        "declares an empty image",
    ),
    (
        "bomb_png",
        _file("bomb.png", png_bytes(100_000, 100_000, 8, 2, b"\x00" * 64)),
        ValueError,
        r"100000x100000 = 10000000000 pixels exceeds the limit",
    ),
    (
        "bomb_jpeg",
        _file("bomb.jpg", lambda i: jpeg_with_size(i, 65_000, 65_000)),
        ValueError,
        "65000x65000 = 4225000000 pixels exceeds",
    ),
    (
        "bomb_jpeg_after_120kB_of_app_segments",
        _file("bomb_exif.jpg", lambda i: jpeg_with_size(i, 65_000, 65_000, app_segments=2)),
        ValueError,
        "65000x65000 = 4225000000 pixels exceeds",
    ),
    (
        "bomb_gif",
        _file("bomb.gif", b"GIF89a" + struct.pack("<HH", 65_535, 65_535) + b"\x00" * 32),
        ValueError,
        "65535x65535 = 4294836225 pixels exceeds",
    ),
    (
        "bomb_bmp",
        _file("bomb.bmp", lambda i: bmp_with_size(i, 100_000, -100_000)),
        ValueError,
        "100000x100000 = 10000000000 pixels exceeds",
    ),
    ("bomb_webp", _file("bomb.webp", webp_vp8x(1 << 24, 1 << 24)), ValueError, "16777216x16777216"),
    ("float32_array", lambda t, i: i.astype(np.float32), TypeError, "got float32"),
    ("float64_array", lambda t, i: i / 255.0, TypeError, "got float64"),
    ("int16_array", lambda t, i: i.astype(np.int16), TypeError, "got int16"),
    ("bool_array", lambda t, i: i > 128, TypeError, "got bool"),
    ("object_array", lambda t, i: i.astype(object), TypeError, "got object"),
    ("two_channels", lambda t, i: np.ascontiguousarray(i[:, :, :2]), ValueError, r"got \(24, 40, 2\)"),
    ("five_channels", lambda t, i: np.zeros((24, 40, 5), np.uint8), ValueError, r"got \(24, 40, 5\)"),
    ("four_d_array", lambda t, i: i[None], ValueError, "for several images use Detector.detect_batch"),
    ("one_d_array", lambda t, i: i.reshape(-1), ValueError, r"got \(2880,\)"),
    ("zero_d_array", lambda t, i: np.array(7, np.uint8), ValueError, r"got \(\)"),
    ("zero_height", lambda t, i: i[:0], ValueError, "empty image"),
    ("zero_width", lambda t, i: i[:, :0], ValueError, "empty image"),
    ("nested_list", lambda t, i: i.tolist(), TypeError, "numpy array or a path"),
    ("bytes_path", lambda t, i: b"/tmp/face.png", TypeError, "numpy array or a path"),
    ("empty_path", lambda t, i: "", ValueError, "empty path"),
    ("none", lambda t, i: None, TypeError, "got NoneType"),
]


def _check_names(err: BaseException, item: Any, fallback: str) -> None:
    if isinstance(item, (str, os.PathLike)) and os.fspath(item):
        assert str(item) in str(err), f"error does not name the path: {err}"
    else:
        assert fallback in str(err), f"error does not name the input: {err}"


@pytest.mark.parametrize(("make", "exc", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_single_call(
    det: afd_trt.Detector, tmp_path: Path, small: np.ndarray, make: Maker, exc: type[Exception], match: str
) -> None:
    item = make(tmp_path, small)
    t0 = time.perf_counter()
    with pytest.raises(exc, match=match) as info:
        det(item)
    assert time.perf_counter() - t0 < 5, "refusals happen before any decoding or network"
    _check_names(info.value, item, "image")


def test_bad_inputs_in_one_batch_keep_the_good_results(
    det: afd_trt.Detector,
    tmp_path: Path,
    small: np.ndarray,
    good_a: np.ndarray,
    good_b: np.ndarray,
    expected: tuple[Faces, Faces],
) -> None:
    bad = [make(tmp_path, small) for _, make, _, _ in BAD]
    items = [good_a, *bad, good_b]
    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch(items)
    err = info.value
    assert sorted(err.errors) == list(range(1, len(bad) + 1))
    for (case, _, exc, match), i in zip(BAD, range(1, len(bad) + 1), strict=True):
        e = err.errors[i]
        assert isinstance(e, exc), (case, e)
        assert err.results[i] is None
        _check_names(e, items[i], f"image {i}")
        assert re.search(match, str(e)), (case, e)
    same(err.results[0] or [], expected[0])
    same(err.results[-1] or [], expected[1])
    assert f"{len(bad)} of {len(items)} images failed" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot be tested")
def test_unreadable_file(det: afd_trt.Detector, tmp_path: Path, small: np.ndarray) -> None:
    p = tmp_path / "secret.png"
    p.write_bytes(encoded(small, ".png"))
    p.chmod(0)
    with pytest.raises(ValueError, match="cannot read it") as info:
        det(p)
    assert str(p) in str(info.value)


# -- the pixel limit --------------------------------------------------------------------------


def test_pixel_limit_is_configurable(
    det: afd_trt.Detector,
    seeded_weights: Callable[[int], Weights],
    tmp_path: Path,
    small: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = tmp_path / "small.png"
    p.write_bytes(encoded(small, ".png"))
    n = small.shape[0] * small.shape[1]
    monkeypatch.delenv(ENV_MAX_PIXELS, raising=False)
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 400_000_000
    np.testing.assert_array_equal(load_image(p, max_pixels=n), small)  # the limit itself is allowed
    with pytest.raises(ValueError, match=f"{n} pixels exceeds the limit of {n - 1} pixels"):
        load_image(p, max_pixels=n - 1)
    monkeypatch.setenv(ENV_MAX_PIXELS, str(n - 1))
    with pytest.raises(ValueError, match=f"limit of {n - 1} pixels"):
        det(p)
    np.testing.assert_array_equal(load_image(p, max_pixels=n), small)  # the argument wins over the env
    monkeypatch.setenv(ENV_MAX_PIXELS, "lots")
    with pytest.raises(ValueError, match=rf"\${ENV_MAX_PIXELS} must be a positive integer, got 'lots'"):
        load_image(p)
    monkeypatch.setenv(ENV_MAX_PIXELS, "1_000_000")
    assert max_pixels_limit() == 1_000_000
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
            max_pixels_limit(bad)  # type: ignore[arg-type]
    w = seeded_weights(0)
    strict = afd_trt.Detector(None, None, w["hrnetv2"]["safetensors"], device="cpu", max_pixels=n - 1)
    with pytest.raises(ValueError, match=f"limit of {n - 1} pixels"):
        strict(p)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        afd_trt.Detector(None, None, w["hrnetv2"]["safetensors"], device="cpu", max_pixels=0)
    # Arrays are already in memory: not limited.
    np.testing.assert_array_equal(load_image(small, max_pixels=1), small)


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 70-byte PNG declaring 10 Gpx: refused from its header in well under a second."""
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bytes(100_000, 100_000, 8, 2, b""))
    assert p.stat().st_size < 100
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(p)
    assert time.perf_counter() - t0 < 0.5
    # The same header just under the limit gets to the decoder, which finds no pixel data.
    p.write_bytes(png_bytes(4_000, 4_000, 8, 2, b""))
    with pytest.raises(ValueError, match="could not decode"):
        load_image(p)


# -- file formats and their documented conversions --------------------------------------------


def _upstream_read(p: Path) -> np.ndarray:
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)  # what upstream's LandmarkDetector does with a path
    assert img is not None
    return img


def _loads_like_upstream(p: Path) -> np.ndarray:
    got = load_image(p)
    assert got.dtype == np.uint8
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, _upstream_read(p))
    return got


def test_png_variants(tmp_path: Path, good_a: np.ndarray) -> None:
    h, w = good_a.shape[:2]
    rgb = good_a[:, :, ::-1]
    gray = cv2.cvtColor(good_a, cv2.COLOR_BGR2GRAY)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    cases: dict[str, tuple[bytes, np.ndarray]] = {
        "gray8": (png_bytes(w, h, 8, 0, scanlines(gray)), gray3),
        "gray_alpha": (png_bytes(w, h, 8, 4, scanlines(np.stack([gray, 255 - gray], axis=2))), gray3),
        "rgba": (png_bytes(w, h, 8, 6, scanlines(np.concatenate([rgb, gray[:, :, None]], axis=2))), good_a),
        # 16-bit: IMREAD_COLOR keeps the high byte (>> 8), so v * 256 + 77 reads as v.
        "rgb16": (png_bytes(w, h, 16, 2, scanlines(rgb.astype(np.uint16) * 256 + 77)), good_a),
        "gray16": (png_bytes(w, h, 16, 0, scanlines(gray.astype(np.uint16) * 257)), gray3),
        "gray1": (
            png_bytes(w, h, 1, 0, b"".join(b"\x00" + np.packbits(r > 128).tobytes() for r in gray)),
            np.repeat(np.where(gray > 128, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2),
        ),
    }
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [30, 60, 90]], np.uint8)  # RGB
    idx = (gray // 64).astype(np.uint8)
    cases["palette"] = (
        png_bytes(w, h, 8, 3, scanlines(idx), plte=palette.tobytes()),
        palette[idx][:, :, ::-1],
    )
    for name, (data, want) in cases.items():
        p = tmp_path / f"{name}.png"
        p.write_bytes(data)
        np.testing.assert_array_equal(_loads_like_upstream(p), want, err_msg=name)


def test_png_named_jpg_and_other_formats(tmp_path: Path, good_a: np.ndarray) -> None:
    p = tmp_path / "really_a_png.jpg"
    p.write_bytes(encoded(good_a, ".png"))
    np.testing.assert_array_equal(_loads_like_upstream(p), good_a)  # sniffed from content
    for ext in (".bmp", ".tiff", ".webp"):
        q = tmp_path / f"lossless{ext}"
        assert cv2.imwrite(str(q), good_a, [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
        np.testing.assert_array_equal(_loads_like_upstream(q), good_a, err_msg=ext)
    u = tmp_path / "顔 フォルダ" / "画像.png"
    u.parent.mkdir()
    u.write_bytes(encoded(good_a, ".png"))
    np.testing.assert_array_equal(load_image(u), good_a)
    np.testing.assert_array_equal(load_image(str(u)), good_a)


def test_truncated_jpeg_decodes_like_upstream_with_a_warning(
    det: afd_trt.Detector, tmp_path: Path, good_a: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    full = encoded(good_a, ".jpg")
    p = tmp_path / "cut.jpg"
    p.write_bytes(full[: len(full) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="afd_trt.image"):
        got = _loads_like_upstream(p)
        valid(det(p))
    assert sum("truncated?" in r.getMessage() and str(p) in r.getMessage() for r in caplog.records) == 2
    assert got.shape == good_a.shape
    caplog.clear()
    q = tmp_path / "whole.jpg"
    q.write_bytes(full + b"\x00" * 16)  # trailing padding after EOI is fine
    with caplog.at_level(logging.WARNING, logger="afd_trt.image"):
        _loads_like_upstream(q)
    assert not caplog.records
    # An EXIF thumbnail (a JPEG, FF D9 and all, inside the APP1 segment) before the scan.
    thumb = encoded(good_a[::8, ::8], ".jpg")
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = full[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + full[2:]
    # A "motion photo": a complete JPEG with a video appended after its end marker.
    motion = tmp_path / "motion.jpg"
    motion.write_bytes(with_thumb + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with caplog.at_level(logging.WARNING, logger="afd_trt"):
        np.testing.assert_array_equal(_loads_like_upstream(motion), _loads_like_upstream(q))
        assert jpeg.decode_jpeg(motion, torch.device("cpu")) is not None  # not sent back to OpenCV
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    # Cut inside the scan, the thumbnail's end marker does not make it look complete.
    cut = tmp_path / "cut-thumb.jpg"
    cut.write_bytes(with_thumb[: len(with_thumb) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="afd_trt.image"):
        _loads_like_upstream(cut)
    assert any("truncated?" in r.getMessage() and str(cut) in r.getMessage() for r in caplog.records)


def test_cmyk_jpeg_becomes_bgr(tmp_path: Path, good_a: np.ndarray) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    p = tmp_path / "cmyk.jpg"
    image_mod.fromarray(np.ascontiguousarray(good_a[:, :, ::-1])).convert("CMYK").save(p, quality=95)
    with image_mod.open(p) as im:
        assert im.mode == "CMYK"
    got = _loads_like_upstream(p)
    assert got.shape == good_a.shape
    # Colours survive (not inverted, not channel-swapped): within JPEG loss of the original.
    assert np.abs(got.astype(np.int16) - good_a).mean() < 6


def test_exif_rotated_jpeg_is_rotated_like_upstream(
    det: afd_trt.Detector, tmp_path: Path, good_a: np.ndarray
) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    p = tmp_path / "rotated.jpg"
    exif = image_mod.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image_mod.fromarray(np.ascontiguousarray(good_a[:, :, ::-1])).save(p, quality=95, exif=exif)
    stored = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert stored.shape == good_a.shape
    got = _loads_like_upstream(p)
    np.testing.assert_array_equal(got, cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE))
    same(det(p), det(got))


# -- arrays: views and strides ----------------------------------------------------------------


def test_strided_and_negative_stride_views_equal_their_copies(
    det: afd_trt.Detector, good_a: np.ndarray
) -> None:
    big = synthetic_image(80, 660, seed=11)
    views = {
        "flip_rows": good_a[::-1],
        "flip_both": good_a[::-1, ::-1],
        "rgb_view": good_a[:, :, ::-1],
        "step2": big[::2, ::2],
        "crop": big[7:47, 13:343],
        "transposed": np.ascontiguousarray(good_a.transpose(1, 0, 2)).transpose(1, 0, 2),
        "gray_negative": cv2.cvtColor(good_a, cv2.COLOR_BGR2GRAY)[:, ::-1],
        "bgra_view": np.concatenate([good_a, good_a[:, :, :1]], axis=2)[::-1],
    }
    for name, v in views.items():
        assert not v.flags.c_contiguous, name
        np.testing.assert_array_equal(load_image(v), load_image(np.ascontiguousarray(v)), err_msg=name)
    readonly = good_a.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(load_image(readonly), good_a)
    v = views["flip_both"]
    same(det(v), det(np.ascontiguousarray(v)))
    assert load_image(good_a) is good_a  # contiguous BGR is not copied


# -- tiny and extreme shapes ------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 2)])
def test_tiny_images_are_processed(det: afd_trt.Detector, h: int, w: int) -> None:
    img = synthetic_image(16, 16, seed=5)[:h, :w]
    valid(det(img))


def test_extreme_aspect_ratios(
    det: afd_trt.Detector, tmp_path: Path, good_a: np.ndarray, expected: tuple[Faces, Faces]
) -> None:
    strip = synthetic_image(16, 4000, seed=6)
    wide, tall = strip[:1], np.ascontiguousarray(strip[:1].transpose(1, 0, 2))  # 4000x1 and 1x4000
    valid(det(strip[:10]))  # 4000x10 resizes to 608x1: processed
    for img in (wide, tall):
        with pytest.raises(ValueError, match="too thin to detect faces in") as info:
            det(img)
        assert str(info.value).startswith("image: ")
        # With the caller's boxes the detector is not needed and the image is processed.
        faces = det(img, boxes=[[0, 0, img.shape[1] - 1, img.shape[0] - 1]])
        assert len(faces) == 1
        valid(faces)
    p = tmp_path / "tall.png"
    p.write_bytes(encoded(tall, ".png"))
    with pytest.raises(ValueError, match="too thin") as info:
        det(p)
    assert str(p) in str(info.value)
    with pytest.raises(afd_trt.BatchError) as binfo:
        det.detect_batch([good_a, wide, p])
    assert sorted(binfo.value.errors) == [1, 2]
    assert "image 1" in str(binfo.value.errors[1])
    assert str(p) in str(binfo.value.errors[2])
    same(binfo.value.results[0] or [], expected[0])


# -- user boxes -------------------------------------------------------------------------------

BAD_BOXES: list[tuple[str, Any, str]] = [
    ("nan", [[0, 0, 10, 10], [0, float("nan"), 10, 10]], r"box 1 has a non-finite coordinate"),
    ("neg_inf", [[-np.inf, 0, 10, 10, 0.5]], r"box 0 has a non-finite coordinate"),
    ("three_values", np.zeros((2, 3), np.float32), r"box 0 must have 4 or 5 values, got shape \(3,\)"),
    ("six_values", np.ones((1, 6)), r"box 0 must have 4 or 5 values, got shape \(6,\)"),
    ("nested_too_deep", [[[0, 0, 10, 10]]], r"box 0 must have 4 or 5 values, got shape \(1, 4\)"),
    ("flat_single_box", [0, 0, 10, 10], "wrap a single box"),
    ("mixed_lengths", [[0, 0, 10, 10], [0, 0, 10, 10, 0.9]], "mix 4 and 5 values"),
    ("not_numbers", [[0, 0, "ten", 10]], "box 0 must be"),
    ("not_a_list", 5, "expected a list or"),
    ("a_string", "0 0 10 10", "expected a list or"),
    ("overflow", [[-3e38, 0, 3e38, 10]], "too large"),
]


@pytest.mark.parametrize(("boxes", "match"), [c[1:] for c in BAD_BOXES], ids=[c[0] for c in BAD_BOXES])
def test_bad_boxes(det: afd_trt.Detector, small: np.ndarray, tmp_path: Path, boxes: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        det(small, boxes=boxes)
    assert str(info.value).startswith("boxes of image: ")
    p = tmp_path / "small.png"
    p.write_bytes(encoded(small, ".png"))
    with pytest.raises(ValueError, match=match) as info:
        det(p, boxes=boxes)
    assert str(info.value).startswith(f"boxes of image {str(p)!r}: ")


def test_a_box_too_large_to_pad_is_refused(
    det: afd_trt.Detector, small: np.ndarray, good_a: np.ndarray
) -> None:
    """A box that fits float32 but not once padded for its crop gave inf/NaN keypoints (with
    numpy warnings only); it is refused naming the image and the box, and in a batch the other
    images keep their results."""
    huge = [[0, 0, 3e38, 3e38]]
    with pytest.raises(
        ValueError, match=r"^image: box 0 \[0.0, 0.0, 3.0+\d*e\+38, .*\] is too large: padded"
    ):
        det(small, boxes=huge)
    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch([good_a, small], boxes=[None, huge])
    assert set(info.value.errors) == {1}
    assert str(info.value.errors[1]).startswith("image 1: box 0")
    assert info.value.results[0] is not None


def test_bad_boxes_in_one_batch_keep_the_good_results(
    det: afd_trt.Detector,
    small: np.ndarray,
    good_a: np.ndarray,
    good_b: np.ndarray,
    expected: tuple[Faces, Faces],
) -> None:
    n = len(BAD_BOXES)
    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch([good_a, *[small] * n, good_b], boxes=[None, *[c[1] for c in BAD_BOXES], None])
    err = info.value
    assert sorted(err.errors) == list(range(1, n + 1))
    for i, (case, _, match) in enumerate(BAD_BOXES, start=1):
        assert isinstance(err.errors[i], ValueError), case
        assert re.search(match, str(err.errors[i])), (case, err.errors[i])
        assert str(err.errors[i]).startswith(f"boxes of image {i}: "), case
    same(err.results[0] or [], expected[0])
    same(err.results[-1] or [], expected[1])


def test_box_list_forms(det: afd_trt.Detector, small: np.ndarray, good_a: np.ndarray) -> None:
    assert det(small, boxes=[]) == []
    assert det(small, boxes=np.zeros((0, 4), np.float32)) == []
    assert det.detect_batch([small, good_a], boxes=[[], None])[0] == []
    as_list = det(small, boxes=[[2, 3, 30, 20]])
    assert as_list[0]["bbox"].shape == (4,)  # 4-value boxes come back with 4 values, as upstream
    same(det(small, boxes=np.array([[2, 3, 30, 20]], np.int64)), as_list)
    scored = det(small, boxes=([2.0, 3.0, 30.0, 20.0, 0.25], np.array([2, 3, 30, 20, np.nan])))
    np.testing.assert_array_equal(scored[0]["bbox"], np.array([2, 3, 30, 20, 0.25], np.float32))
    assert np.isnan(scored[1]["bbox"][4])  # scores pass through untouched
    np.testing.assert_array_equal(scored[0]["keypoints"], scored[1]["keypoints"])
    # A landmark batch of two may round differently in the last bits from a batch of one.
    np.testing.assert_allclose(scored[0]["keypoints"], as_list[0]["keypoints"], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="got 1 box lists for 2 images"):
        det.detect_batch([small, small], boxes=[None])


@pytest.fixture(scope="module")
def oracle(seeded_weights: Callable[[int], Weights]) -> Any:
    afd = pytest.importorskip("anime_face_detector")
    w = seeded_weights(0)
    return afd.LandmarkDetector(w["hrnetv2"]["pth"], None, device="cpu", flip_test=False)


ODD_BOXES = [
    [100, 80, 10, 5, 0.7],  # inverted (x2 < x1 and y2 < y1)
    [100, 5, 10, 80, 0.6],  # inverted in x only
    [-500, -500, -300, -300, 0.5],  # wholly outside the image
    [90, 70, 400, 300, 0.4],  # partly outside
    [-1e6, -1e6, 1e6, 1e6, 0.3],  # huge
    [10, 10, 50, 10, 0.2],  # zero height
    [10, 10, 10.001, 10.001, 0.1],  # tiny but not empty
    [5, 5, 5, 5, 0.05],  # a point: upstream's crop is pixel (0, 0) everywhere, keypoints at (5, 5)
    [1000, 1000, 1000.00001, 1000, 0.01],  # a point once in float32 (as upstream reads boxes)
]


@pytest.mark.oracle
def test_odd_boxes_match_upstream(det: afd_trt.Detector, oracle: Any) -> None:
    """Inverted, outside, degenerate and point boxes: used as given, like upstream."""
    img = synthetic_image(96, 128, seed=1)
    boxes = ODD_BOXES
    got = det(img, boxes=boxes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = oracle(img, [np.asarray(b, np.float32) for b in boxes])
    assert len(got) == len(ref) == len(boxes)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g["bbox"], r["bbox"])
        np.testing.assert_allclose(g["keypoints"][:, :2], r["keypoints"][:, :2], rtol=1e-6, atol=0.05)
        np.testing.assert_allclose(g["keypoints"][:, 2], r["keypoints"][:, 2], rtol=0, atol=1e-4)


# -- batch arguments --------------------------------------------------------------------------


def test_detect_batch_argument_forms(
    det: afd_trt.Detector, tmp_path: Path, good_a: np.ndarray, expected: tuple[Faces, Faces]
) -> None:
    p = tmp_path / "one.png"
    p.write_bytes(encoded(good_a, ".png"))
    for single in (str(p), p, good_a):
        with pytest.raises(TypeError, match="expected an iterable of images"):
            det.detect_batch(single)  # type: ignore[arg-type]
    stacked = np.stack([good_a, good_a])  # an (N, H, W, 3) array is N images
    for got in det.detect_batch(stacked):
        same(got, expected[0])
    same(det.detect_batch(iter([p]))[0], expected[0])


# -- arrays that went through pickle -------------------------------------------------------------


def _unpickled(a: np.ndarray) -> np.ndarray:
    """The array as a multiprocessing / Ray / DataLoader worker receives it: equal, but with its
    own dtype descriptor object (numpy does not hand back the canonical one)."""
    import pickle

    b: np.ndarray = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a, b)
    return b


def test_unpickled_arrays_are_accepted(
    det: afd_trt.Detector, good_a: np.ndarray, expected: tuple[Faces, Faces]
) -> None:
    """Images and boxes sent between processes give the same results as the originals (the native
    ops once compared dtype objects by identity and refused them: "must have dtype uint8, got
    uint8")."""
    img = _unpickled(good_a)
    assert img.dtype is not good_a.dtype
    same(det(img), expected[0])
    boxes = np.asarray([f["bbox"][:4] for f in expected[0]], np.float32)
    same(det(img, boxes=_unpickled(boxes)), det(good_a, boxes=boxes))
    results = det.detect_batch([img, _unpickled(good_a)])
    same(results[0], expected[0])
    same(results[1], expected[0])


def test_unpickled_arrays_in_the_native_ops() -> None:
    from afd_trt import ops

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (20, 2))], 1).astype(np.float32)
    scores = rng.random(20, dtype=np.float32)
    np.testing.assert_array_equal(
        ops.nms(_unpickled(boxes), _unpickled(scores), 0.5), ops.nms(boxes, scores, 0.5)
    )
    feature = rng.standard_normal((70, 16, 20), dtype=np.float32)
    np.testing.assert_array_equal(
        ops.roi_align(_unpickled(feature), _unpickled(boxes), 0.25, 7, 0, True),
        ops.roi_align(feature, boxes, 0.25, 7, 0, True),
    )
    # a byte order other than the machine's is still refused, by name
    with pytest.raises(ValueError, match=r"boxes must have dtype float32, got >f4"):
        ops.nms(boxes.astype(">f4"), scores, 0.5)
