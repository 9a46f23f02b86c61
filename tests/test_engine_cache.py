"""The engine cache: key -> path layout, build once then reuse, stale / corrupt / foreign entries
rebuilt or refused, atomic writes, one build when two builders race. Engines here are small byte
files written by test builders, so these tests need no network and run in well under a second."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from afd_trt.engine_cache import (
    CACHE_FORMAT,
    EngineCache,
    EngineKey,
    EngineMismatchError,
    check_same_target,
    cuda_device_tag,
    default_engine_cache_dir,
    device_tag,
    state_dict_sha256,
)

KEY = EngineKey(
    model="yolov3",
    weights_sha256="a" * 64,
    config_hash="b" * 64,
    backend="tensorrt",
    device="cuda-sm_90",
    runtime="tensorrt-10.3.0",
    precision="fp16",
)


class Builder:
    """Writes ``payload`` to the path it is given, counting calls; optionally slow or failing."""

    def __init__(self, payload: bytes = b"engine-bytes", delay: float = 0.0, fail: bool = False) -> None:
        self.payload, self.delay, self.fail = payload, delay, fail
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, dest: Path) -> dict[str, object]:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        dest.write_bytes(self.payload)
        if self.fail:
            raise RuntimeError("builder failed")
        return {"extra": "meta"}


def load(path: Path) -> bytes:
    return path.read_bytes()


def test_path_layout_names_the_target(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.path_for(KEY, ".plan")
    assert path.parent == tmp_path / "yolov3"
    assert re.fullmatch(r"tensorrt-fp16-cuda-sm_90-[0-9a-f]{16}\.plan", path.name)
    assert path.name.removesuffix(".plan").endswith(KEY.digest()[:16])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "hrnetv2"),
        ("weights_sha256", "c" * 64),
        ("config_hash", "d" * 64),
        ("backend", "onnxruntime"),
        ("device", "cuda-sm_86"),
        ("runtime", "tensorrt-10.0.1"),
        ("precision", "fp32"),
        ("format", CACHE_FORMAT + 1),
    ],
)
def test_every_key_field_changes_the_path(tmp_path: Path, field: str, value: object) -> None:
    cache = EngineCache(tmp_path)
    other = dataclasses.replace(KEY, **{field: value})
    assert cache.path_for(other, ".plan") != cache.path_for(KEY, ".plan")


def test_default_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AFD_TRT_CACHE", str(tmp_path / "root"))
    assert default_engine_cache_dir() == tmp_path / "root" / "engines"
    assert EngineCache().root == tmp_path / "root" / "engines"
    monkeypatch.delenv("AFD_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_engine_cache_dir() == tmp_path / "xdg" / "afd_trt" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_engine_cache_dir() == tmp_path / "home" / ".cache" / "afd_trt" / "engines"


def test_built_once_then_reused_with_sidecar(tmp_path: Path) -> None:
    cache, builder = EngineCache(tmp_path), Builder()
    assert cache.load_or_build(KEY, ".plan", builder, load) == b"engine-bytes"
    assert cache.load_or_build(KEY, ".plan", builder, load) == b"engine-bytes"
    assert builder.calls == 1
    path = cache.path_for(KEY, ".plan")
    meta = json.loads(cache.sidecar(path).read_text())
    assert meta["key"] == dataclasses.asdict(KEY)
    assert meta["file_sha256"] == hashlib.sha256(b"engine-bytes").hexdigest()
    assert meta["file_size"] == len(b"engine-bytes")
    assert meta["extra"] == "meta"
    assert cache.validate(path, KEY) is None
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".part")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b"engine-bytez"), "corrupt"),  # same size, other bytes
        (lambda p: p.write_bytes(b"engine"), "truncated"),
        (lambda p: p.with_name(p.name + ".json").unlink(), "no readable metadata"),
        (lambda p: p.with_name(p.name + ".json").write_text("{not json"), "no readable metadata"),
        (lambda p: p.with_name(p.name + ".json").write_text('{"key": []}'), "no readable metadata"),
        (lambda p: p.with_name(p.name + ".json").write_text("null"), "no readable metadata"),
        (lambda p: p.unlink(), "not built yet"),
    ],
)
def test_damaged_entry_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], object], reason: str
) -> None:
    cache, builder = EngineCache(tmp_path), Builder()
    cache.load_or_build(KEY, ".plan", builder, load)
    path = cache.path_for(KEY, ".plan")
    damage(path)
    assert reason in str(cache.validate(path, KEY))
    with caplog.at_level(logging.INFO, logger="afd_trt.engine_cache"):
        assert cache.load_or_build(KEY, ".plan", builder, load) == b"engine-bytes"
    assert builder.calls == 2
    assert cache.validate(path, KEY) is None
    if reason != "not built yet":
        assert any("rebuilding" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_an_entry_that_cannot_be_read_is_a_reason_not_an_error(tmp_path: Path) -> None:
    """``validate`` turns an OSError on the entry (another user's 0600 file, a folder it cannot
    search; here a name too long for the file system) into a reason, so the build loop and the
    Detector rebuild or fall back instead of failing."""
    key = dataclasses.replace(KEY, model="m" * 300)
    why = EngineCache(tmp_path).validate(EngineCache(tmp_path).path_for(key, ".plan"), key)
    assert why is not None
    assert why.startswith("cannot read it (OSError: File name too long")


def test_entry_recorded_for_another_target_is_refused_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, builder = EngineCache(tmp_path), Builder()
    cache.load_or_build(KEY, ".plan", builder, load)
    path = cache.path_for(KEY, ".plan")
    side = cache.sidecar(path)
    meta = json.loads(side.read_text())
    meta["key"].update(device="cuda-sm_86", runtime="tensorrt-10.0.1")
    side.write_text(json.dumps(meta))
    reason = cache.validate(path, KEY)
    assert reason is not None
    for text in ("cuda-sm_86", "cuda-sm_90", "tensorrt-10.0.1", "tensorrt-10.3.0"):
        assert text in reason
    with caplog.at_level(logging.WARNING, logger="afd_trt.engine_cache"):
        cache.load_or_build(KEY, ".plan", builder, load)
    assert builder.calls == 2
    assert any("cuda-sm_86" in r.getMessage() for r in caplog.records)


def test_check_same_target_names_both_sides() -> None:
    check_same_target(dataclasses.asdict(KEY), KEY)
    with pytest.raises(
        EngineMismatchError, match=r"'cuda-sm_86'.*'cuda-sm_90'.*'tensorrt-9\.9'.*'tensorrt-10\.3\.0'"
    ):
        check_same_target({**dataclasses.asdict(KEY), "device": "cuda-sm_86", "runtime": "tensorrt-9.9"}, KEY)
    with pytest.raises(EngineMismatchError, match="precision 'fp32'"):
        check_same_target({**dataclasses.asdict(KEY), "precision": "fp32"}, KEY)


def test_an_unwritable_cache_builds_for_this_process_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache that cannot be written (here a file where its folder should be; for a user
    without write access the same path is taken) builds into a per-process scratch cache with
    one warning naming it, instead of failing the Detector; a valid entry it holds still loads."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = EngineCache(blocker / "engines")
    builder = Builder()
    key = dataclasses.replace(KEY, weights_sha256=hashlib.sha256(str(tmp_path).encode()).hexdigest())
    with caplog.at_level(logging.WARNING, logger="afd_trt.engine_cache"):
        assert cache.load_or_build(key, ".plan", builder, load) == b"engine-bytes"
        assert cache.load_or_build(key, ".plan", builder, load) == b"engine-bytes"
    assert builder.calls == 1  # the scratch cache keeps it for the process
    warned = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warned) == 1
    assert str(blocker / "engines") in warned[0]
    assert "for this process only" in warned[0]
    assert blocker.read_text() == "x"


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    with pytest.raises(RuntimeError, match="builder failed"):
        cache.load_or_build(KEY, ".plan", Builder(fail=True), load)
    path = cache.path_for(KEY, ".plan")
    assert not path.exists()
    assert not cache.sidecar(path).exists()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == []
    builder = Builder()
    assert cache.load_or_build(KEY, ".plan", builder, load) == b"engine-bytes"
    assert builder.calls == 1


def test_racing_builders_build_once(tmp_path: Path) -> None:
    """flock locks belong to open file descriptions, so two threads with their own descriptors
    exclude each other just as two processes do."""
    cache, builder = EngineCache(tmp_path), Builder(delay=0.3)
    results: list[bytes] = []

    def work() -> None:
        results.append(EngineCache(tmp_path).load_or_build(KEY, ".plan", builder, load))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"engine-bytes"] * 3
    assert builder.calls == 1
    assert cache.validate(cache.path_for(KEY, ".plan"), KEY) is None


def test_contains(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    (tmp_path / "cache" / "m").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert cache.contains(tmp_path / "cache" / "m" / "x.ts")
    assert not cache.contains(tmp_path / "elsewhere" / "x.ts")
    assert not cache.contains(tmp_path / "cache" / ".." / "elsewhere" / "x.ts")
    (tmp_path / "cache" / "m" / "link").symlink_to(tmp_path / "elsewhere")
    assert not cache.contains(tmp_path / "cache" / "m" / "link" / "x.ts")


def test_state_dict_sha256_tracks_values() -> None:
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    b.load_state_dict(a.state_dict())
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert re.fullmatch(r"[0-9a-f]{64}", state_dict_sha256(a))
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-6
    assert state_dict_sha256(a) != state_dict_sha256(b)
    b.load_state_dict(a.state_dict())
    b[1].num_batches_tracked += 1  # a 0-d buffer counts too
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_device_tag() -> None:
    assert re.fullmatch(r"cpu-[a-z0-9_]+-[a-z0-9_]+", device_tag(torch.device("cpu")))
    with pytest.raises(ValueError, match="unsupported device"):
        device_tag(torch.device("meta"))


@pytest.mark.parametrize(
    ("capability", "name", "tag"),
    [
        ((9, 0), "NVIDIA H200", "cuda-sm_90-nvidia-h200"),
        ((9, 0), "NVIDIA H100 80GB HBM3", "cuda-sm_90-nvidia-h100-80gb-hbm3"),
        ((8, 6), "NVIDIA GeForce RTX 3080 (Laptop)", "cuda-sm_86-nvidia-geforce-rtx-3080-laptop"),
        ((12, 0), "", "cuda-sm_120-unknown"),
    ],
)
def test_cuda_device_tag(capability: tuple[int, int], name: str, tag: str) -> None:
    """Architecture and GPU model: an H100's TensorRT plan is not an H200's, though both are sm_90."""
    assert cuda_device_tag(capability, name) == tag


@pytest.mark.needs_cuda
def test_device_tag_cuda() -> None:
    major, minor = torch.cuda.get_device_capability(0)
    tag = device_tag(torch.device("cuda:0"))
    assert tag == cuda_device_tag((major, minor), torch.cuda.get_device_name(0))
    assert tag.startswith(f"cuda-sm_{major}{minor}-")
    assert device_tag(torch.device("cuda")) == device_tag(torch.device("cuda", torch.cuda.current_device()))
