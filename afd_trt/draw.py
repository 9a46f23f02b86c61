"""Drawings of detections: boxes and the 28 landmarks over the image (upstream's demo style:
green boxes, red landmark dots, yellow where the landmark score is below a threshold)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["draw_faces"]

_LIMIT = 1 << 20  # drawing coordinates are clipped to +-this (OpenCV takes int32 points)


def _px(v: float) -> int:
    return int(np.clip(round(v), -_LIMIT, _LIMIT))


BOX_COLOR = (0, 255, 0)  # BGR
POINT_COLOR = (0, 0, 255)
LOW_SCORE_COLOR = (0, 255, 255)


def draw_faces(
    image: np.ndarray, faces: Sequence[dict[str, np.ndarray]], landmark_threshold: float = 0.3
) -> np.ndarray:
    """A copy of ``image`` with each face's box, score and landmarks drawn.

    Args:
        image: uint8 (H, W, 3) BGR.
        faces: ``Detector`` faces: ``bbox`` (5,) ``[x0, y0, x1, y1, score]`` (or (4,)),
            ``keypoints`` (28, 3) ``[x, y, score]``, image pixel coordinates.
        landmark_threshold: landmarks scoring below it are drawn in yellow, others in red.

    Returns:
        uint8 (H, W, 3) BGR, same size as ``image``. Line width and dot radius grow with the
        face size (``max(2, longer box side / 85)`` pixels).
    """
    if not (
        isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    ):
        raise ValueError(
            f"draw_faces: image must be uint8 (H, W, 3), got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )
    out = image.copy()
    for face in faces:
        box = np.asarray(face["bbox"], dtype=np.float64).reshape(-1)
        if not np.isfinite(box[:4]).all():
            continue
        x0, y0, x1, y1 = (_px(float(v)) for v in box[:4])
        width = int(np.clip(round(max(x1 - x0, y1 - y0) / 85), 2, 64))
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR, width)
        if box.shape[0] > 4:
            cv2.putText(
                out, f"{box[4]:.2f}", (x0, max(y0 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.4, width / 4), BOX_COLOR, max(1, width // 2), cv2.LINE_AA,
            )  # fmt: skip
        for x, y, score in np.asarray(face["keypoints"], dtype=np.float64):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            color = POINT_COLOR if score >= landmark_threshold else LOW_SCORE_COLOR
            cv2.circle(out, (_px(x), _px(y)), width, color, cv2.FILLED, cv2.LINE_AA)
    return out
