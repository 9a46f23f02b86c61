"""atheris fuzz harness of ``ops.warp_crops`` and ``ops.warp_crops_u8``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_warp_crops.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    import numpy as np
    from fuzz_common import Gen, call_op

    from afd_trt import ops


def out_side(g: Gen) -> int:
    return g.choice([0, -1, 32767, 32768, 2**31]) if not g.strict and g.one_in(20) else g.int(1, 40)


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    image = g.array((None, None, 3), np.uint8, lo=0, hi=255)
    mats = g.array((None, 2, 3), np.float64, lo=-50.0, hi=50.0)
    w, h = out_side(g), out_side(g)
    if w > 64 and h > 64:  # both huge is valid but gigabytes: keep one small
        h = 1
    out_size: object = (w, h) if g.strict or not g.one_in(30) else g.garbage()
    mode = (
        g.choice(["opencv5", "opencv4"])
        if g.strict or not g.one_in(20)
        else g.choice(["", "opencv3", None, 5])
    )
    threads = g.int(0, 4) if g.strict or not g.one_in(20) else g.choice([-1, 257, 10**6, 2**40])
    if g.bool():
        call_op(lambda: ops.warp_crops_u8(image, mats, out_size, threads=threads, mode=mode))
    else:
        mean, std = g.floats(3, -2.0, 2.0), g.floats(3, 0.01, 4.0)
        call_op(lambda: ops.warp_crops(image, mats, out_size, mean, std, threads=threads, mode=mode))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
