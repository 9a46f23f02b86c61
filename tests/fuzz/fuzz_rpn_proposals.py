"""atheris fuzz harness of ``ops.rpn_proposals``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_rpn_proposals.py -max_total_time=20``. Python-level
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
    levels = g.int(0, 3)
    ratios, scales = g.floats(g.int(1, 3), 0.25, 4.0), g.floats(g.int(1, 2), 0.5, 8.0)
    a = len(ratios) * len(scales)
    cls_scores, bbox_preds = [], []
    for _ in range(levels):
        h, w = g.int(0, 6), g.int(0, 6)
        cls_scores.append(g.array((a, h, w)))
        bbox_preds.append(g.array((4 * a, h, w), lo=-5.0, hi=5.0))
    strides = [g.size(1, 16) for _ in range(levels)]
    img_shape = (g.size(1, 64), g.size(1, 64))
    max_per_img = g.size(1, 50)
    args = (cls_scores, bbox_preds, strides, ratios, scales, img_shape, g.size(1, 50), g.float(0, 1),
            max_per_img, g.float(-1, 4), g.floats(4, -1, 1), g.floats(4, 0.05, 2))  # fmt: skip
    call_op(lambda: ops.rpn_proposals(*args), check_dets(max_per_img))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
