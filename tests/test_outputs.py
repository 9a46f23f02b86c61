"""detect outputs without models: records, COCO, keypoint names, the journal, input expansion,
video work items, drawings."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from afd_trt.cli import main
from afd_trt.config import load_config
from afd_trt.crops import source_tag
from afd_trt.detect_job import (
    InputSpec,
    Journal,
    SettingsMismatchError,
    check_run_settings,
    expand_inputs,
    in_shard,
    iter_work,
    parse_shard,
    record_line,
    settings_path,
    shard_of,
)
from afd_trt.draw import draw_faces
from afd_trt.outputs import (
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    SKELETON,
    coco_from_records,
    error_record,
    face_record,
    filter_faces,
    image_record,
    record_key,
    write_bytes_atomic,
    write_json_atomic,
)


def _face(rng: np.random.Generator, score: float = 0.9, size: float = 50.0) -> dict[str, np.ndarray]:
    x0, y0 = rng.uniform(0, 100, size=2)
    bbox = np.array([x0, y0, x0 + size, y0 + size * 0.8, score], np.float32)
    kp = np.concatenate([rng.uniform(0, 200, (28, 2)), rng.uniform(0, 1, (28, 1))], axis=1).astype(np.float32)
    return {"bbox": bbox, "keypoints": kp}


# -- keypoints ---------------------------------------------------------------------------------


def test_keypoint_names_and_flip_pairs() -> None:
    assert len(KEYPOINT_NAMES) == 28
    assert len(set(KEYPOINT_NAMES)) == 28
    cfg = load_config("hrnetv2")
    assert tuple(tuple(p) for p in cfg.flip_pairs) == FLIP_PAIRS  # type: ignore[attr-defined]
    paired = {i for p in FLIP_PAIRS for i in p}
    swap = {"left": "right", "right": "left"}
    for a, b in FLIP_PAIRS:
        mirrored = "_".join(swap.get(w, w) for w in KEYPOINT_NAMES[a].split("_"))
        assert mirrored == KEYPOINT_NAMES[b]
    for i in set(range(28)) - paired:
        assert "left" not in KEYPOINT_NAMES[i]
        assert "right" not in KEYPOINT_NAMES[i]
    assert all(0 <= a < 28 and 0 <= b < 28 for a, b in SKELETON)


# -- records -----------------------------------------------------------------------------------


def test_face_record_round_trips_float32() -> None:
    face = _face(np.random.default_rng(0))
    rec = json.loads(json.dumps(face_record(face)))
    assert np.array_equal(np.array(rec["bbox"], np.float32), face["bbox"][:4])
    assert np.float32(rec["score"]) == face["bbox"][4]
    assert np.array_equal(np.array(rec["keypoints"], np.float32), face["keypoints"])


def test_image_and_error_records() -> None:
    rng = np.random.default_rng(1)
    rec = image_record("a.png", [_face(rng)], width=640, height=480)
    assert list(rec) == ["path", "width", "height", "faces"]
    vid = image_record("v.mp4", [], width=64, height=48, frame=10, time=1 / 3)
    assert vid["frame"] == 10
    assert vid["time"] == pytest.approx(1 / 3, abs=1e-6)
    assert record_key(vid) == ("v.mp4", 10)
    err = error_record("b.png", "broken")
    assert err == {"path": "b.png", "error": "broken"}
    assert record_key(err) == ("b.png", None)


@pytest.mark.parametrize("delta", [-1e-4, 1e-4])
def test_filter_faces_thresholds(delta: float) -> None:
    rng = np.random.default_rng(2)
    face = _face(rng, score=0.5, size=40.0)  # shorter side 32
    short = float(min(face["bbox"][2] - face["bbox"][0], face["bbox"][3] - face["bbox"][1]))
    kept_score = filter_faces([face], min_score=0.5 + delta)
    kept_size = filter_faces([face], min_face_size=short + delta)
    assert len(kept_score) == (1 if delta < 0 else 0)
    assert len(kept_size) == (1 if delta < 0 else 0)


def test_coco_is_strict_json_when_a_network_overflowed() -> None:
    """A NaN keypoint (a heatmap that overflowed in fp16, say) was written as ``NaN, NaN, 2``,
    which JSON parsers other than Python's reject, and counted as labelled: it is now
    ``0, 0, 0`` (not labelled) and not counted; other non-finite numbers are null."""
    kp = np.tile(np.array([[10.0, 20.0, 0.9]], np.float32), (28, 1))
    kp[5, 0] = np.nan
    kp[6, 2] = np.inf
    face = {"bbox": np.array([1, 2, 30, 40, np.nan], np.float32), "keypoints": kp}
    rec = json.loads(record_line(image_record("a.png", [face], 64, 48)))  # through the journal
    coco = coco_from_records([rec])
    text = json.dumps(coco, allow_nan=False)  # strict: raises on NaN/Infinity
    (ann,) = json.loads(text)["annotations"]
    assert ann["keypoints"][15:18] == [0, 0, 0]
    assert ann["keypoints"][18:21] == [10.0, 20.0, 2]
    assert ann["num_keypoints"] == 27
    assert ann["score"] is None
    assert ann["keypoint_scores"][6] is None
    assert ann["bbox"] == [1.0, 2.0, 29.0, 38.0]


def test_coco_of_a_face_from_a_box_given_without_a_score() -> None:
    """``det(img, boxes=[[x1, y1, x2, y2]])`` returns 4-value bboxes, which ``face_record``
    records with ``"score": None``: COCO carries that as null (``math.isfinite(None)`` raised)."""
    kp = np.tile(np.array([[10.0, 20.0, 0.9]], np.float32), (28, 1))
    face = {"bbox": np.array([1, 2, 30, 40], np.float32), "keypoints": kp}
    rec = image_record("a.png", [face], 64, 48)
    assert rec["faces"][0]["score"] is None
    for r in (rec, json.loads(record_line(rec))):
        (ann,) = coco_from_records([r])["annotations"]
        assert ann["score"] is None
        assert ann["bbox"] == [1.0, 2.0, 29.0, 38.0]
        assert ann["num_keypoints"] == 28


def test_coco_schema() -> None:
    rng = np.random.default_rng(3)
    faces_a = [_face(rng), _face(rng)]
    faces_v = [_face(rng)]
    records = [
        json.loads(json.dumps(r))
        for r in (
            image_record("a.png", faces_a, 640, 480),
            error_record("bad.png", "corrupt"),
            image_record("v.mp4", faces_v, 64, 48, frame=4, time=0.4),
            image_record("empty.png", [], 10, 10),
        )
    ]
    coco = coco_from_records(records)
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "v.mp4", "empty.png"]
    assert coco["images"][1]["frame"] == 4
    assert coco["errors"] == [{"path": "bad.png", "error": "corrupt"}]
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert [a["image_id"] for a in anns] == [1, 1, 2]
    for ann, face in zip(anns, faces_a + faces_v, strict=True):
        x0, y0, x1, y1, score = face["bbox"].astype(np.float64)
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], rtol=1e-12)
        assert ann["area"] == pytest.approx((x1 - x0) * (y1 - y0))
        assert ann["score"] == pytest.approx(score)
        kp = np.array(ann["keypoints"]).reshape(28, 3)
        np.testing.assert_array_equal(kp[:, :2], face["keypoints"][:, :2].astype(np.float64))
        assert (kp[:, 2] == 2).all()
        np.testing.assert_array_equal(ann["keypoint_scores"], face["keypoints"][:, 2].astype(np.float64))
        assert ann["num_keypoints"] == 28
        assert ann["category_id"] == 1
        assert ann["iscrowd"] == 0
    (cat,) = coco["categories"]
    assert cat["keypoints"] == list(KEYPOINT_NAMES)
    assert cat["flip_pairs"] == [list(p) for p in FLIP_PAIRS]
    assert all(1 <= a <= 28 and 1 <= b <= 28 for a, b in cat["skeleton"])
    json.dumps(coco)  # serialisable


# -- journal -----------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_journal_append_and_resume(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    j = Journal(p)
    j.append(image_record("a.png", [], 1, 1))
    j.append(error_record("b.png", "bad"))
    j.close()
    j2 = Journal(p)
    assert j2.done == {("a.png", None), ("b.png", None)}
    assert j2.loaded == 2
    assert j2.loaded_errors == 1
    j2.append(image_record("v.mp4", [], 1, 1, frame=3, time=0.1))
    j2.close()
    assert [record_key(r) for r in _lines(p)] == [("a.png", None), ("b.png", None), ("v.mp4", 3)]
    assert [record_key(r) for r in Journal(p).records()] == [("a.png", None), ("b.png", None), ("v.mp4", 3)]


def test_journal_cuts_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    good = json.dumps(image_record("a.png", [], 1, 1)) + "\n"
    p.write_text(good + '{"path": "b.png", "wid')
    j = Journal(p)
    assert j.done == {("a.png", None)}
    j.append(image_record("b.png", [], 2, 2))
    j.close()
    assert [r["path"] for r in _lines(p)] == ["a.png", "b.png"]


def test_journal_drops_garbage_duplicates_and_retried_errors(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    recs = [image_record("a.png", [], 1, 1), error_record("b.png", "bad"), image_record("a.png", [], 1, 1)]
    p.write_text(
        "\n".join([json.dumps(recs[0]), "not json", json.dumps(recs[1]), json.dumps(recs[2])]) + "\n"
    )
    j = Journal(p, retry_errors=True)
    j.close()
    assert j.done == {("a.png", None)}
    assert _lines(p) == [recs[0]]
    Journal(p, overwrite=True).close()
    assert p.read_bytes() == b""


def test_journal_refuses_a_second_writer(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    j = Journal(p)
    with pytest.raises(RuntimeError, match="in use by another"):
        Journal(p)
    j.close()
    Journal(p).close()


@pytest.mark.parametrize("how", ["overwrite", "retry_errors", "settings"])
def test_a_refused_second_writer_changes_nothing(tmp_path: Path, how: str) -> None:
    """The lock comes first: a second opening with --overwrite, --retry-errors (which rewrites
    the file) or other settings is refused before it empties, replaces or re-records anything,
    and the first writer's later records land in the file everyone reads."""
    p = tmp_path / "out.jsonl"
    first = Journal(p, settings={"model": "a"})
    first.append(image_record("a.png", [], 1, 1))
    first.append(error_record("b.png", "bad"))
    first.sync()
    before, side = p.read_bytes(), settings_path(p).read_bytes()
    kwargs: dict[str, object] = {
        "overwrite": {"overwrite": True},
        "retry_errors": {"retry_errors": True},
        "settings": {"settings": {"model": "b"}, "overwrite": True},
    }[how]
    with pytest.raises(RuntimeError, match="in use by another"):
        Journal(p, **kwargs)  # type: ignore[arg-type]
    assert p.read_bytes() == before
    assert settings_path(p).read_bytes() == side
    first.append(image_record("c.png", [], 1, 1))
    first.close()
    assert [r["path"] for r in _lines(p)] == ["a.png", "b.png", "c.png"]


def test_journal_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    """-o naming another program's file (a COCO JSON, indented) by mistake: refused, untouched;
    --overwrite replaces it as asked. A journal from before settings were recorded is adopted."""
    p = tmp_path / "faces.json"
    p.write_text(json.dumps({"images": [], "annotations": []}, indent=2))
    before = p.read_bytes()
    with pytest.raises(ValueError, match="is not an afd-trt journal"):
        Journal(p)
    assert p.read_bytes() == before
    assert not settings_path(p).exists()
    Journal(p, overwrite=True).close()
    assert p.read_bytes() == b""
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps(image_record("a.png", [], 1, 1)) + "\n" + '{"path": "b.p')
    j = Journal(old, settings={"model": "a"})
    j.close()
    assert j.done == {("a.png", None)}
    assert json.loads(settings_path(old).read_text()) == {"model": "a"}


def test_check_only_records_nothing(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    check_run_settings(p, {"model": "a"}, record=False)
    assert not settings_path(p).exists()
    check_run_settings(p, {"model": "a"})
    p.write_text(json.dumps(image_record("a.png", [], 1, 1)) + "\n")
    with pytest.raises(SettingsMismatchError, match="model: recorded 'a', now 'b'"):
        check_run_settings(p, {"model": "b"}, record=False)


def test_record_line_keeps_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A Linux file name with a byte that is not UTF-8 (a lone surrogate in Python) is written
    escaped and reads back as the same path, so a resumed run skips it."""
    name = os.fsdecode(b"shots/caf\xe9.png")
    line = record_line(image_record(name, [], 4, 3))
    line.decode("ascii")  # escaped, valid JSON text
    p = tmp_path / "out.jsonl"
    p.write_bytes(line)
    assert Journal(p).done == {(name, None)}
    assert os.fsencode(name) == b"shots/caf\xe9.png"


def test_a_jobs_own_output_folders_are_not_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crops and drawings written inside an input folder would be the next run's inputs (and
    crops of crops): folder walks and patterns leave them out; a file named explicitly stays."""
    monkeypatch.chdir(tmp_path)
    for name in ["in/a.png", "in/crops/a_f0.png", "in/drawn/a.jpg", "in/sub/b.png"]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    os.symlink("crops", "in/crops_link")
    skip = ["in/crops", "in/drawn"]
    want = [InputSpec("in/a.png", "image"), InputSpec("in/sub/b.png", "image")]
    assert expand_inputs(["in"], exclude=skip) == want
    assert expand_inputs(["in/**/*.png", "in/**/*.jpg"], exclude=skip) == want
    assert expand_inputs(["in/crops/a_f0.png"], exclude=skip) == [InputSpec("in/crops/a_f0.png", "image")]
    assert len(expand_inputs(["in"])) == 4  # nothing left out without ``exclude``


@pytest.mark.parametrize(
    ("inputs", "own"),
    [
        (["in"], "in"),  # crops written straight into the input folder
        (["in/"], "in"),
        (["in/*.png"], "in"),  # all of the folder's own images would have been left out
        (["in/**/*.png"], "in"),
        (["in/crops"], "in/crops"),  # the crops folder named as an input
        (["in/crops/deeper"], "in/crops"),
        (["in/crops/*.png"], "in/crops"),
        (["*.png", "in"], "."),
        (["@list.txt"], "in"),
    ],
)
def test_an_input_that_searches_the_jobs_own_output_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inputs: list[str], own: str
) -> None:
    """Crops written into a folder the inputs search become the next run's inputs (and the
    folder's own images cannot be told from them): refused, naming both; a subfolder of an input
    folder is fine (left out of the walk)."""
    monkeypatch.chdir(tmp_path)
    for name in ["in/a.png", "in/crops/a_f0.png", "in/crops/deeper/b.png"]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    Path("list.txt").write_text("in/a.png\nin\n")
    real = os.path.realpath(own)
    with pytest.raises(ValueError, match=f"input '.*' searches '{re.escape(real)}', this job's own"):
        expand_inputs(inputs, exclude=[own])
    # elsewhere, or a file named explicitly: fine
    assert expand_inputs(["in/a.png"], exclude=[own]) == [InputSpec("in/a.png", "image")]
    assert expand_inputs(inputs, exclude=["elsewhere"])


def test_a_list_file_that_is_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"caf\xe9.png")
    Path(name).write_bytes(b"")
    Path("list.txt").write_bytes(b"caf\xe9.png\n")
    assert expand_inputs(["@list.txt"]) == [InputSpec(name, "image")]


def test_write_bytes_atomic_leaves_no_temporaries(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "x.bin"
    write_bytes_atomic(p, b"one")
    write_bytes_atomic(p, b"two", fsync=False)
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["x.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002], ids=oct)
def test_atomic_writes_get_the_mode_of_a_plainly_created_file(tmp_path: Path, umask: int) -> None:
    """Not mkstemp's 0600: 0666 less the umask, as open() gives, so other users and jobs can
    read crops, drawings, COCO and merge output under the usual umask."""
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        write_json_atomic(tmp_path / "b.json", {"k": 1})
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == expected


def test_atomic_writes_keep_the_mode_of_the_file_they_replace(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_bytes(b"{}")
    p.chmod(0o640)
    old = os.umask(0o022)
    try:
        write_json_atomic(p, [1])
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        p.chmod(0o604)
        write_bytes_atomic(p, b"two")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o604
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "an array"), (3, "a number"), ("a.png", "a string"), (None, "null")]
)
def test_record_key_refuses_a_record_that_is_not_an_object(value: object, kind: str) -> None:
    with pytest.raises(TypeError, match=f"record is {kind}, not an object"):
        record_key(value)  # type: ignore[arg-type]


def test_journal_and_merge_drop_lines_that_are_not_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid JSON that is not an object (``[1, 2]``, ``3``) is an unreadable line, not a crash."""
    a = json.dumps(image_record("a.png", [], 1, 1))
    b = json.dumps(error_record("b.png", "bad"))
    p = tmp_path / "out.jsonl"
    p.write_text("\n".join([a, "[1, 2]", "3", '"x"', "null", b]) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["merge", str(p), "-o", str(tmp_path / "all.jsonl")]) == 0
    assert "4 incomplete or unparsable line(s)" in caplog.text
    assert (tmp_path / "all.jsonl").read_text() == a + "\n" + b + "\n"
    j = Journal(p)
    j.close()
    assert j.done == {("a.png", None), ("b.png", None)}
    assert _lines(p) == [json.loads(a), json.loads(b)]


# -- inputs ------------------------------------------------------------------------------------


def test_expand_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ["d/b.png", "d/a.JPG", "d/sub/c.webp", "d/notes.txt", "d/v.mp4", "e/x.png", "e/y.png"]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    Path("list.txt").write_text("# comment\n\ne/x.png\ne/*.png\nd/b.png\n")
    specs = expand_inputs(["d", "@list.txt", "./d/b.png", "e/nothing*.png", "missing.png"])
    assert specs == [
        InputSpec("d/a.JPG", "image"),
        InputSpec("d/b.png", "image"),
        InputSpec("d/sub/c.webp", "image"),
        InputSpec("d/v.mp4", "video"),
        InputSpec("e/x.png", "image"),
        InputSpec("e/y.png", "image"),
        InputSpec("e/nothing*.png", "missing"),
        InputSpec("missing.png", "missing"),
    ]
    # An extension filter for folder walks (files named explicitly are always taken).
    assert expand_inputs(["d", "e/x.png"], exts=(".jpg", ".webp")) == [
        InputSpec("d/a.JPG", "image"),
        InputSpec("d/sub/c.webp", "image"),
        InputSpec("e/x.png", "image"),
    ]


def test_links_in_folders_and_patterns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link to a file is that file; a link whose target is gone is a "broken" input, recorded
    as an error naming the target rather than dropped unseen; links to folders are not entered
    (no cycles, as ``Path.rglob``)."""
    monkeypatch.chdir(tmp_path)
    Path("d/sub").mkdir(parents=True)
    Path("elsewhere").mkdir()
    Path("d/a.png").write_bytes(b"")
    Path("elsewhere/far.png").write_bytes(b"")
    os.symlink("../elsewhere/far.png", "d/to_file.png")
    os.symlink("gone/x.jpg", "d/dead.jpg")
    os.symlink("gone", "d/dead_no_ext")  # not an image name: not taken
    os.symlink("..", "d/sub/up")  # a cycle
    os.symlink("../elsewhere", "d/to_folder")
    want_d = [
        InputSpec("d/a.png", "image"),
        InputSpec("d/dead.jpg", "broken"),
        InputSpec("d/to_file.png", "image"),
    ]
    assert expand_inputs(["d"]) == want_d
    assert expand_inputs(["d/*.jpg", "d/dead.jpg"]) == [InputSpec("d/dead.jpg", "broken")]
    items = list(iter_work(expand_inputs(["d/dead.jpg", "d"]), done=set()))
    assert [(w.path, w.error) for w in items] == [
        ("d/dead.jpg", "broken symbolic link: its target 'gone/x.jpg' does not exist"),
        ("d/a.png", None),
        ("d/to_file.png", None),
    ]


def test_a_folder_without_matching_files_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with caplog.at_level("WARNING", logger="afd_trt.detect"):
        specs = expand_inputs([str(tmp_path / "d"), str(tmp_path / "empty")], exts=(".jpg",))
    assert specs == []
    assert f"folder {tmp_path / 'd'}: no files with extensions .jpg" in caplog.text
    assert f"folder {tmp_path / 'empty'}: no files with extensions .jpg" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="afd_trt.detect"):
        assert expand_inputs([str(tmp_path / "d")]) == [InputSpec(str(tmp_path / "d" / "a.png"), "image")]
    assert caplog.text == ""


def _write_video(path: Path, n: int, fps: float = 10.0) -> list[np.ndarray]:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert w.isOpened()
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(n)]
    for f in frames:
        w.write(f)
    w.release()
    return frames


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_inputs_stably(n: int) -> None:
    """Every input in exactly one shard, in input order; an input's shard depends only on its
    path (not on the order or on the other inputs) and follows the documented SHA-1 rule."""
    specs = [InputSpec(f"shots/{i:03d}.png", "image") for i in range(200)] + [InputSpec("clip.mp4", "video")]
    shards = [in_shard(specs, (k, n)) for k in range(n)]
    assert sorted((s.path for part in shards for s in part), key=str) == sorted(s.path for s in specs)
    for k, part in enumerate(shards):
        assert part == [s for s in specs if s in part]  # order kept
        assert part == in_shard(list(reversed(specs)), (k, n))[::-1]  # order-free
        assert in_shard([*part[:3], InputSpec("new.png", "image")], (k, n))[:3] == part[:3]  # unmoved
        for s in part:
            digest = hashlib.sha1(s.path.encode()).digest()
            assert int.from_bytes(digest[:8], "big") % n == k == shard_of(s.path, n)
    if n > 1:  # balanced within chance (201 inputs)
        assert min(len(p) for p in shards) > 201 / n / 2
    assert in_shard(specs, None) == specs


@pytest.mark.parametrize(
    ("text", "match"),
    [("2/2", "K must be in 0..N-1"), ("-1/3", "K must be in 0..N-1"), ("0/0", "N >= 1"), ("1", "expected K/N"),
     ("a/b", "expected K/N"), ("1/2/3", "expected K/N")],
)  # fmt: skip
def test_parse_shard_errors(text: str, match: str) -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/8") == (3, 8)
    with pytest.raises(ValueError, match=match):
        parse_shard(text)


def test_video_work_items(tmp_path: Path) -> None:
    video = tmp_path / "v.avi"
    _write_video(video, 7)
    specs = [InputSpec(str(video), "video")]
    items = list(iter_work(specs, set(), every=3))
    assert [it.frame for it in items] == [0, 3, 6]
    assert [it.time for it in items] == pytest.approx([0.0, 0.3, 0.6])
    assert all(it.image is not None and it.image.shape == (48, 64, 3) for it in items)
    assert [round(float(it.image.mean())) for it in items] == pytest.approx([0, 60, 120], abs=3)  # type: ignore[union-attr]
    resumed = list(iter_work(specs, {(str(video), 0), (str(video), 6)}, every=3))
    assert [it.frame for it in resumed] == [3]


def test_unreadable_video_is_one_error_item(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    items = list(iter_work([InputSpec(str(bad), "video"), InputSpec("gone.png", "missing")], set()))
    assert [(it.path, it.frame) for it in items] == [(str(bad), None), ("gone.png", None)]
    assert all(it.error for it in items)
    assert list(iter_work([InputSpec(str(bad), "video")], {(str(bad), None)})) == []


# -- drawing -----------------------------------------------------------------------------------


def test_draw_faces() -> None:
    img = np.full((120, 160, 3), 30, np.uint8)
    kp = np.zeros((28, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = np.linspace(40, 120, 28), 60, np.linspace(0, 1, 28)
    face = {"bbox": np.array([20, 20, 140, 100, 0.8], np.float32), "keypoints": kp}
    out = draw_faces(img, [face], landmark_threshold=0.5)
    assert out.shape == img.shape
    assert out.dtype == np.uint8
    assert (img == 30).all()  # input untouched
    assert out[60, 20].tolist() == [0, 255, 0]  # box edge
    assert out[60, 120].tolist() == [0, 0, 255]  # confident landmark
    assert out[60, 40].tolist() == [0, 255, 255]  # low-score landmark
    far = {"bbox": np.array([-1e12, 0, 1e12, 5, 1], np.float32), "keypoints": kp * 1e9}
    draw_faces(img, [far])  # absurd coordinates are clipped, not an OpenCV error
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        draw_faces(img.astype(np.float32), [face])


def test_run_settings_recorded_then_checked(tmp_path: Path) -> None:
    journal = tmp_path / "out.jsonl"
    settings = {"face_detector": "yolov3", "min_score": 0.5, "crop_size": 256, "crops": None}
    check_run_settings(journal, settings)
    assert json.loads(settings_path(journal).read_text()) == settings
    journal.write_text('{"path": "a.png", "faces": []}\n')
    check_run_settings(journal, dict(settings))  # same settings: resume allowed
    changed = {**settings, "min_score": 0.25, "face_detector": "faster-rcnn"}
    with pytest.raises(SettingsMismatchError) as info:
        check_run_settings(journal, changed)
    msg = str(info.value)
    assert str(journal) in msg
    assert "min_score: recorded 0.5, now 0.25" in msg
    assert "face_detector: recorded 'yolov3', now 'faster-rcnn'" in msg
    assert json.loads(settings_path(journal).read_text()) == settings, "a refused resume changes nothing"
    check_run_settings(journal, changed, overwrite=True)
    assert json.loads(settings_path(journal).read_text()) == changed
    # A setting only one side has is not a difference: one an older run did not record, or the
    # weights' digests, which the check made before loading the models does not know yet.
    check_run_settings(journal, {**changed, "weights_sha256": {"hrnetv2": "ab"}}, record=False)
    check_run_settings(journal, {k: v for k, v in changed.items() if k != "crops"}, record=False)


def test_merge_compares_weights_not_where_each_machine_kept_them(tmp_path: Path) -> None:
    """Shards run on several machines load the same weights from different paths: with the
    weights' digests recorded, the paths are not compared, the digests are."""
    a = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    b = '{"path": "b.png", "width": 4, "height": 3, "faces": []}\n'
    same = {"weights_sha256": {"hrnetv2": "ab"}}
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a], [0, 2], landmark_checkpoint="/m1/hr.pth", **same)
    j1 = _shard_journal(tmp_path / "s1.jsonl", [b], [1, 2], landmark_checkpoint="/m2/hr.pth", **same)
    out = tmp_path / "all.jsonl"
    assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 0
    assert out.read_text() == a + b
    other = {"weights_sha256": {"hrnetv2": "cd"}}
    j1 = _shard_journal(tmp_path / "s1.jsonl", [b], [1, 2], landmark_checkpoint="/m1/hr.pth", **other)
    assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 2
    # without the digests (an older afd_trt's shards), the paths still count
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a], [0, 2], landmark_checkpoint="/m1/hr.pth")
    j1 = _shard_journal(tmp_path / "s1.jsonl", [b], [1, 2], landmark_checkpoint="/m2/hr.pth")
    assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 2


def _shard_journal(path: Path, lines: list[str], shard: list[int] | None, **changed: object) -> Path:
    path.write_text("".join(lines))
    settings = {"face_detector": "yolov3", "min_score": 0.5, "shard": shard, **changed}
    settings_path(path).write_text(json.dumps(settings))
    return path


def test_merge_shards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`afd-trt merge`: the shards' records in order, each input once, as JSON Lines (the same
    lines) or COCO; torn lines, duplicates and missing shards are reported, never merged. A
    missing shard fails the merge (exit 1, the file still written) unless --allow-incomplete."""
    a = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    v = '{"path": "v.mp4", "frame": 3, "time": 0.1, "width": 4, "height": 3, "faces": []}\n'
    b = '{"path": "b.png", "error": "ValueError: image \'b.png\': no such file"}\n'
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a, v], [0, 3])
    j1 = _shard_journal(tmp_path / "s1.jsonl", [b, a, '{"path": "c.png", "wid'], [1, 3], crops="elsewhere")
    out = tmp_path / "all.jsonl"
    with caplog.at_level("WARNING"):
        assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 1
    assert out.read_text() == a + v + b
    log = caplog.text
    assert "1 incomplete or unparsable line(s)" in log
    assert "1 record(s) of inputs already merged" in log
    assert "shard(s) 2/3 of the job are missing" in log
    assert main(["merge", str(j0), str(j1), "-o", str(out), "--allow-incomplete"]) == 0
    assert out.read_text() == a + v + b
    j2 = _shard_journal(tmp_path / "s2.jsonl", [], [2, 3])
    coco_path = tmp_path / "all.json"
    assert main(["merge", str(j0), str(j1), str(j2), "-o", str(coco_path), "--format", "coco"]) == 0
    coco = json.loads(coco_path.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "v.mp4"]
    assert [e["path"] for e in coco["errors"]] == ["b.png"]


def test_merge_refuses_other_settings_and_overwriting_an_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a], [0, 2])
    j1 = _shard_journal(tmp_path / "s1.jsonl", [a], [1, 2], min_score=0.25)
    out = tmp_path / "all.jsonl"
    assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 2
    assert "other settings" in caplog.text
    assert "min_score" in caplog.text
    assert not out.exists()
    assert main(["merge", str(j0), "-o", str(j0)]) == 2
    settings_path(j1).write_text("[1, 2]")
    assert main(["merge", str(j0), str(j1), "-o", str(out)]) == 2
    assert "unreadable settings record" in caplog.text
    assert main(["merge", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2
    assert j0.read_text() == a


def test_merge_keeps_a_later_success_over_an_earlier_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An input that failed in one journal (an older run) and was done in another is merged
    as done, not as its failure, whichever comes first; two failures or two successes keep the
    first."""
    ok = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    bad = '{"path": "a.png", "error": "ValueError: image \'a.png\': truncated"}\n'
    other = '{"path": "b.png", "error": "ValueError: no such file"}\n'
    old = _shard_journal(tmp_path / "old.jsonl", [bad, other], [0, 1])
    new = _shard_journal(tmp_path / "new.jsonl", [ok, other], [0, 1])
    out = tmp_path / "all.jsonl"
    with caplog.at_level("INFO"):
        assert main(["merge", str(old), str(new), "-o", str(out)]) == 0
    assert out.read_text() == ok + other
    assert "1 input(s) recorded as failed in one journal and done in another" in caplog.text
    assert main(["merge", str(new), str(old), "-o", str(out)]) == 0
    assert out.read_text() == ok + other


def test_merge_names_a_journal_whose_settings_cannot_be_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal without its settings record (copied without it) is merged, with a warning
    that its models and options were not checked against the others'."""
    a = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    b = '{"path": "b.png", "width": 4, "height": 3, "faces": []}\n'
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a], None)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(b)
    out = tmp_path / "all.jsonl"
    with caplog.at_level("WARNING"):
        assert main(["merge", str(j0), str(bare), "-o", str(out)]) == 0
    assert out.read_text() == a + b
    assert f"{bare}: no settings record (bare.jsonl.settings.json)" in caplog.text
    assert str(j0) + ":" not in caplog.text


def test_merge_refuses_files_that_are_not_journals_and_names_a_failed_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shards' COCO files given instead of their journals merged into an empty result with
    exit 0; they are refused. A write that fails is an error line, not a traceback."""
    a = '{"path": "a.png", "width": 4, "height": 3, "faces": []}\n'
    j0 = _shard_journal(tmp_path / "s0.jsonl", [a], [0, 1])
    coco = tmp_path / "s0.json"
    coco.write_text(json.dumps(coco_from_records([json.loads(a)]), indent=2))
    out = tmp_path / "all.json"
    assert main(["merge", str(coco), "-o", str(out), "--format", "coco"]) == 2
    assert f"{coco} exists and is not an afd-trt journal" in caplog.text
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    caplog.clear()
    assert main(["merge", str(j0), "-o", str(blocker / "all.jsonl")]) == 1
    assert f"merge: cannot write {blocker / 'all.jsonl'}" in caplog.text


def test_run_settings_adopted_for_an_older_journal_and_an_empty_one(tmp_path: Path) -> None:
    journal = tmp_path / "old.jsonl"
    journal.write_text('{"path": "a.png", "faces": []}\n')
    check_run_settings(journal, {"every": 1})
    assert json.loads(settings_path(journal).read_text()) == {"every": 1}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    settings_path(empty).write_text(json.dumps({"every": 5}))
    check_run_settings(empty, {"every": 1})  # nothing recorded yet: new settings win
    assert json.loads(settings_path(empty).read_text()) == {"every": 1}


def test_cli_refuses_to_resume_with_other_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "faces.jsonl"
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    out.write_text(json.dumps({"path": str(img), "width": 8, "height": 8, "faces": []}) + "\n")
    args = ["detect", str(img), "-o", str(out), "--device", "cpu", "--quiet"]
    check_run_settings(
        out,
        {
            "face_detector": "yolov3", "face_detector_checkpoint": None, "landmark_checkpoint": None,
            "face_detector_config": None, "landmark_config": None, "precision": "fp32", "flip_test": True,
            "box_scale_factor": 1.1, "min_score": 0.0, "min_face_size": 0.0, "every": 1, "crops": None,
            "crop_mode": "aligned", "crop_size": 256, "crop_scale": 1.0, "crop_margin": 1.0,
            "crop_border": "constant", "crop_ext": "png", "draw": None,
        },
    )  # fmt: skip
    # Refused before any model is loaded (none could be: no checkpoints here, no download).
    assert main([*args, "--min-score", "0.5"]) == 2
    assert "min_score: recorded 0.0, now 0.5" in caplog.text
    assert out.read_text().count("\n") == 1


def test_cli_max_pixels_refuses_large_files(
    tmp_path: Path, seeded_weights: Callable[[int], dict[str, dict[str, Path]]]
) -> None:
    w = seeded_weights(0)
    img = tmp_path / "big.png"
    cv2.imwrite(str(img), np.zeros((40, 50, 3), np.uint8))
    out = tmp_path / "faces.jsonl"
    rc = main(
        [
            "detect", str(img), "-o", str(out), "--device", "cpu", "--quiet", "--max-pixels", "1999",
            "--face-detector-checkpoint", str(w["yolov3"]["pth"]), "--landmark-checkpoint", str(w["hrnetv2"]["pth"]),
        ]
    )  # fmt: skip
    assert rc == 1
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["path"] == str(img)
    assert "50x40" in rec["error"]
    assert "1999" in rec["error"]


def test_an_image_too_wide_to_draw_is_that_images_failure(tmp_path: Path) -> None:
    """JPEG cannot hold a side over 65,500 px, so the drawing of a 66,000-px strip cannot be
    written: that input's record is an error naming why (the job goes on; it stopped before),
    while a write failure of the disk's kind still stops the job."""
    from afd_trt.detect_job import DetectOptions, WorkItem, _process
    from afd_trt.detector import StreamResult

    strip = np.full((8, 66_000, 3), 128, np.uint8)
    face = {"bbox": np.array([10, 1, 30, 7, 0.9], np.float32), "keypoints": np.zeros((28, 3), np.float32)}
    opts = DetectOptions(inputs=[], output=tmp_path / "o.jsonl", draw=tmp_path / "drawn")
    res = StreamResult(0, "strip.png", faces=[face], height=8, width=66_000, image=strip)
    rec, n = _process(opts, WorkItem("strip.png"), res)
    assert n == 0
    assert rec["error"] == ("writing its crops or drawing: OpenCV cannot encode a 66000x8 .jpg image") or rec[
        "error"
    ].startswith("writing its crops or drawing: OpenCV cannot encode a 66000x8 .jpg image: ")
    small = StreamResult(1, "a.png", faces=[face], height=8, width=64, image=strip[:, :64].copy())
    rec, n = _process(opts, WorkItem("a.png"), small)
    assert "error" not in rec
    assert n == 1
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == [f"{source_tag('a.png', None)}.jpg"]
