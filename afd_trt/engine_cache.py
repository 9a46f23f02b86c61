"""On-disk cache of built engines (TorchScript files, ONNX models, TensorRT plans).

Layout (``root`` = ``$AFD_TRT_CACHE/engines``, else ``$XDG_CACHE_HOME/afd_trt/engines``, else
``~/.cache/afd_trt/engines``; overridable per ``Detector``)::

    root/<model>/<backend>-<precision>-<device>-<digest16><suffix>        the engine
    root/<model>/<backend>-<precision>-<device>-<digest16><suffix>.json   its metadata sidecar
    root/<model>/<backend>-<precision>-<device>-<digest16><suffix>.lock   build lock (kept)

ONNX models, which every ONNX runtime shares, are entries of backend ``onnx`` on device
``portable`` (``root/<model>/onnx-fp32-portable-<digest16>.onnx``, see ``afd_trt.engines``).

``digest16`` is the start of the sha256 of the whole :class:`EngineKey` (model, weights sha256,
config hash, backend, device, runtime version, precision, cache format). The sidecar repeats the
key and records the engine file's sha256 and size: an entry whose file does not hash to it
(truncated, corrupt), whose sidecar is missing or unreadable, or whose recorded key is not the one
asked for (a TensorRT plan from another GPU architecture or TensorRT version) is refused with a
message and rebuilt. Builds write a temporary file, then ``os.replace`` it into place (engine
first, sidecar last), under an exclusive ``fcntl.flock`` so two processes never build the same
engine at once; the second one waits and loads what the first built.

Engines can contain code (TorchScript, TensorRT plugins): they are loaded only from a cache
directory or from a path the caller explicitly trusts (see :func:`afd_trt.engines.load_engine_file`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .weights import ENV_CACHE_DIR, sha256_file

try:  # POSIX; elsewhere concurrent builds of one engine are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_FORMAT",
    "KEPT",
    "REMOVABLE",
    "CacheEntry",
    "EngineCache",
    "EngineKey",
    "EngineMismatchError",
    "check_same_target",
    "default_engine_cache_dir",
    "device_tag",
    "entry_status",
    "remove_entry",
    "scan_cache",
    "state_dict_sha256",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Bumped when what afd_trt writes into an engine changes: every older entry becomes stale.
2: reduced-precision TorchScript is traced channels-last. 3: fp32 TorchScript on the CPU keeps
eager's arithmetic (no BatchNorm folding)."""

T = TypeVar("T")


class EngineMismatchError(RuntimeError):
    """An engine was built for another target (GPU architecture, runtime version, ...)."""


def default_engine_cache_dir() -> Path:
    """``$AFD_TRT_CACHE/engines``, else ``$XDG_CACHE_HOME/afd_trt/engines``, else ``~/.cache/afd_trt/engines``."""
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        return Path(root).expanduser() / "engines"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "afd_trt" / "engines"


def cuda_device_tag(capability: tuple[int, int], name: str) -> str:
    """The device tag of a GPU: compute capability and model, e.g. ``(9, 0), "NVIDIA H200"`` ->
    ``"cuda-sm_90-nvidia-h200"``. The model is part of it because TensorRT tunes a plan for the
    exact GPU and advises against running it on another model of the same architecture (an H100
    plan on an H200)."""
    model = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
    return f"cuda-sm_{capability[0]}{capability[1]}-{model}"


def device_tag(device: torch.device) -> str:
    """What an engine is specific to on ``device``: ``"cpu-x86_64-avx2"`` (architecture and the
    vector ISA torch dispatches to) or ``"cuda-sm_90-nvidia-h200"`` (:func:`cuda_device_tag`)."""
    if device.type == "cuda":
        return cuda_device_tag(torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
    if device.type == "cpu":
        isa = torch.backends.cpu.get_cpu_capability().lower()
        return f"cpu-{platform.machine().lower()}-{isa}"
    raise ValueError(f"device_tag: unsupported device {device!r} (use 'cpu' or 'cuda[:N]')")


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: sorted names, dtypes, shapes and raw bytes.

    Independent of the checkpoint's file format, so a ``.pth`` and a ``.safetensors`` holding the
    same weights share their engines.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on.

    Attributes:
        model: network name (``"yolov3"``, ``"faster-rcnn"``, ``"faster-rcnn-box-head"``, ``"hrnetv2"``).
        weights_sha256: :func:`state_dict_sha256` of the network's weights.
        config_hash: :func:`afd_trt.config.config_hash` of the model config (with its ``[engine]`` profiles).
        backend: ``"torchscript"``, ``"tensorrt"``, or ``"onnx"`` (the ONNX model that ONNX
            Runtime, OpenVINO and TensorRT's builder share).
        device: :func:`device_tag` of the target (``"portable"`` for an ONNX model).
        runtime: runtime version(s), e.g. ``"torch-2.4.0"`` or ``"tensorrt-10.3.0"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """

    model: str
    weights_sha256: str
    config_hash: str
    backend: str
    device: str
    runtime: str
    precision: str
    format: int = CACHE_FORMAT

    def digest(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def stem(self) -> str:
        """File name without suffix: readable target fields plus a digest of the whole key."""
        return f"{self.backend}-{self.precision}-{self.device}-{self.digest()[:16]}"


def check_same_target(recorded: Mapping[str, Any], expected: EngineKey) -> None:
    """Raise :class:`EngineMismatchError` naming both sides when an engine's recorded key differs
    from ``expected`` (the device and runtime fields first: "built for X, this is Y")."""
    want = dataclasses.asdict(expected)
    diffs = [
        f"{field} {recorded.get(field)!r} (this machine/config: {want[field]!r})"
        for field in (
            "device",
            "runtime",
            "backend",
            "precision",
            "model",
            "weights_sha256",
            "config_hash",
            "format",
        )
        if recorded.get(field) != want[field]
    ]
    if diffs:
        raise EngineMismatchError(f"engine was built for another target: {'; '.join(diffs)}")


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _open_lock_file(lock_path: Path, *, create: bool) -> int:
    """A descriptor for ``flock`` on ``lock_path``: read-write (created if ``create``), or
    read-only where the file is another user's and not writable (``flock`` needs no write access;
    such a lock file made a rebuild fail with PermissionError)."""
    try:
        return os.open(lock_path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except PermissionError:
        return os.open(lock_path, os.O_RDONLY)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """``fcntl.flock`` on ``<path>.lock`` (kept afterwards: deleting lock files races)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    fd = _open_lock_file(lock_path, create=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building %s (lock %s)", path.name, lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_WARNED_UNWRITABLE: set[Path] = set()
_SCRATCH: list[EngineCache] = []
_SCRATCH_LOCK = threading.Lock()


def _scratch_cache() -> EngineCache:
    """This process's own engine cache in a temporary folder, removed at exit: where engines go
    when the engine cache cannot be written (their runtimes may read the files after loading)."""
    with _SCRATCH_LOCK:
        if not _SCRATCH:
            root = tempfile.mkdtemp(prefix="afd_trt-engines-")
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            _SCRATCH.append(EngineCache(root))
        return _SCRATCH[0]


class EngineCache:
    """A directory of built engines keyed by :class:`EngineKey` (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is not None and os.fspath(root) == "":
            # Path("") is the working folder: engines would be written wherever the process runs.
            raise ValueError("engine cache: an empty path names no directory (None: the default cache)")
        self.root = Path(root).expanduser() if root is not None else default_engine_cache_dir()

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r})"

    def path_for(self, key: EngineKey, suffix: str) -> Path:
        """Where the engine of ``key`` lives (``suffix`` e.g. ``".ts"``, ``".onnx"``, ``".plan"``)."""
        return self.root / key.model / f"{key.stem()}{suffix}"

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def contains(self, path: str | Path) -> bool:
        """Is ``path`` inside this cache directory (after resolving links)?"""
        return Path(path).resolve().is_relative_to(self.root.resolve())

    def read_metadata(self, path: Path) -> dict[str, Any] | None:
        """The sidecar of ``path`` as a dict; None when missing or unreadable (logged)."""
        side = self.sidecar(path)
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            logger.warning("engine metadata %s unreadable (%s)", side, e)
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
            logger.warning("engine metadata %s unreadable (not an object with a key object)", side)
            return None
        return meta

    def validate(self, path: Path, key: EngineKey) -> str | None:
        """Why the entry at ``path`` cannot be used for ``key``; None when it can. An entry this
        process cannot read (another user's 0600 file, a folder it cannot search) is one it
        cannot use, not an error."""
        try:
            return self._validate(path, key)
        except OSError as e:
            return f"cannot read it ({type(e).__name__}: {e.strerror or e})"

    def _validate(self, path: Path, key: EngineKey) -> str | None:
        if not path.is_file():
            return "not built yet"
        meta = self.read_metadata(path)
        if meta is None:
            return f"no readable metadata {self.sidecar(path).name}"
        try:
            check_same_target(meta.get("key", {}), key)
        except EngineMismatchError as e:
            return str(e)
        size = path.stat().st_size
        if meta.get("file_size") != size:
            return f"file size {size} != recorded {meta.get('file_size')!r} (truncated or corrupt)"
        actual = sha256_file(path)
        if actual != meta.get("file_sha256"):
            return f"sha256 {actual[:12]}... != recorded {str(meta.get('file_sha256'))[:12]}... (corrupt)"
        return None

    def load_or_build(
        self,
        key: EngineKey,
        suffix: str,
        build: Callable[[Path], Mapping[str, Any]],
        load: Callable[[Path], T],
    ) -> T:
        """Load the engine of ``key``, building it first when missing, stale or corrupt; where
        this cache cannot be written, into a scratch cache of this process (with a warning).

        Args:
            build: writes the engine to the given (temporary) path and returns extra metadata
                for the sidecar (JSON-serialisable).
            load: turns a validated engine file into a runner.
        """
        path = self.path_for(key, suffix)
        reason = self.validate(path, key)
        if reason is None:
            logger.debug("engine cache hit: %s", path)
            return load(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):  # can files be made there?
                pass
        except OSError as e:  # read-only, another user's, a file in the way, a full disk
            return self._build_elsewhere(key, suffix, build, load, e)
        with _exclusive_lock(path):
            reason = self.validate(path, key)  # another process may have built it meanwhile
            if reason is None:
                logger.info("engine %s was built by another process", path.name)
                return load(path)
            if path.exists() or self.sidecar(path).exists():
                logger.warning("rebuilding engine %s: %s", path, reason)
            else:
                logger.info("building %s engine for %s on %s -> %s", key.backend, key.model, key.device, path)
            self._build(path, key, build)
        return load(path)

    def _build_elsewhere(
        self,
        key: EngineKey,
        suffix: str,
        build: Callable[[Path], Mapping[str, Any]],
        load: Callable[[Path], T],
        error: OSError,
    ) -> T:
        """Build into this process's scratch cache (:func:`_scratch_cache`) when this cache
        cannot be written: the engine works, built once per process, with a warning naming the
        cache and why (the Detector used to fail on a read-only cache)."""
        scratch = _scratch_cache()
        if self.root not in _WARNED_UNWRITABLE:
            _WARNED_UNWRITABLE.add(self.root)
            logger.warning(
                "engine cache %s cannot be written (%s: %s): engines it lacks are built into %s "
                "for this process only (removed at exit); give a writable engine_cache / --cache-dir "
                "to keep them",
                self.root,
                type(error).__name__,
                error.strerror or error,
                scratch.root,
            )
        return scratch.load_or_build(key, suffix, build, load)

    def _build(self, path: Path, key: EngineKey, build: Callable[[Path], Mapping[str, Any]]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        try:
            t0 = datetime.datetime.now(datetime.UTC)
            extra = dict(build(tmp))
            digest, size = sha256_file(tmp), tmp.stat().st_size
            self.sidecar(path).unlink(missing_ok=True)  # never a new file beside an old record
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        meta = {
            "key": dataclasses.asdict(key),
            "file": path.name,
            "file_sha256": digest,
            "file_size": size,
            "created": t0.isoformat(timespec="seconds"),
            "build_seconds": round((datetime.datetime.now(datetime.UTC) - t0).total_seconds(), 3),
            **extra,
        }
        _atomic_write_bytes(self.sidecar(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


# Listing and pruning
# ---------------------------------------------------------------------------------------------

KEPT = ("ok", "other-target", "runtime-missing", "unreadable")
"""Statuses of entries that ``afd-trt cache --prune`` keeps: usable here, or by another machine, runtime
or user sharing the directory (which this one cannot judge)."""
REMOVABLE = ("stale", "superseded", "corrupt", "orphan")
"""Statuses of what no process can use any more: built with an older runtime or cache format for
a device of this machine, an old per-backend ONNX copy, a damaged file, or a leftover."""
_KEY_TEXT = ("backend", "device", "runtime")  # key fields a sidecar must record as strings
_PART_MIN_AGE_S = 3600.0  # a temporary file younger than this may belong to a running build
_SUPERSEDED = {"onnxruntime", "openvino"}  # backends that, before the shared ONNX model, kept a copy


@dataclass(frozen=True)
class CacheEntry:
    """One engine of a cache directory (or one leftover file), as :func:`scan_cache` found it.

    Attributes:
        path: the engine file (for an orphan: the leftover file).
        files: every file of the entry (engine, sidecar, lock), the ones that exist.
        size: their bytes on disk together.
        key: the recorded :class:`EngineKey` fields (empty when no readable sidecar).
        status: one of :data:`KEPT` or :data:`REMOVABLE`.
        reason: why, in words.
        stamp: (path, mtime_ns, size) of the engine and its sidecar (or the lone file) taken
            before they were judged; :func:`remove_entry` leaves an entry that changed since.
    """

    path: Path
    files: tuple[Path, ...]
    size: int
    key: Mapping[str, Any]
    status: str
    reason: str
    stamp: tuple[tuple[str, int, int], ...] = ()


def _stamp(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of each of ``paths``; (path, -1, -1) for one that does not exist."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def _size(paths: Iterable[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def entry_status(
    key: Mapping[str, Any], suffix: str, runtimes: Mapping[str, str | None], devices: frozenset[str]
) -> tuple[str, str]:
    """(status, reason) of an intact entry whose sidecar records ``key`` (see :func:`scan_cache`)."""
    backend, device, runtime = key.get("backend"), key.get("device"), key.get("runtime")
    if device not in devices:
        return "other-target", f"built for {device}, not a device of this machine"
    if backend in _SUPERSEDED and suffix == ".onnx":
        return "superseded", f"a {backend} copy of the ONNX model; backends now share one ONNX file"
    if key.get("format") != CACHE_FORMAT:
        return "stale", f"cache format {key.get('format')}, this afd_trt writes {CACHE_FORMAT}"
    if backend not in runtimes:
        return "other-target", f"backend {backend!r} is unknown to this afd_trt"
    here = runtimes[str(backend)]
    if here is None:
        return "runtime-missing", f"{backend} is not installed here: cannot tell whether {runtime} is current"
    if runtime != here:
        return "stale", f"built with {runtime}, this machine has {here}"
    return "ok", "usable here"


_ENGINE_NAME = re.compile(r"[a-z0-9_]+-(?:fp32|bf16|fp16)-[A-Za-z0-9_.:-]+-[0-9a-f]{16}\.[a-z0-9]+")
"""An engine file's name, as :meth:`EngineKey.stem` and a suffix make it."""
_PART_NAME = re.compile(r"\.(?P<engine>.+)\.\d+\.[0-9a-f]+\.part")
"""A build's temporary file: ``.<engine name>[.json].<pid>.<hex>.part``."""


def cache_file_kind(name: str) -> str | None:
    """What a file named ``name`` in a model folder of the cache is: ``"engine"``, ``"sidecar"``,
    ``"lock"``, ``"part"``, or None for a name the cache never writes (left alone by every scan
    and prune: a cache pointed at the wrong folder must not delete what is there)."""
    if _ENGINE_NAME.fullmatch(name):
        return "engine"
    for suffix, kind in ((".json", "sidecar"), (".lock", "lock")):
        if name.endswith(suffix) and _ENGINE_NAME.fullmatch(name[: -len(suffix)]):
            return kind
    m = _PART_NAME.fullmatch(name)
    if m and _ENGINE_NAME.fullmatch(m["engine"].removesuffix(".json")):  # an engine's or its sidecar's
        return "part"
    return None


def scan_cache(
    root: str | Path,
    runtimes: Mapping[str, str | None],
    devices: frozenset[str],
    *,
    verify: bool = False,
    now: float | None = None,
) -> list[CacheEntry]:
    """Every entry under an engine cache directory ``root``, with its status.

    Args:
        runtimes: backend -> this machine's runtime string for it (None: not installed), e.g.
            from ``afd_trt.engines.current_runtimes()``.
        devices: the device tags of this machine (plus ``"portable"``): an entry for another
            device is another machine's, and kept.
        verify: also hash each engine file against its sidecar (reads every byte); otherwise the
            size is checked.
        now: the time to age temporary files by (default: now).
    """
    root = Path(root)
    now = time.time() if now is None else now
    entries: list[CacheEntry] = []
    if not root.is_dir():
        return entries
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            names = {
                p.name for p in model_dir.iterdir() if p.is_file() and cache_file_kind(p.name) is not None
            }
        except PermissionError as e:
            logger.warning("engine cache folder %s cannot be listed (%s): left out", model_dir, e.strerror)
            continue
        claimed: set[str] = set()
        for name in sorted(names):
            if cache_file_kind(name) != "engine":
                continue
            path = model_dir / name
            side, lock = EngineCache.sidecar(path), path.with_name(name + ".lock")
            files = tuple(p for p in (path, side, lock) if p.name in names)
            claimed.update(p.name for p in files)
            size = _size(files)
            stamp = _stamp((path, side))
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except PermissionError as e:  # another user's: theirs to judge, not garbage
                reason = f"its sidecar cannot be read here ({e.strerror}): kept"
                entries.append(CacheEntry(path, files, size, {}, "unreadable", reason, stamp))
                continue
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            key = meta.get("key") if isinstance(meta, dict) else None
            if not isinstance(key, dict) or not all(isinstance(key.get(f), str) for f in _KEY_TEXT):
                why = "no sidecar" if side.name not in names else "unreadable sidecar"
                entries.append(
                    CacheEntry(path, files, size, {}, "orphan", f"{why}: cannot tell what it is", stamp)
                )
                continue
            assert isinstance(meta, dict)
            try:
                actual = path.stat().st_size
                bad_hash = verify and sha256_file(path) != meta.get("file_sha256")
            except FileNotFoundError:  # deleted meanwhile (another prune, a rebuild's replace)
                continue
            except PermissionError as e:
                reason = f"cannot be read here ({e.strerror}): kept"
                entries.append(CacheEntry(path, files, size, key, "unreadable", reason, stamp))
                continue
            if meta.get("file_size") != actual:
                status, reason = "corrupt", f"{actual} bytes, the sidecar records {meta.get('file_size')}"
            elif bad_hash:
                status, reason = "corrupt", "its sha256 differs from the sidecar's"
            else:
                status, reason = entry_status(key, path.suffix, runtimes, devices)
            entries.append(CacheEntry(path, files, size, key, status, reason, stamp))
        for name in sorted(names - claimed):
            path = model_dir / name
            stamp = _stamp((path,))
            if name.endswith(".part"):
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:  # the build finished meanwhile
                    continue
                if age < _PART_MIN_AGE_S:
                    continue  # perhaps a build in progress
                reason = f"temporary file of a build that did not finish ({age / 3600:.1f} h old)"
            elif name.endswith(".json"):
                reason = "sidecar of an engine that is gone"
            elif name.endswith(".lock"):
                reason = "build lock of an engine that is gone"
            else:  # pragma: no cover - every other name is claimed above
                continue
            entries.append(CacheEntry(path, (path,), _size((path,)), {}, "orphan", reason, stamp))
    return entries


def remove_entry(entry: CacheEntry) -> int:
    """Delete ``entry``'s files; the bytes freed. The engine's build lock is taken first (without
    waiting: an entry being built right now is left alone, and 0 returned)."""
    lock_file = next((p for p in entry.files if p.name.endswith(".lock")), None)
    fd = None
    if lock_file is not None and fcntl is not None:
        with contextlib.suppress(FileNotFoundError):
            fd = _open_lock_file(lock_file, create=False)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                logger.warning("%s is being built by another process: left alone", entry.path)
                return 0
    freed = 0
    try:
        if entry.stamp and _stamp(Path(p) for p, _, _ in entry.stamp) != entry.stamp:
            # built, rebuilt or finished since the scan judged it (the scan takes no lock)
            logger.warning("%s changed since it was listed: left alone", entry.path)
            return 0
        # engine first, sidecar next, lock last: never a sidecar describing a missing file for long
        for p in sorted(entry.files, key=lambda p: (p.name.endswith(".lock"), p.name.endswith(".json"))):
            with contextlib.suppress(FileNotFoundError):
                size = p.stat().st_size
                p.unlink()
                freed += size
    finally:
        if fd is not None:
            os.close(fd)
    return freed
