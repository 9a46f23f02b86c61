"""afd_trt.weights: reading checkpoints, strict loading, resolution order, verified downloads.

Downloads go to a real ThreadingHTTPServer on 127.0.0.1 (tests/http_server.py) or file:// URLs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import multiprocessing.synchronize
import pickle
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from http_server import (
    LocalServer,
    closed_port_url,
    fail_first,
    serve_bytes,
    serve_truncated,
    serve_unsized,
    stall,
)
from safetensors.torch import save_file

from afd_trt.config import WeightsSpec, load_config
from afd_trt.weights import (
    ENV_CACHE_DIR,
    ENV_WEIGHTS_DIR,
    TEST_WEIGHTS_KEY,
    CheckpointError,
    CheckpointUnavailableError,
    ChecksumError,
    DownloadError,
    default_cache_dir,
    download,
    is_test_weights,
    load_checkpoint,
    load_into,
    load_state_dict,
    resolve_checkpoint,
    sha256_file,
)

FILE = "mmdet_anime-face_yolov3.pth"


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 3, generator=g), "a.bias": torch.randn(3, generator=g)}


def _pth_bytes(obj: object, **kw: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _payload(seed: int = 0, size_pad: int = 0) -> bytes:
    """A real mm*-layout checkpoint; ``size_pad`` extra floats make it span several chunks."""
    sd = _state(seed)
    if size_pad:
        sd["pad"] = torch.zeros(size_pad)
    return _pth_bytes({"meta": {"epoch": 3}, "state_dict": sd})


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _leftovers(d: Path) -> list[str]:
    """Files in ``d`` other than the kept lock files."""
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AFD_TRT_* variables from the caller's shell; HOME-based cache redirected to tmp."""
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


# --------------------------------------------------------------------------- load_state_dict


@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("legacy", [False, True])
def test_load_pth_wrapped_and_bare(tmp_path: Path, wrapped: bool, legacy: bool) -> None:
    sd = _state(1)
    obj = {"meta": {"mmdet_version": "2.28.2"}, "state_dict": sd} if wrapped else sd
    path = tmp_path / "m.pth"
    path.write_bytes(_pth_bytes(obj, _use_new_zipfile_serialization=not legacy))
    got = load_state_dict(path)
    assert got.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)
    assert is_test_weights(path) is None


def test_load_safetensors(tmp_path: Path) -> None:
    sd = _state(2)
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path), metadata={"source": "unit test"})
    got = load_state_dict(str(path))
    assert got.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)
    assert is_test_weights(path) is None


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_under_the_other_suffix_is_read_by_its_content(tmp_path: Path, legacy: bool) -> None:
    sd = _state(3)
    pth_named_st = tmp_path / "a.safetensors"
    pth_named_st.write_bytes(_pth_bytes({"state_dict": sd}, _use_new_zipfile_serialization=not legacy))
    st_named_pth = tmp_path / "b.pth"
    save_file(sd, str(st_named_pth), metadata={TEST_WEIGHTS_KEY: "seed=3"})
    for path in (pth_named_st, st_named_pth):
        got = load_state_dict(path)
        assert got.keys() == sd.keys()
        for k in sd:
            torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)
    assert is_test_weights(pth_named_st) is None
    assert is_test_weights(st_named_pth) == "seed=3"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path: Path, suffix: str) -> None:
    """safetensors files start with their header's length, little-endian; when its low byte is
    0x80 (1 in 32 of the 8-byte-padded headers) the file starts with the pickle's first byte.
    Such a file was read as a pickle and refused as "pickled code"."""
    sd = _state(5)
    seen = set()
    for pad in range(0, 400, 8):
        path = tmp_path / f"m{pad}{suffix}"
        save_file(sd, str(path), metadata={TEST_WEIGHTS_KEY: "seed=5", "pad": "x" * pad})
        head = path.read_bytes()[:8]
        if head[0] != 0x80:
            continue
        seen.add(int.from_bytes(head, "little"))
        got = load_state_dict(path)
        for k in sd:
            torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)
        assert is_test_weights(path) == "seed=5"
    assert seen, "no header length ending in 0x80 was made: the case is not exercised"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bytes_of_no_checkpoint_format_are_named_as_such(tmp_path: Path, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes()
    path = tmp_path / "m.pth"
    path.write_bytes(b"\x00" + data)  # never a zip, pickle or safetensors header
    with pytest.raises(CheckpointError, match=r"m\.pth: not a checkpoint: its first bytes are neither a zip"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        is_test_weights(path)


def test_test_weights_marker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st = tmp_path / "t.safetensors"
    save_file(_state(), str(st), metadata={TEST_WEIGHTS_KEY: "seed=7"})
    pth = tmp_path / "t.pth"
    pth.write_bytes(_pth_bytes({"meta": {TEST_WEIGHTS_KEY: "seed=8"}, "state_dict": _state()}))
    assert is_test_weights(st) == "seed=7"
    assert is_test_weights(pth) == "seed=8"
    with caplog.at_level(logging.WARNING, logger="afd_trt.weights"):
        load_state_dict(pth)
    assert "TEST weights" in caplog.text
    assert "seed=8" in caplog.text
    assert str(pth) in caplog.text


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: no such file"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_state_dict(tmp_path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.\S+: file is empty"):
        load_state_dict(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_pth(tmp_path: Path, fraction: float) -> None:
    data = _payload(size_pad=4096)
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be read as a torch\.save file"):
        load_state_dict(path)


@pytest.mark.parametrize("fraction", [0.002, 0.5, 0.95])
def test_truncated_safetensors(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.safetensors"
    save_file({"pad": torch.zeros(4096)}, str(full))
    data = full.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: cannot be read as a safetensors file"):
        load_state_dict(path)


def test_html_page_saved_as_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    path.write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_state_dict(path)


class _Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("via", ["torch.save", "pickle.dumps"])
def test_pickled_code_is_refused(tmp_path: Path, via: str) -> None:
    target = tmp_path / "pwned"
    obj = {"state_dict": _state(), "hook": _Evil(target)}
    path = tmp_path / "evil.pth"
    path.write_bytes(_pth_bytes(obj) if via == "torch.save" else pickle.dumps(obj))
    with pytest.raises(CheckpointError, match=r"evil\.pth"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match=r"evil\.pth"):
        is_test_weights(path)
    assert not target.exists(), "unpickling ran code from the checkpoint"


def test_pickled_code_message(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(_pth_bytes({"state_dict": _state(), "hook": _Evil(tmp_path / "pwned")}))
    with pytest.raises(CheckpointError, match="never unpickles code"):
        load_state_dict(path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([torch.zeros(2)], "holds a list, not a dict"),
        (torch.zeros(2), "holds a Tensor, not a dict"),
        ({"state_dict": {}}, "state dict is empty"),
        ({}, "state dict is empty"),
        (
            {"a.weight": torch.zeros(2), "b": 3, "c": "x"},
            r"2 non-tensor value\(s\): 'b' \(int\), 'c' \(str\)",
        ),
        (
            {"meta": {}, "state_dict": {"a": torch.zeros(1), "n": [1, 2]}},
            r"1 non-tensor value\(s\): 'n' \(list\)",
        ),
    ],
)
def test_not_a_state_dict(tmp_path: Path, obj: object, message: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(_pth_bytes(obj))
    with pytest.raises(CheckpointError, match=r"bad\.pth: .*" + message):
        load_state_dict(path)


def test_empty_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    save_file({}, str(path))
    with pytest.raises(CheckpointError, match=r"none\.safetensors: the state dict is empty"):
        load_state_dict(path)


# --------------------------------------------------------------------------- load_into


class _Net(torch.nn.Module):
    def __init__(self, width: int = 3, n_extra: int = 0) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, width)
        self.bn = torch.nn.BatchNorm1d(width)
        self.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(n_extra))


def _net_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in net.state_dict().items()}


def test_load_into_ok_and_bn_counter_optional() -> None:
    net = _Net()
    sd = _net_state(net, 0)
    del sd["bn.num_batches_tracked"]  # old checkpoints lack it; torch fills in 0
    load_into(net, sd, "ckpt.pth")
    for k, v in sd.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
    assert int(net.bn.num_batches_tracked) == 0


def test_load_into_reports_every_problem_and_copies_nothing() -> None:
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = _net_state(_Net(width=4), 1)  # a.*, bn.* shapes differ
    del sd["bn.running_var"]
    sd["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"checkpoint some/ckpt\.pth does not fit _Net") as ei:
        load_into(net, sd, "some/ckpt.pth")
    msg = str(ei.value)
    assert "1 missing key(s): [bn.running_var]" in msg
    assert "1 unexpected key(s): [head.weight]" in msg
    assert "5 shape mismatch(es)" in msg
    assert "a.weight: checkpoint (4, 3) vs model (3, 3)" in msg
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_load_into_refuses_values_that_are_not_weights() -> None:
    """An integer or bool tensor where the model has floats, and NaN or infinite values, are
    refused by name (they were cast and loaded, giving NaN or nonsense outputs); fp16 loads."""
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = _net_state(net, 4)
    sd["a.bias"] = sd["a.bias"].to(torch.int64)
    sd["bn.running_var"] = sd["bn.running_var"] > 0
    sd["a.weight"][0, 0] = float("nan")
    sd["bn.weight"][1] = float("-inf")
    with pytest.raises(ValueError, match="does not fit _Net") as ei:
        load_into(net, sd, "w.pth")
    msg = str(ei.value)
    assert (
        "2 dtype mismatch(es): [a.bias: checkpoint int64 vs model float32, bn.running_var: checkpoint bool vs model float32]"
        in msg
    )
    assert "2 tensor(s) with NaN or infinite values: [a.weight, bn.weight]" in msg
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    half = {k: v.half() if v.is_floating_point() else v for k, v in _net_state(net, 5).items()}
    load_into(net, half, "half.pth")
    torch.testing.assert_close(net.a.weight, half["a.weight"].float(), rtol=0, atol=0)


def test_load_into_names_a_data_parallel_prefix() -> None:
    net = _Net()
    sd = {f"module.{k}": v for k, v in _net_state(net, 6).items()}
    with pytest.raises(
        ValueError, match=r"every key carries a 'module\.' prefix \(as torch\.nn\.DataParallel"
    ):
        load_into(net, sd, "dp.pth")


def test_load_into_truncates_long_lists() -> None:
    net = _Net(n_extra=20)  # 40 extra.* entries
    sd = {k: v for k, v in _net_state(net, 2).items() if not k.startswith("extra.")}
    with pytest.raises(ValueError, match=r"40 missing key\(s\): \[extra\.0\.weight, .*\(30 more\)\]") as ei:
        load_into(net, sd, "x")
    assert "extra.19.bias" not in str(ei.value)


def test_load_checkpoint_returns_marker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = _Net()
    sd = {k: v.contiguous() for k, v in _net_state(net, 3).items()}
    plain, marked = tmp_path / "p.safetensors", tmp_path / "m.safetensors"
    save_file(sd, str(plain))
    save_file(sd, str(marked), metadata={TEST_WEIGHTS_KEY: "seed=3"})
    assert load_checkpoint(net, plain) is None
    with caplog.at_level(logging.WARNING, logger="afd_trt.weights"):
        assert load_checkpoint(_Net(), marked) == "seed=3"
    assert "seed=3" in caplog.text
    torch.testing.assert_close(net.a.weight.detach(), sd["a.weight"], rtol=0, atol=0)


# --------------------------------------------------------------------------- download


def test_download_success_records_digest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _payload(size_pad=600_000)  # > 2 MiB: several read chunks
    dest = tmp_path / "sub" / FILE
    with (
        LocalServer({"/f": serve_bytes(data)}) as srv,
        caplog.at_level(logging.INFO, logger="afd_trt.weights"),
    ):
        assert download(srv.url("/f"), dest) == dest
        assert download(srv.url("/f"), dest) == dest  # present and verified: not fetched again
        assert srv.hits["/f"] == 1
    assert dest.read_bytes() == data
    assert (tmp_path / "sub" / f"{FILE}.sha256").read_text() == f"{_sha(data)}  {FILE}\n"
    assert _leftovers(dest.parent) == sorted([FILE, f"{FILE}.sha256"])
    assert "not pinned" in caplog.text
    assert "trust on first use" in caplog.text
    assert "downloading http://127.0.0.1" in caplog.text
    torch.testing.assert_close(load_state_dict(dest)["pad"], torch.zeros(600_000))


def test_download_pinned(tmp_path: Path) -> None:
    data = _payload()
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_bytes(data)}) as srv:
        download(srv.url("/f"), dest, sha256=_sha(data).upper())
    assert dest.read_bytes() == data
    assert _leftovers(tmp_path) == [FILE]  # pinned: no sidecar


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    data = _payload()
    wrong = _sha(b"something else")
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_bytes(data)}) as srv:
        with pytest.raises(ChecksumError) as ei:
            download(srv.url("/f"), dest, sha256=wrong, retries=2)
        assert srv.hits["/f"] == 1  # a mismatch is not retried
    assert _sha(data) in str(ei.value)
    assert wrong in str(ei.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("retries", [0, 1])
def test_download_interrupted(tmp_path: Path, retries: int) -> None:
    data = _payload(size_pad=50_000)
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_truncated(data, sent=len(data) // 3)}) as srv:
        with pytest.raises(
            DownloadError, match=rf"interrupted: received {len(data) // 3} of {len(data)} bytes"
        ):
            download(srv.url("/f"), dest, retries=retries)
        assert srv.hits["/f"] == 1 + retries
    assert _leftovers(tmp_path) == []


def test_download_without_content_length(tmp_path: Path) -> None:
    data = _payload(size_pad=50_000)
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_unsized(data)}) as srv:
        download(srv.url("/f"), dest, sha256=_sha(data))
    assert dest.read_bytes() == data


def test_download_404_not_retried(tmp_path: Path) -> None:
    with LocalServer({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404") as ei:
            download(srv.url("/missing.pth"), tmp_path / FILE, retries=2)
        assert srv.hits["/missing.pth"] == 1
    assert "/missing.pth" in str(ei.value)
    assert _leftovers(tmp_path) == []


def test_download_retries_after_500(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _payload()
    dest = tmp_path / FILE
    with LocalServer({"/f": fail_first(1, 500, serve_bytes(data))}) as srv:
        with caplog.at_level(logging.WARNING, logger="afd_trt.weights"):
            download(srv.url("/f"), dest, retries=1)
        assert srv.hits["/f"] == 2
    assert dest.read_bytes() == data
    assert "HTTP 500" in caplog.text
    with LocalServer({"/f": fail_first(2, 503, serve_bytes(data))}) as srv:
        with pytest.raises(DownloadError, match="HTTP 503"):
            download(srv.url("/f"), tmp_path / "other.pth", retries=1)
        assert srv.hits["/f"] == 2


def test_download_timeout(tmp_path: Path) -> None:
    release = threading.Event()
    with LocalServer({"/f": stall(release)}) as srv:
        try:
            with pytest.raises(DownloadError, match="timed out"):
                download(srv.url("/f"), tmp_path / FILE, timeout=0.3, retries=0)
        finally:
            release.set()
    assert _leftovers(tmp_path) == []


def test_download_refetches_corrupted_file(tmp_path: Path) -> None:
    data = _payload()
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_bytes(data)}) as srv:
        download(srv.url("/f"), dest)
        dest.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit on disk
        download(srv.url("/f"), dest)
        assert srv.hits["/f"] == 2
    assert dest.read_bytes() == data


def test_a_refetch_is_checked_against_the_recorded_digest(tmp_path: Path) -> None:
    """The digest recorded at the first download guards later ones: a server that now sends
    other bytes (a changed or tampered file) is refused, naming the record to delete if the
    change is real, and the file on disk is not replaced."""
    first, other = _payload(), _payload(size_pad=10)
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_bytes(first)}) as srv:
        download(srv.url("/f"), dest)
    dest.write_bytes(first[:-1] + bytes([first[-1] ^ 1]))  # corrupt on disk: fetched again
    with (
        LocalServer({"/f": serve_bytes(other)}) as srv,
        pytest.raises(ChecksumError, match=rf"expected {_sha(first)} \(recorded in .*{FILE}\.sha256"),
    ):
        download(srv.url("/f"), dest)
    assert (tmp_path / f"{FILE}.sha256").read_text() == f"{_sha(first)}  {FILE}\n"
    assert _leftovers(tmp_path) == sorted([FILE, f"{FILE}.sha256"])


@pytest.mark.parametrize(
    ("body", "what"),
    [(b"<!DOCTYPE html><html><body>Please sign in</body></html>", "a text/HTML page"),
     (b"\x00\x01 some binary blob", "bytes of no checkpoint format")],
)  # fmt: skip
def test_a_page_served_as_the_checkpoint_is_not_kept(tmp_path: Path, body: bytes, what: str) -> None:
    """An error or login page sent with HTTP 200 used to be saved and its digest recorded, so
    every later run failed on it and nothing was fetched again; it is refused and nothing kept."""
    dest = tmp_path / FILE
    with LocalServer({"/f": serve_bytes(body)}) as srv:
        with pytest.raises(
            DownloadError, match=f"the server sent {what} \\({len(body)} bytes\\), not a checkpoint"
        ):
            download(srv.url("/f"), dest, retries=2)
        assert srv.hits["/f"] == 1  # not retried
    assert _leftovers(tmp_path) == []


def test_download_concurrent_threads(tmp_path: Path) -> None:
    data = _payload(size_pad=100_000)
    dest = tmp_path / FILE
    results: list[Path | BaseException] = []

    def worker(url: str) -> None:
        try:
            results.append(download(url, dest))
        except BaseException as e:
            results.append(e)

    with LocalServer({"/f": serve_bytes(data, delay_mid_s=0.3)}) as srv:
        threads = [threading.Thread(target=worker, args=(srv.url("/f"),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert srv.hits["/f"] == 1  # the lock made the others wait, then find it verified
    assert results == [dest] * 3
    assert dest.read_bytes() == data
    assert _leftovers(tmp_path) == sorted([FILE, f"{FILE}.sha256"])


def _child_download(go: multiprocessing.synchronize.Event, url: str, dest: str) -> None:
    go.wait(10)
    if download(url, Path(dest)) != Path(dest):
        raise SystemExit(1)


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock and fork are POSIX")
def test_download_concurrent_processes(tmp_path: Path) -> None:
    data = _payload(size_pad=100_000)
    dest = tmp_path / FILE
    srv = LocalServer({"/f": serve_bytes(data, delay_mid_s=0.5)})  # bound, not serving yet
    ctx = multiprocessing.get_context("fork")  # before the server thread starts; torch already imported
    go = ctx.Event()
    procs = [ctx.Process(target=_child_download, args=(go, srv.url("/f"), str(dest))) for _ in range(2)]
    for p in procs:
        p.start()
    with srv:
        go.set()  # both children start downloading together
        for p in procs:
            p.join(timeout=30)
        assert srv.hits["/f"] == 1  # the second process waited on the lock, then found it verified
    assert [p.exitcode for p in procs] == [0, 0]
    assert dest.read_bytes() == data
    assert _leftovers(tmp_path) == sorted([FILE, f"{FILE}.sha256"])


def test_download_file_url(tmp_path: Path) -> None:
    data = _payload()
    src = tmp_path / "src.pth"
    src.write_bytes(data)
    dest = tmp_path / "cache" / FILE
    assert download(src.as_uri(), dest, sha256=_sha(data)) == dest
    assert dest.read_bytes() == data
    with pytest.raises(DownloadError, match=r"nothere\.pth"):
        download((tmp_path / "nothere.pth").as_uri(), tmp_path / "cache" / "x.pth", retries=5)
    assert _leftovers(tmp_path / "cache") == [FILE]


def test_download_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only http://, https:// and file://"):
        download("ftp://127.0.0.1/x.pth", tmp_path / "x.pth")
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        download("http://127.0.0.1/x.pth", tmp_path / "x.pth", sha256="abc")


# --------------------------------------------------------------------------- resolve_checkpoint


def _spec(url: str = "", sha256: str = "") -> WeightsSpec:
    return WeightsSpec(file=FILE, url=url or closed_port_url(f"/{FILE}"), sha256=sha256)


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_resolve_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = clean_env
    data = _payload()
    with LocalServer({f"/{FILE}": serve_bytes(data)}) as srv:
        spec = _spec(srv.url(f"/{FILE}"))
        cache_root = tmp / "cache"
        # nothing local: downloaded into <cache_root>/weights
        got = resolve_checkpoint(spec, cache_dir=cache_root)
        assert got == cache_root / "weights" / FILE
        assert got.read_bytes() == data
        assert srv.hits[f"/{FILE}"] == 1
        # cached: used, not fetched again
        assert resolve_checkpoint(spec, cache_dir=cache_root) == got
        assert srv.hits[f"/{FILE}"] == 1
        # $AFD_TRT_WEIGHTS beats the cache; <stem>.safetensors is accepted there
        env_dir = tmp / "weights_dir"
        st = _put(env_dir / "mmdet_anime-face_yolov3.safetensors", b"st")
        monkeypatch.setenv(ENV_WEIGHTS_DIR, str(env_dir))
        assert resolve_checkpoint(spec, cache_dir=cache_root) == st
        pth = _put(env_dir / FILE, b"pth")  # the release name comes first
        assert resolve_checkpoint(spec, cache_dir=cache_root) == pth
        # an explicit path beats everything
        mine = _put(tmp / "mine.safetensors", b"mine")
        assert resolve_checkpoint(spec, str(mine), cache_dir=cache_root) == mine
        assert srv.hits[f"/{FILE}"] == 1


def test_resolve_explicit_missing(clean_env: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth: no such file"):
        resolve_checkpoint(_spec(), clean_env / "nothere.pth")


def test_resolve_env_cache_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = clean_env / "envcache"
    monkeypatch.setenv(ENV_CACHE_DIR, str(root))
    assert default_cache_dir() == root / "weights"
    cached = _put(root / "weights" / FILE, _payload())
    # no record yet: accepted (trust on first use) and recorded; the URL is never contacted
    assert resolve_checkpoint(_spec()) == cached
    assert (root / "weights" / f"{FILE}.sha256").read_text().split()[0] == sha256_file(cached)
    monkeypatch.delenv(ENV_CACHE_DIR)
    assert default_cache_dir() == clean_env / "xdg" / "afd_trt" / "weights"


def test_a_page_put_in_the_cache_by_hand_is_refused_not_recorded(clean_env: Path) -> None:
    """A file with no record is trusted on first use only when it is a checkpoint: a login page
    saved by hand (``wget -O``) was recorded, so the right file put there later was "corrupt"."""
    cached = _put(clean_env / "weights" / FILE, b"<!DOCTYPE html><html>Sign in</html>\n")
    with pytest.raises(CheckpointError, match=r"holds a text/HTML page, not a checkpoint"):
        resolve_checkpoint(_spec(), cache_dir=clean_env, download=False)
    assert not (clean_env / "weights" / f"{FILE}.sha256").exists()
    cached.write_bytes(_payload())  # the right file, put there afterwards
    assert resolve_checkpoint(_spec(), cache_dir=clean_env, download=False) == cached


def test_an_explicit_checkpoint_needs_no_weights_section(clean_env: Path) -> None:
    """A custom config without [weights] (file empty) with the checkpoint given by path: used
    (it was refused for the empty file name it did not need); without a path, a clear error."""
    mine = _put(clean_env / "mine.pth", _payload())
    assert resolve_checkpoint(WeightsSpec(file="", url="", sha256=""), mine) == mine
    with pytest.raises(ValueError, match=r"names no file: pass the checkpoint's path"):
        resolve_checkpoint(WeightsSpec(file="", url="", sha256=""))


def test_new_test_weights_drop_a_stale_checksum_record(clean_env: Path) -> None:
    """make-test-weights into a weights cache: the files' old sha256 records would call the new
    files corrupt (offline) or refuse the real download (online); they are dropped."""
    from afd_trt.test_weights import write_test_weights

    cache = clean_env / "weights"
    paths = write_test_weights(cache, seed=0)
    spec = load_config("hrnetv2").weights
    first = resolve_checkpoint(spec, cache_dir=clean_env, download=False)  # records its sha256
    assert first == paths["hrnetv2"]["pth"]
    assert (cache / f"{spec.file}.sha256").exists()
    write_test_weights(cache, seed=1)
    assert not (cache / f"{spec.file}.sha256").exists()
    assert resolve_checkpoint(spec, cache_dir=clean_env, download=False) == first


def test_resolve_offline_message(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url(f"/{FILE}")
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(clean_env / "my_weights"))
    cache_root = clean_env / "c"
    with pytest.raises(CheckpointUnavailableError) as ei:
        resolve_checkpoint(_spec(url), cache_dir=cache_root)
    msg = str(ei.value)
    assert url in msg
    assert "AFD_TRT_WEIGHTS" in msg
    assert str(clean_env / "my_weights") in msg
    assert str(cache_root / "weights" / FILE) in msg
    assert "cannot connect" in msg
    assert _leftovers(cache_root / "weights") == []


def test_resolve_download_off(clean_env: Path) -> None:
    with LocalServer({f"/{FILE}": serve_bytes(_payload())}) as srv:
        with pytest.raises(CheckpointUnavailableError, match="downloading is off") as ei:
            resolve_checkpoint(_spec(srv.url(f"/{FILE}")), cache_dir=clean_env, download=False)
        assert srv.hits[f"/{FILE}"] == 0
    assert str(clean_env / "weights" / FILE) in str(ei.value)


def test_resolve_corrupt_cache(clean_env: Path) -> None:
    data = _payload()
    with LocalServer({f"/{FILE}": serve_bytes(data)}) as srv:
        spec = _spec(srv.url(f"/{FILE}"))
        path = resolve_checkpoint(spec, cache_dir=clean_env)
        path.write_bytes(data[: len(data) // 2])  # damaged on disk after the first download
        with pytest.raises(CheckpointUnavailableError, match="is corrupt"):
            resolve_checkpoint(spec, cache_dir=clean_env, download=False)
        assert resolve_checkpoint(spec, cache_dir=clean_env) == path  # fetched again
        assert srv.hits[f"/{FILE}"] == 2
    assert path.read_bytes() == data


def test_resolve_pinned(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _payload()
    with LocalServer({f"/{FILE}": serve_bytes(data)}) as srv:
        with pytest.raises(CheckpointUnavailableError, match="sha256 mismatch"):
            resolve_checkpoint(_spec(srv.url(f"/{FILE}"), sha256="0" * 64), cache_dir=clean_env)
        assert _leftovers(clean_env / "weights") == []
        good = _spec(srv.url(f"/{FILE}"), sha256=_sha(data))
        assert resolve_checkpoint(good, cache_dir=clean_env).read_bytes() == data
    env_dir = clean_env / "w"
    _put(env_dir / FILE, b"not the release")
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(env_dir))
    with pytest.raises(CheckpointError, match=r"differs from [0-9a-f]{64} pinned"):
        resolve_checkpoint(good, cache_dir=clean_env)


@pytest.mark.parametrize("name", ["yolov3", "faster-rcnn", "hrnetv2"])
def test_packaged_configs_name_release_files(name: str) -> None:
    spec = load_config(name).weights
    assert spec.file.endswith(".pth")
    assert spec.url.startswith("https://github.com/hysts/anime-face-detector/releases/download/v0.0.1/")
    assert spec.url.endswith("/" + spec.file)
