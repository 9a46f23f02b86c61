"""Result records of ``afd-trt detect``: JSON Lines records, COCO conversion, keypoint names.

A JSON Lines record describes one input (an image, or one frame of a video)::

    {"path": str, "width": int, "height": int, ["frame": int, "time": float,]
     "faces": [{"bbox": [x0, y0, x1, y1], "score": float, "keypoints": [[x, y, score] x 28]}]}

or, for an input that could not be processed, ``"error": str`` in place of ``"faces"``
(``width``/``height`` then present only when known). Coordinates are image pixels as returned
by ``Detector`` (boxes expanded by ``box_scale_factor``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FLIP_PAIRS",
    "KEYPOINT_NAMES",
    "SKELETON",
    "coco_category",
    "coco_from_records",
    "error_record",
    "face_record",
    "filter_faces",
    "image_record",
    "record_key",
    "write_bytes_atomic",
    "write_json_atomic",
]

# The 28 landmarks of upstream's HRNetV2 model. "right"/"left" are the character's, as in COCO:
# on a frontal face the *_right points lie on the image's left. Contour 0-4 (2: chin), brows 5-10,
# right eye 11-16 (upper lid 11-13, lower lid 14-16), left eye 17-22, nose 23, mouth 24-27.
KEYPOINT_NAMES: tuple[str, ...] = (
    "jaw_right_upper",
    "jaw_right_lower",
    "chin",
    "jaw_left_lower",
    "jaw_left_upper",
    "brow_right_outer",
    "brow_right_middle",
    "brow_right_inner",
    "brow_left_inner",
    "brow_left_middle",
    "brow_left_outer",
    "eye_right_upper_outer",
    "eye_right_upper_middle",
    "eye_right_upper_inner",
    "eye_right_lower_outer",
    "eye_right_lower_middle",
    "eye_right_lower_inner",
    "eye_left_upper_inner",
    "eye_left_upper_middle",
    "eye_left_upper_outer",
    "eye_left_lower_inner",
    "eye_left_lower_middle",
    "eye_left_lower_outer",
    "nose",
    "mouth_right",
    "mouth_upper",
    "mouth_left",
    "mouth_lower",
)

# Mirrored keypoints (0-based), as in configs/hrnetv2.toml [test] flip_pairs (upstream's `swap`).
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 4), (1, 3), (5, 10), (6, 9), (7, 8), (11, 19),
    (12, 18), (13, 17), (14, 22), (15, 21), (16, 20), (24, 26),
)  # fmt: skip

# Lines between keypoints (0-based) for drawing: contour, brows, eye outlines, mouth outline.
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4),
    (5, 6), (6, 7), (8, 9), (9, 10),
    (11, 12), (12, 13), (14, 15), (15, 16), (11, 14), (13, 16),
    (17, 18), (18, 19), (20, 21), (21, 22), (17, 20), (19, 22),
    (24, 25), (25, 26), (26, 27), (27, 24),
)  # fmt: skip


def filter_faces(
    faces: Sequence[dict[str, np.ndarray]], min_score: float = 0.0, min_face_size: float = 0.0
) -> list[dict[str, np.ndarray]]:
    """Faces whose box score is >= ``min_score`` and whose box's shorter side (pixels, of the
    expanded box as returned) is >= ``min_face_size``. Boxes without a score count as score 1."""
    kept = []
    for f in faces:
        b = np.asarray(f["bbox"], dtype=np.float64).reshape(-1)
        score = float(b[4]) if b.shape[0] > 4 else 1.0
        if score >= min_score and min(b[2] - b[0], b[3] - b[1]) >= min_face_size:
            kept.append(f)
    return kept


def face_record(face: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"bbox": [x0, y0, x1, y1], "score": float | None, "keypoints": [[x, y, score] x 28]}``
    from a ``Detector`` face (float32 bbox (5,), keypoints (28, 3)); values as Python floats
    (float32 -> float64 exactly, so JSON round-trips to the same float32)."""
    bbox = np.asarray(face["bbox"]).reshape(-1)
    return {
        "bbox": [float(v) for v in bbox[:4]],
        "score": float(bbox[4]) if bbox.shape[0] > 4 else None,
        "keypoints": np.asarray(face["keypoints"]).astype(np.float64).tolist(),
    }


def image_record(
    path: str,
    faces: Sequence[dict[str, np.ndarray]],
    width: int,
    height: int,
    frame: int | None = None,
    time: float | None = None,
) -> dict[str, Any]:
    """The record of one processed image or video frame (see the module docstring)."""
    rec: dict[str, Any] = {"path": path}
    if frame is not None:
        rec["frame"] = int(frame)
        rec["time"] = None if time is None else round(float(time), 6)
    rec["width"], rec["height"] = int(width), int(height)
    rec["faces"] = [face_record(f) for f in faces]
    return rec


def error_record(
    path: str,
    error: str,
    frame: int | None = None,
    time: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> dict[str, Any]:
    """The record of an input that failed: ``error`` holds the reason, there is no ``faces``."""
    rec: dict[str, Any] = {"path": path}
    if frame is not None:
        rec["frame"] = int(frame)
        rec["time"] = None if time is None else round(float(time), 6)
    if width is not None and height is not None:
        rec["width"], rec["height"] = int(width), int(height)
    rec["error"] = error
    return rec


def _json_type(value: Any) -> str:
    """The JSON name of a parsed JSON value's type ("an array", "a number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def record_key(rec: dict[str, Any]) -> tuple[str, int | None]:
    """The stable input id of a record: ``(path, frame)``, frame ``None`` for images.

    A malformed record raises ``KeyError`` (no ``path``), ``TypeError`` (not a JSON object, or a
    ``frame`` that is not a number) or ``ValueError`` (a ``frame`` string that is not a number).
    """
    if not isinstance(rec, dict):
        raise TypeError(f"record is {_json_type(rec)}, not an object")
    frame = rec.get("frame")
    return str(rec["path"]), None if frame is None else int(frame)


def coco_category(category_id: int = 1) -> dict[str, Any]:
    """The COCO category of anime faces: 28 keypoint names, a 1-based skeleton (COCO's
    convention) and the 0-based ``flip_pairs`` (an extra field)."""
    return {
        "id": category_id,
        "name": "face",
        "supercategory": "face",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
        "flip_pairs": [list(p) for p in FLIP_PAIRS],
    }


def _finite(x: float | None) -> float | None:
    """``x``, or None (JSON ``null``) when it is None (a user box given without a score), NaN or
    infinite."""
    return x if x is not None and math.isfinite(x) else None


def coco_from_records(
    records: Iterable[dict[str, Any]], description: str = "afd-trt detect"
) -> dict[str, Any]:
    """A COCO-style keypoint dataset from JSON Lines records (in their order).

    ``images``: one per successful record (``id`` from 1, ``file_name`` = the record's path,
    ``width``, ``height``, plus ``frame``/``time`` for video frames). ``annotations``: one per face
    (``id`` from 1), ``bbox`` ``[x, y, w, h]``, ``area`` = w*h, ``iscrowd`` 0, ``score``,
    ``keypoints`` the flat 28x3 list ``[x, y, v, ...]`` with COCO visibility ``v = 2`` (labelled),
    the model's per-keypoint confidences in ``keypoint_scores``, ``num_keypoints`` 28.
    Failed inputs are listed in a top-level ``errors`` list (``path``, [``frame``,] ``error``).

    Strict JSON (other tools reject ``NaN``): a non-finite number (a network that overflowed)
    becomes ``null``; a keypoint with a non-finite coordinate is ``[0, 0, 0]`` (COCO's "not
    labelled") and not counted in ``num_keypoints``; a non-finite box gives ``area`` null.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for rec in records:
        if "error" in rec:
            errors.append({k: rec[k] for k in ("path", "frame", "error") if k in rec})
            continue
        image_id = len(images) + 1
        img: dict[str, Any] = {
            "id": image_id,
            "file_name": rec["path"],
            "width": rec["width"],
            "height": rec["height"],
        }
        if "frame" in rec:
            img["frame"], img["time"] = rec["frame"], rec.get("time")
        images.append(img)
        for face in rec["faces"]:
            x0, y0, x1, y1 = face["bbox"]
            w, h = x1 - x0, y1 - y0
            flat: list[float | None] = []
            for x, y, _ in face["keypoints"]:
                flat += [x, y, 2] if math.isfinite(x) and math.isfinite(y) else [0, 0, 0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [_finite(v) for v in (x0, y0, w, h)],
                    "area": _finite(w * h),
                    "iscrowd": 0,
                    "score": _finite(face["score"]),
                    "keypoints": flat,
                    "num_keypoints": sum(v == 2 for v in flat[2::3]),
                    "keypoint_scores": [_finite(s) for _, _, s in face["keypoints"]],
                }
            )
    return {
        "info": {
            "description": description,
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "images": images,
        "annotations": annotations,
        "categories": [coco_category()],
        "errors": errors,
    }


_TMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)  # fmt: skip


def _create_temp(p: Path) -> tuple[int, Path]:
    """A new, empty temporary file next to ``p``, opened for writing: ``(fd, path)``.

    Unlike ``tempfile.mkstemp`` (always mode 0600) it is created with mode 0666 and left to the
    kernel to reduce by the umask (or a folder's default ACL), as ``open(p, "w")`` would; when
    ``p`` already exists, its permission bits are copied instead, as rewriting it in place would
    keep them."""
    try:
        mode: int | None = stat.S_IMODE(os.stat(p).st_mode) & 0o777
    except OSError:
        mode = None
    for _ in range(100):
        tmp = p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, _TMP_FLAGS, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - not POSIX
                    os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"no unused temporary file name next to {p}")  # pragma: no cover


def write_bytes_atomic(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``:
    readers (and a later run after a kill) see the old file or the whole new one, never a part.
    ``fsync`` also makes the content durable before the rename (against power loss).

    The file gets the mode a plainly created file would (0666 less the umask), or keeps the
    permission bits of the file it replaces."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``json.dump`` to ``path`` atomically (see ``write_bytes_atomic``)."""
    write_bytes_atomic(path, json.dumps(obj).encode("utf-8"))
