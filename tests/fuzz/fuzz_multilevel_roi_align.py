"""atheris fuzz harness of ``ops.multilevel_roi_align``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_multilevel_roi_align.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    from fuzz_common import Gen, call_op, dim

    from afd_trt import ops


def pool_args(g: Gen, planes: int) -> tuple[int, int]:
    """output_size and sampling_ratio: small, at the bounds, or invalid; large pools only for few planes."""
    output_size = g.choice([1024, 1025]) if g.one_in(40) else g.size(1, 8)
    if output_size == 1024 and planes > 1:
        output_size = 7
    sampling_ratio = g.choice([1024, 1025, 2**40]) if g.one_in(40) else g.int(-2, 4)
    return output_size, sampling_ratio


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
