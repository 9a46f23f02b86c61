"""atheris fuzz harness of ``ops.decode_heatmaps`` (all modes, with and without the flip merge).

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_decode_heatmaps.py -max_total_time=20``. Python-level
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
    hm = g.array((None, None, None, None), lo=-1.0, hi=1.0, max_elems=2048)
    n, k = dim(hm, 0), dim(hm, 1)
    centers = g.array((n, 2), lo=-500.0, hi=500.0)
    sizes = g.array((n, 2), lo=0.5, hi=500.0)
    mode = (
        g.choice(["dark", "quarter", "none"])
        if g.strict or not g.one_in(20)
        else g.choice(["unbiased", "", None])
    )
    blur = (
        g.choice([0, 1, 2, 4, -11, 1023, 1025, 2**31 - 1, 2**40])
        if not g.strict and g.one_in(20)
        else 2 * g.int(1, 7) + 1
    )
    flipped = g.array(
        hm.shape if isinstance(hm, np.ndarray) else (1, 1, 1, 1), lo=-1.0, hi=1.0, max_elems=2048
    )
    use_flip = g.int(0, 3)
    pairs = pairs_arg(g, k) if use_flip in (1, 3) else None
    threads = g.int(0, 4) if g.strict or not g.one_in(20) else g.choice([-1, 257, 2**40])
    kw = {"mode": mode, "blur_kernel": blur, "shift": g.bool(), "threads": threads}
    if use_flip >= 2:
        kw["flipped"] = flipped

    def check(out: np.ndarray) -> None:
        assert out.dtype == np.float32
        assert out.shape == (n, k, 3), out.shape

    call_op(lambda: ops.decode_heatmaps(hm, centers, sizes, flip_pairs=pairs, **kw), check)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
