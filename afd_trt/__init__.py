"""afd_trt: anime face detection and 28-point landmarks, upstream's answers at GPU-server speed."""

from __future__ import annotations

__version__ = "0.1.0"
