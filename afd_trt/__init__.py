"""afd_trt: anime face detection and 28-point landmarks, upstream's answers at GPU-server speed.

>>> import afd_trt
>>> det = afd_trt.Detector("yolov3", "yolo.pth", "hrnet.pth", device="auto")  # doctest: +SKIP
>>> faces = det(bgr_image)  # [{"bbox": (5,), "keypoints": (28, 3)}, ...]  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import load_config
from .detector import BatchError, Detector, create_detector

__all__ = ["BatchError", "Detector", "__version__", "create_detector", "load_config"]
