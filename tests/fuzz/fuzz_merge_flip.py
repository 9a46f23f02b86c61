"""atheris fuzz harness of ``ops.merge_flip``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_merge_flip.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    import numpy as np
    from fuzz_common import Gen, call_op, dim, pairs_arg

    from afd_trt import ops


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    hm = g.array((None, None, None, None), lo=-2.0, hi=2.0, max_elems=2048)
    shape = hm.shape if isinstance(hm, np.ndarray) else (1, 1, 1, 1)
    flipped = g.array(shape, lo=-2.0, hi=2.0, max_elems=2048)
    pairs = pairs_arg(g, dim(hm, 1, 1))
    call_op(lambda: ops.merge_flip(hm, flipped, pairs, g.bool()))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
