"""`afd-trt cache`: every entry of an engine cache listed with its status, and --prune deleting
exactly what no process can use (stale, superseded, corrupt, leftover), keeping what this machine
or another one sharing the directory still loads. Real engines (the Faster R-CNN box head, small)
are built into the cache; the unusable entries are copies of them with edited sidecars."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from afd_trt.cli import main
from afd_trt.config import load_config
from afd_trt.engine_cache import (
    CACHE_FORMAT,
    EngineCache,
    device_tag,
    entry_status,
    remove_entry,
    scan_cache,
)
from afd_trt.engines import Network, create_engine, current_runtimes, machine_device_tags
from afd_trt.models import build_model

CPU = torch.device("cpu")
NET = "faster-rcnn-box-head"


@pytest.fixture(scope="module")
def net() -> Network:
    head = build_model("faster-rcnn").roi_head.bbox_head
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in head.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.02)
    return Network(NET, head, load_config("faster-rcnn"))


@pytest.fixture
def cache(net: Network, tmp_path: Path) -> Path:
    root = tmp_path / "engines"
    create_engine("torchscript", net, CPU, cache=root)
    create_engine("onnxruntime", net, CPU, cache=root)
    return root


def _only(root: Path, pattern: str) -> Path:
    (path,) = (root / NET).glob(pattern)
    return path


def _copy(src: Path, name: str, edit: Callable[[dict[str, object]], None] | None = None) -> Path:
    """A copy of the entry ``src`` named ``name``, its sidecar's key edited by ``edit``."""
    dest = src.with_name(name)
    shutil.copy(src, dest)
    meta = json.loads(EngineCache.sidecar(src).read_text())
    if edit is not None:
        edit(meta["key"])
    EngineCache.sidecar(dest).write_text(json.dumps(meta))
    return dest


def _set(**fields: object) -> Callable[[dict[str, object]], None]:
    return lambda key: key.update(fields)


def _listing(root: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, str]:
    assert main(["--log-level", "ERROR", "cache", "--cache-dir", str(root), "--json", *flags]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(r["path"]).name: r["status"] for r in records}


def test_cache_lists_and_prunes_exactly_the_unusable_entries(
    net: Network, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts, onnx = _only(cache, "torchscript-*.ts"), _only(cache, "onnx-*.onnx")
    here = device_tag(CPU)
    old_torch = _copy(ts, f"torchscript-fp32-{here}-0000000000000001.ts", _set(runtime="torch-1.0.0"))
    old_format = _copy(ts, f"torchscript-fp32-{here}-0000000000000002.ts", _set(format=CACHE_FORMAT - 1))
    other_gpu = _copy(ts, "torchscript-fp16-cuda-sm_10-0000000000000003.ts", _set(device="cuda-sm_10"))
    per_backend_onnx = _copy(onnx, f"openvino-bf16-{here}-0000000000000004.onnx", _set(backend="openvino"))
    truncated = _copy(ts, f"torchscript-fp32-{here}-0000000000000005.ts")
    truncated.write_bytes(truncated.read_bytes()[:100])
    no_sidecar = ts.with_name(f"torchscript-fp32-{here}-0000000000000006.ts")
    shutil.copy(ts, no_sidecar)
    lone_sidecar = ts.with_name(f"torchscript-fp32-{here}-0000000000000007.ts.json")
    shutil.copy(EngineCache.sidecar(ts), lone_sidecar)
    old_part = ts.with_name(f".{ts.name}.12345.abcd.part")
    old_part.write_bytes(b"half an engine")
    os.utime(old_part, (time.time() - 7200, time.time() - 7200))
    fresh_part = ts.with_name(f".{ts.name}.12346.abce.part")  # perhaps a build running now
    fresh_part.write_bytes(b"half an engine")
    old_sidecar_part = ts.with_name(f".{ts.name}.json.12347.abcf.part")  # a sidecar write cut short
    old_sidecar_part.write_bytes(b"{")
    os.utime(old_sidecar_part, (time.time() - 7200, time.time() - 7200))
    # a sidecar whose key fields are not strings (hand-edited): unhashable, it crashed the listing
    bad_key = _copy(ts, f"torchscript-fp32-{here}-0000000000000008.ts", _set(device=["cpu"]))

    want = {
        ts.name: "ok",
        onnx.name: "ok",
        old_torch.name: "stale",
        old_format.name: "stale",
        other_gpu.name: "other-target",
        per_backend_onnx.name: "superseded",
        truncated.name: "corrupt",
        no_sidecar.name: "orphan",
        lone_sidecar.name: "orphan",
        old_part.name: "orphan",
        old_sidecar_part.name: "orphan",
        bad_key.name: "orphan",
    }
    assert _listing(cache, capsys) == want
    before = sorted(p.name for p in (cache / NET).iterdir())
    assert _listing(cache, capsys, "--prune", "--dry-run") == want
    assert sorted(p.name for p in (cache / NET).iterdir()) == before

    stamps = {p: p.stat().st_mtime_ns for p in (ts, onnx)}
    assert _listing(cache, capsys, "--prune") == want
    left = {p.name for p in (cache / NET).iterdir() if not p.name.endswith(".lock")}
    kept = {ts, onnx, other_gpu}
    assert left == {p.name for p in kept} | {EngineCache.sidecar(p).name for p in kept} | {fresh_part.name}
    assert _listing(cache, capsys) == {ts.name: "ok", onnx.name: "ok", other_gpu.name: "other-target"}
    # What was kept still loads, without a rebuild.
    create_engine("torchscript", net, CPU, cache=cache)
    create_engine("openvino", net, CPU, cache=cache)
    assert {p: p.stat().st_mtime_ns for p in (ts, onnx)} == stamps


def test_verify_finds_a_changed_byte_the_size_check_misses(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts = _only(cache, "torchscript-*.ts")
    data = bytearray(ts.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ts.write_bytes(bytes(data))
    assert _listing(cache, capsys)[ts.name] == "ok"
    assert _listing(cache, capsys, "--verify")[ts.name] == "corrupt"


def test_status_of_a_runtime_this_machine_lacks_is_kept() -> None:
    """A TensorRT plan for a GPU of this machine, with TensorRT not installed: cannot be judged, kept;
    with TensorRT installed at another version: stale."""
    key = {
        "backend": "tensorrt",
        "device": "cuda-sm_90",
        "runtime": "tensorrt-10.3.0",
        "format": CACHE_FORMAT,
    }
    devices = frozenset({"portable", "cuda-sm_90"})
    assert entry_status(key, ".plan", {"tensorrt": None}, devices)[0] == "runtime-missing"
    assert entry_status(key, ".plan", {"tensorrt": "tensorrt-10.3.0"}, devices)[0] == "ok"
    status, reason = entry_status(key, ".plan", {"tensorrt": "tensorrt-10.9.0"}, devices)
    assert status == "stale"
    assert "tensorrt-10.3.0" in reason
    assert "tensorrt-10.9.0" in reason
    assert (
        entry_status(key, ".plan", {"tensorrt": "tensorrt-10.9.0"}, frozenset({"portable"}))[0]
        == "other-target"
    )
    # An old per-backend ONNX copy is superseded on this machine's devices, another's elsewhere.
    copy = {
        "backend": "onnxruntime",
        "device": "cuda-sm_90",
        "runtime": "onnxruntime-1.18.0",
        "format": CACHE_FORMAT,
    }
    assert entry_status(copy, ".onnx", {"onnxruntime": "onnxruntime-1.18.0"}, devices)[0] == "superseded"
    assert entry_status(copy, ".onnx", {"onnxruntime": None}, frozenset({"portable"}))[0] == "other-target"


def test_an_entry_being_built_is_not_removed(cache: Path) -> None:
    ts = _only(cache, "torchscript-*.ts")
    stale = _copy(ts, f"torchscript-fp32-{device_tag(CPU)}-0000000000000009.ts", _set(runtime="torch-1.0.0"))
    lock = stale.with_name(stale.name + ".lock")
    lock.touch()
    (entry,) = [e for e in scan_cache(cache, current_runtimes(), machine_device_tags()) if e.path == stale]
    assert entry.status == "stale"
    assert lock in entry.files
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another builder holds it
        assert remove_entry(entry) == 0
        assert stale.exists()
    finally:
        os.close(fd)
    assert remove_entry(entry) == entry.size
    assert not stale.exists()
    assert not lock.exists()
    assert not EngineCache.sidecar(stale).exists()


def test_an_entry_that_changed_since_the_scan_is_not_removed(cache: Path) -> None:
    """The scan takes no lock: an engine listed as an orphan because its build had not yet
    written the sidecar, or a corrupt one rebuilt since, is valid by the time the prune reaches
    it, and is left alone (it was deleted, a valid engine lost)."""
    ts = _only(cache, "torchscript-*.ts")
    mid_build = ts.with_name(f"torchscript-fp32-{device_tag(CPU)}-000000000000000a.ts")
    shutil.copy(ts, mid_build)  # the engine is in place, its sidecar not yet
    rebuilt = _copy(ts, f"torchscript-fp32-{device_tag(CPU)}-000000000000000b.ts")
    rebuilt.write_bytes(rebuilt.read_bytes()[:100])
    entries = {e.path: e for e in scan_cache(cache, current_runtimes(), machine_device_tags())}
    assert (entries[mid_build].status, entries[rebuilt].status) == ("orphan", "corrupt")
    shutil.copy(EngineCache.sidecar(ts), EngineCache.sidecar(mid_build))  # the build finishes
    shutil.copy(ts, rebuilt)  # rebuilt in full
    for path in (mid_build, rebuilt):
        assert remove_entry(entries[path]) == 0
        assert path.exists()
        assert EngineCache.sidecar(path).exists()
    again = {e.path: e for e in scan_cache(cache, current_runtimes(), machine_device_tags())}
    assert again[mid_build].status == again[rebuilt].status == "ok"
    # unchanged since its scan, an entry goes, engine before sidecar
    orphan = ts.with_name(f"torchscript-fp32-{device_tag(CPU)}-000000000000000c.ts")
    shutil.copy(ts, orphan)
    (entry,) = [e for e in scan_cache(cache, current_runtimes(), machine_device_tags()) if e.path == orphan]
    assert remove_entry(entry) == entry.size > 0
    assert not orphan.exists()


def test_prune_never_deletes_what_the_cache_did_not_write(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cache-dir pointed one level too high (at the folder that also holds the weights), or at
    a project folder: files the cache never names are not listed and never deleted (every file
    without a sidecar used to be an "orphan", and pruned); the cache's own leftovers still are."""
    weights = cache / "weights"
    weights.mkdir()
    (weights / "mmdet_anime-face_yolov3.pth").write_bytes(b"PK\x03\x04 weights")
    (weights / "mmdet_anime-face_yolov3.pth.sha256").write_text("ab  x\n")
    (cache / NET / "notes.json").write_text("{}")
    (cache / NET / "README.md").write_text("mine")
    ts = _only(cache, "torchscript-*.ts")
    orphan = ts.with_name(ts.name.replace(ts.name[-19:-3], "0" * 16))
    shutil.copy(ts, orphan)  # a real leftover: an engine name without its sidecar
    listed = _listing(cache, capsys, "--prune")
    assert listed.get(orphan.name) == "orphan"
    assert not orphan.exists()
    assert set(listed) == {ts.name, _only(cache, "onnx-*.onnx").name, orphan.name}
    for p in (weights / "mmdet_anime-face_yolov3.pth", weights / "mmdet_anime-face_yolov3.pth.sha256",
              cache / NET / "notes.json", cache / NET / "README.md"):  # fmt: skip
        assert p.exists(), p


def test_cache_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--log-level", "ERROR", "cache", "--cache-dir", str(tmp_path), "--dry-run"]) == 2
    assert _listing(tmp_path / "none", capsys) == {}
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert main(["--log-level", "ERROR", "cache", "--cache-dir", str(not_dir)]) == 2
    # "" is not "the current folder": refused (run in a scratch folder all the same, so that a
    # regression deletes nothing that matters: an old afd_trt pruned the working folder here)
    scratch = tmp_path / "cwd"
    (scratch / "project").mkdir(parents=True)
    (scratch / "project" / "main.py").write_text("print()")
    monkeypatch.chdir(scratch)
    assert main(["--log-level", "ERROR", "cache", "--cache-dir", "", "--prune"]) == 2
    assert (scratch / "project" / "main.py").exists()
