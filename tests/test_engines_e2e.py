"""``Detector(backend=b)`` end to end against ``Detector(backend="torch")`` on seeded weights.

Both face detectors, flip test on and off, three image sizes: TorchScript (fp32 on the CPU) gives
eager's results bit for bit; ONNX Runtime and OpenVINO the same number of faces, boxes within
1e-3 px (OpenVINO 3e-3 px), box scores within 1e-4, keypoints within 0.05 px and keypoint scores
within 1e-4.
To keep this affordable on a small CPU the detectors' configs are shrunk (smaller input scale, a
few faces per image, fewer RPN proposals); the networks and the pipeline are the real ones.

The few faces also keep the keypoint comparison meaningful on seeded weights. With the full
configs (seed 0, YOLOv3, 7-13 faces per image) ONNX Runtime's boxes stay within 2e-4 px on these
images (1.4e-3 px on a 1280x720 one), but 9-173 of 600-900 keypoints move past 0.05 px: a
2e-4 px box difference moves 0.2% of the uint8 crop pixels by one level (OpenCV's warp rounds
sample positions to 1/32 px), the random heatmaps change by up to 0.016, and in 1% of their
channels the two highest maxima more than 3 px apart are within 4e-4 of each other, so the argmax
jumps. Trained heatmaps have one Gaussian peak; see docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from images import synthetic
from keypoints import assert_keypoints_close

from afd_trt.config import FasterRCNNConfig, YOLOv3Config, load_config
from afd_trt.detector import Detector

BACKENDS = ("torchscript", "onnxruntime", "openvino")
# three aspect ratios: network inputs 256x320, 320x192 and 320x320 (yolov3), none the build shape
IMAGES = [synthetic(240, 320, 0), synthetic(300, 180, 1), synthetic(128, 128, 2)]
KPT_SCORE = 1e-4
# Boxes: the contract's 1e-3 px for ONNX Runtime. OpenVINO's fp32 kernels differ by CPU: on an
# AVX2-only EPYC its Faster R-CNN boxes were 1.5e-3 px from eager's (ONNX Runtime's 5.4e-4 px; the
# seeded box head's large deltas go through exp, so ~1e-5 relative in its outputs is ~1e-3 px).
BOX_PX = {"torchscript": 0.0, "onnxruntime": 1e-3, "openvino": 3e-3}
# Box scores: each backend's raw-output tolerance of test_engines.py (OpenVINO's fp32 convolutions
# are measured at ~1.3e-5 relative on YOLOv3, which moves a 0.44 score by 1.4e-5).
BOX_SCORE = {"torchscript": 0.0, "onnxruntime": 1e-4, "openvino": 1e-4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: small shared machines get much slower when oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(seeded_weights: Callable[[int], dict[str, dict[str, Path]]]) -> dict[str, Path]:
    """afd_trt's seeded, calibrated test checkpoints (seed 0)."""
    return {name: files["pth"] for name, files in seeded_weights(0).items()}


def small_config(name: str) -> YOLOv3Config | FasterRCNNConfig:
    cfg = load_config(name)
    if isinstance(cfg, YOLOv3Config):
        return dataclasses.replace(
            cfg, input=dataclasses.replace(cfg.input, img_scale=(320, 320)), max_per_img=2
        )
    assert isinstance(cfg, FasterRCNNConfig)
    return dataclasses.replace(
        cfg,
        input=dataclasses.replace(cfg.input, img_scale=(320, 256)),
        rpn_nms_pre=200,
        rpn_max_per_img=100,
        max_per_img=2,
    )


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def make_detector(name: str, backend: str, checkpoints: dict[str, Path], engine_cache: Path) -> Detector:
    return Detector(
        face_detector=name,
        face_detector_checkpoint=checkpoints[name],
        landmark_checkpoint=checkpoints["hrnetv2"],
        device="cpu",
        backend=backend,
        face_detector_config=small_config(name),
        download=False,
        engine_cache=engine_cache,
    )


@pytest.fixture(scope="module")
def detectors(checkpoints: dict[str, Path], engine_cache: Path) -> dict[tuple[str, str], Detector]:
    class Lazy(dict[tuple[str, str], Detector]):
        def __missing__(self, key: tuple[str, str]) -> Detector:
            self[key] = make_detector(key[0], key[1], checkpoints, engine_cache)
            return self[key]

    return Lazy()


Faces = list[list[dict[str, np.ndarray]]]


def run(det: Detector, flip: bool) -> Faces:
    det.flip_test = flip
    return [det(img) for img in IMAGES]


@pytest.fixture(scope="module")
def eager(detectors: dict[tuple[str, str], Detector]) -> dict[tuple[str, bool], Faces]:
    """The eager backend's results per (detector, flip), computed once."""

    class Lazy(dict[tuple[str, bool], Faces]):
        def __missing__(self, key: tuple[str, bool]) -> Faces:
            self[key] = run(detectors[key[0], "torch"], key[1])
            return self[key]

    return Lazy()


CASES = [
    *(
        pytest.param("yolov3", b, flip, id=f"yolov3-{b}-{'flip' if flip else 'noflip'}")
        for b in BACKENDS
        for flip in (True, False)
    ),
    # Faster R-CNN is heavy on a CPU: one flip setting per backend
    pytest.param(
        "faster-rcnn", "torchscript", True, id="faster-rcnn-torchscript-flip", marks=pytest.mark.slow
    ),
    pytest.param(
        "faster-rcnn", "onnxruntime", False, id="faster-rcnn-onnxruntime-noflip", marks=pytest.mark.slow
    ),
    pytest.param("faster-rcnn", "openvino", True, id="faster-rcnn-openvino-flip", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "backend", "flip"), CASES)
def test_detector_backend_matches_eager(
    name: str,
    backend: str,
    flip: bool,
    detectors: dict[tuple[str, str], Detector],
    eager: dict[tuple[str, bool], Faces],
) -> None:
    want = eager[name, flip]
    got = run(detectors[name, backend], flip)
    assert sum(len(faces) for faces in want) > 0, (
        "seeded weights found no faces: the comparison would be empty"
    )
    for i, (w_faces, g_faces) in enumerate(zip(want, got, strict=True)):
        assert len(g_faces) == len(w_faces), f"image {i}: {len(g_faces)} faces vs {len(w_faces)}"
        for w, g in zip(w_faces, g_faces, strict=True):
            np.testing.assert_allclose(g["bbox"][:4], w["bbox"][:4], rtol=0, atol=BOX_PX[backend])
            np.testing.assert_allclose(g["bbox"][4], w["bbox"][4], rtol=0, atol=BOX_SCORE[backend])


@pytest.mark.parametrize("flip", [True, False], ids=["flip", "noflip"])
@pytest.mark.parametrize("name", ["yolov3", pytest.param("faster-rcnn", marks=pytest.mark.slow)])
def test_torchscript_on_the_cpu_is_eager_bit_for_bit(
    name: str,
    flip: bool,
    detectors: dict[tuple[str, str], Detector],
    eager: dict[tuple[str, bool], Faces],
) -> None:
    """fp32 TorchScript on the CPU keeps eager's arithmetic (no BatchNorm folding), so the whole
    pipeline, fed its own boxes, gives eager's results to the last bit: boxes, scores and every
    keypoint, however nearly tied the seeded heatmaps' peaks are (a folded graph moved boxes by
    ~5e-4 px and the median keypoint by 0.1 px at the full configs)."""
    want = eager[name, flip]
    got = run(detectors[name, "torchscript"], flip)
    assert sum(len(faces) for faces in want) > 0
    for i, (w_faces, g_faces) in enumerate(zip(want, got, strict=True)):
        assert len(g_faces) == len(w_faces), f"image {i}"
        for w, g in zip(w_faces, g_faces, strict=True):
            assert np.array_equal(g["bbox"], w["bbox"]), (i, g["bbox"], w["bbox"])
            assert np.array_equal(g["keypoints"], w["keypoints"]), i


def _landmark_pairs(
    det: Detector, want: Faces, flip: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(backend, eager) keypoints float32 (28, 3) and the face's box per face, the backend run on
    the eager run's boxes: a box that differs in its last bits moves the uint8 crop by a grey level
    here and there, which would blur what the engine itself does."""
    det.flip_test = flip
    got = [det(img, boxes=[f["bbox"] for f in faces]) for img, faces in zip(IMAGES, want, strict=True)]
    return [
        (g["keypoints"], w["keypoints"], w["bbox"])
        for g_faces, w_faces in zip(got, want, strict=True)
        for g, w in zip(g_faces, w_faces, strict=True)
    ]


@pytest.mark.parametrize(("name", "backend", "flip"), CASES)
def test_landmark_scores_match_eager(
    name: str,
    backend: str,
    flip: bool,
    detectors: dict[tuple[str, str], Detector],
    eager: dict[tuple[str, bool], Faces],
) -> None:
    for got, want, _ in _landmark_pairs(detectors[name, backend], eager[name, flip], flip):
        np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=0, atol=KPT_SCORE)


@pytest.mark.parametrize(("name", "backend", "flip"), CASES)
def test_landmark_coordinates_match_eager(
    name: str,
    backend: str,
    flip: bool,
    detectors: dict[tuple[str, str], Detector],
    eager: dict[tuple[str, bool], Faces],
) -> None:
    """Keypoints within 0.05 px of eager; those DARK threw off the heatmap (ill-conditioned steps,
    upstream's own arithmetic) within 1e-3 of their distance from the face, and they must be rare."""
    on_map = off_map = 0
    for got, want, box in _landmark_pairs(detectors[name, backend], eager[name, flip], flip):
        on, off = assert_keypoints_close(got, want, box)
        on_map += on
        off_map += off
    assert on_map > 0
    assert off_map <= 0.02 * (on_map + off_map), f"{off_map} of {on_map + off_map} keypoints off the heatmap"


def test_engines_come_from_the_cache(engine_cache: Path, checkpoints: dict[str, Path]) -> None:
    """A second Detector loads what the first built: no file in the cache is rewritten."""
    make_detector("yolov3", "onnxruntime", checkpoints, engine_cache)
    stamps = {p: p.stat().st_mtime_ns for p in engine_cache.rglob("*") if p.is_file()}
    assert any(p.suffix == ".onnx" for p in stamps)
    det = make_detector("yolov3", "onnxruntime", checkpoints, engine_cache)
    assert {p: p.stat().st_mtime_ns for p in engine_cache.rglob("*") if p.is_file()} == stamps
    assert det.landmarks.engine.name == "onnxruntime"
    assert det.face_detector is not None


def test_build_command(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m build_engines`` builds into the cache, ``afd-trt build`` then finds it there;
    a backend this machine cannot run is reported, and fails the run only with --strict."""
    from afd_trt.cli import main as cli_main
    from build_engines import main as build_main

    args = ["--models", "hrnetv2", "--backends", "onnxruntime", "openvino", "tensorrt", "--device", "cpu"]
    args += [
        "--cache-dir",
        str(tmp_path),
        "--checkpoint",
        f"hrnetv2={checkpoints['hrnetv2']}",
        "--no-download",
    ]
    assert build_main(["--log-level", "ERROR", *args]) == 0
    first = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert first["onnxruntime"]["status"] == "built"
    assert first["onnxruntime"]["network"] == "hrnetv2"
    assert Path(first["onnxruntime"]["path"]).is_file()
    # OpenVINO runs the ONNX model the line before exported: no second copy.
    assert first["openvino"]["status"] == "cached"
    assert first["openvino"]["path"] == first["onnxruntime"]["path"]
    assert len(list(tmp_path.rglob("*.onnx"))) == 1
    assert first["tensorrt"]["status"] == "unavailable"
    assert "tensorrt" in first["tensorrt"]["error"]
    assert cli_main(["--log-level", "ERROR", "build", *args, "--strict"]) == 1
    second = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert second["onnxruntime"]["status"] == "cached"
    assert second["onnxruntime"]["path"] == first["onnxruntime"]["path"]


def test_build_goes_on_past_a_model_whose_weights_fail(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One model's unreadable checkpoint is one ``failed`` record naming the file; the models
    after it still build, and the run exits 1 (it used to stop at the first model, exit 2 with no
    records: a batch build lost what it had built)."""
    from afd_trt.cli import main as cli_main

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint at all")
    args = ["build", "--models", "yolov3", "hrnetv2", "--backends", "torchscript", "--device", "cpu"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--no-download"]
    args += ["--checkpoint", f"yolov3={broken}", "--checkpoint", f"hrnetv2={checkpoints['hrnetv2']}"]
    assert cli_main(["--log-level", "ERROR", *args]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["network"], r["status"]) for r in records] == [
        ("yolov3", "yolov3", "failed"),
        ("hrnetv2", "hrnetv2", "built"),
    ]
    assert str(broken) in records[0]["error"]
    assert Path(records[1]["path"]).is_file()


def test_build_refuses_what_it_cannot_do(
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty --cache-dir (the working folder) is a usage error; a cache that cannot be written
    is exit 2 before anything is built (engines used to go to the per-process scratch cache,
    reported ``built``, and vanish at exit); a device torch names but afd_trt cannot run is exit
    2; a --config of another model is that model's ``failed`` record."""
    from afd_trt.cli import main as cli_main

    base = [
        "--log-level",
        "ERROR",
        "build",
        "--models",
        "hrnetv2",
        "--backends",
        "torchscript",
        "--no-download",
    ]
    base += ["--checkpoint", f"hrnetv2={checkpoints['hrnetv2']}"]
    for empty in ("", " "):
        with pytest.raises(SystemExit) as info:
            cli_main([*base, "--device", "cpu", "--cache-dir", empty])
        assert info.value.code == 2
        assert "an empty path names no directory" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert cli_main([*base, "--device", "cpu", "--cache-dir", str(blocker / "engines")]) == 2
    assert capsys.readouterr().out == ""
    assert f"engine cache {blocker / 'engines'} cannot be written" in caplog.text
    assert blocker.read_text() == "x"
    assert cli_main([*base, "--device", "meta", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "afd_trt runs on 'cpu' or 'cuda[:N]'" in caplog.text
    args = [*base, "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--config", "hrnetv2=yolov3"]
    assert cli_main(args) == 1
    (record,) = json.loads(capsys.readouterr().out)
    assert record["status"] == "failed"
    assert "config 'yolov3' describes a 'yolov3' model, not 'hrnetv2'" in record["error"]
    assert not list((tmp_path / "c").rglob("*.ts"))


@pytest.mark.slow
def test_build_auto_where_auto_runs_eager_torch_is_not_a_failure(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--backends auto --strict`` builds what ``Detector(backend="auto")`` loads; a network that
    ``auto`` runs in eager torch (Faster R-CNN's box head at bf16 on a CPU with native bf16) needs
    no file: an ``eager`` record, not ``unavailable`` (which failed the strict run)."""
    from afd_trt.cli import main as cli_main
    from afd_trt.engines import AUTO_CPU, cpu_has_bf16

    if not cpu_has_bf16() or AUTO_CPU["bf16"]["faster-rcnn-box-head"][0] != "torch":
        pytest.skip("auto runs eager torch for the box head only at bf16 on a CPU with native bf16")
    args = ["--log-level", "ERROR", "build", "--models", "faster-rcnn", "--backends", "auto"]
    args += ["--precisions", "bf16", "--device", "cpu", "--cache-dir", str(tmp_path), "--no-download"]
    args += ["--checkpoint", f"faster-rcnn={checkpoints['faster-rcnn']}", "--strict"]
    assert cli_main(args) == 0
    records = {r["network"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["faster-rcnn-box-head"]["status"] == "eager"
    assert records["faster-rcnn-box-head"]["backend"] == "torch"
    assert records["faster-rcnn"]["status"] == "built"
    assert Path(records["faster-rcnn"]["path"]).is_file()


def test_relative_engine_cache_is_the_same_folder_after_pickling(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``engine_cache`` not made yet is pinned to the working folder of the
    Detector's creation: unpickled elsewhere, it loads the same engine rather than building a
    second cache there. ``""`` (the working folder itself) is refused."""
    import pickle

    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "one")
    det = Detector(
        face_detector=None,
        landmark_checkpoint=checkpoints["hrnetv2"],
        device="cpu",
        backend="torchscript",
        download=False,
        engine_cache="relcache",
    )
    assert list((tmp_path / "one" / "relcache").rglob("*.ts"))
    blob = pickle.dumps(det)
    monkeypatch.chdir(tmp_path / "two")
    back = pickle.loads(blob)
    assert not (tmp_path / "two" / "relcache").exists()
    box = [[20.0, 30.0, 150.0, 170.0]]
    np.testing.assert_array_equal(
        back(IMAGES[0], boxes=box)[0]["keypoints"], det(IMAGES[0], boxes=box)[0]["keypoints"]
    )
    with pytest.raises(ValueError, match="engine_cache: an empty path names no directory"):
        Detector(
            face_detector=None, landmark_checkpoint=checkpoints["hrnetv2"], device="cpu", engine_cache=""
        )


def test_detector_runs_on_an_unwritable_engine_cache(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """ONNX Runtime opens its model after the cache hands over the path: built into the
    process's scratch cache, it is there when loaded (the Detector failed with PermissionError
    or NotADirectoryError)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    det = Detector(
        face_detector=None,
        landmark_checkpoint=checkpoints["hrnetv2"],
        device="cpu",
        backend="onnxruntime",
        download=False,
        engine_cache=blocker / "engines",
    )
    assert det.engines == {"hrnetv2": "onnxruntime"}
    faces = det(IMAGES[0], boxes=[[20.0, 30.0, 150.0, 170.0]])
    assert np.isfinite(faces[0]["keypoints"]).all()


def test_build_reports_fp16_on_the_cpu_as_unavailable(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp16 asked for on the CPU is an unavailable record beside the fp32 engine built (the
    run must not stop at it), with the reason; exit 0 without --strict."""
    from afd_trt.cli import main as cli_main

    args = [
        "build",
        "--models",
        "hrnetv2",
        "--backends",
        "auto",
        "torchscript",
        "--precisions",
        "fp16",
        "fp32",
    ]
    args += ["--device", "cpu", "--cache-dir", str(tmp_path), "--no-download"]
    args += ["--checkpoint", f"hrnetv2={checkpoints['hrnetv2']}"]
    assert cli_main(["--log-level", "ERROR", *args]) == 0
    records = json.loads(capsys.readouterr().out)
    by = {(r["backend"], r["requested_precision"]): r for r in records}
    assert by["auto", "fp16"]["status"] == "unavailable"
    assert "runs on CUDA devices only" in by["auto", "fp16"]["error"]
    assert by["torchscript", "fp16"]["status"] == "unavailable"
    assert by["torchscript", "fp32"]["status"] == "built"


def test_flip_batches_are_fused_except_on_the_exact_path(
    detectors: dict[tuple[str, str], Detector], eager: dict[tuple[str, bool], Faces]
) -> None:
    """Eager and TorchScript fp32 on the CPU run the mirrored crops as their own forward, as
    upstream does (bit for bit); other engines run crops and mirrored crops in one forward. Both
    ways give the same landmarks: split back wrongly (halves swapped or misaligned), the flip
    merge would change the keypoint scores far beyond 1e-4."""
    assert not detectors["yolov3", "torch"].landmarks.fuse_flip
    assert not detectors["yolov3", "torchscript"].landmarks.fuse_flip
    det = detectors["yolov3", "onnxruntime"]
    assert det.landmarks.fuse_flip
    det.flip_test = True
    boxes = [[f["bbox"] for f in faces] for faces in eager["yolov3", True]]
    assert sum(map(len, boxes)) >= 2
    try:
        fused = [det(img, boxes=b) for img, b in zip(IMAGES, boxes, strict=True) if b]
        det.landmarks.fuse_flip = False
        separate = [det(img, boxes=b) for img, b in zip(IMAGES, boxes, strict=True) if b]
    finally:
        det.landmarks.fuse_flip = True
    for f_faces, s_faces in zip(fused, separate, strict=True):
        for f, s in zip(f_faces, s_faces, strict=True):
            np.testing.assert_allclose(f["keypoints"][:, 2], s["keypoints"][:, 2], rtol=0, atol=KPT_SCORE)
            np.testing.assert_allclose(f["keypoints"][:, :2], s["keypoints"][:, :2], rtol=0, atol=0.5)


def test_build_auto_resolves_per_precision_and_detector_reuses_it(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``afd-trt build --backends auto`` builds, per precision, what ``Detector(backend="auto")``
    then loads without rebuilding: the backend named first in AUTO_CPU for that precision (bf16
    only on a CPU that computes it natively: elsewhere ``auto`` runs fp32, and both say so)."""
    from afd_trt.cli import main as cli_main
    from afd_trt.engines import AUTO_CPU, cpu_has_bf16

    args = ["build", "--models", "hrnetv2", "--backends", "auto", "--precisions", "fp32", "bf16"]
    args += ["--device", "cpu", "--cache-dir", str(tmp_path), "--no-download"]
    args += ["--checkpoint", f"hrnetv2={checkpoints['hrnetv2']}"]
    assert cli_main(["--log-level", "ERROR", *args]) == 0
    records = {r["requested_precision"]: r for r in json.loads(capsys.readouterr().out)}
    low = "bf16" if cpu_has_bf16() else "fp32"
    assert records["fp32"]["precision"] == "fp32"
    assert records["bf16"]["precision"] == low
    for precision in ("fp32", "bf16"):
        assert records[precision]["backend"] == AUTO_CPU[records[precision]["precision"]]["hrnetv2"][0]
        assert Path(records[precision]["path"]).is_file()
    assert records["fp32"]["status"] == "built"
    # An ONNX runtime at both precisions (OpenVINO) runs the one ONNX model built for fp32.
    same = records["bf16"]["path"] == records["fp32"]["path"]
    assert records["bf16"]["status"] == ("cached" if same else "built")
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    det = Detector(
        face_detector=None,
        landmark_checkpoint=checkpoints["hrnetv2"],
        device="cpu",
        backend="auto",
        precision="bf16",
        download=False,
        engine_cache=tmp_path,
    )
    assert det.precision == low
    assert det.engines == {"hrnetv2": AUTO_CPU[low]["hrnetv2"][0]}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    faces = det(IMAGES[0], boxes=[[20.0, 30.0, 150.0, 170.0]])
    assert faces[0]["keypoints"].shape == (28, 3)
    assert np.isfinite(faces[0]["keypoints"]).all()
