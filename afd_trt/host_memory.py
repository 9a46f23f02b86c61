"""How the host allocator hands freed memory back: for inference, big buffers are kept for reuse.

torch has no caching allocator on the CPU: every network call allocates its activations afresh,
tens of megabytes each, and frees them when done. glibc's ``malloc`` serves blocks above its mmap
threshold (128 KiB, rising with use to at most 32 MiB) with fresh pages from the kernel and gives
them back on ``free``, and it gives back the heap's free top above its trim threshold. Each new
block's pages then fault in again, zero-filled by the kernel: HRNetV2 on 8 crops took 155,000 page
faults and 0.4 s of kernel time per forward beside 1.3 s of arithmetic (AVX2 machine, 2 threads,
2026-12-04), and ran 1.4x faster without them. The arithmetic, and so every result, is the same.

:func:`keep_freed_memory` raises both thresholds, process-wide (glibc only): blocks up to
``mmap_threshold`` come from the heap, and up to ``trim_threshold`` of free memory at its top stays
with the process, for the next call to reuse. The resident set then stays near its high-water mark
between calls instead of falling back; peak use does not grow (the same blocks are live at once).
Blocks larger than ``mmap_threshold`` (a huge image) still go back to the kernel when freed.

:class:`~afd_trt.Detector` applies it once per process (:func:`apply_setting`) unless the
environment says ``AFD_TRT_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading

__all__ = [
    "ENV_MALLOC",
    "MALLOC_SETTINGS",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "apply_setting",
    "keep_freed_memory",
    "malloc_setting",
]

logger = logging.getLogger(__name__)

ENV_MALLOC = "AFD_TRT_MALLOC"
MALLOC_SETTINGS = ("keep", "system")
"""``keep``: :func:`keep_freed_memory` (the default); ``system``: leave the allocator as it is."""

MMAP_THRESHOLD = 256 << 20
"""Bytes: blocks up to this size come from the heap (glibc's ``M_MMAP_THRESHOLD``). HRNetV2's
largest activation at 64 crops is 268 MB, Faster R-CNN's FPN level 0 at 1344x768 66 MB."""
TRIM_THRESHOLD = 512 << 20
"""Bytes of free heap top kept rather than returned (glibc's ``M_TRIM_THRESHOLD``)."""

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1  # mallopt's value is a C int

_lock = threading.Lock()
_applied: str | None = None


def malloc_setting() -> str:
    """``$AFD_TRT_MALLOC`` (one of :data:`MALLOC_SETTINGS`; ``keep`` when unset or empty).
    Raises ``ValueError`` naming the variable for any other value."""
    raw = os.environ.get(ENV_MALLOC, "")
    value = raw.strip().lower() or "keep"
    if value not in MALLOC_SETTINGS:
        raise ValueError(f"${ENV_MALLOC} must be one of {MALLOC_SETTINGS}, got {raw!r}")
    return value


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes, process-wide; see the module docstring).

    Returns False, changing nothing, where the C library is not glibc (no ``mallopt``).
    Raises ``ValueError`` for a threshold that is not an int in [1, 2**31 - 1], ``OSError`` if
    glibc refuses one.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT_MAX:
            raise ValueError(
                f"{name} must be a positive number of bytes below 2 GiB (mallopt's int), got {value!r}"
            )
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    for option, name, value in (
        (_M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD", mmap_threshold),
        (_M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD", trim_threshold),
    ):
        if mallopt(option, value) != 1:
            raise OSError(f"glibc's mallopt refused {name} = {value}")
    return True


def apply_setting() -> str:
    """Apply ``$AFD_TRT_MALLOC`` once per process; later calls return what was done.

    Returns ``"keep"`` (thresholds raised), ``"system"`` (left alone: asked for, or not glibc).
    """
    global _applied
    with _lock:
        if _applied is None:
            setting = malloc_setting()
            if setting == "keep" and keep_freed_memory():
                logger.info(
                    "glibc malloc: blocks up to %d MiB from the heap, up to %d MiB of freed memory kept "
                    "for reuse ($%s=system to leave it as it was)",
                    MMAP_THRESHOLD >> 20,
                    TRIM_THRESHOLD >> 20,
                    ENV_MALLOC,
                )
                _applied = "keep"
            else:
                _applied = "system"
        return _applied
