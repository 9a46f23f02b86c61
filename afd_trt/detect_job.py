"""The ``afd-trt detect`` job: input expansion (files, folders, globs, ``@lists``, videos), the
resumable JSON Lines journal, crops/drawings, progress and the end-of-run summary.

Loss-free and resumable by construction:
- every finished input is appended to the journal as one complete line with a single
  ``os.write`` (flushed, ``fsync``-ed every few seconds and at the end); a record is either
  wholly there or absent, and a torn last line (power loss) is cut off on the next start;
- an input's crops and drawing are written (atomically: temporary file + ``os.replace``)
  *before* its record, so a recorded input has all of its files;
- on start the journal's records are read and their inputs, keyed ``(path, frame)``, skipped;
  a video read to its end has its frame count kept in ``<journal>.videos.json`` (with the file's
  size and mtime), so a re-run skips a finished, unchanged video without decoding it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .crops import aligned_crop_matrix, box_crop_matrix, crop_name, source_tag, warp_crop
from .draw import draw_faces
from .image import load_image, opencv_can_open
from .outputs import (
    coco_from_records,
    error_record,
    filter_faces,
    image_record,
    record_key,
    write_bytes_atomic,
    write_json_atomic,
)

if TYPE_CHECKING:
    from .detector import Detector, StreamResult

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "DetectOptions",
    "InputSpec",
    "Journal",
    "JournalInUseError",
    "Merged",
    "SettingsMismatchError",
    "Summary",
    "WorkItem",
    "check_run_settings",
    "expand_inputs",
    "in_shard",
    "iter_work",
    "merge_journals",
    "parse_shard",
    "record_line",
    "run_detect_job",
    "settings_path",
    "shard_of",
]

logger = logging.getLogger("afd_trt.detect")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
_GLOB_CHARS = set("*?[")

Key = tuple[str, int | None]


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One input after expansion: ``kind`` is ``"image"``, ``"video"``, ``"missing"`` (a path or
    pattern that names nothing), ``"broken"`` (a symbolic link whose target is gone) or
    ``"unreadable"`` (an ``@list`` file that cannot be read, ``error`` saying why); the last
    three are recorded as errors."""

    path: str
    kind: str
    error: str = ""


def _classify(path: str) -> InputSpec:
    return InputSpec(path, "video" if Path(path).suffix.lower() in VIDEO_EXTS else "image")


def _link_target(path: str) -> str:
    """Where the symbolic link ``path`` points, quoted, for a message (never raises)."""
    try:
        return repr(os.readlink(path))
    except OSError as e:
        return f"(unreadable: {e.strerror})"


def _walk(folder: Path, exts: Sequence[str], skip: frozenset[str] = frozenset()) -> list[InputSpec]:
    """The files under ``folder`` whose extension (any case) is in ``exts``, recursively, sorted
    by path: files and links to files, and links whose target is gone as ``"broken"`` inputs (so
    they are recorded, not silently dropped). Links to folders are not entered (``Path.rglob``'s
    rule: no cycles), nor folders whose real path is in ``skip`` (the job's own crops and
    drawings); a folder that cannot be listed is logged as a warning."""

    def unreadable(e: OSError) -> None:
        logger.warning("folder %s: cannot list it (%s); its files are not processed", e.filename, e.strerror)

    found: list[InputSpec] = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        if skip:
            kept = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip]
            if len(kept) < len(dirs):
                logger.info("%s: leaving out this job's own output folder(s)", root)
            dirs[:] = kept
        for name in files:
            if os.path.splitext(name)[1].lower() not in exts:
                continue
            path = os.path.join(root, name)
            if os.path.isfile(path):
                found.append(_classify(path))
            elif os.path.islink(path) and not os.path.exists(path):
                found.append(InputSpec(path, "broken"))
    return sorted(found, key=lambda spec: spec.path)


def _in_skipped(path: str, skip: frozenset[str]) -> bool:
    """Whether ``path`` lies in one of the folders ``skip`` (real paths)."""
    real = os.path.realpath(path)
    return any(real.startswith(folder + os.sep) for folder in skip)


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern searches from: its leading components without wildcards."""
    parts = pattern.split(os.sep)
    fixed = list(itertools.takewhile(lambda part: not (_GLOB_CHARS & set(part)), parts[:-1]))
    return os.sep.join(fixed) if fixed and fixed != [""] else (os.sep if fixed else ".")


def _refuse_own_folder(item: str, folder: str, skip: frozenset[str]) -> None:
    """``ValueError`` when the input ``item``, which searches ``folder``, would search the job's
    own crops or drawings folder (``folder`` is one, or lies in one): the job's output would be
    its next run's input, and the folder's own images could not be told from it."""
    real = os.path.realpath(folder)
    for own in skip:
        if real == own or real.startswith(own + os.sep):
            raise ValueError(
                f"input {item!r} searches {own!r}, this job's own --crops/--draw folder: write crops "
                "and drawings to a folder of their own (a subfolder of an input folder is fine: it is left out)"
            )


def _expand_one(
    item: str, allow_list: bool, exts: Sequence[str], skip: frozenset[str]
) -> Iterator[InputSpec]:
    if allow_list and item.startswith("@") and len(item) > 1:
        # surrogateescape: a name that is not UTF-8 keeps its bytes and still opens
        try:
            text = Path(item[1:]).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:  # the run goes on with the other inputs; this one is an error record
            yield InputSpec(item, "unreadable", f"input list {item[1:]!r} cannot be read: {e.strerror or e}")
            return
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield from _expand_one(line, allow_list=False, exts=exts, skip=skip)
        return
    path = Path(item)
    if path.is_dir():
        _refuse_own_folder(item, item, skip)
        found = _walk(path, exts, skip)
        if not found:
            logger.warning("folder %s: no files with extensions %s", item, " ".join(exts))
        yield from found
    elif path.exists():
        yield _classify(item)
    elif path.is_symlink():
        yield InputSpec(item, "broken")
    elif _GLOB_CHARS & set(item):
        _refuse_own_folder(item, _glob_root(item), skip)
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            yield InputSpec(item, "missing")
        for m in matches:
            if _in_skipped(m, skip) or os.path.realpath(m) in skip:
                continue
            if Path(m).is_dir():
                yield from _walk(Path(m), exts, skip)
            else:  # glob lists links whose target is gone, too
                yield _classify(m) if os.path.exists(m) else InputSpec(m, "broken")
    else:
        yield InputSpec(item, "missing")


def expand_inputs(
    items: Sequence[str], exts: Sequence[str] | None = None, exclude: Sequence[str | Path] = ()
) -> list[InputSpec]:
    """Expand command-line inputs, in order, without duplicates (first occurrence wins).

    - an existing file: an image, or a video when its extension is in ``VIDEO_EXTS``;
    - a folder: its files whose extension (any case) is in ``exts`` (default ``IMAGE_EXTS`` +
      ``VIDEO_EXTS``; lower-case, with the dot), recursively, sorted by path;
    - a glob pattern (``*``, ``?``, ``[``; ``**`` recursive) that is not an existing path: its
      matches, sorted;
    - ``@list.txt``: one input per line (files, folders or patterns; blank lines and lines
      starting with ``#`` ignored);
    - anything else: a ``"missing"`` input.

    Folder walks and patterns leave out the folders ``exclude`` (a job's own crops and drawings,
    which would otherwise become inputs of its next run); a file named explicitly is kept.
    Paths are normalised with ``os.path.normpath`` (the journal key), not resolved.
    """
    seen: set[str] = set()
    out: list[InputSpec] = []
    skip = frozenset(os.path.realpath(p) for p in exclude)
    ext_list = tuple(exts) if exts else IMAGE_EXTS + VIDEO_EXTS
    for item in items:
        for spec in _expand_one(item, allow_list=True, exts=ext_list, skip=skip):
            norm = dataclasses.replace(spec, path=os.path.normpath(spec.path))
            if norm.path not in seen:
                seen.add(norm.path)
                out.append(norm)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (shard K of N, counted from 0) -> ``(K, N)``; ``ValueError`` naming the problem."""
    k_text, sep, n_text = text.partition("/")
    try:
        if not sep:
            raise ValueError
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"expected K/N (shard K of N, K from 0 to N-1), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard {text!r}: K must be in 0..N-1 and N >= 1 (shards are counted from 0)")
    return k, n


def shard_of(path: str, count: int) -> int:
    """The shard, in ``0..count-1``, that an input belongs to: the first 8 bytes of the SHA-1 of
    its path (as given, normalised: the journal key), big-endian, modulo ``count``. Stable across
    machines, runs and input order, and unmoved by inputs added or removed; a video's frames all
    go with it."""
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(specs: Sequence[InputSpec], shard: tuple[int, int] | None) -> list[InputSpec]:
    """The inputs of ``shard`` ``(K, N)``, in order (all of them for None)."""
    if shard is None:
        return list(specs)
    k, n = shard
    return [s for s in specs if shard_of(s.path, n) == k]


@dataclass
class WorkItem:
    """One unit of work: an image path, or a decoded video frame (``image``), or a failure
    found before detection (``error``)."""

    path: str
    frame: int | None = None
    time: float | None = None
    image: np.ndarray | None = None
    error: str | None = None

    @property
    def key(self) -> Key:
        return self.path, self.frame


class VideoIndex:
    """Frame counts of the videos a job has read to the end: ``{path: {"size", "mtime_ns",
    "frames"}}`` in ``<journal>.videos.json``. A video is finished when every sampled frame
    (0, every, 2·every, ... below its count) is in the journal and the file is unchanged."""

    def __init__(self, path: Path | None, *, reset: bool = False) -> None:
        self.path = path
        self.entries: dict[str, dict[str, int]] = {}
        if path is None:
            return
        if reset:
            path.unlink(missing_ok=True)
        elif path.exists():
            try:
                loaded = json.loads(path.read_text())
                self.entries = (
                    {str(k): dict(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
                )
            except (OSError, ValueError, TypeError) as e:  # a cache only: rebuilt as videos are read
                logger.warning("%s: unreadable (%s); finished videos will be decoded again", path, e)

    @staticmethod
    def _stat(video: str) -> dict[str, int] | None:
        try:
            st = os.stat(video)
        except OSError:
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def finished(self, video: str, done: set[Key], every: int) -> bool:
        entry = self.entries.get(video)
        if entry is None or self._stat(video) != {k: entry.get(k) for k in ("size", "mtime_ns")}:
            return False
        frames = int(entry.get("frames", 0))
        return frames > 0 and all((video, i) in done for i in range(0, frames, every))

    def sampled_left(self, video: str, done: set[Key], every: int) -> int | None:
        """Sampled frames still to do, when the count is known (None otherwise)."""
        entry = self.entries.get(video)
        if entry is None:
            return None
        return sum((video, i) not in done for i in range(0, int(entry.get("frames", 0)), every))

    def record(self, video: str, frames: int) -> None:
        stat = self._stat(video)
        if self.path is None or stat is None or frames <= 0:
            return
        self.entries[video] = {**stat, "frames": frames}
        try:
            write_json_atomic(self.path, self.entries)
        except OSError as e:
            logger.warning("%s: could not be written (%s)", self.path, e)


def videos_path(journal: Path) -> Path:
    """Where a journal's finished-video index is kept: ``<journal>.videos.json``."""
    return journal.with_name(journal.name + ".videos.json")


def _iter_video(
    path: str, done: set[Key], every: int, videos: VideoIndex | None = None
) -> Iterator[WorkItem]:
    if videos is not None and videos.finished(path, done, every):
        logger.info("%s: every sampled frame is done; skipped without decoding", path)
        return
    if not opencv_can_open(path):
        if (path, None) not in done:
            yield WorkItem(
                path, error="the file name is not UTF-8, which OpenCV cannot open videos by; rename it"
            )
        return
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            if (path, None) not in done:
                yield WorkItem(path, error="could not open video (unreadable, corrupt or unsupported codec)")
            return
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        while cap.grab():
            if index % every == 0 and (path, index) not in done:
                msec = float(cap.get(cv2.CAP_PROP_POS_MSEC))
                t = msec / 1000.0 if math.isfinite(msec) and msec >= 0 else (index / fps if fps > 0 else None)
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    yield WorkItem(path, frame=index, time=t, image=frame)
                else:
                    yield WorkItem(path, frame=index, time=t, error="could not decode video frame")
            index += 1
        if index == 0 and (path, None) not in done:
            yield WorkItem(path, error="video has no readable frames")
        elif videos is not None:
            videos.record(path, index)
    except cv2.error as e:
        if (path, None) not in done:  # recorded once, not again on every resume
            yield WorkItem(path, error=f"video decoding failed: {e}")
    finally:
        cap.release()


def iter_work(
    specs: Iterable[InputSpec], done: set[Key], every: int = 1, videos: VideoIndex | None = None
) -> Iterator[WorkItem]:
    """The work still to do, lazily and in input order: images not in ``done``, and every
    ``every``-th frame (0, every, 2·every, ...) of each video not in ``done`` (a video that
    ``videos`` knows to be finished is not opened)."""
    for spec in specs:
        if spec.kind == "video":
            yield from _iter_video(spec.path, done, every, videos)
        elif (spec.path, None) in done:
            continue
        elif spec.kind == "missing":
            yield WorkItem(
                spec.path, error="no such file or directory (nor any file matching it as a pattern)"
            )
        elif spec.kind == "broken":
            yield WorkItem(
                spec.path, error=f"broken symbolic link: its target {_link_target(spec.path)} does not exist"
            )
        elif spec.kind == "unreadable":
            yield WorkItem(spec.path, error=spec.error)
        else:
            yield WorkItem(spec.path)


def _estimate_total(
    specs: Sequence[InputSpec], done: set[Key], every: int, videos: VideoIndex | None = None
) -> int:
    """Work items still to do (for the progress bar): exact for images, from the container's
    frame count for videos."""
    total = 0
    per_video: dict[str, int] = {}
    for path, frame in done:
        if frame is not None:
            per_video[path] = per_video.get(path, 0) + 1
    for spec in specs:
        if spec.kind != "video":
            total += (spec.path, None) not in done
            continue
        left = None if videos is None else videos.sampled_left(spec.path, done, every)
        if left is not None:
            total += left
            continue
        n = 0
        if opencv_can_open(spec.path):
            cap = cv2.VideoCapture(spec.path)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
            cap.release()
        total += max(0, math.ceil(n / every) - per_video.get(spec.path, 0)) if n > 0 else 1
    return total


# -- journal -----------------------------------------------------------------------------------


class SettingsMismatchError(ValueError):
    """A journal is being resumed with settings other than those that wrote it."""


def settings_path(journal: Path) -> Path:
    """Where a journal's settings are kept: ``<journal>.settings.json``."""
    return journal.with_name(journal.name + ".settings.json")


def check_run_settings(
    journal: Path, settings: dict[str, Any], *, overwrite: bool = False, record: bool = True
) -> None:
    """Record ``settings`` (JSON values) beside ``journal``, or check them against the recorded ones.

    A new (or ``overwrite``-n, or empty) journal gets its settings written atomically (unless
    ``record`` is False: check only, as a command does before it has loaded its models, so that
    a run that then fails to start changes nothing). Resuming a journal whose recorded settings
    differ raises :class:`SettingsMismatchError` listing each difference, so one output never
    mixes results of different models or options. A journal from before settings were recorded
    is adopted with the current ones.
    """
    side = settings_path(journal)
    has_records = journal.exists() and journal.stat().st_size > 0
    if has_records and not overwrite and side.exists():
        try:
            recorded = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SettingsMismatchError(
                f"{side}: unreadable settings record ({e}); use --overwrite or another output"
            ) from e
        current = json.loads(json.dumps(settings))  # compare in JSON terms (tuples -> lists, ...)
        # A setting one side lacks is not a difference: one this afd_trt records that an older
        # run did not (it cannot be checked), or one known only once the models have loaded
        # (the weights' digests) in the check made before loading them.
        unchecked = sorted(set(current) - set(recorded))
        if unchecked and record:
            logger.warning("%s: its run did not record %s: not checked", journal, ", ".join(unchecked))
        diff = {
            k: (recorded[k], current[k])
            for k in sorted(set(recorded) & set(current))
            if recorded[k] != current[k]
        }
        if diff:
            lines = "; ".join(
                f"{k}: recorded {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in diff.items())
            )
            raise SettingsMismatchError(
                f"{journal} was written with other settings ({lines}); resume with the same options, "
                "or start over with --overwrite, or write to another output"
            )
        return
    if not record:
        return
    if has_records and not overwrite:
        logger.info("%s: no settings record (an older run); adopting the current settings", journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(side, settings)


def _settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The settings two shards' journals differ in. Where both recorded the weights' digests,
    where the checkpoints lay (each machine's own path) is not a difference; a setting only
    one recorded (an older afd_trt's journal) cannot be compared and is not one either."""
    keys = set(a) & set(b)
    if "weights_sha256" in keys:
        keys -= {"face_detector_checkpoint", "landmark_checkpoint"}
    return sorted(k for k in keys if a[k] != b[k])


def record_line(rec: dict[str, Any]) -> bytes:
    """One journal line: the record as compact-enough UTF-8 JSON, newline-terminated. A path
    with bytes that are not UTF-8 (held by Python as lone surrogates) is written \\u-escaped,
    which reads back as the same ``str``, so the input is still recognised on resume."""
    try:
        return (json.dumps(rec, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(rec, ensure_ascii=True, allow_nan=True) + "\n").encode("ascii")


def _complete_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """A journal's parsable records of complete lines, in order, and how many lines were not."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records, bad = [], int(end < len(data))
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
            record_key(rec)
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        records.append(rec)
    return records, bad


@dataclass
class Merged:
    """What :func:`merge_journals` gives: the records, and what the journals given lack.

    Attributes:
        records: each input's record, once, in journal order.
        missing_shards: ``"K/N"`` of every shard of a sharded job that no journal given is, in
            order (empty when the set is complete or the journals are not shards).
        unchecked: journals without a settings record, whose models and options could not be
            checked against the others'.
    """

    records: list[dict[str, Any]]
    missing_shards: list[str]
    unchecked: list[Path]


def merge_journals(journals: Sequence[Path]) -> Merged:
    """The records of several journals, typically the shards of one job, in the order given, each
    input once (the first record of a key wins, except that a success replaces a failure). A file
    that is not a journal (see :class:`Journal`) raises ``ValueError``.

    Journals whose recorded settings differ in what shapes the records (models, configs,
    precision, flip test, box scale, filters, video sampling; not the shard, crops or drawings)
    are refused with :class:`SettingsMismatchError`, so a merge never mixes models or options.
    Shards missing from an incomplete set (``K/N`` for some but not all K) are named in the
    result and logged; torn or unparsable lines and duplicates are logged as warnings.
    ``OSError`` for a journal that cannot be read.
    """
    records: list[dict[str, Any]] = []
    seen: dict[Key, int] = {}  # key -> index in records
    first: tuple[Path, dict[str, Any]] | None = None
    shards: dict[int, set[int]] = {}
    unchecked: list[Path] = []
    duplicates = healed = 0
    for path in journals:
        _refuse_a_foreign_file(path, "give the journals (JSON Lines) the shards wrote")  # not silently empty
        side = settings_path(path)
        if side.exists():
            try:
                settings = json.loads(side.read_text(encoding="utf-8"))
                shard = settings.pop("shard", None)
                if shard is not None:
                    shards.setdefault(int(shard[1]), set()).add(int(shard[0]))
            except (ValueError, AttributeError, TypeError, IndexError) as e:
                raise SettingsMismatchError(f"{side}: unreadable settings record ({e!r})") from e
            # Where crops and drawings went (and how they were made) does not change records.
            settings = {k: v for k, v in settings.items() if not k.startswith(("crop", "draw"))}
            if first is None:
                first = (path, settings)
            elif diff := _settings_diff(first[1], settings):
                raise SettingsMismatchError(
                    f"{path} was written with other settings than {first[0]} ({', '.join(diff)}): "
                    "refusing to merge results of different models or options"
                )
        else:
            unchecked.append(path)
        part, bad = _complete_records(path)
        if bad:
            logger.warning("%s: %d incomplete or unparsable line(s) left out", path, bad)
        for rec in part:
            key = record_key(rec)
            if key in seen:
                at = seen[key]
                if "error" in records[at] and "error" not in rec:  # failed once, done since
                    records[at] = rec
                    healed += 1
                else:
                    duplicates += 1
                continue
            seen[key] = len(records)
            records.append(rec)
    if healed:
        logger.info("%d input(s) recorded as failed in one journal and done in another: kept as done", healed)
    if duplicates:
        logger.warning("%d record(s) of inputs already merged from an earlier journal left out", duplicates)
    if len(journals) > 1:
        for path in unchecked:
            logger.warning(
                "%s: no settings record (%s), so its models and options cannot be checked against "
                "the other journals'",
                path,
                settings_path(path).name,
            )
    missing = [f"{k}/{n}" for n, ks in sorted(shards.items()) for k in range(n) if k not in ks]
    if missing:
        logger.warning("shards missing: %s", ", ".join(missing))
    return Merged(records, missing, unchecked)


def journal_lock_path(journal: Path) -> Path:
    """The lock file of a journal: ``<journal>.lock`` (kept: deleting lock files races)."""
    return journal.with_name(journal.name + ".lock")


def _lock_journal(journal: Path) -> int:
    """An exclusive, non-blocking ``flock`` on the journal's lock file: its descriptor (closing
    it releases the lock); ``RuntimeError`` when another process holds it. Not the journal itself,
    which a repair replaces by a rename, so a lock on it would not stop a second process."""
    fd = os.open(journal_lock_path(journal), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise JournalInUseError(f"{journal} is in use by another afd-trt process") from e
    return fd


class JournalInUseError(RuntimeError):
    """Another process holds the journal's lock: the run was refused before it wrote anything."""


def _refuse_a_foreign_file(
    journal: Path, retry: str = "name another output, or --overwrite to replace it"
) -> None:
    """``ValueError`` when ``journal`` exists, has no settings record beside it and does not
    start with a complete journal record: not ours (a COCO file, a list, another tool's output
    named by mistake), so resuming would cut or rewrite someone else's data."""
    if settings_path(journal).exists() or not journal.exists() or journal.stat().st_size == 0:
        return
    with journal.open("rb") as f:
        first = f.readline(1 << 20)
    try:
        if not first.endswith(b"\n"):
            raise ValueError("no complete first line")
        record_key(json.loads(first))
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{journal} exists and is not an afd-trt journal (no settings record beside it and its "
            f"first line is not a record); {retry}"
        ) from None


class Journal:
    """The JSON Lines result file, append-only, one complete record per line.

    Opening first takes the journal's lock (``flock`` on ``<journal>.lock``, kept beside it;
    where available): a second process opening the same journal is refused before it reads or
    changes anything, the settings record included. With ``settings``, they are then checked
    against (and recorded beside) the journal, see :func:`check_run_settings`. Opening reads the
    records already there (their keys are ``done``) and repairs what a crash can leave: a torn
    last line is cut off (the file truncated to its last complete line); unparsable lines and,
    with ``retry_errors``, error records are dropped (the file is then rewritten atomically).
    ``overwrite`` starts an empty file. A file that is not a journal (no settings record, and a
    first line that is not a record: another program's output named by mistake) is refused,
    never cut or rewritten.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        retry_errors: bool = False,
        settings: dict[str, Any] | None = None,
        fsync_seconds: float = 2.0,
        fsync_records: int = 200,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[Key] = set()
        self.loaded = 0
        self.loaded_errors = 0
        self.loaded_error_keys: set[Key] = set()
        self._fsync_seconds = fsync_seconds
        self._fsync_records = fsync_records
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._fd = -1
        self._lock_fd = _lock_journal(self.path)
        try:
            if not overwrite:
                _refuse_a_foreign_file(self.path)
            if settings is not None:
                check_run_settings(self.path, settings, overwrite=overwrite)
            if overwrite:
                self.path.write_bytes(b"")
            elif self.path.exists():
                self._repair(retry_errors)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _repair(self, retry_errors: bool) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning(
                "%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                self.path,
                len(data) - end,
            )
        kept: list[bytes] = []
        dropped_bad = dropped_err = dropped_dup = 0
        for line in data[:end].splitlines():
            if not line.strip():
                dropped_bad += 1
                continue
            try:
                rec = json.loads(line)
                key = record_key(rec)
            except (ValueError, KeyError, TypeError):
                dropped_bad += 1
                continue
            if retry_errors and "error" in rec:
                dropped_err += 1
                continue
            if key in self.done:
                dropped_dup += 1
                continue
            self.done.add(key)
            if "error" in rec:
                self.loaded_errors += 1
                self.loaded_error_keys.add(key)
            kept.append(line)
        self.loaded = len(kept)
        if dropped_bad or dropped_err or dropped_dup:
            logger.warning(
                "%s: rewriting without %d unreadable, %d duplicate and %d error record(s)%s",
                self.path,
                dropped_bad,
                dropped_dup,
                dropped_err,
                " (--retry-errors)" if dropped_err else "",
            )
            write_bytes_atomic(self.path, b"".join(line + b"\n" for line in kept))
        elif end < len(data):
            os.truncate(self.path, end)

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record as one line (a single ``write``), then ``fsync`` when due."""
        view = memoryview(record_line(rec))
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.done.add(record_key(rec))
        self._unsynced += 1
        now = time.monotonic()
        if self._unsynced >= self._fsync_records or now - self._last_sync >= self._fsync_seconds:
            self.sync()

    def drop(self, keys: set[Key]) -> int:
        """Rewrite the journal (atomically, under its lock) without the records of ``keys``; how
        many were dropped. Reads the whole file: for rare repairs, not for every record."""
        self.sync()
        kept: list[bytes] = []
        dropped: set[Key] = set()
        with self.path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue
                try:
                    key = record_key(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue
                if key in keys:
                    dropped.add(key)
                else:
                    kept.append(line)
        if dropped:
            write_bytes_atomic(self.path, b"".join(kept))
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self.done -= dropped
            self.loaded_errors -= len(dropped & self.loaded_error_keys)
            self.loaded_error_keys -= dropped
        return len(dropped)

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync and close the file, then release the lock (once; later calls do nothing)."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of the file, in order (complete lines only)."""
        with self.path.open("rb") as f:
            for line in f:
                if line.endswith(b"\n") and line.strip():
                    yield json.loads(line)


# -- the job -----------------------------------------------------------------------------------


@dataclass
class DetectOptions:
    """What ``run_detect_job`` needs besides the detector (see ``afd-trt detect --help``)."""

    inputs: Sequence[str]
    output: Path
    format: str = "jsonl"
    journal: Path | None = None
    overwrite: bool = False
    retry_errors: bool = False
    every: int = 1
    exts: Sequence[str] | None = None  # folder walks: these extensions (default images + videos)
    batch_size: int | None = None  # None: the detector's default_batch_size
    workers: int | None = None  # None: the detector's default_workers
    min_score: float = 0.0
    min_face_size: float = 0.0
    crops: Path | None = None
    crop_mode: str = "aligned"
    crop_size: int = 256
    crop_scale: float = 1.0
    crop_margin: float = 1.0
    crop_border: str = "constant"
    crop_ext: str = "png"
    draw: Path | None = None
    draw_landmark_threshold: float = 0.3
    progress: bool = True
    shard: tuple[int, int] | None = None  # (K, N): only the inputs of shard K of N (see shard_of)
    settings: dict[str, Any] | None = None  # checked against / recorded beside the journal

    def journal_path(self) -> Path:
        """The JSON Lines file: ``output`` itself, or for ``--format coco`` ``<output>.jsonl``."""
        if self.journal is not None:
            return self.journal
        return self.output if self.format == "jsonl" else self.output.with_name(self.output.name + ".jsonl")


@dataclass
class Summary:
    """Counts of one run (``skipped``: already in the journal when it started)."""

    inputs: int = 0
    faces: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.inputs} inputs ({self.skipped} already done), {self.faces} faces, "
            f"{self.failed} failed"
            + (
                f" (+{self.failed_before} earlier, kept; --retry-errors retries them)"
                if self.failed_before
                else ""
            )
            + f", {self.seconds:.1f} s, {self.rate:.2f} images/s"
            + (" -- interrupted" if self.interrupted else "")
        )


_FAILED_INPUT = np.zeros((0, 0, 3), np.uint8)  # fed to the stream in place of an input known to fail


def _describe_error(e: BaseException) -> str:
    msg = str(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class EncodeError(ValueError):
    """An image that cannot be written in the asked format (e.g. a JPEG side over 65,500 px)."""


def _encode(image: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in ("jpg", "jpeg") else []
    try:
        ok, buf = cv2.imencode(f".{ext}", image, params)
    except cv2.error as e:
        raise EncodeError(
            f"OpenCV cannot encode a {image.shape[1]}x{image.shape[0]} .{ext} image: {e}"
        ) from e
    if not ok:
        raise EncodeError(f"OpenCV cannot encode a {image.shape[1]}x{image.shape[0]} .{ext} image")
    return bytes(buf.tobytes())


def _write_files(
    opts: DetectOptions, item: WorkItem, image: np.ndarray, faces: list[dict[str, np.ndarray]]
) -> None:
    if opts.crops is not None:
        for i, face in enumerate(faces):
            name = crop_name(item.path, i, item.frame, opts.crop_ext)
            try:
                if opts.crop_mode == "aligned":
                    m = aligned_crop_matrix(face["keypoints"], opts.crop_size, opts.crop_scale)
                else:
                    m = box_crop_matrix(face["bbox"], opts.crop_size, opts.crop_margin)
                crop = warp_crop(image, m, opts.crop_size, opts.crop_border)
            except ValueError as e:  # a face collapsed to a point: no crop, the record stays
                logger.warning("no crop %s: %s", name, e)
                continue
            write_bytes_atomic(opts.crops / name, _encode(crop, opts.crop_ext), fsync=False)
    if opts.draw is not None:
        drawn = draw_faces(image, faces, opts.draw_landmark_threshold)
        write_bytes_atomic(
            opts.draw / f"{source_tag(item.path, item.frame)}.jpg", _encode(drawn, "jpg"), fsync=False
        )


def _process(opts: DetectOptions, item: WorkItem, res: StreamResult) -> tuple[dict[str, Any], int]:
    """The record of one stream result (and its crops/drawing), and its face count."""
    if item.error is not None:
        return error_record(item.path, item.error, item.frame, item.time), 0
    if not res.ok:
        err = _describe_error(res.error) if res.error is not None else "failed"
        return error_record(item.path, err, item.frame, item.time, res.width, res.height), 0
    faces = filter_faces(res.faces or [], opts.min_score, opts.min_face_size)
    if opts.crops is not None or (opts.draw is not None):
        try:
            image = res.image if res.image is not None else load_image(item.path)
        except (OSError, TypeError, ValueError) as e:  # changed or removed since detection
            return error_record(item.path, _describe_error(e), item.frame, item.time), 0
        try:
            _write_files(opts, item, image, faces)
        # This input's own (an image JPEG cannot hold, a crop OpenCV cannot make); a write error
        # (a full disk) stops the job.
        except (EncodeError, cv2.error, MemoryError) as e:
            return error_record(item.path, f"writing its crops or drawing: {e}", item.frame, item.time), 0
    if res.width is None or res.height is None:  # never for a decoded image
        return error_record(item.path, "no image size in the result", item.frame, item.time), 0
    return image_record(item.path, faces, res.width, res.height, item.frame, item.time), len(faces)


def _progress_bar(opts: DetectOptions, total: int) -> Any:
    if not (opts.progress and sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None
    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05, file=sys.stderr)


def run_detect_job(det: Detector, opts: DetectOptions) -> Summary:
    """Run a detect job (see the module docstring) through ``det.stream``; returns its summary."""
    if opts.every < 1:
        raise ValueError(f"--every must be >= 1, got {opts.every}")
    specs = expand_inputs(
        opts.inputs, opts.exts, exclude=[d for d in (opts.crops, opts.draw) if d is not None]
    )
    if not specs:
        logger.warning("no inputs: %s held no images or videos", " ".join(map(str, opts.inputs)))
    if opts.shard is not None:
        everything = len(specs)
        specs = in_shard(specs, opts.shard)
        logger.info("shard %d/%d: %d of %d inputs", *opts.shard, len(specs), everything)
    journal = Journal(
        opts.journal_path(), overwrite=opts.overwrite, retry_errors=opts.retry_errors, settings=opts.settings
    )
    if opts.overwrite:
        for what, folder in (("--crops", opts.crops), ("--draw", opts.draw)):
            if folder is not None and folder.is_dir() and any(folder.iterdir()):
                logger.warning(
                    "%s %s already holds files: --overwrite starts the journal over but deletes no "
                    "images; crops or drawings of faces no longer found stay there (empty it first)",
                    what,
                    folder,
                )
    videos = VideoIndex(videos_path(opts.journal_path()), reset=opts.overwrite)
    summary = Summary(skipped=journal.loaded, failed_before=journal.loaded_errors)
    t0 = time.perf_counter()
    total = _estimate_total(specs, journal.done, opts.every, videos) if opts.progress else 0
    bar = _progress_bar(opts, total) if opts.progress else None
    redirect: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if bar is not None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    pending: dict[int, WorkItem] = {}

    def feed() -> Iterator[Any]:
        for i, item in enumerate(iter_work(specs, set(journal.done), opts.every, videos)):
            pending[i] = item
            if item.error is not None:
                yield _FAILED_INPUT
            else:
                yield item.image if item.image is not None else item.path

    keep = opts.crops is not None or opts.draw is not None
    results = det.stream(feed(), batch_size=opts.batch_size, workers=opts.workers, keep_images=keep)
    try:
        with redirect:
            for res in results:
                item = pending.pop(res.index)
                rec, n_faces = _process(opts, item, res)
                journal.append(rec)
                summary.inputs += 1
                summary.faces += n_faces
                if "error" in rec:
                    summary.failed += 1
                    where = item.path if item.frame is None else f"{item.path} frame {item.frame}"
                    summary.failures.append(f"{where}: {rec['error']}")
                    logger.warning("%s: %s", where, rec["error"])
                if bar is not None:
                    bar.update(1)
        # A video that could not be opened before and has now been read to its end: its old
        # error record would outlive the frames' (listed in COCO's errors, failing every run).
        healed = {
            key
            for key in journal.loaded_error_keys
            if key[1] is None and videos.finished(key[0], journal.done, opts.every)
        }
        if healed:
            summary.failed_before -= journal.drop(healed)
            logger.info(
                "dropped the old error record of %d video(s) now read: %s", len(healed), sorted(healed)
            )
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stop the stream's read-ahead and workers
        if bar is not None:
            bar.close()
        journal.close()
        summary.seconds = time.perf_counter() - t0
    if opts.format == "coco":
        # Also when interrupted: a valid COCO file of what is done (re-running completes it).
        write_json_atomic(opts.output, coco_from_records(journal.records()))
    return summary
