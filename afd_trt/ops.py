"""Typed wrappers over the native ops in ``afd_trt._C``.

Every function takes and returns numpy arrays, states shapes, dtypes and coordinate
conventions, and validates in C++ (a ``ValueError`` naming the bad argument and value).
Boxes are ``(x1, y1, x2, y2)`` in pixels, float32.
"""

from __future__ import annotations

from . import _C  # noqa: F401

# ---------------------------------------------------------------------------------------------
# Detection ops: NMS, YOLOv3 / RPN / R-CNN post-processing, RoIAlign.
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# Landmark ops: face-crop warp, heatmap flip merge and decoding.
# ---------------------------------------------------------------------------------------------


