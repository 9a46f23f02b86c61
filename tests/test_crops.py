"""Face crops: similarity fitting, crop matrices, warping (geometry and anti-aliasing), names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from afd_trt.crops import (
    ALIGN_TEMPLATE,
    aligned_crop_matrix,
    alignment_points,
    box_crop_matrix,
    crop_name,
    similarity_transform,
    source_tag,
    warp_crop,
)


def _similarity(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.2, 5.0)
    t = rng.uniform(-300, 300, size=2)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, t[0]], [s, c, t[1]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: the 4-parameter linear least-squares problem solved by numpy."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_similarity_recovers_exact_similarity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = _similarity(rng)
    src = rng.uniform(-100, 100, size=(int(rng.integers(2, 10)), 2))
    got = similarity_transform(src, _apply(m, src))
    np.testing.assert_allclose(got, m, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_is_least_squares_with_noise(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    src = rng.uniform(-100, 100, size=(7, 2))
    dst = _apply(_similarity(rng), src) + rng.normal(0, 5, size=(7, 2))
    np.testing.assert_allclose(
        similarity_transform(src, dst), _lstsq_similarity(src, dst), rtol=1e-9, atol=1e-7
    )


def test_similarity_never_reflects() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) >= 0


def _keypoints_for(m_crop_from_face: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """28 keypoints whose alignment points sit exactly on the template, seen through the
    inverse of ``m_crop_from_face`` (image -> crop)."""
    inv = cv2.invertAffineTransform(m_crop_from_face)
    template_px = ALIGN_TEMPLATE * size - 0.5
    tp = _apply(inv, template_px)
    kp = np.zeros((28, 3))
    kp[:, :2] = rng.uniform(0, 500, size=(28, 2))
    kp[:, 2] = rng.uniform(0, 1, size=28)
    # each eye's 6 points: symmetric offsets around the eye centre (mean = centre)
    offs = rng.normal(0, 3, size=(3, 2))
    offs = np.concatenate([offs, -offs])
    kp[11:17, :2] = tp[0] + offs
    kp[17:23, :2] = tp[1] + offs[::-1]
    kp[23, :2], kp[24, :2], kp[26, :2] = tp[2], tp[3], tp[4]
    return kp


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("size", [64, 256, 512])
def test_aligned_matrix_maps_landmarks_onto_template(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    m = _similarity(rng)
    kp = _keypoints_for(m, size, rng)
    got = aligned_crop_matrix(kp, size)
    np.testing.assert_allclose(got, m, rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(_apply(got, alignment_points(kp)), ALIGN_TEMPLATE * size - 0.5, atol=1e-6)


def test_aligned_crop_scale_zooms_about_the_centre() -> None:
    rng = np.random.default_rng(7)
    kp = _keypoints_for(_similarity(rng), 256, rng)
    m1, m2 = aligned_crop_matrix(kp, 256), aligned_crop_matrix(kp, 256, scale=2.0)
    c = 127.5
    p = _apply(m1, alignment_points(kp))
    np.testing.assert_allclose(_apply(m2, alignment_points(kp)), c + (p - c) * 2, atol=1e-6)


def test_alignment_points_layout() -> None:
    kp = np.arange(28 * 3, dtype=np.float64).reshape(28, 3)
    pts = alignment_points(kp)
    np.testing.assert_array_equal(pts[0], kp[11:17, :2].mean(0))
    np.testing.assert_array_equal(pts[1], kp[17:23, :2].mean(0))
    np.testing.assert_array_equal(pts[2:], kp[[23, 24, 26], :2])


@pytest.mark.parametrize("margin", [1.0, 1.5])
def test_box_matrix_square_about_the_centre(margin: float) -> None:
    box = np.array([10.0, 20.0, 110.0, 70.0, 0.9])  # w 100, h 50
    m = box_crop_matrix(box, 200, margin)
    side = 100 * margin
    assert m[0, 1] == m[1, 0] == 0
    assert m[0, 0] == m[1, 1] == pytest.approx(200 / side)
    np.testing.assert_allclose(_apply(m, np.array([[60.0, 45.0]])), [[99.5, 99.5]])
    corners = np.array([[60 - side / 2, 45 - side / 2], [60 + side / 2, 45 + side / 2]])
    np.testing.assert_allclose(_apply(m, corners), [[-0.5, -0.5], [199.5, 199.5]], atol=1e-9)


def _blob_image(h: int, w: int, centres: np.ndarray, radius: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for k, (cx, cy) in enumerate(centres):
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        img[mask, k % 3] = 255
    return img


def _blob_centroids(crop: np.ndarray, n: int) -> np.ndarray:
    out = []
    mask_all = crop.max(axis=2) > 64
    count, labels = cv2.connectedComponents(mask_all.astype(np.uint8))
    assert count - 1 == n, f"expected {n} blobs, found {count - 1}"
    for lab in range(1, count):
        ys, xs = np.nonzero(labels == lab)
        wts = crop[ys, xs].max(axis=1).astype(np.float64)
        out.append([np.average(xs, weights=wts), np.average(ys, weights=wts)])
    return np.array(out)


@pytest.mark.parametrize(("face_scale", "size"), [(4.0, 128), (0.5, 256), (1.0, 256)])
def test_warp_puts_landmarks_on_template(face_scale: float, size: int) -> None:
    """Blobs drawn at the alignment points of a rotated, scaled face land on the template in
    the crop (covers the INTER_AREA reduction path when the face is large)."""
    angle = np.deg2rad(25)
    c, s = np.cos(angle), np.sin(angle)
    template_px = ALIGN_TEMPLATE * size - 0.5
    # image -> crop: rotation and 1/face_scale; chosen so the face lies inside a 900x900 image
    rot = np.array([[c, -s], [s, c]]) / face_scale
    m_true = np.hstack([rot, np.zeros((2, 1))])
    inv = cv2.invertAffineTransform(m_true)
    pts = _apply(inv, template_px)
    pts += np.array([450.0, 450.0]) - pts.mean(0)
    kp = np.zeros((28, 3))
    kp[11:17, :2], kp[17:23, :2] = pts[0], pts[1]
    kp[23, :2], kp[24, :2], kp[26, :2] = pts[2], pts[3], pts[4]
    # blobs at the eye centres and the nose only (mouth corners are too close at small sizes)
    radius = max(2, round(3 * face_scale))
    img = _blob_image(900, 900, pts[:3], radius)
    crop = warp_crop(img, aligned_crop_matrix(kp, size), size)
    assert crop.shape == (size, size, 3)
    assert crop.dtype == np.uint8
    got = _blob_centroids(crop, 3)
    want = template_px[:3]
    # match blobs to template points by nearest
    for p in want:
        assert np.min(np.linalg.norm(got - p, axis=1)) < 0.35


@pytest.mark.parametrize("shrink", [0.1, 0.3, 0.7])
def test_warp_reduction_keeps_geometry(shrink: float) -> None:
    """On a linear ramp the area-reduced warp equals plain bilinear sampling (both exact on
    linear images): the reduction adds no shift."""
    h, w = 600, 800
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx * 0.2 + yy * 0.15 + 10).astype(np.float32)
    img = np.stack([ramp, ramp * 0.5, 250 - ramp * 0.1], axis=2)
    m = np.array([[shrink, 0.0, -50 * shrink], [0.0, shrink, -40 * shrink]])
    size = int(300 * shrink)
    got = warp_crop(img, m, size)
    ref = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, atol=0.05)


def test_warp_reduction_antialiases() -> None:
    """A one-pixel checkerboard shrunk 8x comes out mid-grey, not aliased."""
    board = ((np.indices((512, 512)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(board[:, :, None], 3, axis=2)
    m = np.array([[0.125, 0.0, 0.0], [0.0, 0.125, 0.0]])
    crop = warp_crop(img, m, 64)
    assert abs(float(crop[4:-4, 4:-4].mean()) - 127.5) < 2
    assert float(crop[4:-4, 4:-4].std()) < 3


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_warp_borders(border: str) -> None:
    img = np.full((50, 50, 3), 200, np.uint8)
    m = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 30.0]])  # image occupies crop pixels 30..79
    crop = warp_crop(img, m, 100, border)
    assert crop[50, 50].tolist() == [200, 200, 200]
    assert crop[5, 5].tolist() == ([0, 0, 0] if border == "constant" else [200, 200, 200])


def test_input_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \(28, 2\) or \(28, 3\)"):
        alignment_points(np.zeros((27, 3)))
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N >= 2, 2\)"):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        similarity_transform(np.array([[0, 0], [1, np.nan]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integer from 1 to 8192, got 0"):
        box_crop_matrix(np.array([0, 0, 10, 10]), 0)
    with pytest.raises(ValueError, match="empty box"):
        box_crop_matrix(np.array([5, 5, 5, 5]), 64)
    with pytest.raises(ValueError, match="border must be one of"):
        warp_crop(np.zeros((4, 4, 3), np.uint8), np.eye(2, 3), 4, "wrap")
    with pytest.raises(ValueError, match="scale must be a positive number"):
        aligned_crop_matrix(np.zeros((28, 3)), 64, scale=0.0)


def test_crop_names_stable_and_distinct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = crop_name("shots/a/img.png", 0)
    assert a == crop_name("shots/a/img.png", 0)
    assert a.startswith("img_")
    assert a.endswith("_f00.png")
    assert a != crop_name("shots/b/img.png", 0)
    assert crop_name("v.mp4", 3, frame=12, ext="jpg").endswith("_frame000012_f03.jpg")
    assert source_tag("dir/we ird:name.jpg").startswith("we_ird_name_")
    # The same relative path from two working folders is two files: two names.
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "one")
    first = crop_name("img.png", 0)
    assert first == crop_name(str(tmp_path / "one" / "img.png"), 0)
    monkeypatch.chdir(tmp_path / "two")
    assert crop_name("img.png", 0) != first


@pytest.mark.parametrize("mode", ["aligned", "box"])
def test_a_face_without_a_crop_keeps_the_other_crops(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A face collapsed to a point (a point box, all keypoints on one spot: what a zero-size box
    gives) has no crop; the run logs it and writes the other faces' crops."""
    from afd_trt.detect_job import DetectOptions, WorkItem, _write_files

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    good_kpts = np.concatenate([rng.uniform(40, 100, (28, 2)), rng.uniform(0, 1, (28, 1))], axis=1).astype(
        np.float32
    )
    point = np.zeros((28, 3), np.float32)
    point[:, :2] = (30.0, 40.0)
    faces = [
        {"bbox": np.array([30, 40, 30, 40, 0.9], np.float32), "keypoints": point},
        {"bbox": np.array([40, 40, 100, 100, 0.8], np.float32), "keypoints": good_kpts},
    ]
    opts = DetectOptions(inputs=[], output=tmp_path / "out.jsonl", crops=tmp_path / "crops", crop_mode=mode)
    opts.crops.mkdir()  # type: ignore[union-attr]
    _write_files(opts, WorkItem(path=str(tmp_path / "a.png")), image, faces)
    written = sorted(p.name for p in (tmp_path / "crops").iterdir())
    assert written == [crop_name(str(tmp_path / "a.png"), 1, None, "png")]
    assert f"no crop {crop_name(str(tmp_path / 'a.png'), 0, None, 'png')}" in caplog.text
