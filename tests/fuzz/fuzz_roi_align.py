"""atheris fuzz harness of ``ops.roi_align``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_roi_align.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    import numpy as np
    from fuzz_common import Gen, call_op, dim, pool_args

    from afd_trt import ops


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    feature = g.array((None, None, None))
    rois = g.array((None, 4), lo=-20.0, hi=100.0)
    planes = dim(feature, 0) * dim(rois, 0)
    output_size, sampling_ratio = pool_args(g, planes)
    spatial_scale = g.float(0.0, 2.0)

    def check(out: np.ndarray) -> None:
        assert out.dtype == np.float32
        assert out.shape == (dim(rois, 0), dim(feature, 0), output_size, output_size), out.shape

    call_op(lambda: ops.roi_align(feature, rois, spatial_scale, output_size, sampling_ratio, g.bool()), check)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
