"""Per-stage wall time of the pipeline, for ``afd-trt bench`` and users profiling a server.

Disabled (a no-op) by default. When enabled, every stage adds its wall time and a count to a
thread-safe table; on CUDA the device is synchronised around each stage so that GPU work is
charged to the stage that queued it (this costs some overlap, so enable it only to profile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["STAGES", "StageTimes"]

STAGES = (
    "decode",  # reading and decoding image files (worker threads in Detector.stream)
    "preprocess",  # detector input: resize, pad, normalise
    "detector",  # face detector network(s)
    "nms",  # box decoding, score thresholds, NMS; for Faster R-CNN also RoIAlign
    "warp",  # landmark crops (affine warp + normalisation)
    "landmarks",  # HRNetV2 network (both flips)
    "heatmap_decode",  # flip merge, argmax, sub-pixel refinement
)
"""Stage names, in pipeline order."""


class StageTimes:
    """Accumulated seconds and call counts per stage.

    Args:
        sync: called before and after each timed stage when enabled (``torch.cuda.synchronize``
            on CUDA), or None.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.enabled = False
        self._sync = sync
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    @property
    def synchronizes(self) -> bool:
        """Whether timing a stage synchronises a device (so it changes the overlap it measures)."""
        return self._sync is not None

    @contextmanager
    def stage(self, name: str, *, sync: bool = True) -> Iterator[None]:
        """Time the ``with`` body as ``name`` (nothing at all when disabled). ``sync=False``
        for host-only stages (decoding in worker threads), which need no device sync."""
        if not self.enabled:
            yield
            return
        sync_fn = self._sync if sync else None
        if sync_fn is not None:
            sync_fn()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync_fn is not None:
                sync_fn()
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            self._counts[name] = self._counts.get(name, 0) + count

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._counts.clear()

    def seconds(self) -> dict[str, float]:
        """Seconds per stage, pipeline order first (stages never timed are absent)."""
        with self._lock:
            order = [s for s in STAGES if s in self._seconds] + sorted(set(self._seconds) - set(STAGES))
            return {s: self._seconds[s] for s in order}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
