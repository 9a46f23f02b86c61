"""benchmarks/memory.py: the RSS growth arithmetic, and a short real run through the stream."""

from __future__ import annotations

import json
import mmap
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory
from paths import TADNE_GRID

MIB = 1024 * 1024


@pytest.mark.parametrize("mib_per_1000", [0.0, 2.5, -1.0, 40.0])
def test_growth_is_the_least_squares_slope(mib_per_1000: float) -> None:
    images = list(range(0, 5001, 250))
    # a slope plus a zero-mean wobble, which least squares ignores
    rss = [
        int(300 * MIB + n * mib_per_1000 * MIB / 1000 + (MIB if i % 2 else -MIB))
        for i, n in enumerate(images)
    ]
    assert memory.growth_per_1000(images, rss) == pytest.approx(mib_per_1000, abs=0.05)
    with pytest.raises(ValueError, match="two image counts"):
        memory.growth_per_1000(images[:1], rss[:1])


def test_summary_starts_after_the_warmup() -> None:
    samples = [(0, 100 * MIB), (250, 400 * MIB), (500, 300 * MIB), (750, 300 * MIB), (1000, 301 * MIB)]
    s = memory.summarize(samples, warmup=500, every=250)
    assert s["rss_after_warmup_images"] == 500
    assert s["rss_after_warmup_mib"] == 300
    assert s["rss_peak_mib"] == 301  # the warm-up's 400 MiB does not count
    assert s["rss_last_mib"] == 301
    assert s["rss_growth_mib_per_1000_images"] == pytest.approx(2.0, rel=1e-6)
    assert s["rss_growth_inconclusive"] is None
    assert len(s["rss_samples"]) == 5
    assert memory.summarize(samples, warmup=500, every=250, what="gpu")["gpu_last_mib"] == 301
    # a warm-up between samples: the figures start at the first sample after it
    s = memory.summarize(samples, warmup=300, every=250)
    assert (s["rss_after_warmup_images"], s["rss_after_warmup_mib"]) == (500, 300)


def test_no_sample_after_the_warmup_reports_nothing_from_the_warmup() -> None:
    """The warm-up's samples (the one at 0 images included) never stand in for later ones."""
    samples = [(0, 100 * MIB), (250, 400 * MIB)]
    s = memory.summarize(samples, warmup=500, every=250)
    for key in (
        "after_warmup_images",
        "after_warmup_mib",
        "peak_mib",
        "last_mib",
        "growth_mib_per_1000_images",
    ):
        assert s[f"rss_{key}"] is None, key
    assert "no sample at or after the 500-image warm-up" in s["rss_growth_inconclusive"]
    assert len(s["rss_samples"]) == 2
    assert json.loads(json.dumps(s))["rss_growth_mib_per_1000_images"] is None  # null in the JSON


# (images done, MiB) samples, --warmup, --every -> the growth (MiB per 1,000 images, None when
# inconclusive), the exit status at --max-growth 1.0, and what the inconclusive message says
GROWTH_CASES = {
    "flat": ([(0, 50), (500, 300), (750, 300), (1000, 300)], 500, 250, 0.0, 0, None),
    "growing": ([(0, 50), (500, 300), (750, 305), (1000, 310)], 500, 250, 20.0, 1, None),
    "two flat": ([(0, 50), (1000, 300), (2000, 300)], 500, 1000, 0.0, 0, None),
    # --num-images 501 --warmup 500 --every 1000: only the last sample is after the warm-up
    "one after the warm-up": (
        [(0, 50), (501, 300)], 500, 1000, None, 3, "1 sample at or after the 500-image warm-up (at 501"
    ),
    # --max-seconds stopped the stream inside the warm-up
    "none after the warm-up": (
        [(0, 50), (250, 300)], 500, 250, None, 3, "no sample at or after the 500-image warm-up"
    ),
    # --num-images 600 --warmup 500 --every 250: the two samples are 100 images apart
    "spanning less than --every": (
        [(0, 50), (250, 200), (500, 300), (600, 400)], 500, 250, None, 3,
        "2 samples at or after the 500-image warm-up, spanning 100 images (500 to 600)",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("samples", "warmup", "every", "growth", "status", "why"),
    list(GROWTH_CASES.values()),
    ids=list(GROWTH_CASES),
)
def test_growth_needs_two_samples_after_the_warmup_spanning_every(
    samples: list[tuple[int, int]],
    warmup: int,
    every: int,
    growth: float | None,
    status: int,
    why: str | None,
) -> None:
    in_bytes = [(n, mib * MIB) for n, mib in samples]
    got, reason = memory.fit_growth(in_bytes, warmup, every)
    result = {"failed": 0, **memory.summarize(in_bytes, warmup, every)}
    assert memory.verdict(result, 1.0) == status
    if growth is None:
        assert got is None
        assert result["rss_growth_mib_per_1000_images"] is None
        assert why is not None
        assert reason is not None
        assert why in reason
        assert "stream at least" in reason
        assert "--every" in reason
        assert reason == result["rss_growth_inconclusive"]
        assert memory.verdict({**result, "failed": 1}, 1.0) == 1  # a failed image still fails
    else:
        assert got == pytest.approx(growth, abs=1e-9)
        assert reason is None


def test_inconclusive_names_the_images_needed() -> None:
    """--warmup 500 --every 1000: the first sample after the warm-up is at 1,000 images and the
    next at 2,000."""
    _, reason = memory.fit_growth([(0, 50 * MIB), (501, 300 * MIB)], 500, 1000)
    assert reason is not None
    assert "stream at least 2000 images" in reason


@pytest.mark.parametrize(
    ("rss", "gpu", "failed", "status"),
    [
        (0.5, None, 0, 0),
        (1.5, None, 0, 1),
        (0.0, None, 1, 1),
        (-3.0, None, 0, 0),
        (0.5, 0.9, 0, 0),
        (0.5, 1.2, 0, 1),
        (None, None, 0, 3),
        (None, None, 1, 1),
    ],
)
def test_verdict(rss: float | None, gpu: float | None, failed: int, status: int) -> None:
    result: dict[str, float | int | None] = {"rss_growth_mib_per_1000_images": rss, "failed": failed}
    if gpu is not None:
        result["gpu_growth_mib_per_1000_images"] = gpu
    assert memory.verdict(result, 1.0) == status


def test_rss_is_this_process() -> None:
    """Pages of a fresh mapping count once touched, and stop counting once unmapped (a fresh
    mmap: freed heap memory may already be resident in a long-lived process)."""
    before = memory.rss_bytes()
    block = mmap.mmap(-1, 64 * MIB)
    try:
        for offset in range(0, 64 * MIB, mmap.PAGESIZE):
            block[offset] = 1
        touched = memory.rss_bytes()
    finally:
        block.close()
    assert touched - before >= 60 * MIB
    assert touched - memory.rss_bytes() >= 60 * MIB


def test_a_short_run(seeded_weights: Callable[[int], dict[str, dict[str, Path]]], tmp_path: Path) -> None:
    """8 images through the stream: a sample every 4, every image answered, at most one face
    each (--max-faces reaches the detector's config)."""
    weights = seeded_weights(0)["yolov3"]["pth"].parent
    out = tmp_path / "a memory's.json"  # the recorded command quotes it
    argv = [
        "--weights", str(weights), "--num-images", "8", "--distinct", "5", "--size", "200x160",
        "--grid", str(TADNE_GRID), "--img-scale", "96", "--max-faces", "1", "--flip", "off",
        "--every", "4", "--warmup", "4", "--max-growth", "1e9", "--json", str(out),
    ]  # fmt: skip
    rc = memory.main(argv)
    assert rc == 0
    r = json.loads(out.read_text())
    assert shlex.split(r["command"]) == ["python", "benchmarks/memory.py", *argv]
    assert r["rss_after_warmup_images"] == 4
    assert r["images"] == r["images_asked"] == 8
    assert r["distinct_files"] == 5
    assert r["failed"] == 0
    assert 0 < r["faces"] <= 8
    assert [n for n, _ in r["rss_samples"]] == [0, 4, 8]
    assert all(mib > 10 for _, mib in r["rss_samples"])
    assert "gpu_samples" not in r  # on the CPU
    assert r["rss_peak_mib"] >= r["rss_last_mib"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-images", "100", "--warmup", "100"], "--warmup (100) must be under --num-images (100)"),
        (["--max-seconds", "0"], "expected a number > 0, got '0'"),
        (["--max-growth", "nan"], "expected a finite number, got 'nan'"),
        (["--every", "0"], "expected an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        memory.parse_args(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_max_seconds_ends_the_stream_early(
    seeded_weights: Callable[[int], dict[str, dict[str, Path]]], tmp_path: Path
) -> None:
    """Past --max-seconds the run stops at the next sample and reports the images it did."""
    weights = seeded_weights(0)["yolov3"]["pth"].parent
    out = tmp_path / "memory.json"
    rc = memory.main(
        [
            "--weights", str(weights), "--num-images", "1000", "--distinct", "2", "--size", "96x64",
            "--grid", str(TADNE_GRID), "--img-scale", "64", "--max-faces", "1", "--flip", "off",
            "--every", "2", "--warmup", "0", "--max-seconds", "1e-9", "--max-growth", "1e9",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert (r["images"], r["images_asked"]) == (2, 1000)
    assert [n for n, _ in r["rss_samples"]] == [0, 2]
