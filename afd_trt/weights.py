"""Checkpoints: find them, fetch them, read them, load them into a model.

Four steps, one function each:

* :func:`resolve_checkpoint` finds a model's checkpoint file: an explicit path, else
  ``$AFD_TRT_WEIGHTS/<file>`` (or ``<stem>.safetensors`` there), else the download cache
  (``$AFD_TRT_CACHE/weights/`` or ``~/.cache/afd_trt/weights/``), else it downloads the
  released file named in the model's config (:class:`afd_trt.config.WeightsSpec`).
* :func:`download` fetches one URL (``https://``, ``http://``, ``file://``) into place
  atomically: a partial or corrupt transfer never becomes a checkpoint file.
* :func:`load_state_dict` reads a ``.safetensors`` file or a ``torch.save`` file (the mm*-era
  ``{"meta": ..., "state_dict": ...}`` layout or a bare state dict) without ever unpickling code.
* :func:`load_into` loads a state dict into a model strictly, and says exactly what does not fit.

Checksums: a config may pin ``sha256``. When it does not (the released files' digests are not
known to this project), the first download records the digest it saw in ``<file>.sha256``
beside the file (trust on first use) and every later use of the cached file is checked against
that record, so a file corrupted on disk is noticed rather than loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import pickle
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from afd_trt import __version__
from afd_trt.config import WeightsSpec

try:  # POSIX; elsewhere downloads of the same file by two processes are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ENV_CACHE_DIR",
    "ENV_WEIGHTS_DIR",
    "TEST_WEIGHTS_KEY",
    "CheckpointError",
    "CheckpointUnavailableError",
    "ChecksumError",
    "DownloadError",
    "default_cache_dir",
    "download",
    "forget_checksum",
    "is_test_weights",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "resolve_checkpoint",
    "sha256_file",
]

logger = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "AFD_TRT_WEIGHTS"
"""Environment variable: a directory holding checkpoint files under their release names."""
ENV_CACHE_DIR = "AFD_TRT_CACHE"
"""Environment variable: afd_trt's cache root; downloaded checkpoints go to its ``weights/``."""
TEST_WEIGHTS_KEY = "afd_trt_test_weights"
"""Marker of afd_trt's seeded test weights: a safetensors metadata key, or a key of a .pth's ``meta``."""

_CHUNK = 1 << 20
_RETRY_BACKOFF_S = 0.25  # before retry k (0-based): _RETRY_BACKOFF_S * 2**k seconds
_PROGRESS_EVERY_S = 2.0
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LIST_LIMIT = 10  # names shown per category in a state-dict mismatch message
_PERMANENT_HTTP = frozenset(range(400, 500)) - {408, 425, 429}  # HTTP errors not worth retrying

# Files whose digest was checked this process: (path, size, mtime_ns, digest). Hashing a
# 250 MB checkpoint costs ~0.2 s; a second model built from the same file should not pay it.
_verified: set[tuple[str, int, int, str]] = set()


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: empty, corrupt, unsafe, or not a state dict."""


class DownloadError(RuntimeError):
    """A download failed: network error, HTTP error, or a transfer shorter than announced.

    ``retryable`` is False for failures another attempt cannot fix (HTTP 404 and the like).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChecksumError(DownloadError):
    """Downloaded bytes do not have the expected sha256 digest (not retried)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class CheckpointUnavailableError(RuntimeError):
    """No checkpoint file was found locally and none could be downloaded."""


# ---------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Lower-case hex sha256 digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: file is empty (0 bytes); an interrupted copy or download?")


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head[:1] in (b"<", b"{") and not head.startswith(b"{\x00")


def _head_kind(path: Path) -> str:
    """What the first bytes of a file say it is: ``"zip"`` (``torch.save``'s format), ``"pickle"``
    (legacy ``torch.save``: ``\\x80`` and a protocol byte 2-5), ``"safetensors"`` (an 8-byte
    little-endian header length that fits the file, then ``{"``), or ``"other"``.

    safetensors is tested first: its header length is any number, and one whose low byte is
    0x80 (128, 384, ...: 1 in 32 of the 8-byte-padded headers writers make) starts the file with
    the pickle's first byte."""
    with open(path, "rb") as f:
        head = f.read(10)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) == 10 and head[8:10] == b'{"' and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "other"


def _is_safetensors(path: Path) -> bool:
    """Read ``path`` as safetensors: by its content when recognisable, else by its suffix (a
    ``.pth`` that holds a safetensors file is read as one, and the other way round)."""
    head = _head_kind(path)
    return head == "safetensors" or (path.suffix == ".safetensors" and head == "other")


def _unreadable(path: Path, kind: str, err: BaseException) -> CheckpointError:
    hint = f"corrupt or truncated? Delete it (and {_sidecar(path).name}, its recorded checksum, if there) to have it fetched again"
    if _looks_like_text(path):
        hint = "it looks like a text/HTML page, not a checkpoint (a failed download saved an error page?)"
    return CheckpointError(
        f"checkpoint {path}: cannot be read as a {kind} file ({type(err).__name__}: {err}); {hint}"
    )


def _weights_only_reason(message: str) -> str:
    """The specific part of torch's long weights-only refusal message (e.g. "Unsupported global: ...")."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    reason = rest.split("Check the documentation")[0] if found else message.splitlines()[0]
    return " ".join(reason.split())


def _torch_load(path: Path, *, mmap: bool = False) -> object:
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError naming ``path``."""
    if _head_kind(path) == "other":
        hint = (
            "it looks like a text/HTML page (a failed download saved an error page?)"
            if _looks_like_text(path)
            else "corrupt, or not a weights file?"
        )
        raise CheckpointError(
            f"checkpoint {path}: not a checkpoint: its first bytes are neither a zip archive nor a "
            f"pickle (torch.save's formats) nor a safetensors header; {hint}"
        )
    try:
        if mmap:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with open(path, "rb") as f:  # a file object: torch.load itself goes by a .safetensors suffix
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # a real pickle: other formats stop above
            raise CheckpointError(
                f"checkpoint {path}: refused to load: it pickles objects other than tensors and plain "
                f"containers, and afd_trt never unpickles code (torch.load weights_only=True). "
                f"Re-save it as a state dict of tensors, or convert it to .safetensors. "
                f"torch says: {_weights_only_reason(str(e))}"
            ) from e
        raise _unreadable(path, "torch.save", e) from e
    except (
        RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, SafetensorError
    ) as e:  # fmt: skip
        raise _unreadable(path, "torch.save", e) from e


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded ``torch.save`` object: ``obj["state_dict"]`` or ``obj``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path}: holds a {type(obj).__name__}, not a dict (state dict) of tensors"
        )
    inner = obj.get("state_dict")
    sd = inner if isinstance(inner, Mapping) else obj
    if not sd:
        raise CheckpointError(f"checkpoint {path}: the state dict is empty")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        more = f" and {len(bad) - _LIST_LIMIT} more" if len(bad) > _LIST_LIMIT else ""
        raise CheckpointError(
            f"checkpoint {path}: not a state dict: {len(bad)} non-tensor value(s): {', '.join(bad[:_LIST_LIMIT])}{more}"
        )
    non_str = [k for k in sd if not isinstance(k, str)]
    if non_str:
        raise CheckpointError(
            f"checkpoint {path}: state dict keys must be strings, got {non_str[:_LIST_LIMIT]!r}"
        )
    return dict(sd)


def _marker_from_meta(obj: object) -> str | None:
    if isinstance(obj, Mapping):
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and TEST_WEIGHTS_KEY in meta:
            return str(meta[TEST_WEIGHTS_KEY])
    return None


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, test-weights marker or None) of a checkpoint file."""
    _check_readable_file(path)
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                marker = (f.metadata() or {}).get(TEST_WEIGHTS_KEY)
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _unreadable(path, "safetensors", e) from e
        if not sd:
            raise CheckpointError(f"checkpoint {path}: the state dict is empty")
        return sd, marker
    obj = _torch_load(path)
    return _extract_state_dict(obj, path), _marker_from_meta(obj)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a model state dict (parameter/buffer name -> CPU tensor) from a checkpoint file.

    safetensors files are read with ``safetensors.torch.load_file``, ``torch.save`` files (zip or
    legacy pickle) with ``torch.load(weights_only=True)``, told apart by their first bytes (the
    suffix decides only for unrecognisable content) (pickled code is refused, never run), taking the
    ``"state_dict"`` entry of the mm*-era ``{"meta", "state_dict", ...}`` layout, or the whole
    object when it is a bare state dict. Tensors keep their stored dtypes and shapes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, corrupt or truncated, pickles non-tensor objects,
            holds something other than a dict, has non-tensor values or an empty state dict.
            Every message names ``path``.
    """
    path = Path(path).expanduser()
    sd, marker = _read_checkpoint(path)
    if marker is not None:
        logger.warning(
            "checkpoint %s holds afd_trt's seeded TEST weights (%s), not trained ones: outputs are meaningless",
            path,
            marker,
        )
    logger.debug("read %d tensors from %s", len(sd), path)
    return sd


def is_test_weights(path: str | Path) -> str | None:
    """The marker of afd_trt's seeded test weights (e.g. ``"seed=0"``) if ``path`` holds them, else None.

    Looks at the ``afd_trt_test_weights`` key of a safetensors file's metadata (header only), or
    of a ``torch.save`` file's ``meta`` dict (memory-mapped, tensors are not read).

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_state_dict`.
    """
    path = Path(path).expanduser()
    _check_readable_file(path)
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get(TEST_WEIGHTS_KEY)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _unreadable(path, "safetensors", e) from e
    try:
        obj = _torch_load(path, mmap=True)
    except CheckpointError:
        obj = _torch_load(path)  # legacy (non-zip) torch.save files cannot be memory-mapped
    return _marker_from_meta(obj)


# ---------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------


def _listing(names: list[str], what: str) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return f"{len(names)} {what}: [{shown}{more}]"


def _filled_by_module(model: torch.nn.Module, key: str) -> bool:
    """True for state-dict entries torch fills in itself when a checkpoint lacks them.

    BatchNorm's ``num_batches_tracked`` (added in torch 0.4.1) is set to its default by
    ``_BatchNorm._load_from_state_dict`` when a checkpoint without version metadata omits it.
    """
    if not key.endswith(".num_batches_tracked") and key != "num_batches_tracked":
        return False
    module_name = key.rpartition(".")[0]
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    return isinstance(module, torch.nn.modules.batchnorm._NormBase)


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``'s parameters and persistent buffers, strictly.

    Every model entry must be present (except BatchNorm ``num_batches_tracked``, which torch
    fills in), no extra entry may be present, shapes must agree exactly, a floating-point entry
    must get floating-point values (an integer or bool tensor is not weights), all of them
    finite; values are cast to the model's dtypes (fp16 and bf16 checkpoints load). Nothing is
    copied unless all of that holds.

    Args:
        model: the module to fill (any device).
        state_dict: name -> tensor, as from :func:`load_state_dict`.
        source: what to call the checkpoint in messages, e.g. its path.

    Raises:
        ValueError: naming ``source`` and ``model``'s class, with the counts and (up to 10)
            names of missing keys, unexpected keys and shape mismatches.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not _filled_by_module(model, k)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    kinds = [
        f"{k}: checkpoint {str(v.dtype).removeprefix('torch.')} vs model {str(expected[k].dtype).removeprefix('torch.')}"
        for k, v in state_dict.items()
        if k in expected and v.is_floating_point() != expected[k].is_floating_point()
    ]
    non_finite = [
        k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    problems = [
        _listing(names, what)
        for names, what in (
            (missing, "missing key(s)"),
            (unexpected, "unexpected key(s)"),
            (mismatched, "shape mismatch(es)"),
            (kinds, "dtype mismatch(es)"),
            (non_finite, "tensor(s) with NaN or infinite values"),
        )
        if names
    ]
    stripped = {k.removeprefix("module.") for k in unexpected}
    if unexpected and all(k.startswith("module.") for k in unexpected) and set(missing) <= stripped:
        problems.append(
            "every key carries a 'module.' prefix (as torch.nn.DataParallel saves them): remove it from "
            "the keys, e.g. {k.removeprefix('module.'): v for k, v in state_dict.items()}"
        )
    if problems:
        raise ValueError(
            f"checkpoint {source} does not fit {type(model).__name__} "
            f"({len(state_dict)} tensors in the checkpoint, {len(expected)} in the model): "
            + "; ".join(problems)
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # anything torch's own checks catch that ours did not
        raise ValueError(f"checkpoint {source} does not fit {type(model).__name__}: {e}") from e
    logger.debug("loaded %d tensors from %s into %s", len(state_dict), source, type(model).__name__)


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> str | None:
    """:func:`load_state_dict` then :func:`load_into`; returns the test-weights marker or None.

    A file of afd_trt's seeded test weights is loaded like any other, with a warning logged.
    """
    path = Path(path).expanduser()
    sd, marker = _read_checkpoint(path)
    if marker is not None:
        logger.warning(
            "loading afd_trt's seeded TEST weights (%s) from %s into %s: outputs are meaningless",
            marker,
            path,
            type(model).__name__,
        )
    load_into(model, sd, str(path))
    return marker


# ---------------------------------------------------------------------------------------------
# Finding checkpoint files
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$AFD_TRT_CACHE/weights``, else
    ``$XDG_CACHE_HOME/afd_trt/weights``, else ``~/.cache/afd_trt/weights``."""
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "afd_trt" / "weights"


def _normalise_digest(sha256: str, what: str) -> str:
    digest = sha256.strip().lower()
    if digest and not _HEX64.fullmatch(digest):
        raise ValueError(f"{what}: sha256 must be 64 hex digits, got {sha256!r}")
    return digest


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    """The digest recorded in ``<path>.sha256`` (``sha256sum`` format), None if absent or unreadable."""
    side = _sidecar(path)
    try:
        text = side.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        logger.warning("ignoring unreadable checksum record %s: %s", side, e)
        return None
    token = text.split()[0].lower() if text.split() else ""
    if not _HEX64.fullmatch(token):
        logger.warning("ignoring malformed checksum record %s: %r", side, text[:80])
        return None
    return token


def forget_checksum(path: Path) -> None:
    """Drop the recorded sha256 of ``path`` (after replacing the file on purpose: the record
    would call the new file corrupt)."""
    _sidecar(path).unlink(missing_ok=True)


def _write_sidecar(path: Path, digest: str) -> None:
    """Record ``digest`` in ``<path>.sha256`` atomically."""
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)


def _matches(path: Path, digest: str) -> tuple[bool, str]:
    """(does ``path`` hash to ``digest``, its actual digest); memoised per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, digest)
    if key in _verified:
        return True, digest
    actual = sha256_file(path)
    if actual == digest:
        _verified.add(key)
    return actual == digest, actual


@contextlib.contextmanager
def _file_lock(dest: Path, *, exclusive: bool) -> Iterator[None]:
    """``fcntl.flock`` on ``<dest>.lock`` (kept afterwards: deleting lock files races).

    Without fcntl, or where the lock file cannot be created (read-only cache), runs unlocked.
    """
    if fcntl is None:
        yield
        return
    lock_path = dest.with_name(dest.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        logger.debug("no lock on %s (%s); going on unlocked", lock_path, e)
        yield
        return
    try:
        if exclusive:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process downloading %s (lock %s)", dest.name, lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _valid_existing(dest: Path, pinned: str) -> bool | None:
    """Check an existing ``dest`` against the pinned digest, else its recorded one.

    Returns True (matches), False (does not: logged), None (nothing to check against).
    """
    expected = pinned or _read_sidecar(dest)
    if not expected:
        return None
    ok, actual = _matches(dest, expected)
    if not ok:
        origin = "pinned in the config" if pinned else f"recorded in {_sidecar(dest)}"
        logger.warning("%s is corrupt: sha256 %s, expected %s (%s)", dest, actual, expected, origin)
    return ok


def _copy_stream(src: BinaryIO, out: BinaryIO, total: int | None, url: str) -> tuple[int, str]:
    """Copy ``src`` to ``out``; returns (bytes copied, sha256 hex). Logs progress at INFO."""
    h = hashlib.sha256()
    n = 0
    t0 = last = time.monotonic()
    while True:
        try:
            chunk = src.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:  # network; local write errors propagate as is
            raise DownloadError(
                f"transfer of {url} broke off after {n} bytes: {type(e).__name__}: {e}"
            ) from e
        if not chunk:
            break
        out.write(chunk)
        h.update(chunk)
        n += len(chunk)
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY_S:
            last = now
            pct = f" ({100.0 * n / total:.0f}%)" if total else ""
            logger.info("  %s: %.1f MiB%s, %.1f MiB/s", url, n / 2**20, pct, n / 2**20 / (now - t0))
    return n, h.hexdigest()


def _fetch_once(url: str, dest: Path, timeout: float) -> tuple[Path, int, str]:
    """One attempt: stream ``url`` into a fresh temp file beside ``dest``.

    Returns (temp path, byte count, sha256). The temp file is removed on any failure.
    Raises DownloadError (retryable unless an HTTP 4xx), or OSError from writing.
    """
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    request = urllib.request.Request(url, headers={"User-Agent": f"afd_trt/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(tmp, "xb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.strip().isdigit() else None
            size = f"{total / 2**20:.1f} MiB" if total is not None else "size unknown"
            logger.info("downloading %s -> %s (%s)", url, dest, size)
            n, digest = _copy_stream(resp, out, total, url)
            if total is not None and n != total:
                raise DownloadError(f"transfer of {url} was interrupted: received {n} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        return tmp, n, digest
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        e.close()  # the error holds the response's socket open
        raise DownloadError(
            f"{url}: HTTP {e.code} {e.reason}", retryable=e.code not in _PERMANENT_HTTP
        ) from e
    except urllib.error.URLError as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{url}: cannot connect: {e.reason}") from e
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {type(e).__name__}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download_locked(url: str, dest: Path, pinned: str, timeout: float, retries: int) -> Path:
    """Body of :func:`download`, run while holding the exclusive lock on ``dest``."""
    if dest.exists():
        state = _valid_existing(dest, pinned)
        if state:
            logger.info("%s already present and verified; not downloading %s", dest, url)
            return dest
        logger.info(
            "%s exists but %s; downloading it again",
            dest,
            "is corrupt" if state is False else "is unverified",
        )
    for stale in dest.parent.glob(f".{dest.name}.*.part"):  # left by a killed process; we hold the lock
        stale.unlink(missing_ok=True)

    attempts = 1 + (0 if urllib.parse.urlsplit(url).scheme == "file" else max(0, retries))
    for attempt in range(attempts):
        try:
            tmp, n, digest = _fetch_once(url, dest, timeout)
            break
        except DownloadError as e:
            if not e.retryable or attempt == attempts - 1:
                raise
            wait = _RETRY_BACKOFF_S * 2**attempt
            logger.warning(
                "download attempt %d/%d failed (%s); retrying in %.2f s", attempt + 1, attempts, e, wait
            )
            time.sleep(wait)
    try:
        if _head_kind(tmp) == "other":  # an error or login page served with 200, say
            what = "a text/HTML page" if _looks_like_text(tmp) else "bytes of no checkpoint format"
            raise DownloadError(
                f"{url}: the server sent {what} ({n} bytes), not a checkpoint", retryable=False
            )
        recorded = "" if pinned else (_read_sidecar(dest) or "")
        if (pinned or recorded) and digest != (pinned or recorded):
            origin = "pinned in the config" if pinned else (
                f"recorded in {_sidecar(dest)} at the first download; if the file at the URL has "
                "really changed, delete that record"
            )  # fmt: skip
            raise ChecksumError(
                f"{url}: sha256 mismatch: downloaded {n} bytes hashing to {digest}, expected "
                f"{pinned or recorded} ({origin})"
            )
        if not pinned and not recorded:
            _write_sidecar(dest, digest)  # before the file: a reader never sees an unrecorded new file
            logger.warning(
                "checksum of %s is not pinned: recorded sha256 %s in %s (trust on first use); "
                "pin it as [weights] sha256 in the model's config to verify future downloads",
                dest.name,
                digest,
                _sidecar(dest),
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    st = dest.stat()
    _verified.add((str(dest.resolve()), st.st_size, st.st_mtime_ns, digest))
    logger.info("downloaded %s (%d bytes, sha256 %s)", dest, n, digest)
    return dest


def download(url: str, dest: Path, *, sha256: str = "", timeout: float = 30.0, retries: int = 2) -> Path:
    """Download ``url`` to ``dest`` atomically and verified; returns ``dest``.

    Bytes stream into a temp file in ``dest``'s directory, are counted against the
    Content-Length (a shorter transfer is an error, never a truncated file) and hashed; then
    the temp file is ``os.replace``d onto ``dest``. When ``sha256`` is given the digest must
    match; when not, it is recorded in ``<dest>.sha256`` (trust on first use, logged as a
    warning). An exclusive ``flock`` on ``<dest>.lock`` serialises processes fetching the same
    file: whoever comes second finds ``dest`` present and verified, and returns at once. An
    existing ``dest`` that matches neither the pinned nor a recorded digest is fetched again.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: the final file path; parent directories are created.
        sha256: expected hex digest, or "" for not pinned.
        timeout: socket timeout per connect/read, seconds.
        retries: extra attempts after a network error, HTTP 5xx/408/429 or a short transfer
            (with 0.25 s, 0.5 s, ... pauses); other HTTP 4xx and ``file://`` are not retried.

    Raises:
        ValueError: unsupported URL scheme or malformed ``sha256``.
        DownloadError: the transfer failed after all attempts (message names the URL).
        ChecksumError: the bytes do not hash to ``sha256`` (message gives both digests);
            no file is left behind.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"download {url!r}: only http://, https:// and file:// URLs are supported")
    pinned = _normalise_digest(sha256, f"download {url}")
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest, exclusive=True):
        return _download_locked(url, dest, pinned, timeout, retries)


def _where_to_put(spec: WeightsSpec, cache: Path) -> str:
    env_dir = os.environ.get(ENV_WEIGHTS_DIR)
    env_hint = f" (now {env_dir})" if env_dir else ""
    source = f" from {spec.url}" if spec.url else ""
    return (
        f"Get {spec.file}{source} and either put it in a directory named by ${ENV_WEIGHTS_DIR}{env_hint}, "
        f"or at {cache / spec.file}, or pass its path explicitly."
    )


def resolve_checkpoint(
    spec: WeightsSpec,
    explicit: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
) -> Path:
    """Find the checkpoint file for ``spec``, downloading it if need be.

    Order: ``explicit`` (must exist) -> ``$AFD_TRT_WEIGHTS/<spec.file>``, then
    ``$AFD_TRT_WEIGHTS/<stem>.safetensors`` -> ``<cache>/<spec.file>`` if it passes its checksum
    (pinned, else recorded; a corrupt cached file is fetched again) -> download ``spec.url``
    into the cache. The cache is ``cache_dir / "weights"`` when ``cache_dir`` (a cache root,
    like ``$AFD_TRT_CACHE``) is given, else :func:`default_cache_dir`.

    Raises:
        FileNotFoundError: ``explicit`` is given and is not a file.
        CheckpointError: a file in ``$AFD_TRT_WEIGHTS`` named ``spec.file`` does not match a
            pinned ``spec.sha256``.
        CheckpointUnavailableError: nothing local and the download is off, impossible or
            failed; the message says which file to put where, and the URL.
    """
    if explicit is not None:  # needs nothing of the config's [weights] (a config may have none)
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path}: {'not a file' if path.exists() else 'no such file'}")
        logger.info("using checkpoint %s (given explicitly)", path)
        return path
    if not spec.file:
        raise ValueError(
            "no checkpoint given and the config's [weights] names no file: pass the checkpoint's path, "
            "or add [weights] file (and url) to the config"
        )
    pinned = _normalise_digest(spec.sha256, f"weights spec for {spec.file}")

    env_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if env_dir:
        root = Path(env_dir).expanduser()
        if not root.is_dir():
            logger.warning("$%s=%s is not a directory; ignoring it", ENV_WEIGHTS_DIR, env_dir)
        for name in (spec.file, Path(spec.file).stem + ".safetensors"):
            path = root / name
            if not path.is_file():
                continue
            if pinned and name == spec.file:
                ok, actual = _matches(path, pinned)
                if not ok:
                    raise CheckpointError(
                        f"checkpoint {path}: sha256 {actual} differs from {pinned} pinned in the config; "
                        f"corrupt, or a different model? Pass your own checkpoints as an explicit path"
                    )
            logger.info("using checkpoint %s (from $%s)", path, ENV_WEIGHTS_DIR)
            return path

    cache = (Path(cache_dir).expanduser() / "weights") if cache_dir is not None else default_cache_dir()
    cached = cache / spec.file
    if cached.is_file():
        with _file_lock(cached, exclusive=False):
            state = _valid_existing(cached, pinned) if cached.is_file() else False
        if state is None and _head_kind(cached) == "other":  # a page saved by hand, say
            what = "a text/HTML page" if _looks_like_text(cached) else "bytes of no checkpoint format"
            raise CheckpointError(
                f"cached checkpoint {cached} holds {what}, not a checkpoint: delete it and retry online, or "
                f"put the right file there (its sha256 is recorded on first use)"
            )
        if state is None:
            digest = sha256_file(cached)
            logger.warning(
                "cached checkpoint %s has no checksum record; recording sha256 %s (trust on first use)",
                cached,
                digest,
            )
            with contextlib.suppress(OSError):
                _write_sidecar(cached, digest)
            state = True
        if state:
            logger.info("using cached checkpoint %s", cached)
            return cached
        if not download or not spec.url:
            raise CheckpointUnavailableError(
                f"cached checkpoint {cached} is corrupt (checksum mismatch, see the log) and "
                f"{'downloading is off' if spec.url else 'the config names no URL'}. "
                f"Delete it and retry online (the new download is checked against the record), or put "
                f"a good copy there yourself and delete {_sidecar(cached).name} too: {_where_to_put(spec, cache)}"
            )

    if not download:
        raise CheckpointUnavailableError(
            f"checkpoint {spec.file} not found and downloading is off. {_where_to_put(spec, cache)}"
        )
    if not spec.url:
        raise CheckpointUnavailableError(
            f"checkpoint {spec.file} not found and the config names no URL. {_where_to_put(spec, cache)}"
        )
    try:
        return _download_impl(spec.url, cached, sha256=pinned)
    except (DownloadError, OSError) as e:
        raise CheckpointUnavailableError(
            f"checkpoint {spec.file} not found locally and downloading it failed ({e}). {_where_to_put(spec, cache)}"
        ) from e


_download_impl = download  # resolve_checkpoint's ``download`` argument shadows the function
