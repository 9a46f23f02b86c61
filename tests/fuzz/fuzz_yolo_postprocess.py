"""atheris fuzz harness of ``ops.yolo_postprocess``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_yolo_postprocess.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    from fuzz_common import Gen, call_op, check_dets

    from afd_trt import ops


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    levels, anchors = g.int(0, 3), g.int(1, 3)
    maps = [g.array((anchors * 6, None, None), max_elems=1024) for _ in range(levels)]
    strides = [g.size(1, 32) for _ in range(levels + (1 if g.one_in(16) else 0))]
    base_sizes = g.array((levels, anchors, 2), lo=0.5, hi=100.0, param=True)
    scale_factor = g.array((4,), lo=0.1, hi=4.0, param=True)
    max_per_img = g.size(1, 20)
    args = (maps, strides, base_sizes, scale_factor, g.float(0, 1), g.float(0, 1), g.float(0, 1), max_per_img)
    call_op(lambda: ops.yolo_postprocess(*args), check_dets(max_per_img))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
