"""atheris fuzz harness of ``ops.rcnn_postprocess``.

Run: scripts/fuzz.sh (all ops), or ``python tests/fuzz/fuzz_rcnn_postprocess.py -max_total_time=20``. Python-level
coverage only (no clang here to build the extension with libFuzzer's instrumentation).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["afd_trt", "fuzz_common"]):
    from fuzz_common import Gen, call_op, check_dets, dim

    from afd_trt import ops


def TestOneInput(data: bytes) -> None:
    g = Gen(data)
    rois = g.array((None, 4), lo=-10.0, hi=80.0)
    k = dim(rois, 0)
    cls_score = g.array((k, 2))
    bbox_pred = g.array((k, 4), lo=-5.0, hi=5.0)
    img_shape = (g.size(1, 64), g.size(1, 64))
    scale_factor = g.array((4,), lo=0.1, hi=4.0, param=True)
    max_per_img = g.size(1, 50)
    args = (rois, cls_score, bbox_pred, img_shape, scale_factor, g.floats(4, -1, 1), g.floats(4, 0.05, 2),
            g.float(0, 1), g.float(0, 1), max_per_img)  # fmt: skip
    call_op(lambda: ops.rcnn_postprocess(*args), check_dets(max_per_img))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
