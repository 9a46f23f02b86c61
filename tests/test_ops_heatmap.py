"""ops.merge_flip / ops.decode_heatmaps against upstream mmpose code and the numpy reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import ref_landmarks as ref

from afd_trt import ops

FLIP_PAIRS = (
    (0, 4),
    (1, 3),
    (5, 10),
    (6, 9),
    (7, 8),
    (11, 19),
    (12, 18),
    (13, 17),
    (14, 22),
    (15, 21),
    (16, 20),
    (24, 26),
)
MODES = {"dark": "unbiased", "quarter": "default", "none": None}


def _boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """centers (n, 2), mmpose scales (n, 2) and box_sizes = scale * 200 (float32, as upstream)."""
    centers = rng.uniform(0, 3000, (n, 2)).astype(np.float32)
    scale = rng.uniform(0.05, 4.0, (n, 2)).astype(np.float32)
    return centers, scale, scale * 200.0


def _unit_boxes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """centers and scales of a 64 px box centred at 32: image px == heatmap px (+-1 ulp)."""
    return np.full((n, 2), 32.0, np.float32), np.full((n, 2), 0.32, np.float32)


def _upstream_keypoints(
    merged: np.ndarray, centers: np.ndarray, scale: np.ndarray, mode: str, kernel: int = 11
):
    from anime_face_detector._vendor.mmpose import keypoints_from_heatmaps

    with np.errstate(all="ignore"):  # upstream divides by blurred maxima of 0 on dead maps
        preds, maxvals = keypoints_from_heatmaps(
            merged, centers, scale, post_process=MODES[mode], kernel=kernel
        )
    return np.concatenate([preds, maxvals], axis=-1).astype(np.float32)


def _assert_keypoints_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-identical (x, y, score), NaN where upstream has NaN. "dark" included: its float32
    arithmetic is reproduced step by step (OpenCV blur rounding, numpy log, LAPACK inverse)."""
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# merge_flip
# ---------------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shift", [True, False])
def test_merge_flip_matches_upstream(seed: int, shift: bool) -> None:
    from anime_face_detector._vendor.mmpose import flip_back

    rng = np.random.default_rng(seed)
    hm = rng.normal(size=(3, 28, 64, 48)).astype(np.float32)
    fl = rng.normal(size=(3, 28, 64, 48)).astype(np.float32)
    back = flip_back(fl.copy(), list(FLIP_PAIRS))
    if shift:
        back[:, :, :, 1:] = back[:, :, :, :-1]
    want = (hm + back) / 2
    got = ops.merge_flip(hm, fl, FLIP_PAIRS, shift)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, ref.merge_flip(hm, fl, FLIP_PAIRS, shift))


def test_merge_flip_repeated_and_empty_pairs() -> None:
    rng = np.random.default_rng(3)
    hm = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
    fl = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
    pairs = [(0, 1), (1, 2), (3, 3)]  # channel 1 named twice: the later pair wins, as upstream
    np.testing.assert_array_equal(ops.merge_flip(hm, fl, pairs, True), ref.merge_flip(hm, fl, pairs, True))
    np.testing.assert_array_equal(ops.merge_flip(hm, fl, [], False), ref.merge_flip(hm, fl, [], False))
    assert ops.merge_flip(hm[:0], fl[:0], pairs, True).shape == (0, 5, 4, 6)


# ---------------------------------------------------------------------------------------------
# decode_heatmaps on random maps
# ---------------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("mode", ["dark", "quarter", "none"])
def test_decode_with_flip_matches_upstream(seed: int, n: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    hm, fl = ref.smooth_heatmaps(rng, n, 28), ref.smooth_heatmaps(rng, n, 28)
    centers, scale, sizes = _boxes(rng, n)
    merged = ref.merge_flip(hm, fl, FLIP_PAIRS, True)
    want = _upstream_keypoints(merged, centers, scale, mode)
    got = ops.decode_heatmaps(hm, centers, sizes, mode, 11, fl, FLIP_PAIRS, True)
    assert got.shape == (n, 28, 3)
    assert got.dtype == np.float32
    _assert_keypoints_equal(got, want)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["dark", "quarter", "none"])
def test_decode_matches_numpy_reference(seed: int, mode: str) -> None:
    rng = np.random.default_rng(100 + seed)
    hm = ref.smooth_heatmaps(rng, 2, 28, 48, 40)
    centers, _, sizes = _boxes(rng, 2)
    got = ops.decode_heatmaps(hm, centers, sizes, mode)
    _assert_keypoints_equal(got, ref.decode(hm, centers, sizes, mode))


def test_no_faces() -> None:
    out = ops.decode_heatmaps(
        np.zeros((0, 28, 64, 64), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    )
    assert out.shape == (0, 28, 3)
    assert out.dtype == np.float32


def test_threads_do_not_change_results() -> None:
    rng = np.random.default_rng(7)
    hm, fl = ref.smooth_heatmaps(rng, 7, 28), ref.smooth_heatmaps(rng, 7, 28)
    centers, _, sizes = _boxes(rng, 7)
    one = ops.decode_heatmaps(hm, centers, sizes, "dark", 11, fl, FLIP_PAIRS, True, threads=1)
    many = ops.decode_heatmaps(hm, centers, sizes, "dark", 11, fl, FLIP_PAIRS, True, threads=6)
    np.testing.assert_array_equal(one, many)


# ---------------------------------------------------------------------------------------------
# Edge cases: borders, thresholds, ties, singular Hessians, kernel sizes
# ---------------------------------------------------------------------------------------------


def _peak_map(px: int, py: int, h: int = 64, w: int = 64, dx: float = 0.3, dy: float = -0.2) -> np.ndarray:
    """A sigma-2 Gaussian whose sampled maximum is at integer (px, py), true centre off by (dx, dy)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = np.exp(-((xx - px - dx) ** 2 + (yy - py - dy) ** 2) / 8.0)
    return g.astype(np.float32)[None, None]


BORDER = [0, 1, 2, 61, 62, 63]


@pytest.mark.oracle
@pytest.mark.parametrize("px", BORDER)
@pytest.mark.parametrize("py", [1, 2, 30, 61, 62])
@pytest.mark.parametrize("mode", ["dark", "quarter"])
def test_peaks_at_borders(px: int, py: int, mode: str) -> None:
    hm = _peak_map(px, py, dx=0.3 if px < 63 else -0.3, dy=-0.2 if py > 0 else 0.2)
    assert np.unravel_index(np.argmax(hm[0, 0]), (64, 64)) == (py, px)
    centers, scale = np.array([[32.0, 32.0]], np.float32), np.array([[0.32, 0.32]], np.float32)
    sizes = scale * 200.0  # 64 px: image px = heatmap px
    got = ops.decode_heatmaps(hm, centers, sizes, mode)
    _assert_keypoints_equal(got, _upstream_keypoints(hm, centers, scale, mode))
    refined = got[0, 0, :2] != np.array([px, py], np.float32)
    if mode == "dark":
        assert refined.any() == (2 <= px <= 61 and 2 <= py <= 61)
    else:
        assert refined.any() == (2 <= px <= 62 and 2 <= py <= 62)


@pytest.mark.parametrize("mode", ["dark", "quarter", "none"])
def test_nonpositive_maximum_gives_minus_one(mode: str) -> None:
    """max == 0 (and max < 0, NaN) -> heatmap (-1, -1); the smallest positive max is a peak."""
    base = _peak_map(20, 30)[0, 0]
    maps = np.stack([base - base.max(), base - 2.0, base * np.float32(1e-30), base]).astype(np.float32)
    maps[3, 5, 5] = np.nan
    assert maps[0].max() == 0
    centers = np.full((1, 2), 100.0, np.float32)
    sizes = np.full((1, 2), 64.0, np.float32)
    got = ops.decode_heatmaps(np.ascontiguousarray(maps[None]), centers, sizes, mode)[0]
    minus_one = np.float32(-1.0) * np.float32(1.0) + np.float32(100.0) - np.float32(32.0)
    np.testing.assert_array_equal(got[[0, 1, 3], :2], np.full((3, 2), minus_one))
    assert got[0, 2] == 0
    assert np.isnan(got[3, 2])
    assert got[2, 0] != minus_one  # 1e-30 is positive: a real peak near (20, 30)
    assert abs(got[2, 0] - (20 + 100 - 32)) <= 0.5


@pytest.mark.parametrize("neighbour", [np.inf, -np.inf, np.nan])
def test_quarter_offset_of_non_finite_neighbours_is_numpys_sign(neighbour: float) -> None:
    # inf - inf (or NaN) beside the peak: upstream's 0.25 * np.sign(diff) gives NaN, not 0.
    hm = np.zeros((1, 2, 6, 9), np.float32)
    hm[0, :, 3, 4] = 1.0
    hm[0, 0, 3, 3] = hm[0, 0, 3, 5] = neighbour  # along x
    hm[0, 1, 2, 4] = hm[0, 1, 4, 4] = neighbour  # along y
    centers, sizes = np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)
    got = ops.decode_heatmaps(hm, centers, sizes, mode="quarter", blur_kernel=3)
    with np.errstate(all="ignore"):
        want = ref.decode(hm, centers, sizes, "quarter", 3)
    np.testing.assert_array_equal(got, want)
    if neighbour == -np.inf:  # (+inf or NaN beside it would be the argmax itself)
        assert np.isnan(got[0, 0, 0])
        assert np.isnan(got[0, 1, 1])


def test_ties_take_the_first_maximum_in_row_major_order() -> None:
    hm = np.zeros((1, 3, 16, 16), np.float32)
    hm[0, 0] = 0.5  # flat: (0, 0), a border: no refinement
    hm[0, 1, 7, 9] = hm[0, 1, 7, 3] = hm[0, 1, 9, 1] = 1.0  # first in row-major: (x=3, y=7)
    hm[0, 2, 8, 4] = hm[0, 2, 4, 8] = 1.0  # (x=8, y=4)
    sizes = np.full((1, 2), 16.0, np.float32)
    centers = np.full((1, 2), 8.0, np.float32)
    got = ops.decode_heatmaps(hm, centers, sizes, "none")
    np.testing.assert_array_equal(got[0, :, :2], [[0, 0], [3, 7], [8, 4]])
    np.testing.assert_array_equal(ops.decode_heatmaps(hm, centers, sizes, "quarter")[0, 0, :2], [0, 0])


@pytest.mark.oracle
def test_singular_hessian_means_no_offset() -> None:
    """A positive spike in a negative pit, maximum of the blurred map elsewhere: every log value of
    the stencil clamps to log(1e-10), all derivatives are 0, det == 0 -> the integer peak."""
    hm = np.zeros((1, 1, 64, 64), np.float32)
    hm[0, 0, 40:, :] = 0.5
    hm[0, 0, 10:21, 15:26] = -1.0
    hm[0, 0, 15, 20] = 0.6
    centers, scale = np.array([[32.0, 32.0]], np.float32), np.array([[0.32, 0.32]], np.float32)
    got = ops.decode_heatmaps(hm, centers, scale * 200.0, "dark")
    np.testing.assert_array_equal(got[0, 0], [20, 15, np.float32(0.6)])
    np.testing.assert_array_equal(got, _upstream_keypoints(hm, centers, scale, "dark"))


@pytest.mark.oracle
@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 11, 17])
def test_dark_blur_kernel_sizes(kernel: int) -> None:
    rng = np.random.default_rng(kernel)
    hm = ref.smooth_heatmaps(rng, 2, 28)
    centers, scale, sizes = _boxes(rng, 2)
    got = ops.decode_heatmaps(hm, centers, sizes, "dark", kernel)
    _assert_keypoints_equal(got, _upstream_keypoints(hm, centers, scale, "dark", kernel))
    _assert_keypoints_equal(got, ref.decode(hm, centers, sizes, "dark", kernel))


# ---------------------------------------------------------------------------------------------
# Flat, ill-conditioned maps (random-init networks): the float32 arithmetic must be upstream's
# ---------------------------------------------------------------------------------------------

FLAT_TOL_PX = 1e-3  # heatmap px: the acceptance bound; exact equality is what we measure
LOG = logging.getLogger(__name__)


def _compare_flat(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Scores exact; coordinates (heatmap px, from _unit_boxes) within FLAT_TOL_PX everywhere and
    bit-identical on at least 99% of the keypoints. Logs the measured maximum deviation."""
    np.testing.assert_array_equal(got[..., 2], want[..., 2])
    dev = np.abs(got[..., :2] - want[..., :2])
    LOG.info(
        "%s: max deviation %.3g heatmap px, %d of %d coordinates differ",
        what,
        dev.max(),
        (dev > 0).sum(),
        dev.size,
    )
    assert dev.max() <= FLAT_TOL_PX, (what, dev.max())
    assert (dev == 0).all(axis=-1).mean() >= 0.99, (what, (dev > 0).sum())


def _dark_float64(heatmap: np.ndarray, px: int, py: int) -> np.ndarray:
    """The DARK offset of one (H, W) map computed in float64 throughout: float64 (2,)."""
    import cv2

    blurred = cv2.GaussianBlur(np.pad(heatmap.astype(np.float64), 5), (11, 11), 0)[5:-5, 5:-5]
    lg = np.log(np.maximum(blurred * (heatmap.max() / blurred.max()), 1e-10))
    grad = 0.5 * np.array([lg[py, px + 1] - lg[py, px - 1], lg[py + 1, px] - lg[py - 1, px]])
    dxy = 0.25 * (lg[py + 1, px + 1] - lg[py - 1, px + 1] - lg[py + 1, px - 1] + lg[py - 1, px - 1])
    dxx = 0.25 * (lg[py, px + 2] - 2 * lg[py, px] + lg[py, px - 2])
    dyy = 0.25 * (lg[py + 2, px] - 2 * lg[py, px] + lg[py - 2, px])
    return -np.linalg.solve(np.array([[dxx, dxy], [dxy, dyy]]), grad)


def test_flat_maps_are_ill_conditioned() -> None:
    """The flat test maps are hard: float64 arithmetic instead of upstream's float32 moves most
    keypoints by more than FLAT_TOL_PX (so the exactness tests below can fail), peaky maps do not."""
    rng = np.random.default_rng(0)
    for maps, hard in ((ref.flat_heatmaps(rng, 1, 28)[0], True), (ref.smooth_heatmaps(rng, 1, 28)[0], False)):
        centers, scale = _unit_boxes(1)
        ours = ops.decode_heatmaps(maps[None], centers, scale * 200, "dark")[0, :, :2]
        far = []
        for k, hm in enumerate(maps):
            px, py = (int(v) for v in np.unravel_index(np.argmax(hm), hm.shape)[::-1])
            if 1 < px < 62 and 1 < py < 62 and hm.max() > 0:
                far.append(
                    np.abs(np.array([px, py]) + _dark_float64(hm, px, py) - ours[k]).max() > FLAT_TOL_PX
                )
        assert (np.mean(far) > 0.25) == hard, np.mean(far)


@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 11, 17])
def test_reference_blur_rounds_like_cv2(kernel: int) -> None:
    """The blur model (C++ and ref.blur_like_opencv) against cv2.GaussianBlur itself: 0 differing
    floats, including widths whose padded-width tail (% 8 columns) reaches the kept columns."""
    import cv2

    rng = np.random.default_rng(kernel)
    r = kernel // 2
    for h, w in [(64, 64), (48, 45), (20, 29), (17, 21), (33, 44), (12, 13)]:
        hm = (rng.uniform(0.02, 0.2) + rng.normal(0, 1e-2, (h, w))).astype(np.float32)
        want = cv2.GaussianBlur(np.pad(hm, r), (kernel, kernel), 0)[r:-r, r:-r]
        np.testing.assert_array_equal(ref.blur_like_opencv(hm, kernel), want, err_msg=f"{(h, w)}")


def test_numpy_log_model() -> None:
    """numpy's float32 np.log is its own SIMD kernel (C++ numpy_logf reproduces it), not libm's logf."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 100_000), 10 ** rng.uniform(-10, 0.5, 100_000)]).astype(np.float32)
    x = np.maximum(x, np.float32(1e-10))
    np.testing.assert_array_equal(ref.numpy_log_model(x), np.log(x))


def test_numpy_float32_inverse_is_rounded_double_lu() -> None:
    """np.linalg.inv of float32 Hessians equals the double LU inverse rounded to float32 (what the
    C++ solve computes), also for near-singular ones."""
    rng = np.random.default_rng(2)
    n = 20_000
    a, d = -(10 ** rng.uniform(-6, 0, (2, n)))
    b = rng.choice([-1.0, 1.0], n) * np.sqrt(a * d) * (1 - 10 ** rng.uniform(-7, 0, n))
    hess = np.stack([np.stack([a, b], -1), np.stack([b, d], -1)], -2).astype(np.float32)
    np.testing.assert_array_equal(
        np.linalg.inv(hess), np.linalg.inv(hess.astype(np.float64)).astype(np.float32)
    )


@pytest.mark.parametrize("seed", range(4))
def test_flat_maps_match_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    h, w = [(64, 64), (64, 48), (37, 45), (40, 29)][seed]
    hm = ref.flat_heatmaps(rng, 2, 28, h, w)
    centers, _, sizes = _boxes(rng, 2)
    _assert_keypoints_equal(
        ops.decode_heatmaps(hm, centers, sizes, "dark"), ref.decode(hm, centers, sizes, "dark")
    )


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_flat_maps_match_upstream(seed: int) -> None:
    """Crafted plateaus, with the flip merge: float32 rounding differences here once moved
    keypoints by up to 12 heatmap px."""
    rng = np.random.default_rng(300 + seed)
    hm, fl = ref.flat_heatmaps(rng, 4, 28), ref.flat_heatmaps(rng, 4, 28)
    centers, scale = _unit_boxes(4)
    want = _upstream_keypoints(ref.merge_flip(hm, fl, FLIP_PAIRS, True), centers, scale, "dark")
    got = ops.decode_heatmaps(hm, centers, scale * 200.0, "dark", 11, fl, FLIP_PAIRS, True)
    _compare_flat(got, want, f"plateaus seed {seed}")
    centers, scale, sizes = _boxes(rng, 4)  # and in image pixels of arbitrary boxes: bit-identical
    _assert_keypoints_equal(
        ops.decode_heatmaps(hm, centers, sizes, "dark", 11, fl, FLIP_PAIRS, True),
        _upstream_keypoints(ref.merge_flip(hm, fl, FLIP_PAIRS, True), centers, scale, "dark"),
    )


def _random_init_hrnet_heatmaps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (and those of the mirrored crops) of a randomly initialised HRNetV2 (torch default
    init, BN running stats 0 / 1) on two 256x256 TADNE-grid crops: float32 (2, 28, 64, 64) each."""
    import torch
    from images import tadne_crop

    from afd_trt.models import build_model

    torch.manual_seed(seed)
    model = build_model("hrnetv2")
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.zero_()
            mod.running_var.fill_(1.0)
    crops = np.stack([tadne_crop(512 * i, 512 * seed, 512, 512, (256, 256))[..., ::-1] for i in range(2)])
    crops = np.concatenate([crops, crops[:, :, ::-1]])  # and mirrored
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32) / 255).permute(0, 3, 1, 2)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        out = model(x).float().contiguous().numpy()
    return out[:2].copy(), out[2:].copy()


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_random_init_hrnet_matches_upstream(seed: int) -> None:
    hm, fl = _random_init_hrnet_heatmaps(seed)
    centers, scale = _unit_boxes(2)
    for flipped, pairs in ((None, None), (fl, FLIP_PAIRS)):
        merged = hm if flipped is None else ref.merge_flip(hm, fl, FLIP_PAIRS, True)
        want = _upstream_keypoints(merged, centers, scale, "dark")
        got = ops.decode_heatmaps(hm, centers, scale * 200.0, "dark", 11, flipped, pairs, True)
        _compare_flat(got, want, f"random-init HRNet seed {seed}, flip {flipped is not None}")


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------

HM = np.zeros((2, 5, 8, 8), np.float32)
C2 = np.zeros((2, 2), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heatmaps": HM.astype(np.float64)}, "heatmaps must have dtype float32"),
        ({"heatmaps": HM[0]}, "heatmaps must be 4-D"),
        ({"heatmaps": HM[..., ::2]}, "C-contiguous"),
        ({"heatmaps": np.zeros((2, 5, 0, 8), np.float32)}, "K, H, W >= 1"),
        ({"centers": C2[:1]}, r"centers must have shape \(2, 2\)"),
        ({"box_sizes": np.zeros((2, 3), np.float32)}, r"box_sizes must have shape \(2, 2\)"),
        ({"box_sizes": C2.astype(np.float64)}, "box_sizes must have dtype float32"),
        ({"mode": "unbiased"}, "mode must be 'dark', 'quarter' or 'none', got 'unbiased'"),
        ({"blur_kernel": 4}, "blur_kernel must be odd and >= 3"),
        ({"blur_kernel": 1}, "blur_kernel must be odd and >= 3"),
        ({"blur_kernel": 11.9}, "blur_kernel must be an integer, got 11.9"),  # was cut to 11
        ({"threads": 2**40}, "threads must fit in 32 bits, got 1099511627776"),
        ({"flipped": HM[:1]}, "flipped must have the shape of heatmaps"),
        ({"flipped": HM, "flip_pairs": [(0, 5)]}, r"flip_pairs\[0\] = \(0, 5\) is out of range for K = 5"),
        ({"flipped": HM, "flip_pairs": [(1, 2), (-1, 0)]}, r"flip_pairs\[1\] = \(-1, 0\) is out of range"),
        ({"flipped": HM, "flip_pairs": [(0.0, 1.0)]}, "flip_pairs must hold integers"),
        ({"flip_pairs": [(0, 1)]}, "flip_pairs was given without flipped"),
    ],
)
def test_decode_input_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"heatmaps": HM, "centers": C2, "box_sizes": C2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.decode_heatmaps(**args)  # type: ignore[arg-type]


def test_merge_flip_input_errors() -> None:
    with pytest.raises(ValueError, match="flipped must have the shape of heatmaps"):
        ops.merge_flip(HM, np.ascontiguousarray(HM[:, :4]), [])
    with pytest.raises(ValueError, match="flipped must have dtype float32"):
        ops.merge_flip(HM, HM.astype(np.float16), [])
    with pytest.raises(ValueError, match=r"flip_pairs\[0\] = \(2, 9\) is out of range"):
        ops.merge_flip(HM, HM, [(2, 9)])
    with pytest.raises(ValueError, match=r"flip_pairs must have shape \(P, 2\)"):
        ops.merge_flip(HM, HM, [(1, 2, 3)])
    with pytest.raises(ValueError, match=r"flip_pairs must have shape \(P, 2\), got \(0, 3\)"):
        ops.merge_flip(HM, HM, np.zeros((0, 3), np.int64))
