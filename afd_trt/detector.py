"""``Detector``: faces and their 28 landmarks, a drop-in for upstream's ``LandmarkDetector``.

Results are what upstream returns: per face ``{"bbox": float32 (5,) [x1, y1, x2, y2, score],
"keypoints": float32 (28, 3) [x, y, score]}`` with detected boxes expanded by
``box_scale_factor`` (no score threshold); user boxes are used as given.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import host_memory, jpeg
from .config import FasterRCNNConfig, HRNetConfig, ModelConfig, YOLOv3Config, load_config
from .cuda_graphs import DEFAULT_BUCKETS, CudaGraphEngine, empty_cache, supports_graphs
from .device_ops import Pixels, is_out_of_memory, to_host, with_index
from .engines import Engine, Network, create_engine, keeps_eager_arithmetic, resolve_precision
from .face_detection import FaceDetector, FasterRCNNFaceDetector, YOLOv3FaceDetector
from .image import ImageInput, load_image, max_pixels_limit
from .landmarks import LandmarkEstimator
from .models import build_model
from .ops import MAX_OP_THREADS
from .preprocess import DetInput
from .timing import StageTimes
from .weights import load_checkpoint, resolve_checkpoint

__all__ = [
    "BatchError",
    "Detector",
    "Face",
    "StreamResult",
    "create_detector",
    "expand_boxes",
    "resolve_device",
]

logger = logging.getLogger(__name__)

Face = dict[str, np.ndarray]
FACE_DETECTORS = ("yolov3", "faster-rcnn")
JPEG_DECODERS = ("opencv", "torchvision")
BOX_HEAD_BUCKETS = tuple(2**k for k in range(7, 14))
"""CUDA-graph batch sizes of the Faster R-CNN box head: up to 1000 RoIs per image, 8 images."""


class BatchError(RuntimeError):
    """Some images of a batch failed. Nothing is lost: ``results[i]`` holds the faces of every
    image that succeeded (``None`` where it failed) and ``errors[i]`` the exception of each failure."""

    def __init__(self, results: list[list[Face] | None], errors: dict[int, Exception]) -> None:
        lines = "; ".join(f"item {i}: {e}" for i, e in sorted(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} of {len(results)} images failed: {lines}{more}")
        self.results = results
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its two arguments (the default pickles the message only, and unpickling
        # then fails: a worker's BatchError would break a process pool, results and all).
        return (type(self), (self.results, self.errors))


@dataclass(frozen=True)
class StreamResult:
    """One input's outcome in :meth:`Detector.stream`.

    ``faces`` when it succeeded, ``error`` (the exception, whose message names the input) when
    it did not; ``height``/``width`` once the image was decoded.
    """

    index: int  # position in the input iterable
    source: str | None  # the path as given, None for arrays
    faces: list[Face] | None = None
    error: Exception | None = None
    height: int | None = None
    width: int | None = None
    image: np.ndarray | None = None  # the decoded BGR uint8 image, with ``keep_images=True``

    @property
    def ok(self) -> bool:
        return self.error is None


def _source(item: object) -> str | None:
    """The path ``item`` names, for its result; None for an array, or a path-like object whose
    ``__fspath__`` fails (its decoding then reports why)."""
    if not isinstance(item, (str, os.PathLike)):
        return None
    try:
        path = os.fspath(item)
    except Exception:  # a broken path-like is that item's error (at decoding), not the stream's
        return None
    return path if isinstance(path, str) else os.fsdecode(path)


_STREAM_LOCKS: dict[int, threading.Lock] = {}
_STREAM_LOCKS_GUARD = threading.Lock()


def _stream_lock(stream: torch.cuda.Stream) -> threading.Lock:
    """The lock of a CUDA stream (by handle): image work holds it, so that threads given the same
    pooled stream take turns on it."""
    with _STREAM_LOCKS_GUARD:
        return _STREAM_LOCKS.setdefault(int(stream.cuda_stream), threading.Lock())


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device of ``device``: ``"auto"`` is the first CUDA GPU when there is one, else the
    CPU; a CUDA device gets its index (``"cuda"`` is the current GPU), checked to exist."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device {device!r}: not a device name (expected 'cpu', 'cuda', 'cuda:N' or 'auto')"
        ) from e
    if dev.type not in ("cpu", "cuda"):  # torch names mps, xpu, meta...: no backend here runs them
        raise ValueError(f"device {str(device)!r}: afd_trt runs on 'cpu' or 'cuda[:N]' ('auto' picks one)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r}: CUDA is not available on this machine (use 'cpu' or 'auto')"
        )
    if dev.type == "cuda" and not 0 <= (dev.index or 0) < torch.cuda.device_count():
        raise ValueError(
            f"device {str(device)!r}: no such GPU, this machine has {torch.cuda.device_count()} "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return with_index(dev)


def expand_boxes(boxes: np.ndarray, factor: float | np.number) -> np.ndarray:
    """Scale boxes about their centers as upstream does (size counted with +1 pixel).

    Args:
        boxes: float32 (N, 5) ``[x1, y1, x2, y2, score]``.
        factor: as the user gave it. numpy's promotion rules then pick the arithmetic, as in
            upstream's same expression: float32 for a Python number or ``np.float32``; under
            numpy 2, float64 for ``np.float64`` (rounded to float32 once, when stored).

    Returns:
        float32 (N, 5), scores unchanged.
    """
    out = np.array(boxes, dtype=np.float32, copy=True)
    if len(out) == 0:
        return out
    size = (out[:, 2:4] - out[:, 0:2] + 1) * factor
    center = (out[:, 0:2] + out[:, 2:4]) / 2
    tl = center - size / 2
    out[:, 0:2] = tl
    out[:, 2:4] = tl + size
    return out


def _flag(name: str, value: object) -> bool:
    """``value`` as a bool: True/False (numpy's too) or the integers 1/0; anything else, a string
    like ``"no"`` above all (which ``bool()`` would take for True), raises ``TypeError``."""
    if isinstance(value, bool | np.bool_) or (isinstance(value, int | np.integer) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _positive_number(name: str, value: object) -> float:
    """``value`` as a positive, finite float; ``TypeError`` for a non-number (a string, a bool),
    ``ValueError`` for zero, a negative, NaN or infinity."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``: an integer (numpy's too), not a bool, a float or a
    string (``int()`` would turn 1.5 into 1 and accept ``"2"``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _image_collection(images: object) -> None:
    """``TypeError`` when ``images``, given where several images are expected, is one image: a
    path (iterating it would give its characters) or one array (its rows)."""
    if isinstance(images, (str, bytes, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim != 4):
        raise TypeError(
            f"images: expected an iterable of images (or an (N, H, W, C) array), got {type(images).__name__}"
            + (f" of shape {images.shape}" if isinstance(images, np.ndarray) else "")
            + "; for one image call the detector itself"
        )


def _cache_dir(value: str | Path | None) -> str | None:
    """The engine cache argument as an absolute path, even before the folder exists (a pickled
    Detector rebuilt in another working folder must use, and build into, the same cache); None
    for the default. ``""`` is refused: it would be the working folder."""
    if value is None:
        return None
    if os.fspath(value) == "":
        raise ValueError("engine_cache: an empty path names no directory (None: the default cache)")
    return os.path.abspath(os.path.expanduser(value))


def _absolute(value: Any) -> Any:
    """A path argument that names an existing file or folder, made absolute (so that a pickled
    Detector is rebuilt from the same files whatever the unpickling process's working folder);
    anything else (None, a config name, a config object) as it is."""
    if isinstance(value, str | os.PathLike) and os.path.exists(value):
        return os.path.abspath(value)
    return value


def _rebuild_detector(kwargs: dict[str, Any]) -> Detector:
    """Unpickling a :class:`Detector`: a new one from its construction arguments."""
    return Detector(**kwargs)


def _as_config(cfg: str | Path | ModelConfig | None, default: str) -> ModelConfig:
    if cfg is None:
        return load_config(default)
    if isinstance(cfg, (str, Path)):
        return load_config(cfg)
    return cfg


def _user_boxes(boxes: Any, name: str) -> np.ndarray:
    """User boxes -> float32 (N, 4) or (N, 5) ``[x1, y1, x2, y2(, score)]``, validated.

    ``boxes``: a sequence (or (N, 4|5) array) of boxes, each 4 or 5 numbers; an empty one gives
    no faces. Coordinates must be finite; inverted (x2 < x1), out-of-image and zero-size boxes
    are used as given, as upstream does (a point box: every keypoint on that point, see
    ``landmarks.degenerate_maps``); one whose width or height overflows float32 is refused.
    Scores pass through.
    Errors are ``ValueError`` naming ``name`` and the box index.
    """
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise ValueError(f"{name}: expected a list or (N, 4|5) array of boxes, got {type(boxes).__name__}")
    if len(boxes) == 0:
        return np.zeros((0, 5), np.float32)
    rows = []
    for i, b in enumerate(boxes):
        try:
            row = np.asarray(b, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name}: box {i} must be [x1, y1, x2, y2] or [x1, y1, x2, y2, score] numbers: {e}"
            ) from e
        if row.ndim == 0:
            raise ValueError(
                f"{name}: expected a list of boxes, got a flat list of numbers; wrap a single box: [[x1, y1, x2, y2]]"
            )
        if row.ndim != 1 or row.shape[0] not in (4, 5):
            raise ValueError(f"{name}: box {i} must have 4 or 5 values, got shape {row.shape}")
        rows.append(row)
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"{name}: boxes mix 4 and 5 values; give all with or all without scores")
    arr = np.stack(rows)
    with np.errstate(over="ignore", invalid="ignore"):
        size = np.abs(arr[:, 2:4] - arr[:, 0:2])
    for i, r in enumerate(arr):
        if not np.isfinite(r[:4]).all():
            raise ValueError(f"{name}: box {i} has a non-finite coordinate: {r.tolist()}")
        if not np.isfinite(size[i]).all():
            raise ValueError(
                f"{name}: box {i} is too large (its width or height overflows float32): {r.tolist()}"
            )
    return arr


def _input_name(item: object, index: int | None) -> str:
    """How errors name an input: ``image '<path>'`` or ``image <index>`` (``image`` alone)."""
    if isinstance(item, (str, os.PathLike)):
        return f"image {os.fspath(item)!r}"
    return "image" if index is None else f"image {index}"


def _named(e: Exception, name: str) -> Exception:
    """``e`` when its message already names the input, else an exception of its type whose
    message starts with ``name`` (cause: ``e``)."""
    if f"{name}:" in str(e):
        return e
    try:
        new = type(e)(f"{name}: {e}")
    except Exception:  # exception types with other constructors
        new = ValueError(f"{name}: {e}")
    new.__cause__ = e
    return new


def decode_workers(device: torch.device, cores: int) -> int:
    """Decoding threads for a pipeline on ``device`` in a process that may use ``cores`` cores:
    2 on the CPU; elsewhere ``cores - 1``, from 2 up to 8 (see :attr:`Detector.default_workers`)."""
    if device.type == "cpu":
        return 2
    return max(2, min(8, cores - 1))


class Detector:
    """Anime faces and their 28 landmarks.

    Args:
        face_detector: ``"yolov3"``, ``"faster-rcnn"`` or ``None`` (boxes then come from the caller).
        face_detector_checkpoint: path of the detector's ``.pth`` / ``.safetensors``; ``None``
            resolves the released file (``$AFD_TRT_WEIGHTS``, the cache, then a download).
        landmark_checkpoint: the HRNetV2 checkpoint, resolved the same way.
        device: ``"cpu"``, ``"cuda:0"``, ... or ``"auto"`` (a GPU when present).
        flip_test: average the landmarks with those of the mirrored crops (upstream default).
        box_scale_factor: detected boxes are enlarged by this factor before landmarks.
        backend: network runner, one of ``afd_trt.engines.ENGINES`` or ``"auto"`` (fastest per
            network). ``"torch"`` and ``"torchscript"`` give upstream's answers bit for bit on the
            CPU at fp32; the others agree within the tolerances of the README.
        face_detector_config / landmark_config: a config name, TOML path or config object,
            overriding the packaged ``configs/`` files.
        download: allow downloading released weights when not found locally.
        threads: worker threads of the C++ ops (0: one per core).
        max_batch: largest landmark batch (faces, before flip doubling) per network call.
        engine_cache: directory of built engines (default ``$AFD_TRT_CACHE/engines`` or
            ``~/.cache/afd_trt/engines``); see ``afd_trt.engine_cache``.
        precision: ``"fp32"`` (upstream's exact answers on the CPU), or opt-in ``"bf16"`` (torch,
            torchscript and openvino backends; on CPUs with AVX512-BF16/AMX, elsewhere emulated
            and slower, so ``backend="auto"`` runs fp32 there: :attr:`precision` says) or
            ``"fp16"`` (CUDA: torch, torchscript and tensorrt), which deviate slightly from
            upstream.
        max_pixels: image files declaring more pixels are refused before decoding (default
            ``$AFD_TRT_MAX_PIXELS`` or ``afd_trt.image.DEFAULT_MAX_PIXELS``, 400 Mpx).
        device_pipeline: keep image work on the network's device (default: on for CUDA): each
            decoded image goes there once as uint8 (through pinned memory), the detector input
            is normalised and padded there, face crops are warped, mirrored and flip-merged
            there, and only the merged heatmaps come back (``afd_trt.device_ops``; the same
            values as the host path). On the CPU it only costs time; it exists there for tests.
        jpeg_decoder: ``"opencv"`` (default, upstream's decoder) or ``"torchvision"``: JPEG files
            are decoded by torchvision, with nvJPEG on the GPU when the device pipeline is on
            (decoded images then never exist on the host), else with libjpeg-turbo on the CPU
            (the same pixels as OpenCV). Other formats, arrays and JPEGs torchvision cannot
            decode go through OpenCV. See ``afd_trt.jpeg``.
        cuda_graphs: opt-in on CUDA: the torch/torchscript engines replay CUDA graphs captured
            per input shape, the batch padded up to a power of two (``afd_trt.cuda_graphs``;
            HRNetV2's crops are always 256x256, so a handful of graphs serve every batch).
            Other backends run as they are. Off by default until measured on a GPU.

    The first Detector of a process sets glibc's allocator to keep freed memory for reuse
    instead of handing it back to the kernel after every call (``afd_trt.host_memory``; the same
    results, faster on the CPU: :attr:`host_malloc`). ``AFD_TRT_MALLOC=system`` leaves it alone.
    """

    def __init__(
        self,
        face_detector: str | None = "yolov3",
        face_detector_checkpoint: str | Path | None = None,
        landmark_checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        flip_test: bool = True,
        box_scale_factor: float = 1.1,
        backend: str = "torch",
        *,
        face_detector_config: str | Path | ModelConfig | None = None,
        landmark_config: str | Path | ModelConfig | None = None,
        download: bool = True,
        threads: int = 0,
        max_batch: int = 64,
        engine_cache: str | Path | None = None,
        precision: str = "fp32",
        max_pixels: int | None = None,
        device_pipeline: bool | None = None,
        jpeg_decoder: str = "opencv",
        cuda_graphs: bool = False,
    ) -> None:
        engine_cache = _cache_dir(engine_cache)
        self._init_args: dict[str, Any] = {
            "face_detector": face_detector,
            "face_detector_checkpoint": _absolute(face_detector_checkpoint),
            "landmark_checkpoint": _absolute(landmark_checkpoint),
            "device": device,
            "backend": backend,
            "face_detector_config": _absolute(face_detector_config),
            "landmark_config": _absolute(landmark_config),
            "download": download,
            "threads": threads,
            "max_batch": max_batch,
            "engine_cache": engine_cache,
            "precision": precision,
            "max_pixels": max_pixels,
            "device_pipeline": device_pipeline,
            "jpeg_decoder": jpeg_decoder,
            "cuda_graphs": cuda_graphs,
        }
        self.host_malloc = host_memory.apply_setting()
        """How the process's allocator keeps freed memory: ``"keep"`` or ``"system"`` (see
        :mod:`afd_trt.host_memory`; applied once per process, by the first Detector)."""
        if max_pixels is not None:
            max_pixels_limit(max_pixels)  # validates
        self.max_pixels = max_pixels
        if face_detector is not None and face_detector not in FACE_DETECTORS:
            raise ValueError(f"face_detector must be one of {FACE_DETECTORS} or None, got {face_detector!r}")
        if face_detector is None and (
            face_detector_checkpoint is not None or face_detector_config is not None
        ):
            raise ValueError(
                "face_detector_checkpoint / face_detector_config given with face_detector=None: name the "
                f"detector they are for, one of {FACE_DETECTORS} (they were ignored)"
            )
        _positive_number("box_scale_factor", box_scale_factor)  # validates; the value keeps its type
        flip_test = _flag("flip_test", flip_test)
        threads = _count("threads", threads, 0)
        if threads > MAX_OP_THREADS:
            raise ValueError(f"threads must be from 0 to {MAX_OP_THREADS} (0: one per core), got {threads}")
        max_batch = _count("max_batch", max_batch, 1)
        cuda_graphs = _flag("cuda_graphs", cuda_graphs)
        self.device = resolve_device(device)
        if jpeg_decoder not in JPEG_DECODERS:
            raise ValueError(f"jpeg_decoder must be one of {JPEG_DECODERS}, got {jpeg_decoder!r}")
        if jpeg_decoder == "torchvision" and (why := jpeg.torchvision_jpeg_available()) is not None:
            raise ValueError(f"jpeg_decoder='torchvision': {why}")
        self.jpeg_decoder = jpeg_decoder
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got device {self.device}")
        self.cuda_graphs = cuda_graphs
        self.flip_test = flip_test
        self.box_scale_factor = box_scale_factor
        self.backend = backend
        # On the CPU every image runs on its own (detector batch 1 in upstream's layout, the
        # landmark batch = that image's faces): convolution kernels, and so the last bits of
        # their results, depend on batch size and memory layout, and boxes/landmarks then match
        # upstream bit for bit. On a GPU, images are batched (results agree within tolerance).
        self.batch_images = self.device.type != "cpu"
        det_batch = 8 if self.batch_images else 1

        lm_cfg = _as_config(landmark_config, "hrnetv2")
        if not isinstance(lm_cfg, HRNetConfig):
            raise ValueError(f"landmark_config must describe an hrnetv2 model, got type {lm_cfg.type!r}")
        self.landmark_config = lm_cfg
        lm_path = resolve_checkpoint(lm_cfg.weights, landmark_checkpoint, download=download)
        lm_model = self._load_model("hrnetv2", lm_path)
        self.checkpoint_files: dict[str, Path] = {"hrnetv2": lm_path}
        """Each model's checkpoint file, as resolved (given, ``$AFD_TRT_WEIGHTS``, cache)."""

        precision = resolve_precision(backend, self.device, precision)
        self.precision = precision
        """The precision the networks run at (``"auto"`` at bf16 on a CPU without native bf16 runs
        fp32, see :func:`afd_trt.engines.resolve_precision`)."""
        self.engines: dict[str, str] = {}
        """The backend running each network, by network name (``"auto"`` resolved)."""

        def engine(name: str, module: torch.nn.Module, cfg: ModelConfig) -> Engine:  # built/cached engines
            net = Network(name, module, cfg)
            made = create_engine(backend, net, self.device, precision=precision, cache=engine_cache)
            self.engines[name] = made.name
            if self.cuda_graphs:
                if supports_graphs(made, self.device):
                    buckets = BOX_HEAD_BUCKETS if name == "faster-rcnn-box-head" else DEFAULT_BUCKETS
                    return CudaGraphEngine(made, self.device, buckets=buckets)
                logger.info("%s: the %s engine runs without CUDA graphs", name, made.name)
            return made

        self.landmarks = LandmarkEstimator(
            lm_cfg, engine("hrnetv2", lm_model, lm_cfg), max_batch=max_batch, threads=threads
        )
        # Upstream's separate forward of the mirrored crops only matters where we match it bit
        # for bit (eager or exact TorchScript, fp32 on the CPU); elsewhere one forward of both
        # halves is cheaper.
        exact = keeps_eager_arithmetic(self.engines["hrnetv2"], self.device, precision)
        self.landmarks.fuse_flip = not exact
        self.landmarks.exact_crops = exact
        self.device_pipeline = (
            self.device.type == "cuda" if device_pipeline is None else bool(device_pipeline)
        )
        """Whether images are prepared, cropped and flip-merged on :attr:`device` (see above)."""
        on_device = self.device if self.device_pipeline else None
        self.landmarks.crop_device = on_device

        self.face_detector_name = face_detector
        self.face_detector: FaceDetector | None = None
        self.face_detector_config: ModelConfig | None = None
        if face_detector is not None:
            det_cfg = _as_config(face_detector_config, face_detector)
            if det_cfg.type != face_detector:
                raise ValueError(
                    f"face_detector_config describes a {det_cfg.type!r} model but face_detector={face_detector!r}"
                )
            self.face_detector_config = det_cfg
            det_path = resolve_checkpoint(det_cfg.weights, face_detector_checkpoint, download=download)
            det_model = self._load_model(face_detector, det_path)
            self.checkpoint_files[face_detector] = det_path
            if isinstance(det_cfg, YOLOv3Config):
                self.face_detector = YOLOv3FaceDetector(
                    det_cfg, engine("yolov3", det_model, det_cfg), max_batch=det_batch
                )
            else:
                assert isinstance(det_cfg, FasterRCNNConfig)
                stage1 = engine("faster-rcnn", det_model, det_cfg)
                head = engine("faster-rcnn-box-head", det_model.get_submodule("roi_head.bbox_head"), det_cfg)
                self.face_detector = FasterRCNNFaceDetector(det_cfg, stage1, head, max_batch=det_batch)
                # on a GPU the FPN maps stay there: RoIAlign in torch on the device
                self.face_detector.roi_align_on_device = self.device.type == "cuda"
            self.face_detector.pipeline_device = on_device

        # A partial, not a lambda over self: that would make a reference cycle, and a dropped CUDA
        # Detector would hold its GPU memory until the cycle collector ran.
        sync = functools.partial(torch.cuda.synchronize, self.device) if self.device.type == "cuda" else None
        self.timings = StageTimes(sync)
        """Per-stage wall time; set ``timings.enabled = True`` to profile (see ``afd_trt.timing``)."""
        self.landmarks.timer = self.timings
        if self.face_detector is not None:
            self.face_detector.timer = self.timings
        self.oom_splits = 0
        self._count_lock = threading.Lock()
        self._worker = threading.local()  # each decoding thread's CUDA stream (_worker_stream)
        self._compute_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.device.type == "cpu" else contextlib.nullcontext()
        )
        """On the CPU, the compute of calls from several threads (networks, crop warp, heatmap
        decoding) runs one at a time: each already uses every core, and overlapping calls were
        seen to differ in the last bits (keypoints 4e-3 px apart; oneDNN's work split or
        OpenCV/IPP's bands); serialised, every call gives exactly its answer alone. Decoding and
        preprocessing (``stream``'s workers) still overlap."""
        """How many times a batch was split in two after CUDA ran out of memory."""

    @staticmethod
    def _load_model(name: str, path: Path) -> torch.nn.Module:
        model = build_model(name)
        load_checkpoint(model, path)  # strict keys; logs loudly for seeded test weights
        return model.eval()

    # -- public API ------------------------------------------------------------------------

    def __call__(self, image: ImageInput, boxes: Sequence[Any] | np.ndarray | None = None) -> list[Face]:
        """Faces and landmarks of one image (BGR uint8 array or path); see the module docstring.
        Bad inputs raise ``TypeError`` / ``ValueError`` naming the image (docs/reliability.md)."""
        name = _input_name(image, None)
        with self._image_work():
            img = self._load(image, "image")
        self._adopt(img, None)
        user = None if boxes is None else _user_boxes(boxes, f"boxes of {name}")
        try:
            return self._run([img], [user], stacklevel=3)[0]
        except (TypeError, ValueError) as e:
            raise _named(e, name) from e

    def detect_batch(
        self,
        images: Iterable[ImageInput],
        boxes: Sequence[Sequence[Any] | np.ndarray | None] | None = None,
        *,
        batch_size: int | None = None,
    ) -> list[list[Face]]:
        """Faces and landmarks of several images (see :meth:`stream`); results equal per-image
        calls. An image that fails (unreadable, bad boxes, ...) never loses the others' results:
        a ``BatchError`` carries them and every failure, each naming its image."""
        _image_collection(images)
        items = list(images)
        if boxes is not None and not isinstance(boxes, Sequence):
            boxes = list(boxes)  # a generator of box lists, as stream() takes
        if boxes is not None and len(boxes) != len(items):
            raise ValueError(f"boxes: got {len(boxes)} box lists for {len(items)} images")
        results: list[list[Face] | None] = [None] * len(items)
        errors: dict[int, Exception] = {}
        n = (
            _count("batch_size", batch_size, 1)
            if batch_size is not None
            else max(1, min(len(items), self.default_batch_size))
        )
        for r in self.stream(items, boxes=boxes, batch_size=n):
            if r.error is not None:
                errors[r.index] = r.error
            else:
                results[r.index] = r.faces
        if errors:
            raise BatchError(results, errors)
        return [r if r is not None else [] for r in results]

    @property
    def default_batch_size(self) -> int:
        """Images per pipeline batch when none is given: 16 on a GPU; 4 on the CPU, where images
        run one by one anyway and the batch only sets how far decoding reads ahead."""
        return 16 if self.batch_images else 4

    @property
    def default_workers(self) -> int:
        """Decoding threads of :meth:`stream` when none is given: 2 on the CPU, whose cores run
        the networks; on a GPU one per core the process may use, less one for the pipeline's own
        thread, from 2 up to 8 (OpenCV decodes a 1280x720 JPEG in about 5 ms a core, so two
        threads would hold a GPU pipeline near 400 images/s)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        return decode_workers(self.device, cores)

    def stream(
        self,
        images: Iterable[ImageInput],
        *,
        boxes: Iterable[Sequence[Any] | np.ndarray | None] | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        keep_images: bool = False,
    ) -> Iterator[StreamResult]:
        """Faces and landmarks of a (possibly endless) stream of images, in input order.

        Worker threads decode and preprocess the next images while the networks run (OpenCV
        and the C++ ops release the GIL); ``images`` is consumed lazily and at most
        ``2 * batch_size + workers`` inputs are held at once, so memory stays flat however long
        the stream. Each batch of ``batch_size`` decoded images goes through the detector in
        groups of equal padded shape and through HRNet as one batch of all their faces (on the
        CPU image by image, for upstream's exact numbers; see ``batch_images``).

        Never raises for a bad input: its result carries the ``error`` (the others are kept).
        On CUDA out-of-memory the batch is split in two and retried (``oom_splits`` counts it).
        If ``images`` or ``boxes`` itself raises (a failing reader, box lists that run out), the
        results of every input read before it are yielded first, then that exception is raised.

        Args:
            images: paths or BGR uint8 (H, W, 3) arrays (see ``afd_trt.image.load_image``);
                arrays are copied as they are read, so a reader may refill one buffer.
            boxes: optional, one box list (or None: detect) per image, consumed in step.
            batch_size: images per batch (default :attr:`default_batch_size`).
            workers: decoding threads (0: decode in the calling thread; default
                :attr:`default_workers`).
            keep_images: hand each decoded image back in ``StreamResult.image`` (to crop or
                draw without decoding twice).
        """
        n = self.default_batch_size if batch_size is None else _count("batch_size", batch_size, 1)
        workers = self.default_workers if workers is None else _count("workers", workers, 0)
        keep_images = _flag("keep_images", keep_images)
        _image_collection(images)
        box_iter = iter(boxes) if boxes is not None else None
        inputs = iter(images)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="afd_trt-decode") if workers else None
        pending: collections.deque[tuple[int, str | None, Future[Any]]] = collections.deque()
        depth = 2 * n + workers

        def submit(index: int, item: ImageInput) -> None:
            if isinstance(item, np.ndarray):
                # Read ahead of its turn: a reader that refills one buffer (video frames) would
                # change it under us. A copy now costs 0.2 ms for 1920x1080 (2-core EPYC).
                item = item.copy()
            b = None
            if box_iter is not None:
                try:
                    b = next(box_iter)
                except StopIteration:
                    raise ValueError(f"boxes: the box lists ran out at image {index}") from None
            job: Future[Any]
            if pool is not None:
                job = pool.submit(self._decode_job, item, index, b)
            else:  # decode here, now; a failure is kept for this input's result
                job = Future()
                try:
                    job.set_result(self._decode_job(item, index, b))
                except Exception as e:
                    job.set_exception(e)
            pending.append((index, _source(item), job))

        try:
            index = 0
            exhausted = False
            source_error: Exception | None = None
            while True:
                while not exhausted and len(pending) < depth:
                    try:
                        submit(index, next(inputs))
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as e:  # ``images`` or ``boxes`` failed: finish what was read
                        source_error, exhausted = e, True
                        break
                    index += 1
                if not pending:
                    if source_error is not None:
                        raise source_error
                    return
                batch = [pending.popleft() for _ in range(min(n, len(pending)))]
                yield from self._run_stream_batch(batch, keep_images)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled as its construction arguments, not its networks: unpickling (a
        ``multiprocessing`` or Ray worker, say) builds a new Detector from the same checkpoint
        files (paths made absolute; they must be readable there, e.g. on a shared filesystem;
        released weights are resolved, or downloaded, there), with the current ``flip_test`` and
        ``box_scale_factor``. ``device="auto"`` picks the unpickling machine's device."""
        kwargs = dict(self._init_args, flip_test=self.flip_test, box_scale_factor=self.box_scale_factor)
        return _rebuild_detector, (kwargs,)

    # -- pipeline ----------------------------------------------------------------------------

    def _load(self, image: ImageInput, name: str) -> Pixels:
        with self.timings.stage("decode", sync=False):
            if self.jpeg_decoder == "torchvision":
                where = self.device if self.device_pipeline else torch.device("cpu")
                decoded = jpeg.decode_jpeg(image, where, max_pixels=self.max_pixels, name=name)
                if decoded is not None:
                    return decoded if self.device_pipeline else to_host(decoded)
            return load_image(image, max_pixels=self.max_pixels, name=name)

    @property
    def _images_on_gpu(self) -> bool:
        """Whether images are decoded (nvJPEG) and resized on a CUDA device."""
        return self.device.type == "cuda" and self.device_pipeline and self.jpeg_decoder == "torchvision"

    def _worker_stream(self) -> torch.cuda.Stream | None:
        """The calling thread's CUDA stream for image work, where images are decoded on the GPU
        (nvJPEG) and resized there; None otherwise.

        Not the default stream the networks run on: nvJPEG writes its output from a stream of
        its own, into memory allocated on the caller's current stream, without waiting for that
        stream. On the default stream that memory may have just been freed by the networks with
        their kernels still queued; on an image stream, held by one thread at a time and
        synchronised after each image (:meth:`_image_work`), it can only be idle. (PyTorch hands
        out streams from a pool of 32, so two threads may be given the same one.)"""
        if not self._images_on_gpu:
            return None
        stream: torch.cuda.Stream | None = getattr(self._worker, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            self._worker.stream = stream
        return stream

    def _decode_job(
        self, item: ImageInput, index: int, boxes: Any
    ) -> tuple[Pixels, DetInput | None, np.ndarray | None]:
        """Worker-thread part of the stream: decode, validate user boxes, and prepare the
        detector input (when boxes are to be detected); GPU work on the thread's own stream,
        finished before the result is handed over (:meth:`_worker_stream`)."""
        with self._image_work():
            return self._decode_and_prepare(item, index, boxes)

    @contextlib.contextmanager
    def _image_work(self) -> Iterator[None]:
        """Run the block's GPU work on this thread's image stream (:meth:`_worker_stream`), and
        wait for it to finish; nothing where there is no such stream."""
        stream = self._worker_stream()
        if stream is None:
            yield
            return
        with _stream_lock(stream):
            try:
                with torch.cuda.stream(stream):
                    yield
            finally:
                stream.synchronize()  # idle before the next holder allocates on it

    def _adopt(self, img: Pixels, prep: DetInput | None) -> None:
        """Tensors a worker made on its stream, now used on this thread's: their memory returns to
        the worker's stream when freed, so the allocator must first wait for this stream's work."""
        if not self._images_on_gpu:
            return
        here = torch.cuda.current_stream(self.device)
        for t in (img, None if prep is None else prep.tensor):
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(here)

    def _decode_and_prepare(
        self, item: ImageInput, index: int, boxes: Any
    ) -> tuple[Pixels, DetInput | None, np.ndarray | None]:
        img = self._load(item, f"image {index}")
        if boxes is not None:
            return img, None, _user_boxes(boxes, f"boxes of image {index}")
        if self.face_detector is not None:
            with self.timings.stage("preprocess", sync=False):
                return img, self.face_detector.prepare(img), None
        return img, None, None

    def _run_stream_batch(
        self, batch: list[tuple[int, str | None, Future[Any]]], keep_images: bool
    ) -> Iterator[StreamResult]:
        loaded: list[tuple[int, str | None, np.ndarray | None, Pixels, DetInput | None]] = []
        failed: dict[int, StreamResult] = {}
        for index, source, job in batch:
            try:
                img, prep, b = job.result()
                self._adopt(img, prep)
                loaded.append((index, source, b, img, prep))
            except Exception as e:  # any failure is this input's, reported as its result
                err = _named(e, _input_name(source, index))
                logger.debug("%s", err)  # the caller reports it: it is this input's result
                failed[index] = StreamResult(index, source, error=err)
        done: dict[int, list[Face]] = {}
        errors: dict[int, Exception] = {}
        if loaded:
            try:
                faces = self._run(
                    [x[3] for x in loaded],
                    [x[2] for x in loaded],
                    stacklevel=4,
                    prepared=[x[4] for x in loaded],
                )
                done = {x[0]: f for x, f in zip(loaded, faces, strict=True)}
            except Exception:  # find the culprit(s) one by one rather than lose the batch
                for index, source, b, img, prep in loaded:
                    try:
                        done[index] = self._run([img], [b], stacklevel=4, prepared=[prep])[0]
                    except Exception as e:
                        errors[index] = _named(e, _input_name(source, index))
                        logger.debug("%s", errors[index])
        images = {x[0]: x[3] for x in loaded}
        for index, source, _ in batch:
            if index in failed:
                yield failed[index]
                continue
            img = images.pop(index)
            h, w = img.shape[:2]
            yield StreamResult(
                index,
                source,
                faces=done.get(index),
                error=errors.get(index),
                height=int(h),
                width=int(w),
                image=to_host(img) if keep_images else None,
            )

    def detect_faces(
        self, images: Sequence[ImageInput | Pixels], prepared: Sequence[DetInput | None] | None = None
    ) -> list[np.ndarray]:
        """Expanded face boxes float32 (K, 5) per image (requires a face detector): paths or
        arrays, read and checked as the detector's own calls do them (``afd_trt.image.load_image``;
        an error names the image by its path, or its index), or images already on this
        detector's device.
        ``prepared``: detector inputs already made from the images (None entries are made here)."""
        _image_collection(images)
        loaded = [
            img if isinstance(img, torch.Tensor) else self._load(img, _input_name(img, i))
            for i, img in enumerate(images)
        ]
        return self._detect_faces(loaded, prepared)

    def _detect_faces(
        self, images: Sequence[Pixels], prepared: Sequence[DetInput | None] | None = None
    ) -> list[np.ndarray]:
        if self.face_detector is None:
            raise ValueError("detect_faces: this Detector was built with face_detector=None")
        fd = self.face_detector
        preps = list(prepared) if prepared is not None else [None] * len(images)
        with self.timings.stage("preprocess"):
            inputs = [p if p is not None else fd.prepare(img) for img, p in zip(images, preps, strict=True)]
        raw = fd.detect_prepared(inputs)
        return [expand_boxes(b, self.box_scale_factor) for b in raw]

    def _run(
        self,
        images: Sequence[Pixels],
        boxes: Sequence[Any],
        stacklevel: int,
        prepared: Sequence[DetInput | None] | None = None,
    ) -> list[list[Face]]:
        preps = list(prepared) if prepared is not None else [None] * len(images)
        if not self.batch_images and len(images) > 1:
            return [
                self._run([img], [b], stacklevel + 1, [p])[0]
                for img, b, p in zip(images, boxes, preps, strict=True)
            ]
        try:
            with self._compute_lock:
                return self._run_batch(images, boxes, stacklevel + 1, preps)
        except Exception as e:
            if not is_out_of_memory(e) or len(images) < 2:
                raise
        # CUDA ran out of memory: free what the failed attempt held, then halve the batch.
        empty_cache(self.device)
        with self._count_lock:
            self.oom_splits += 1
        half = len(images) // 2
        logger.warning(
            "CUDA out of memory on a batch of %d images: retrying as %d + %d",
            len(images),
            half,
            len(images) - half,
        )
        return self._run(images[:half], boxes[:half], stacklevel + 1, preps[:half]) + self._run(
            images[half:], boxes[half:], stacklevel + 1, preps[half:]
        )

    def _run_batch(
        self,
        images: Sequence[Pixels],
        boxes: Sequence[np.ndarray | None],
        stacklevel: int,
        preps: Sequence[DetInput | None],
    ) -> list[list[Face]]:
        all_boxes: list[np.ndarray | None] = [None] * len(images)
        need = []
        for i, (img, b) in enumerate(zip(images, boxes, strict=True)):
            if b is not None:  # validated by the public entry points (_user_boxes)
                all_boxes[i] = b
            elif self.face_detector is None:
                warnings.warn(
                    "Neither the face detector nor the bounding box is specified. "
                    "So the entire image is treated as the face region.",
                    UserWarning,
                    stacklevel=stacklevel,
                )
                h, w = img.shape[:2]
                all_boxes[i] = np.array([[0, 0, w - 1, h - 1, 1]], dtype=np.float32)
            else:
                need.append(i)
        if need:
            dets = self._detect_faces([images[i] for i in need], [preps[i] for i in need])
            for i, det in zip(need, dets, strict=True):
                all_boxes[i] = det
        final = [b if b is not None else np.zeros((0, 5), np.float32) for b in all_boxes]
        kpts = self.landmarks.estimate(images, final, self.flip_test)
        return [
            [{"bbox": box.copy(), "keypoints": kp} for box, kp in zip(bx, kps, strict=True)]
            for bx, kps in zip(final, kpts, strict=True)
        ]


def create_detector(
    face_detector_name: str = "yolov3",
    landmark_model_name: str = "hrnetv2",
    device: str | torch.device = "auto",
    flip_test: bool = True,
    box_scale_factor: float = 1.1,
    **kwargs: Any,
) -> Detector:
    """Upstream's ``create_detector``: the released weights (resolved or downloaded, see
    ``afd_trt.weights.resolve_checkpoint``) for ``"yolov3"`` or ``"faster-rcnn"`` plus ``"hrnetv2"``."""
    if face_detector_name not in FACE_DETECTORS:
        raise ValueError(f"face_detector_name must be 'yolov3' or 'faster-rcnn', got {face_detector_name!r}")
    if landmark_model_name != "hrnetv2":
        raise ValueError(f"landmark_model_name must be 'hrnetv2', got {landmark_model_name!r}")
    return Detector(
        face_detector=face_detector_name,
        device=device,
        flip_test=flip_test,
        box_scale_factor=box_scale_factor,
        **kwargs,
    )
