"""``afd-trt detect`` end to end: the real CLI in a subprocess on generated images, crops of the
shared demo grid, a generated video and broken files; results against the Python API.

Seeded test weights (random, calibrated: they find "faces" anywhere), a reduced YOLOv3 input
size (192, at most 2 faces per image) and no flip test keep every run to seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from paths import REPO, TADNE_GRID

import afd_trt
from afd_trt.cli import main
from afd_trt.crops import crop_name, source_tag
from afd_trt.detect_job import shard_of

pytestmark = pytest.mark.slow

Weights = Callable[[int], dict[str, dict[str, Path]]]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(seeded_weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    w = seeded_weights(0)
    cfg = tmp_path_factory.mktemp("cfg") / "yolov3-small.toml"
    text = (REPO / "configs" / "yolov3.toml").read_text()
    text = text.replace("img_scale = [608, 608]", "img_scale = [192, 192]").replace(
        "max_per_img = 100", "max_per_img = 2"
    )
    assert "img_scale = [192, 192]" in text
    assert "max_per_img = 2" in text
    cfg.write_text(text)
    return {"det": w["yolov3"]["safetensors"], "lm": w["hrnetv2"]["safetensors"], "cfg": cfg}


def _model_args(models: dict[str, Path]) -> list[str]:
    return [
        "--face-detector-checkpoint", str(models["det"]),
        "--landmark-checkpoint", str(models["lm"]),
        "--face-detector-config", str(models["cfg"]),
        "--device", "cpu",
        "--no-flip",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def api(models: dict[str, Path]) -> Any:
    from afd_trt import Detector

    return Detector(
        face_detector="yolov3",
        face_detector_checkpoint=models["det"],
        landmark_checkpoint=models["lm"],
        face_detector_config=models["cfg"],
        device="cpu",
        flip_test=False,
    )


def _tiles(n: int, size: int) -> list[np.ndarray]:
    grid = cv2.imread(str(TADNE_GRID), cv2.IMREAD_COLOR)
    assert grid is not None, f"shared demo grid missing: {TADNE_GRID}"
    out = []
    for k in range(n):
        r, c = divmod(k * 7 % 36, 6)
        tile = grid[r * 512 : (r + 1) * 512, c * 512 : (c + 1) * 512]
        out.append(cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA))
    return out


VIDEO_EVERY = 3
VIDEO_FRAMES = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder mixing good images (grid tiles, a generated picture), corrupt ones and videos."""
    d = tmp_path_factory.mktemp("inputs")
    t = _tiles(3, 256)
    (d / "sub").mkdir()
    cv2.imwrite(str(d / "tile0.jpg"), t[0])
    cv2.imwrite(str(d / "tile1.png"), t[1])
    cv2.imwrite(str(d / "sub" / "tile2.jpg"), t[2])
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (192, 320, 3), dtype=np.uint8), (7, 7), 2)
    cv2.imwrite(str(d / "generated.png"), noise)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    ok, png = cv2.imencode(".png", t[0])
    assert ok
    (d / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    (d / "broken.mp4").write_bytes(b"\x00" * 256)
    (d / "notes.txt").write_text("not an input")
    video = d / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (256, 192))
    assert w.isOpened()
    for i in range(VIDEO_FRAMES):
        w.write(np.ascontiguousarray(np.roll(t[1], 12 * i, axis=1)[32:224]))
    w.release()
    good = [d / "clip.avi", d / "generated.png", d / "sub" / "tile2.jpg", d / "tile0.jpg", d / "tile1.png"]
    bad = [d / "broken.mp4", d / "corrupt.png", d / "truncated.png"]
    return {"dir": d, "good": [str(p) for p in good], "bad": [str(p) for p in bad], "video": str(video)}


# The subprocess imports afd_trt from where this test process did (the installed package in CI, a
# dev build in the checkout), and runs there: `python -m` puts the working directory first on
# sys.path, and a checkout without a built extension must not shadow the installed package.
PKG_ROOT = Path(afd_trt.__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PKG_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afd_trt.cli", "detect", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",  # OpenCV's messages may quote a broken file's raw bytes
        env=_env(),
        cwd=PKG_ROOT,
        timeout=timeout,
        check=False,
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data, "the journal must end with a complete line"
    return [json.loads(line) for line in data.splitlines()]


def _key(rec: dict[str, Any]) -> tuple[str, int | None]:
    return rec["path"], rec.get("frame")


def _video_frames(path: str, every: int) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(path)
    frames, i = {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            frames[i] = frame
        i += 1
    cap.release()
    return frames


def _assert_faces_equal(rec_faces: list[dict[str, Any]], api_faces: list[dict[str, np.ndarray]]) -> None:
    assert len(rec_faces) == len(api_faces)
    for rf, af in zip(rec_faces, api_faces, strict=True):
        assert np.array_equal(np.array(rf["bbox"], np.float32), af["bbox"][:4])
        assert np.float32(rf["score"]) == af["bbox"][4]
        assert np.array_equal(np.array(rf["keypoints"], np.float32), af["keypoints"])


def _assert_schema(rec: dict[str, Any]) -> None:
    assert isinstance(rec["path"], str)
    if "error" in rec:
        assert "faces" not in rec
        assert isinstance(rec["error"], str)
        assert rec["error"]
        return
    assert isinstance(rec["width"], int)
    assert isinstance(rec["height"], int)
    if "frame" in rec:
        assert isinstance(rec["frame"], int)
        assert isinstance(rec["time"], float)
    for face in rec["faces"]:
        assert set(face) == {"bbox", "score", "keypoints"}
        assert len(face["bbox"]) == 4
        assert isinstance(face["score"], float)
        assert np.array(face["keypoints"]).shape == (28, 3)


MIN_SCORE, MIN_FACE_SIZE = 0.1, 560.0  # each drops some of the seeded weights' faces (boxes ~530-600 px)


def _run_args(inputs: dict[str, Any], models: dict[str, Path], out: Path) -> list[str]:
    return [
        str(inputs["dir"]),
        "-o", str(out / "faces.jsonl"),
        "--every", str(VIDEO_EVERY),
        "--min-score", str(MIN_SCORE),
        "--min-face-size", str(MIN_FACE_SIZE),
        "--crops", str(out / "crops"),
        "--crop-size", "128",
        "--draw", str(out / "drawn"),
        "--batch-size", "1",
        "--workers", "1",
        *_model_args(models),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def main_run(
    models: dict[str, Path], inputs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    t0 = time.perf_counter()
    proc = _cli(*_run_args(inputs, models, out), "--log-level", "INFO")  # accepted after the subcommand too
    return {"proc": proc, "out": out, "seconds": time.perf_counter() - t0}


def _kept(faces: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Independent statement of --min-score / --min-face-size."""
    return [
        f
        for f in faces
        if float(f["bbox"][4]) >= MIN_SCORE
        and min(float(f["bbox"][2] - f["bbox"][0]), float(f["bbox"][3] - f["bbox"][1])) >= MIN_FACE_SIZE
    ]


# -- tests -------------------------------------------------------------------------------------


def test_jsonl_records_equal_the_python_api(
    main_run: dict[str, Any], inputs: dict[str, Any], api: Any
) -> None:
    proc = main_run["proc"]
    assert proc.returncode == 1, proc.stderr  # some inputs failed
    assert "3 failed" in proc.stderr
    records = _read_jsonl(main_run["out"] / "faces.jsonl")
    for rec in records:
        _assert_schema(rec)
    keys = [_key(r) for r in records]
    assert len(keys) == len(set(keys)), "an input recorded twice"
    frames = _video_frames(inputs["video"], VIDEO_EVERY)
    assert sorted(frames) == list(range(0, VIDEO_FRAMES, VIDEO_EVERY))
    expected = {(p, None) for p in inputs["good"] if p != inputs["video"]}
    expected |= {(inputs["video"], i) for i in frames}
    expected |= {(p, None) for p in inputs["bad"]}
    assert set(keys) == expected
    by_key = {_key(r): r for r in records}
    for p in inputs["bad"]:
        assert "error" in by_key[p, None]
    n_faces = 0
    for p in inputs["good"]:
        if p == inputs["video"]:
            for i, frame in frames.items():
                rec = by_key[p, i]
                assert rec["time"] == pytest.approx(i / 10.0, abs=1e-3)
                assert (rec["width"], rec["height"]) == (256, 192)
                _assert_faces_equal(rec["faces"], _kept(api(frame)))
                n_faces += len(rec["faces"])
        else:
            rec = by_key[p, None]
            img = cv2.imread(p)
            assert (rec["height"], rec["width"]) == img.shape[:2]
            _assert_faces_equal(rec["faces"], _kept(api(p)))
            n_faces += len(rec["faces"])
    assert n_faces > 0, "the seeded weights should find faces"
    assert f"{n_faces} faces" in proc.stderr


def test_each_failure_is_reported_once_by_its_name(main_run: dict[str, Any], inputs: dict[str, Any]) -> None:
    """A failed input is logged once as it happens and once in the closing list, under its own
    path; nothing is logged about the stand-in the job feeds the stream for an input that failed
    before decoding (the broken video: once "image 3: empty image of shape (0, 0, 3)")."""
    lines = main_run["proc"].stderr.splitlines()
    for p in inputs["bad"]:
        assert sum(p in line for line in lines) == 2, [line for line in lines if p in line]
    assert not [line for line in lines if "empty image" in line]


def _marks(img: np.ndarray) -> int:
    """Pixels in the drawing colours (green boxes, red/yellow dots), allowing for JPEG."""
    b, g, r = (img[:, :, i].astype(int) for i in range(3))
    return int(((b < 90) & (((g > 170) & (r < 90)) | ((r > 170) & (g < 90)) | ((r > 170) & (g > 170)))).sum())


def test_crops_and_drawings(main_run: dict[str, Any], inputs: dict[str, Any]) -> None:
    out = main_run["out"]
    records = [r for r in _read_jsonl(out / "faces.jsonl") if "error" not in r]
    want_crops = {crop_name(r["path"], i, r.get("frame")) for r in records for i in range(len(r["faces"]))}
    assert {p.name for p in (out / "crops").iterdir()} == want_crops
    for name in want_crops:
        crop = cv2.imread(str(out / "crops" / name), cv2.IMREAD_UNCHANGED)
        assert crop.shape == (128, 128, 3)
    want_drawn = {f"{source_tag(r['path'], r.get('frame'))}.jpg": r for r in records}
    assert {p.name for p in (out / "drawn").iterdir()} == set(want_drawn)
    frames = _video_frames(inputs["video"], VIDEO_EVERY)
    for name, rec in want_drawn.items():
        drawn = cv2.imread(str(out / "drawn" / name))
        assert drawn.shape == (rec["height"], rec["width"], 3)
        source = frames[rec["frame"]] if "frame" in rec else cv2.imread(rec["path"])
        inside = [
            k
            for f in rec["faces"]
            for k in f["keypoints"]
            if 2 <= k[0] < rec["width"] - 2 and 2 <= k[1] < rec["height"] - 2
        ]
        if inside:  # landmarks drawn
            assert _marks(drawn) > _marks(source) + 10
        else:
            assert np.abs(drawn.astype(int) - source).mean() < 3  # only JPEG noise


def test_rerun_skips_done_inputs_and_writes_coco(
    main_run: dict[str, Any], inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    shutil.copy(main_run["out"] / "faces.jsonl", journal)
    before = journal.read_bytes()
    proc = _cli(
        str(inputs["dir"]), "-o", str(tmp_path / "coco.json"), "--format", "coco", "--journal", str(journal),
        "--every", str(VIDEO_EVERY), "--quiet", *_model_args(models),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # failures recorded earlier still count
    assert journal.read_bytes() == before, "a re-run must not process or record anything again"
    records = _read_jsonl(journal)
    coco = json.loads((tmp_path / "coco.json").read_text())
    good = [r for r in records if "error" not in r]
    assert [im["file_name"] for im in coco["images"]] == [r["path"] for r in good]
    assert [im.get("frame") for im in coco["images"]] == [r.get("frame") for r in good]
    assert sorted(e["path"] for e in coco["errors"]) == sorted(inputs["bad"])
    faces = [f for r in good for f in r["faces"]]
    assert len(coco["annotations"]) == len(faces)
    image_of = {im["id"]: im for im in coco["images"]}
    for ann, face in zip(coco["annotations"], faces, strict=True):
        x0, y0, x1, y1 = face["bbox"]
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        assert ann["score"] == face["score"]
        assert ann["num_keypoints"] == 28
        kp = np.array(ann["keypoints"]).reshape(28, 3)
        assert kp[:, :2].tolist() == [k[:2] for k in face["keypoints"]]
        assert ann["image_id"] in image_of
    assert len(coco["categories"][0]["keypoints"]) == 28


def _started_until(args: list[str], journal: Path, lines: int, stderr: int) -> subprocess.Popen[bytes]:
    """``afd-trt detect args`` started, returned once ``journal`` holds ``lines`` records (and the
    run is still going: it is then interrupted midway)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "afd_trt.cli", "detect", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=_env(),
        cwd=PKG_ROOT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        proc.communicate()
        pytest.fail("the run ended before it could be interrupted")
    return proc


def test_killed_run_resumes_with_each_input_once(
    main_run: dict[str, Any], inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    """SIGKILL midway, a torn last line on top, then a re-run: the journal, crops and drawings
    equal those of the uninterrupted run, each input recorded once."""
    out = tmp_path
    journal = out / "faces.jsonl"
    args = [*_run_args(inputs, models, out), "--quiet"]
    proc = _started_until(args, journal, 3, subprocess.DEVNULL)  # past the first video frame
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _read_jsonl(journal)  # a valid file: complete lines only
    reference = main_run["out"] / "faces.jsonl"
    n_all = len(_read_jsonl(reference))
    assert 3 <= len(partial) < n_all
    with journal.open("ab") as f:  # what a power cut mid-write could leave
        f.write(b'{"path": "' + inputs["good"][-1].encode() + b'", "width": 16')
    done = _cli(*args)
    assert done.returncode == 1, done.stderr  # the corrupt inputs
    assert "incomplete last line" in done.stderr
    assert f"{len(partial)} already done" in done.stderr
    records = _read_jsonl(journal)
    assert len(records) == n_all
    assert len({_key(r) for r in records}) == n_all  # each input exactly once
    assert journal.read_bytes() == reference.read_bytes()  # same records, same order
    for sub in ("crops", "drawn"):
        names = sorted(p.name for p in (main_run["out"] / sub).iterdir())
        assert sorted(p.name for p in (out / sub).iterdir()) == names
        for name in names:
            assert (out / sub / name).read_bytes() == (main_run["out"] / sub / name).read_bytes()


def test_sigterm_leaves_valid_journal_and_coco_of_what_is_done(
    main_run: dict[str, Any], inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    journal = tmp_path / "faces.jsonl"
    coco_path = tmp_path / "faces.json"
    args = [
        str(inputs["dir"]), "-o", str(coco_path), "--format", "coco", "--journal", str(journal),
        "--every", str(VIDEO_EVERY), "--min-score", str(MIN_SCORE), "--min-face-size", str(MIN_FACE_SIZE),
        "--batch-size", "1", "--workers", "1", "--quiet", *_model_args(models),
    ]  # fmt: skip
    proc = _started_until(args, journal, 2, subprocess.PIPE)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    records = _read_jsonl(journal)
    n_all = len(_read_jsonl(main_run["out"] / "faces.jsonl"))
    assert 2 <= len(records) < n_all
    coco = json.loads(coco_path.read_text())
    done_images = [r for r in records if "error" not in r]
    assert [im["file_name"] for im in coco["images"]] == [r["path"] for r in done_images]
    assert len(coco["annotations"]) == sum(len(r["faces"]) for r in done_images)


def test_shards_split_the_inputs_between_jobs(
    main_run: dict[str, Any], inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    """``--shard K/N``: N jobs on the same inputs record each input (a video with all its frames)
    exactly once between them, as the unsharded run records it; a shard's journal is resumed
    only as that shard."""
    n = 2
    reference = {_key(r): r for r in _read_jsonl(main_run["out"] / "faces.jsonl")}
    seen: list[tuple[str, int | None]] = []
    for k in range(n):
        proc = _cli(
            *_run_args(inputs, models, tmp_path / f"s{k}"), "--shard", f"{k}/{n}", "--log-level", "INFO"
        )
        assert proc.returncode in (0, 1), proc.stderr
        assert f"shard {k}/{n}: " in proc.stderr
        for rec in _read_jsonl(tmp_path / f"s{k}" / "faces.jsonl"):
            assert shard_of(rec["path"], n) == k
            assert rec == reference[_key(rec)]
            seen.append(_key(rec))
    assert sorted(seen, key=str) == sorted(reference, key=str)
    merged = tmp_path / "merged.jsonl"
    assert (
        main(["merge", *(str(tmp_path / f"s{k}" / "faces.jsonl") for k in range(n)), "-o", str(merged)]) == 0
    )
    assert [_key(r) for r in _read_jsonl(merged)] == seen
    other = _cli(*_run_args(inputs, models, tmp_path / "s0"), "--shard", f"1/{n}", "--quiet")
    assert other.returncode == 2
    assert "shard: recorded [0, 2], now [1, 2]" in other.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    bad_every = _cli("x.png", "-o", str(tmp_path / "o.jsonl"), "--every", "0")
    assert bad_every.returncode == 2
    assert "argument --every: expected an integer >= 1, got 0" in bad_every.stderr
    bad_shard = _cli("x.png", "-o", str(tmp_path / "o.jsonl"), "--shard", "2/2")
    assert bad_shard.returncode == 2
    assert "K must be in 0..N-1" in bad_shard.stderr
    assert _cli("x.png").returncode == 2  # no -o
    no_model = _cli(
        "x.png", "-o", str(tmp_path / "o.jsonl"), "--device", "cpu",
        "--face-detector-checkpoint", str(tmp_path / "missing.pth"),
    )  # fmt: skip
    assert no_model.returncode == 2, no_model.stderr
    assert "cannot load the models" in no_model.stderr
    journal = _cli("x.png", "-o", str(tmp_path / "o.jsonl"), "--journal", str(tmp_path / "j.jsonl"))
    assert journal.returncode == 2
    assert "with --format jsonl the output" in journal.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_a_resume_with_other_weights_at_the_same_path_is_refused(
    models: dict[str, Path], seeded_weights: Weights, tmp_path: Path
) -> None:
    """The settings record the weights' sha256, not only their path: a checkpoint replaced in
    place between two runs (other test weights, a downloaded release) is refused on resume
    rather than mixing two models' results in one output."""
    imgs = []
    for i, tile in enumerate(_tiles(2, 128)):
        imgs.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(imgs[-1]), tile)
    lm = tmp_path / "lm.safetensors"
    shutil.copy(models["lm"], lm)
    args = [*_model_args(models), "--landmark-checkpoint", str(lm)]
    out = tmp_path / "o.jsonl"
    first = _cli(str(imgs[0]), "-o", str(out), *args)
    assert first.returncode == 0, first.stderr
    recorded = json.loads((tmp_path / "o.jsonl.settings.json").read_text())
    assert set(recorded["weights_sha256"]) == {"yolov3", "hrnetv2"}
    before = out.read_bytes()
    shutil.copy(seeded_weights(1)["hrnetv2"]["safetensors"], lm)  # other weights, same path
    again = _cli(str(imgs[0]), str(imgs[1]), "-o", str(out), *args)
    assert again.returncode == 2
    assert "weights_sha256: recorded" in again.stderr
    assert out.read_bytes() == before


def test_no_download_fails_at_once_on_a_missing_checkpoint(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``detect --no-download`` (a machine whose network drops connections silently) reports a
    checkpoint that is not local at once, naming it, instead of trying the release URL."""
    monkeypatch.setenv("AFD_TRT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("AFD_TRT_WEIGHTS", raising=False)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _tiles(1, 128)[0])
    out = tmp_path / "o.jsonl"
    args = ["detect", str(img), "-o", str(out), "--device", "cpu", "--landmark-checkpoint", str(models["lm"])]
    assert main([*args, "--no-download"]) == 2
    assert "cannot load the models" in caplog.text
    assert "downloading is off" in caplog.text
    assert "mmdet_anime-face_yolov3.pth" in caplog.text
    assert not out.exists()


def test_a_run_that_cannot_start_changes_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    """--overwrite with other options and models that fail to load: the journal and its
    settings stay as they were, so a later resume with the old options still matches."""
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _tiles(1, 128)[0])
    out = tmp_path / "o.jsonl"
    first = _cli(str(img), "-o", str(out), *_model_args(models))
    assert first.returncode == 0, first.stderr
    before = (out.read_bytes(), (tmp_path / "o.jsonl.settings.json").read_bytes())
    failed = _cli(
        str(img), "-o", str(out), "--overwrite", "--min-score", "0.95", *_model_args(models),
        "--landmark-checkpoint", str(tmp_path / "missing.pth"),
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr
    assert (out.read_bytes(), (tmp_path / "o.jsonl.settings.json").read_bytes()) == before
    mixed = _cli(str(img), "-o", str(out), "--min-score", "0.95", *_model_args(models))
    assert mixed.returncode == 2
    assert "min_score: recorded 0.0, now 0.95" in mixed.stderr


def test_an_unreadable_list_is_one_failure_and_the_rest_is_done(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """``@list`` that cannot be read is that input's error record; the other inputs are done (the
    run stopped before loading them, exit 1, nothing written). A journal another run holds is a
    refused run, exit 2 (it was 1, the code of failed inputs)."""
    from afd_trt.detect_job import Journal

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _tiles(1, 128)[0])
    out = tmp_path / "o.jsonl"
    proc = _cli(str(img), f"@{tmp_path / 'nolist.txt'}", f"@{tmp_path}", "-o", str(out), *_model_args(models))
    assert proc.returncode == 1, proc.stderr
    records = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "faces" in records[str(img)]
    assert records[f"@{tmp_path / 'nolist.txt'}"]["error"].startswith("input list ")
    assert "No such file or directory" in records[f"@{tmp_path / 'nolist.txt'}"]["error"]
    assert "Is a directory" in records[f"@{tmp_path}"]["error"]
    held = Journal(out)
    try:
        locked = _cli(str(img), "-o", str(out), *_model_args(models))
    finally:
        held.close()
    assert locked.returncode == 2, locked.stderr
    assert "is in use by another afd-trt process" in locked.stderr
    huge = _cli(
        str(img), "-o", str(tmp_path / "h.jsonl"), "--crops", str(tmp_path / "c"), "--crop-size", "1000000"
    )
    assert huge.returncode == 2
    assert "argument --crop-size: expected an integer from 1 to 8192, got 1000000" in huge.stderr


def test_overwrite_says_that_old_crops_stay(models: dict[str, Path], tmp_path: Path) -> None:
    """--overwrite starts the journal over but deletes no images: with crops from an earlier
    run in the folder (faces a new --min-score drops, say), the run says so."""
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _tiles(1, 128)[0])
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "a_0123abcd_f07.png").write_bytes(b"an old crop")
    out = tmp_path / "o.jsonl"
    proc = _cli(str(img), "-o", str(out), "--crops", str(crops), "--overwrite", *_model_args(models))
    assert proc.returncode == 0, proc.stderr
    assert f"--crops {crops} already holds files: --overwrite starts the journal over" in proc.stderr
    again = _cli(str(img), "-o", str(out), "--crops", str(crops), *_model_args(models))  # no --overwrite
    assert "already holds files" not in again.stderr


def test_a_video_that_opens_at_last_loses_its_old_error(
    models: dict[str, Path], inputs: dict[str, Any], tmp_path: Path
) -> None:
    """A video that could not be opened (copied while the job ran, say) is an error record; once
    the file is whole and a rerun reads it to its end, that record goes: the frames stand alone,
    the COCO output lists no error, and the run succeeds."""
    video = tmp_path / "late.avi"
    video.write_bytes(Path(inputs["video"]).read_bytes()[:200])  # not yet copied
    out = tmp_path / "o.json"
    first = _cli(str(video), "-o", str(out), "--format", "coco", *_model_args(models))
    assert first.returncode == 1, first.stderr
    assert [r.get("error", "")[:20] for r in _read_jsonl(tmp_path / "o.json.jsonl")] == [
        "could not open video"
    ]
    video.write_bytes(Path(inputs["video"]).read_bytes())  # the copy is complete
    second = _cli(str(video), "-o", str(out), "--format", "coco", *_model_args(models))
    assert second.returncode == 0, second.stderr
    records = _read_jsonl(tmp_path / "o.json.jsonl")
    assert [r.get("frame") for r in records] == list(range(VIDEO_FRAMES))
    assert not [r for r in records if "error" in r]
    coco = json.loads(out.read_text())
    assert coco["errors"] == []
    assert len(coco["images"]) == VIDEO_FRAMES
    third = _cli(str(video), "-o", str(out), "--format", "coco", *_model_args(models))
    assert third.returncode == 0, third.stderr
    assert "skipped without decoding" in third.stderr


def test_a_file_name_that_is_not_utf8_is_processed(models: dict[str, Path], tmp_path: Path) -> None:
    """OpenCV takes names as UTF-8: given a Linux name with another byte it crashed the process
    (SIGSEGV in cv2.imread). The image is read from its bytes and recorded under its name."""
    d = tmp_path / "in"
    d.mkdir()
    name = os.fsdecode(os.fsencode(str(d)) + b"/caf\xe9.png")
    ok, buf = cv2.imencode(".png", _tiles(1, 128)[0])
    assert ok
    Path(name).write_bytes(buf.tobytes())
    cv2.imwrite(str(d / "b.png"), _tiles(2, 128)[1])
    out = tmp_path / "o.jsonl"
    proc = _cli(str(d), "-o", str(out), *_model_args(models))
    assert proc.returncode == 0, proc.stderr
    recs = {r["path"]: r for r in _read_jsonl(out)}
    assert set(recs) == {name, str(d / "b.png")}
    assert (recs[name]["width"], recs[name]["height"]) == (128, 128)
    again = _cli(str(d), "-o", str(out), *_model_args(models))
    assert "2 already done" in again.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-score", "nan"], "argument --min-score: expected a finite number, got 'nan'"),
        (["--min-face-size", "-1"], "argument --min-face-size: expected a number >= 0, got '-1'"),
        (["--crop-scale", "0"], "argument --crop-scale: expected a number > 0, got '0'"),
        (["--crop-margin", "nan"], "argument --crop-margin: expected a number > 0, got 'nan'"),
        (["--box-scale-factor", "inf"], "argument --box-scale-factor: expected a number > 0, got 'inf'"),
        (["--draw-landmark-threshold", "x"], "argument --draw-landmark-threshold: expected a finite"),
    ],
)
def test_detect_refuses_numbers_that_would_silently_keep_or_drop_everything(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["detect", "x.png", "-o", str(tmp_path / "o.jsonl"), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_detect_names_a_device_that_is_not_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["detect", "x.png", "-o", str(tmp_path / "o.jsonl"), "--device", "gpu0"]) == 2
    assert "device 'gpu0': not a device name (expected 'cpu', 'cuda', 'cuda:N' or 'auto')" in caplog.text


def test_rerun_skips_a_finished_video_without_decoding(
    inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    """A video read to its end is listed, with its frame count, size and mtime, in
    ``<journal>.videos.json``; a re-run then skips it without opening it, unless the file changed
    (then it is decoded again, and still nothing is recorded twice)."""
    video = tmp_path / "clip.avi"
    shutil.copy(inputs["video"], video)
    out = tmp_path / "v.jsonl"
    args = (
        str(video),
        "-o",
        str(out),
        "--every",
        str(VIDEO_EVERY),
        "--log-level",
        "INFO",
        *_model_args(models),
    )
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    assert "skipped without decoding" not in first.stderr
    index = json.loads((tmp_path / "v.jsonl.videos.json").read_text())
    cap = cv2.VideoCapture(str(video))
    n_frames = 0
    while cap.grab():
        n_frames += 1
    cap.release()
    assert index[str(video)]["frames"] == n_frames
    assert index[str(video)]["size"] == video.stat().st_size
    before = out.read_bytes()
    assert {r.get("frame") for r in _read_jsonl(out)} == set(range(0, n_frames, VIDEO_EVERY))

    second = _cli(*args)
    assert second.returncode == 0, second.stderr
    assert "skipped without decoding" in second.stderr
    assert out.read_bytes() == before

    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _cli(*args)
    assert third.returncode == 0, third.stderr
    assert "skipped without decoding" not in third.stderr
    assert out.read_bytes() == before
    # --overwrite starts over: the index is dropped with the journal
    fourth = _cli(*args, "--overwrite")
    assert fourth.returncode == 0, fourth.stderr
    assert "skipped without decoding" not in fourth.stderr
    assert {r.get("frame") for r in _read_jsonl(out)} == set(range(0, n_frames, VIDEO_EVERY))


def test_device_pipeline_and_torchvision_decoding_give_the_same_records(
    main_run: dict[str, Any], inputs: dict[str, Any], models: dict[str, Path], tmp_path: Path
) -> None:
    """``--device-pipeline on --jpeg-decoder torchvision`` (the GPU's image path, run here on
    the CPU) records the same faces for every image and video frame, and the same failures."""
    out = tmp_path / "faces.jsonl"
    args = [
        str(inputs["dir"]), "-o", str(out), "--every", str(VIDEO_EVERY), "--min-score", str(MIN_SCORE),
        "--min-face-size", str(MIN_FACE_SIZE), "--batch-size", "2", "--workers", "1",
        "--device-pipeline", "on", "--jpeg-decoder", "torchvision", *_model_args(models),
    ]  # fmt: skip
    proc = _cli(*args)
    assert proc.returncode == 1, proc.stderr  # the same broken inputs fail
    want = {_key(r): r for r in _read_jsonl(main_run["out"] / "faces.jsonl")}
    got = {_key(r): r for r in _read_jsonl(out)}
    assert set(got) == set(want)
    for key, rec in got.items():
        assert ("error" in rec) == ("error" in want[key]), key
        if "error" not in rec:
            assert rec["faces"] == want[key]["faces"], key
