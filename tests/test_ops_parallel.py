"""The ops' worker threads under process limits: a thread that cannot be started, or memory that
cannot be had inside a worker, is the caller's result or a Python exception, never the end of the
process (``std::terminate``, exit 134, as it was before 2026-12-05).

Each case runs in a child process whose address space is capped (``RLIMIT_AS``) just above what it
uses, so that most of the 32 threads asked for cannot get their stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be capped under it",
)

_PRELUDE = """
import hashlib, json, resource, sys
import numpy as np
from afd_trt import ops

def cap(headroom_mib):
    with open("/proc/self/status") as f:
        vm = int(f.read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + headroom_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
"""


def _child(body: str) -> dict[str, object]:
    """Run ``body`` after the prelude in a fresh interpreter that imports the afd_trt these tests
    import (installed or built in place, not a source tree on the working folder); its last
    stdout line, as JSON."""
    import afd_trt

    root = Path(afd_trt.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root, env=env
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("headroom_mib", [24, 64, 160])
def test_threads_that_cannot_start_leave_their_work_to_the_caller(headroom_mib: int) -> None:
    """Crop warp and heatmap decoding asked for 32 threads where few stacks fit: the same bits
    as one thread (the chunks no thread could take run in the calling thread). RoIAlign, which
    takes a thread per core, gives the same bits capped as not."""
    got = _child(
        f"""
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        m = np.tile(np.array([[[0.9, 0.1, 3.0], [-0.1, 0.9, 5.0]]]), (8, 1, 1))
        hm = rng.random((2, 28, 64, 64), dtype=np.float32)
        centers = np.full((2, 2), 100.0, np.float32)
        sizes = np.full((2, 2), 80.0, np.float32)
        feat = rng.random((64, 40, 40), dtype=np.float32)
        rois = np.array([[1, 2, 30, 33], [5, 5, 20, 38], [0, 0, 39, 39]] * 8, np.float32)

        def run(threads):
            return [
                digest(ops.warp_crops_u8(img, m, (64, 64), threads=threads)),
                digest(ops.decode_heatmaps(hm, centers, sizes, "dark", 11, threads=threads)),
                digest(ops.multilevel_roi_align([feat], rois, [4], 56.0, 7, 0, True)),  # all cores
            ]

        one = run(1)
        cap({headroom_mib})
        print(json.dumps({{"one": one, "many": run(32)}}))
        """
    )
    assert got["many"] == got["one"]


def test_memory_a_worker_cannot_get_is_a_memory_error() -> None:
    """DARK decoding of two 6000x6000 heatmaps needs 3 buffers of 144 MB per worker: capped
    100 MiB above its inputs, the workers' ``std::bad_alloc`` is a MemoryError in the caller,
    and the process goes on."""
    got = _child(
        """
        hm = np.zeros((1, 2, 6000, 6000), np.float32)
        hm[:, :, 3000, 3000] = 1.0
        c, b = np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)
        cap(100)
        try:
            ops.decode_heatmaps(hm, c, b, "dark", 3, threads=2)
            outcome = "ran"
        except MemoryError:
            outcome = "MemoryError"
        small = ops.decode_heatmaps(np.ascontiguousarray(hm[:, :, :64, :64]), c, b, "dark", 3, threads=2)
        print(json.dumps({"outcome": outcome, "after": small.shape[1]}))
        """
    )
    assert got == {"outcome": "MemoryError", "after": 2}
