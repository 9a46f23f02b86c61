"""``afd-trt bench``: the report's schema and content on a tiny real run (against the upstream
oracle), size parsing, and the FLOP counts checked against a hand count of the convolutions."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from paths import TADNE_GRID

from afd_trt import bench, host_memory
from afd_trt.cli import main
from afd_trt.models import build_model
from afd_trt.timing import StageTimes

Weights = dict[str, dict[str, Path]]


def test_parse_sizes() -> None:
    assert bench.parse_sizes("1280x720") == [(1280, 720)]
    assert bench.parse_sizes("640X360,512x512") == [(640, 360), (512, 512)]
    assert bench.parse_sizes("realistic") == [(1280, 720), (1920, 1080), (512, 512), (3072, 3072)]
    with pytest.raises(ValueError, match="'12x'"):
        bench.parse_sizes("12x")
    # 8 px: the synthetic scenes' least side (smaller sizes ended in a traceback without a grid)
    for bad in ("0x5", "7x8", "8x7", "16385x8"):
        with pytest.raises(ValueError, match=f"from 8 to 16384 px, got '{bad}'"):
            bench.parse_sizes(bad)
    assert bench.parse_sizes("16384x8") == [(16384, 8)]


def _conv_linear_gflop(name: str, shape: tuple[int, ...]) -> float:
    """2 x multiply-adds of every Conv2d and Linear, counted with forward hooks on a real run."""
    model = build_model(name).eval()
    total = 0

    def hook(m: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, torch.nn.Linear):
            total += 2 * out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(shape))
    return total / 1e9


@pytest.mark.parametrize(("name", "shape"), [("hrnetv2", (1, 3, 256, 256)), ("yolov3", (1, 3, 160, 224))])
def test_network_gflop_matches_a_hand_count(name: str, shape: tuple[int, ...]) -> None:
    counted = bench.network_gflop(name, shape)
    by_hand = _conv_linear_gflop(name, shape)
    # FlopCounterMode also counts a few non-conv ops (upsampling, matmuls are convs here).
    assert by_hand > 0
    assert counted == pytest.approx(by_hand, rel=0.02)


def test_yolov3_gflop_at_1280x720() -> None:
    # The floor: YOLOv3 on a 1280x720 image (input 608x352) is about 80 GFLOP.
    assert bench.network_gflop("yolov3", (1, 3, 352, 608)) == pytest.approx(80.7, rel=0.01)


@pytest.mark.parametrize(
    "pipeline",
    [[], ["--device-pipeline", "on", "--jpeg-decoder", "torchvision"]],
    ids=["host", "device-pipeline"],
)
def test_bench_against_upstream(
    seeded_weights: Callable[[int], Weights], tmp_path: Path, pipeline: list[str]
) -> None:
    """The bench's JPEGs through the host path, and through the GPU's image path (torchvision
    decoding, torch resize/crops/flip merge) run here on the CPU: identical to upstream both ways."""
    w = seeded_weights(0)
    wdir = w["yolov3"]["pth"].parent
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench", "--weights", str(wdir), "--num-images", "2", "--size", "320x192,256x256",
            "--grid", str(TADNE_GRID), "--device", "cpu", "--compare-upstream", "--batch-size", "2",
            "--warmup", "0", "--quiet", "--json", str(out), *pipeline,
        ]
    )  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["images"] == 2
    assert r["warmup_images"] == 0
    assert r["size"] == "320x192,256x256"  # in the order of --size
    assert r["images_source"] == f"windows of {TADNE_GRID.resolve()} (seed 0), JPEG quality 95"
    assert r["weights"] == str(wdir.resolve())
    assert r["command"].startswith(f"afd-trt bench --weights {wdir} --num-images 2 ")
    assert r["faces"] > 0
    assert r["failed"] == []
    assert r["outputs_identical"] is True
    assert r["outputs_agree"] is True
    assert r["speedup"] > 0
    assert r["speedup_stream"] > 0
    thr = r["throughput"]
    assert thr["batch_size"] == 2
    assert set(thr["stages"]) == {
        "decode", "preprocess", "detector", "nms", "warp", "landmarks", "heatmap_decode",
    }  # fmt: skip
    assert thr["faces_per_s"] == pytest.approx(r["faces"] / thr["seconds"])
    # one batch of 2: read of its first image -> its last result, within the pass's wall time
    assert 0 < thr["batch_latency"]["p50_ms"] <= thr["batch_interval"]["p50_ms"] <= 1000 * thr["seconds"]
    assert thr["stages_pass"] == "same"  # timing a stage on the CPU synchronises nothing
    # Landmark GFLOP: faces x 2 (flip) x one crop's.
    one = bench.network_gflop("hrnetv2", (1, 3, 256, 256))
    assert thr["stages"]["landmarks"]["gflop"] == pytest.approx(r["faces"] * 2 * one)
    assert thr["stages"]["detector"]["gflop"] > 0
    assert r["latency"]["p50_ms"] > 0
    assert r["latency"]["images"] == r["upstream"]["images"] == 2
    assert r["upstream"]["p99_ms"] >= r["upstream"]["p50_ms"]
    assert r["machine"]["torch"] == torch.__version__
    assert r["machine"]["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    assert r["machine"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert r["machine"]["malloc"] == host_memory.malloc_setting()  # applied by the first Detector
    assert r["precision"] == r["requested_precision"] == "fp32"
    assert r["backend"] == "torch"
    assert r["engines"] == {"hrnetv2": "torch", "yolov3": "torch"}
    assert r["device_pipeline"] is bool(pipeline)
    assert r["jpeg_decoder"] == ("torchvision" if pipeline else "opencv")
    assert r["cuda_graphs"] is False


def test_upstream_runs_in_a_process_of_its_own_and_a_failure_is_named(
    seeded_weights: Callable[[int], Weights], tmp_path: Path
) -> None:
    """The bench's upstream child: upstream's own answer for an image, from another process;
    an unreadable image is that image's error and the child goes on; a dead child is an error
    for every later image; a checkpoint upstream cannot read stops it at the start, with
    upstream's reason."""
    afd = pytest.importorskip("anime_face_detector")
    w = seeded_weights(0)
    lm, det = w["hrnetv2"]["pth"], w["yolov3"]["pth"]
    image = tmp_path / "window.jpg"
    window = cv2.imread(str(TADNE_GRID), cv2.IMREAD_COLOR)[:360, :640]
    assert cv2.imwrite(str(image), window)
    ref = bench.UpstreamProcess(lm, "yolov3", det, "cpu", True)
    try:
        assert ref._proc.pid != os.getpid()
        assert ref._proc.is_alive()
        faces, took = ref(str(image))
        with pytest.raises(bench.UpstreamError, match=r"^\w+(Error|Exception): "):
            ref(str(tmp_path / "missing.jpg"))
        again, _ = ref(str(image))  # still serving after a failure
        # a name that is not UTF-8: upstream's cv2.imread would crash the child, so it is not sent
        odd = tmp_path / os.fsdecode(b"odd\xff.jpg")
        odd.write_bytes(image.read_bytes())
        with pytest.raises(bench.UpstreamError, match="not UTF-8"):
            ref(str(odd))
        assert ref._proc.is_alive()
        np.testing.assert_array_equal(ref(str(image))[0][0]["bbox"], again[0]["bbox"])
        ref._proc.kill()  # killed (out of memory, say): each later call says so, none hangs
        ref._proc.join()
        for _ in range(2):
            with pytest.raises(bench.UpstreamError, match=r"upstream's process (ended|is gone)"):
                ref(str(image))
    finally:
        ref.close()
    assert not ref._proc.is_alive()
    assert took > 0
    expected = afd.LandmarkDetector(lm, "yolov3", det, device="cpu")(str(image))
    assert len(faces) == len(expected) == len(again) > 0
    for got, exp, rerun in zip(faces, expected, again, strict=True):
        np.testing.assert_array_equal(got["bbox"], exp["bbox"])
        np.testing.assert_array_equal(got["keypoints"], exp["keypoints"])
        np.testing.assert_array_equal(rerun["keypoints"], exp["keypoints"])
    with pytest.raises(bench.UpstreamError, match=r"upstream could not start: .*nowhere\.pth"):
        bench.UpstreamProcess(lm, "yolov3", tmp_path / "nowhere.pth", "cpu", True)


def test_bench_reports_a_bad_image_and_times_the_rest(
    seeded_weights: Callable[[int], Weights], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory with an undecodable JPEG (first, so it is also the warm-up's pick): the run
    goes on over the readable images, against upstream too, names the bad file in the table and
    the JSON, counts only the images that ran, and exits 1."""
    import cv2

    w = seeded_weights(0)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    grid = cv2.imread(str(TADNE_GRID))
    for i, (y, x) in enumerate([(0, 0), (700, 900)]):
        assert cv2.imwrite(str(images / f"b_{i}.jpg"), grid[y : y + 192, x : x + 320])
    # a name that is not UTF-8: ours reads it, upstream's child is not given it
    odd = images / os.fsdecode(b"c_odd\xff.jpg")
    odd.write_bytes((images / "b_0.jpg").read_bytes())
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench", "--weights", str(w["yolov3"]["pth"].parent), "--images", str(images),
            "--device", "cpu", "--compare-upstream", "--warmup", "1", "--quiet", "--json", str(out),
        ]
    )  # fmt: skip
    assert rc == 1
    r = json.loads(out.read_text())
    assert r["images"] == 3
    assert r["warmup_images"] == 1  # a directory's: the first --warmup that run
    assert len(r["failed"]) == 1
    assert "a_bad.jpg" in r["failed"][0]
    assert "could not decode" in r["failed"][0]
    (up_failed,) = r["upstream_failed"]
    assert "not UTF-8" in up_failed
    assert r["outputs_identical"] is True
    assert r["latency"]["images_per_s"] > 0
    assert r["latency"]["images"] == r["upstream"]["images"] == 2  # like for like: both ran them
    assert r["speedup_stream"] is None  # the stream ran an image upstream did not
    assert r["throughput"]["images_per_s"] == pytest.approx(3 / r["throughput"]["seconds"])
    table = capsys.readouterr().out
    assert "failed, left out: 1 image(s)" in table
    assert "a_bad.jpg" in table


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--size", "0x5"], "argument --size: each side must be from 8 to 16384 px, got '0x5'"),
        (["--size", "4x4"], "argument --size: each side must be from 8 to 16384 px, got '4x4'"),
        # a traceback (numpy asked for 14.6 TiB; OpenCV could not write a 70000 px JPEG)
        (["--size", "1000000x1000000"], "argument --size: each side must be from 8 to 16384 px"),
        (["--size", "70000x64"], "argument --size: each side must be from 8 to 16384 px"),
        (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4503599627370496, got -1"),
        (["--seed", str(2**53 + 1)], "argument --seed: expected an integer from 0 to 4503599627370496"),
        (["--size", "12x"], "argument --size: "),
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
        (["--num-images", "0"], "argument --num-images: expected an integer >= 1, got 0"),
        (["--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
        (["--warmup", "x"], "argument --warmup: expected an integer >= 0, got 'x'"),
        (["--threads", "-2"], "argument --threads: expected an integer >= 0, got -2"),
    ],
)
def test_bench_refuses_bad_arguments_before_running(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quiet", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_refuses_a_missing_image_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "r.json"
    assert main(["bench", "--images", str(tmp_path / "nope"), "--quiet", "--json", str(out)]) == 2
    assert f"--images {tmp_path / 'nope'} is not a directory" in caplog.text
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert main(["bench", "--images", str(tmp_path / "empty"), "--quiet", "--json", str(out)]) == 2
    assert f"--images {tmp_path / 'empty'} holds no images (.jpg .jpeg .png" in caplog.text
    assert not out.exists()
    assert not out.exists()


def test_bench_refuses_a_grid_or_json_path_it_cannot_use(
    seeded_weights: Callable[[int], Weights], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A --grid given by name that is missing or not an image is refused (it was replaced by
    synthetic scenes without a word, and the report named the file); a --json that cannot be
    written is refused before the run (its figures were lost after it, with a traceback)."""
    wdir = seeded_weights(0)["yolov3"]["pth"].parent
    argv = ["bench", "--weights", str(wdir), "--num-images", "1", "--size", "64x64", "--quiet"]
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    for grid in (notes, tmp_path / "missing.jpg"):
        assert main([*argv, "--grid", str(grid), "--json", str(tmp_path / "r.json")]) == 2
        assert f"--grid {grid}: no such file, or not an image OpenCV can read" in caplog.text
    assert not (tmp_path / "r.json").exists()
    for out, why in ((tmp_path / "nodir" / "r.json", "does not exist"), (tmp_path, "is a directory")):
        assert main([*argv, "--json", str(out)]) == 2
        assert f"--json {out}: " in caplog.text
        assert why in caplog.text


def test_warm_up_covers_every_generated_size(
    seeded_weights: Callable[[int], Weights], tmp_path: Path
) -> None:
    """Each generated size meets its first-shape work (kernel choice; on CUDA graph capture) in
    the warm-up, not in a timed pass: one image of each --size is warmed, even with --warmup 1."""
    wdir = seeded_weights(0)["yolov3"]["pth"].parent
    out = tmp_path / "r.json"
    argv = ["bench", "--weights", str(wdir), "--num-images", "3", "--size", "64x64,96x64", "--quiet"]
    argv += ["--grid", str(TADNE_GRID), "--device", "cpu", "--skip-latency", "--json", str(out)]
    assert main([*argv, "--warmup", "1"]) == 0
    assert json.loads(out.read_text())["warmup_images"] == 2
    assert main([*argv, "--warmup", "3"]) == 0
    assert json.loads(out.read_text())["warmup_images"] == 3
    assert main([*argv, "--warmup", "0"]) == 0
    assert json.loads(out.read_text())["warmup_images"] == 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_peak_rss_can_start_over_after_the_images_are_made() -> None:
    """The bench's peak RSS counted the making of its images (a large synthetic one holds GiBs
    of float64 noise): it now starts over once they are written."""
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    with_block = bench.peak_rss_mib()
    del block
    assert bench.reset_peak_rss()
    after = bench.peak_rss_mib()
    assert after < with_block - 300
    # above the mmap threshold (256 MiB once a Detector kept freed memory): fresh pages, not
    # ones the heap already holds
    again = np.ones(400 * 2**20 // 8)
    assert bench.peak_rss_mib() >= after + 350
    del again


def test_stage_times_synchronise_only_when_enabled_and_asked() -> None:
    """A device's stage times synchronise it around each timed stage (so the bench takes them
    in a pass of their own on a GPU); disabled, or for host-only stages, nothing is called."""
    calls: list[str] = []
    times = StageTimes(lambda: calls.append("sync"))
    assert times.synchronizes
    assert not StageTimes().synchronizes
    with times.stage("detector"):
        calls.append("work")
    assert calls == ["work"]
    assert times.seconds() == {}
    times.enabled = True
    with times.stage("detector"):
        calls.append("work")
    with times.stage("decode", sync=False):
        calls.append("decode")
    assert calls == ["work", "sync", "work", "sync", "decode"]
    assert set(times.seconds()) == {"detector", "decode"}


def _face(box: list[float], kx: float) -> dict[str, np.ndarray]:
    kp = np.zeros((28, 3), np.float32)
    kp[:, 0] = kx
    kp[:, 2] = 0.5
    return {"bbox": np.array(box, np.float32), "keypoints": kp}


def test_compare_faces_pairs_by_order_then_by_iou() -> None:
    a = _face([0, 0, 10, 10, 0.9], 1.0)
    b = _face([50, 50, 70, 70, 0.8], 2.0)
    same = bench.compare_faces([a, b], [a, b])
    assert same["pairs"] == 2
    assert same["unmatched_ours"] == same["unmatched_ref"] == 0
    assert same["box_px"] == same["keypoint_px"] == 0.0
    # Reordered (near-tied scores under reduced precision) and slightly moved.
    b2 = _face([50.5, 50, 70, 70, 0.91], 2.25)
    moved = bench.compare_faces([b2, a], [a, b])
    assert moved["pairs"] == 2
    assert moved["box_px"] == pytest.approx(0.5)
    assert moved["keypoint_px"] == pytest.approx(0.25)
    assert moved["box_score"] == pytest.approx(0.11)
    # A face only one side found.
    extra = bench.compare_faces([a, b, _face([200, 200, 220, 220, 0.1], 0.0)], [a, b])
    assert (extra["pairs"], extra["unmatched_ours"], extra["unmatched_ref"]) == (2, 1, 0)
    assert bench.compare_faces([], [a])["unmatched_ref"] == 1


def test_compare_faces_never_hides_a_nan() -> None:
    """``max(0.0, nan)`` is 0.0: a NaN on one side must count as infinitely far off (so the
    outputs neither agree nor are identical), a NaN on both sides as the same value."""
    a = _face([0, 0, 10, 10, 0.9], 1.0)
    nan_kp = _face([0, 0, 10, 10, 0.9], 1.0)
    nan_kp["keypoints"][3, 0] = np.nan
    one_side = bench.compare_faces([nan_kp], [a])
    assert one_side["keypoint_px"] == np.inf
    assert np.isinf(one_side["keypoint_dist"]).sum() == 1
    assert bench.compare_faces([a], [nan_kp])["keypoint_px"] == np.inf
    assert bench.compare_faces([nan_kp], [nan_kp])["keypoint_px"] == 0.0
    nan_score = _face([0, 0, 10, 10, np.nan], 1.0)
    assert bench.compare_faces([nan_score], [a])["box_score"] == np.inf
    inf_box = _face([0, 0, np.inf, 10, 0.9], 1.0)
    same_inf = bench.compare_faces([inf_box], [inf_box])
    assert (same_inf["pairs"], same_inf["box_px"]) == (1, 0.0)


def test_compare_faces_pairs_the_best_scored_reference_face_first() -> None:
    """Out of order, the reference's faces are paired by descending score: the better-scored
    of two reference faces overlapping one of ours gets it."""
    ours = [_face([0, 0, 10, 10, 0.5], 0.0), _face([100, 100, 110, 110, 0.4], 0.0)]
    low = _face([0, 0, 10, 9, 0.2], 0.0)  # IoU 0.9 with ours[0]
    high = _face([0, 0, 10, 8, 0.8], 0.0)  # IoU 0.8 with ours[0]
    cmp = bench.compare_faces(ours, [low, high])
    assert (cmp["pairs"], cmp["unmatched_ours"], cmp["unmatched_ref"]) == (1, 1, 1)
    assert cmp["box_px"] == pytest.approx(2.0)  # paired with ``high``, not ``low``


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cuda-graphs"], "cuda_graphs=True needs a CUDA device"),
        (["--precision", "fp16"], "precision 'fp16' runs on CUDA devices only"),
    ],
)
def test_bench_refuses_a_configuration_the_device_cannot_run(
    seeded_weights: Callable[[int], Weights],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flags: list[str],
    message: str,
) -> None:
    out = tmp_path / "r.json"
    wdir = seeded_weights(0)["yolov3"]["pth"].parent
    argv = [
        "bench",
        "--weights",
        str(wdir),
        "--num-images",
        "1",
        "--size",
        "64x64",
        "--grid",
        str(TADNE_GRID),
    ]
    rc = main([*argv, "--device", "cpu", "--quiet", "--json", str(out), *flags])
    assert rc == 2
    assert not out.exists()
    assert message in caplog.text
    assert "cannot load the models" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_refuses_a_device_the_machine_lacks(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["bench", "--device", "cuda", "--quiet"]) == 2
    assert "--device cuda: device 'cuda': CUDA is not available on this machine" in caplog.text
    assert main(["bench", "--device", "bogus", "--quiet"]) == 2
    assert "--device bogus:" in caplog.text


def test_cli_commands_refuse_a_file_where_a_directory_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``make-test-weights`` and ``build`` given a file for their directory: exit 2 with the path
    named, not a traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["make-test-weights", str(a_file)]) == 2
    assert f"make-test-weights: cannot write into {a_file}" in caplog.text
    assert (
        main(["build", "--cache-dir", str(a_file), "--models", "hrnetv2", "--backends", "torchscript"]) == 2
    )
    assert f"--cache-dir {a_file} is not a directory" in caplog.text
    assert a_file.read_text() == "x"


def test_cpu_model_reads_proc_cpuinfo_and_falls_back() -> None:
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu avx2\n"
    assert bench.cpu_model(text) == "AMD EPYC 9B14"
    assert bench.cpu_model("processor\t: 0\nmodel name\t:\n") == (platform.processor() or platform.machine())
    assert bench.cpu_model()  # this machine's, whatever it is
