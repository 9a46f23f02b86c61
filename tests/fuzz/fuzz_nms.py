"""atheris fuzz harness of ``ops.nms`` (plain and batched NMS).

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_nms.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    import numpy as np
    from fuzz_common import Gen, call_op, dim

    from afd_trt import ops


def check_keep(n: int) -> Callable[[np.ndarray], None]:
    """Kept indices: int64 (K,), distinct, in [0, N)."""

    def check(keep: np.ndarray) -> None:
        assert keep.dtype == np.int64, keep.dtype
        assert keep.ndim == 1, keep.shape
        assert len(np.unique(keep)) == len(keep) <= n
        assert ((keep >= 0) & (keep < n)).all()

    return check


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    boxes = g.array((None, 4), lo=-1e4, hi=1e4)
    n = dim(boxes, 0)
    scores = g.array((n,))
    idxs = g.array((n,), np.int64, lo=-3, hi=3) if g.bool() else None
    thr = g.float(0.0, 1.0)
    call_op(lambda: ops.nms(boxes, scores, thr, idxs), check_keep(n))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
