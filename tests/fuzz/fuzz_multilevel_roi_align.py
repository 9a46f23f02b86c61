"""atheris fuzz harness of ``ops.multilevel_roi_align``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_multilevel_roi_align.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    from fuzz_common import Gen, call_op, dim, pool_args

    from afd_trt import ops


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    levels, c = g.int(0, 4), g.int(0, 4)
    feats = [g.array((c, None, None)) for _ in range(levels)]
    strides = [g.size(1, 32) for _ in range(levels + (1 if g.one_in(16) else 0))]
    rois = g.array((None, 4), lo=-20.0, hi=300.0)
    output_size, sampling_ratio = pool_args(g, c * dim(rois, 0))
    args = (feats, rois, strides, g.float(0.5, 64.0), output_size, sampling_ratio, g.bool())
    call_op(lambda: ops.multilevel_roi_align(*args))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
