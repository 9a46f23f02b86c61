"""``afd-trt bench``: time the full pipeline, optionally side by side with upstream.

Images are a directory's, or a generated set written as JPEG files (so decoding is timed):
windows of the shared TADNE demo grid (synthetic line-art scenes when it is absent) at one or
more sizes, e.g. ``--size realistic`` = 1280x720, 1920x1080, 512x512 and 3072x3072 in turn.
Weights are the given checkpoints or seeded test weights. Two passes, warm-up excluded:

1. **latency** (batch-1 mode): ``detector(path)`` per image; with ``--compare-upstream`` each
   image then runs through upstream ``anime-face-detector`` 0.1.0 (same files, same checkpoints,
   interleaved, in a child process of its own: see :class:`UpstreamProcess`), and the report
   gives both rates, their ratio and the worst output deviation (also how far a
   ``bf16``/``fp16`` run is from fp32).
2. **throughput**: ``detector.stream(paths, batch_size=...)`` (decoding in worker threads),
   with per-stage times (``afd_trt.timing``), per-batch latency, and the networks' GFLOP and
   achieved GFLOP/s.

It prints a table and the exact command; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import torch

from .argtypes import int_at_least
from .detect_job import IMAGE_EXTS
from .image import opencv_can_open

if TYPE_CHECKING:
    from .detector import Detector

__all__ = ["add_bench_args", "network_gflop", "run_bench"]

logger = logging.getLogger(__name__)

GRID_NAME = "tadne_grid_3072.jpg"
SIZE_PRESETS = {"realistic": "1280x720,1920x1080,512x512,3072x3072"}
CHECKPOINTS = {
    "yolov3": "mmdet_anime-face_yolov3.pth",
    "faster-rcnn": "mmdet_anime-face_faster-rcnn.pth",
    "hrnetv2": "mmpose_anime-face_hrnetv2.pth",
}

T = TypeVar("T")


class UpstreamError(RuntimeError):
    """Upstream failed on an image (its exception's type and message, from the child process)."""


def _upstream_main(conn: Any, args: tuple[str, str, str, str, bool], threads: int) -> None:
    """The child process of :class:`UpstreamProcess`: build upstream's ``LandmarkDetector``,
    then answer each path sent with ``("ok", faces, seconds)`` or ``("error", message, 0.0)``
    until ``None`` comes."""
    torch.set_num_threads(threads)
    try:
        import anime_face_detector

        lm_ckpt, detector, det_ckpt, device, flip = args
        ref = anime_face_detector.LandmarkDetector(lm_ckpt, detector, det_ckpt, device=device, flip_test=flip)
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}", 0.0))
        return
    conn.send(("ok", None, 0.0))
    while (path := conn.recv()) is not None:
        try:
            t0 = time.perf_counter()
            faces = ref(path)  # numpy arrays: the device's work is done
            took = time.perf_counter() - t0
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}", 0.0))
            continue
        conn.send(("ok", faces, took))


class UpstreamProcess:
    """Upstream ``anime-face-detector`` 0.1.0 run in a child process of its own, as its users run
    it: afd_trt's process-wide settings (the allocator's, ``afd_trt.host_memory``) are not
    applied there, and its memory is not in our peak RSS. Same torch thread count as ours.

    ``__call__(path)`` blocks until upstream is done with the image (the two never run at once)
    and returns its faces and its own wall time for the call, without the transfer of the
    results. Raises :class:`UpstreamError` for a failure on that image; a failure to start
    (upstream not installed, a checkpoint it cannot read) raises it from the constructor.
    """

    def __init__(self, lm_ckpt: Path, detector: str, det_ckpt: Path, device: str, flip: bool) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state of ours
        self._conn, child = ctx.Pipe()
        args = (str(lm_ckpt), detector, str(det_ckpt), device, flip)
        self._proc = ctx.Process(
            target=_upstream_main, args=(child, args, torch.get_num_threads()), name="upstream", daemon=True
        )
        self._proc.start()
        child.close()
        kind, message, _ = self._receive("starting")
        if kind != "ok":
            self.close()
            raise UpstreamError(f"upstream could not start: {message}")

    def _receive(self, doing: str) -> tuple[str, Any, float]:
        try:
            reply: tuple[str, Any, float] = self._conn.recv()
        except EOFError:
            raise UpstreamError(
                f"upstream's process ended while {doing} (exit code {self._proc.exitcode})"
            ) from None
        return reply

    def __call__(self, path: str) -> tuple[list[dict[str, np.ndarray]], float]:
        if not opencv_can_open(path):  # upstream's cv2.imread would crash its process
            raise UpstreamError(
                f"upstream reads {path!r} with cv2.imread, which crashes on a name that is not UTF-8 "
                "(OpenCV 5.1): not run there"
            )
        try:
            self._conn.send(path)
        except OSError as e:  # the child is gone (killed, out of memory): every call says so
            raise UpstreamError(
                f"upstream's process is gone (exit code {self._proc.exitcode}): {e}"
            ) from None
        kind, payload, took = self._receive(f"running {path}")
        if kind != "ok":
            raise UpstreamError(payload)
        return payload, took

    def close(self) -> None:
        """Ask the child to end, and wait for it (killed after 10 s)."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


def default_grid() -> Path:
    """The shared demo grid: ``$AFD_TRT_SHARED_DATA/<grid>``, else ``../shared/data/<grid>`` from the
    working directory (a checkout's sibling), else a path that does not exist (synthetic images)."""
    env = os.environ.get("AFD_TRT_SHARED_DATA")
    return Path(env) / GRID_NAME if env else Path.cwd().parent / "shared" / "data" / GRID_NAME


MAX_GENERATED_SIDE = 16384
MIN_GENERATED_SIDE = 8  # the synthetic scenes' least side (and no face fits in less)
"""The longest side of a generated image (768 MiB of pixels; JPEG allows 65,500 at most)."""


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"1280x720,512x512"`` (or a preset name) -> [(w, h), ...]."""
    spec = SIZE_PRESETS.get(spec, spec)
    sizes = []
    for part in spec.split(","):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ValueError(
                f"--size: expected WxH[,WxH...] or one of {sorted(SIZE_PRESETS)}, got {part!r}"
            ) from None
        if not (
            MIN_GENERATED_SIDE <= w <= MAX_GENERATED_SIDE and MIN_GENERATED_SIDE <= h <= MAX_GENERATED_SIDE
        ):
            raise ValueError(
                f"--size: each side must be from {MIN_GENERATED_SIDE} to {MAX_GENERATED_SIDE} px, got {part!r}"
            )
        sizes.append((w, h))
    return sizes


def load_grid(path: Path) -> np.ndarray | None:
    """The grid image at ``path`` as BGR uint8, or None when there is no file or it does not
    decode as an image."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() and opencv_can_open(path) else None


def generated_images(
    n: int, sizes: Sequence[tuple[int, int]], seed: int, grid_path: Path | np.ndarray | None
) -> Iterator[np.ndarray]:
    """n BGR uint8 images cycling through ``sizes`` (w, h), made one at a time (so that writing
    many large ones never holds them all, which would show in the bench's peak RSS): windows of
    the TADNE grid (a path, or the image :func:`load_grid` read), or synthetic line-art scenes
    when there is none."""
    from .test_weights import synthetic_image

    rng = np.random.default_rng(seed)
    grid = load_grid(grid_path) if isinstance(grid_path, Path) else grid_path
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        if grid is not None:
            gh, gw = grid.shape[:2]
            cw = int(rng.integers(min(1024, gw), gw + 1))
            ch = min(gh, max(1, int(cw * h / w)))
            x, y = int(rng.integers(0, gw - cw + 1)), int(rng.integers(0, gh - ch + 1))
            yield cv2.resize(grid[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
        else:
            yield synthetic_image(h, w, seed=int(rng.integers(0, 2**31)))


def write_generated_jpegs(
    n: int,
    sizes: Sequence[tuple[int, int]],
    seed: int,
    grid_path: Path | np.ndarray | None,
    directory: Path,
    prefix: str,
) -> list[Path]:
    """:func:`generated_images` written as JPEG files (quality 95) ``<prefix>_<i>_<w>x<h>.jpg`` in
    ``directory``, in order; a warning when there is no grid (synthetic scenes instead)."""
    grid = load_grid(grid_path) if isinstance(grid_path, Path) else grid_path
    if grid is None:
        where = f"{grid_path} not found or not an image" if isinstance(grid_path, Path) else "no grid"
        logger.warning("%s: %s, using synthetic images", prefix, where)
    paths = []
    for i, img in enumerate(generated_images(n, sizes, seed, grid)):
        path = directory / f"{prefix}_{i:05d}_{img.shape[1]}x{img.shape[0]}.jpg"
        if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"{prefix}: could not write {path}")
        paths.append(path)
    return paths


def percentiles_ms(xs: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds of durations in seconds ({} when empty)."""
    if not xs:
        return {}
    q = np.percentile(np.asarray(xs) * 1000.0, [50, 90, 99])
    return {
        "p50_ms": float(q[0]),
        "p90_ms": float(q[1]),
        "p99_ms": float(q[2]),
        "mean_ms": statistics.fmean(xs) * 1000,
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes (float64); 0 where it is not a number (NaN or
    infinite corners)."""
    with np.errstate(invalid="ignore", over="ignore"):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        inter = max(w, 0.0) * max(h, 0.0)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        iou = float(inter / union) if union > 0 else 0.0
    return iou if np.isfinite(iou) else 0.0


def _deviation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| elementwise, float64: 0 where both are NaN (the same non-number on both sides),
    infinity where only one is (or where they are opposite infinities), so that a NaN can never
    hide in a maximum (``max(0.0, nan)`` is 0.0) and never counts as agreeing with a number."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a64 - b64)
    both = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & (a64 == b64)
    return np.where(both | same_inf, 0.0, np.where(np.isnan(d), np.inf, d))


def compare_faces(ours: list[dict[str, np.ndarray]], ref: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """How far ``ours`` is from ``ref`` (one image's faces each).

    Faces are paired in order when the lists match one to one (IoU >= 0.5 pair by pair, the
    exact-path case); otherwise greedily by IoU >= 0.5, reference faces by descending score (a
    reduced-precision run may reorder near-tied scores). Returns the pair and unmatched counts,
    the worst |difference| over pairs of box corners, box scores, keypoint x/y and keypoint
    scores, and every keypoint x/y distance (for medians). A value that is NaN on one side only
    is infinitely far off (see :func:`_deviation`)."""
    pairs: list[tuple[int, int]] = []
    in_order = len(ours) == len(ref) and all(
        np.array_equal(a["bbox"][:4], b["bbox"][:4], equal_nan=True)
        or _iou(a["bbox"][:4].astype(np.float64), b["bbox"][:4].astype(np.float64)) >= 0.5
        for a, b in zip(ours, ref, strict=True)
    )
    if in_order:
        pairs = [(i, i) for i in range(len(ours))]
    else:
        free = set(range(len(ours)))
        by_score = sorted(
            range(len(ref)),
            key=lambda j: -float(ref[j]["bbox"][4]) if len(ref[j]["bbox"]) > 4 else 0.0,
        )
        for j in by_score:
            b = ref[j]
            best, best_iou = -1, 0.5
            for i in free:
                v = _iou(ours[i]["bbox"][:4].astype(np.float64), b["bbox"][:4].astype(np.float64))
                if v >= best_iou:
                    best, best_iou = i, v
            if best >= 0:
                free.discard(best)
                pairs.append((best, j))
    d: dict[str, Any] = {"box_px": 0.0, "box_score": 0.0, "keypoint_px": 0.0, "keypoint_score": 0.0}
    dists: list[float] = []
    for i, j in pairs:
        a, b = ours[i], ref[j]
        d["box_px"] = max(d["box_px"], float(_deviation(a["bbox"][:4], b["bbox"][:4]).max()))
        if len(a["bbox"]) > 4 and len(b["bbox"]) > 4:
            d["box_score"] = max(d["box_score"], float(_deviation(a["bbox"][4], b["bbox"][4])))
        diff = _deviation(a["keypoints"][:, :2], b["keypoints"][:, :2])
        d["keypoint_px"] = max(d["keypoint_px"], float(diff.max()))
        d["keypoint_score"] = max(
            d["keypoint_score"], float(_deviation(a["keypoints"][:, 2], b["keypoints"][:, 2]).max())
        )
        dists.extend(np.hypot(diff[:, 0], diff[:, 1]).tolist())
    d.update(pairs=len(pairs), unmatched_ours=len(ours) - len(pairs), unmatched_ref=len(ref) - len(pairs))
    d["keypoint_dist"] = dists
    return d


@cache
def _meta_model(name: str) -> torch.nn.Module:
    from .models import build_model

    return build_model(name).to("meta").eval()


@cache
def network_gflop(name: str, shape: tuple[int, ...]) -> float:
    """Floating-point operations (GFLOP, a multiply-add counted as 2) of one forward of network
    ``name`` (``yolov3``, ``faster-rcnn`` stage 1, ``faster-rcnn-box-head``, ``hrnetv2``) on an
    input of ``shape``, counted on the meta device (no arithmetic is done)."""
    from torch.utils.flop_counter import FlopCounterMode

    if name == "faster-rcnn-box-head":
        module = _meta_model("faster-rcnn").get_submodule("roi_head.bbox_head")
    else:
        module = _meta_model(name)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        copy.copy(module)(torch.zeros(shape, device="meta"))
    return float(counter.get_total_flops()) / 1e9


def _progress(items: Iterable[T], total: int, desc: str, enabled: bool) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr, leave=False)


def _sizes_arg(text: str) -> str:
    """An argparse type: ``text`` when :func:`parse_sizes` takes it, else a usage error."""
    try:
        parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--size: ")) from None
    return text


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, default=None, help="directory of images (default: generated)")
    p.add_argument("--num-images", type=int_at_least(1), default=8, help="generated images (default 8)")
    p.add_argument(
        "--size",
        type=_sizes_arg,
        default="1280x720",
        help=f"generated sizes WxH[,WxH...] or a preset {sorted(SIZE_PRESETS)} (default 1280x720)",
    )
    p.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="image to cut generated frames from (default: shared demo grid)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="directory with the checkpoints (default: seeded test weights)",
    )
    p.add_argument(
        "--seed", type=int_at_least(0, 2**52), default=0, help="test-weights and image seed, 0 to 2**52"
    )
    p.add_argument(
        "--warmup",
        type=int_at_least(0),
        default=1,
        help="warm-up images, excluded; with generated images at least one of each --size, so no "
        "size meets its first-shape work (kernel choice, CUDA graph capture) in a timed pass "
        "(on CUDA also one stream batch)",
    )
    p.add_argument(
        "--compare-upstream", action="store_true", help="also run anime-face-detector 0.1.0, interleaved"
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--face-detector", choices=("yolov3", "faster-rcnn"), default="yolov3")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument(
        "--device-pipeline",
        choices=("auto", "on", "off"),
        default="auto",
        help="image work on the network's device (auto: on for CUDA)",
    )
    p.add_argument(
        "--jpeg-decoder",
        choices=("opencv", "torchvision"),
        default="opencv",
        help="torchvision: nvJPEG on a GPU",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay CUDA graphs of the torch/torchscript networks (CUDA only; opt-in)",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=None,
        help="images per stream batch (default: the Detector's)",
    )
    p.add_argument(
        "--workers",
        type=int_at_least(0),
        default=None,
        help="decoding threads of the stream (default: the Detector's, 2 on the CPU, 2-8 on a GPU)",
    )
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-latency", action="store_true", help="throughput pass only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _weights_dir(args: argparse.Namespace, tmp: Path) -> Path:
    if args.weights is not None:
        return Path(args.weights)
    from .test_weights import write_test_weights

    logger.warning(
        "benchmarking with seeded TEST weights (seed %d): timings are real, detections are not", args.seed
    )
    write_test_weights(tmp, seed=args.seed)
    return tmp


def _image_paths(args: argparse.Namespace, tmp: Path) -> tuple[list[Path], str]:
    """The images to run, and where they come from (for the report: the same command run from
    another directory may find no grid and time synthetic scenes instead)."""
    if args.images is not None:
        paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        return paths, f"directory {Path(args.images).resolve()}"
    grid = args.grid if args.grid is not None else default_grid()
    image = load_grid(grid)
    if image is None and args.grid is not None:  # asked for by name: not silently replaced
        raise ValueError(f"--grid {args.grid}: no such file, or not an image OpenCV can read")
    paths = write_generated_jpegs(args.num_images, parse_sizes(args.size), args.seed, image, tmp, "bench")
    if image is not None:
        return paths, f"windows of {grid.resolve()} (seed {args.seed}), JPEG quality 95"
    return paths, f"synthetic scenes (seed {args.seed}; no grid at {grid}), JPEG quality 95"


def script_command(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run of a benchmark script: ``python <script>`` and ``argv``
    (its arguments, default ``sys.argv[1:]``), shell-quoted."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", script, *args])


def _command(argv: Sequence[str] | None) -> str | None:
    """``afd-trt bench ...`` as given (``argv``: the command line after the program name), or
    None when this is not a ``bench`` command line."""
    if argv is None or "bench" not in argv:
        return None
    args = list(argv)
    return shlex.join(["afd-trt", *args[args.index("bench") :]])


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` text (read when None), else the platform's
    processor or machine name."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def _runtime_versions() -> dict[str, str]:
    """Versions of the optional engine runtimes that are installed, by distribution name."""
    out = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _machine(device: torch.device) -> dict[str, Any]:
    from .engines import cpu_has_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        # the vector ISA torch dispatches to (AVX512 / AVX2 / DEFAULT ...): the fp32 kernels and
        # their speed differ by it, so figures from two machines compare only with it alike
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_cpu": cpu_has_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        **_runtime_versions(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _flops(det: Any, paths: Sequence[Path], results: Sequence[Any], flip: bool) -> dict[str, float]:
    """GFLOP of the detector and landmark networks over the throughput pass."""
    from .face_detection import FasterRCNNFaceDetector
    from .image import load_image

    out = {"detector": 0.0, "landmarks": 0.0}
    fd = det.face_detector
    for path, r in zip(paths, results, strict=True):
        if not r.ok:
            continue
        if fd is not None:
            prep = fd.prepare(load_image(path))
            hp, wp = prep.pad_shape
            if isinstance(fd, FasterRCNNFaceDetector):
                out["detector"] += network_gflop("faster-rcnn", (1, 3, hp, wp))
                # The box head runs on every proposal (up to rpn max_per_img); count the configured maximum.
                out["detector"] += network_gflop("faster-rcnn-box-head", (fd.cfg.rpn_max_per_img, 256, 7, 7))
            else:
                out["detector"] += network_gflop("yolov3", (1, 3, hp, wp))
        w, h = det.landmarks.cfg.input_size
        out["landmarks"] += len(r.faces or []) * (2 if flip else 1) * network_gflop("hrnetv2", (1, 3, h, w))
    return out


def _backends(result: dict[str, Any]) -> str:
    """The backend asked for, and for ``auto`` the one each network got."""
    engines = result.get("engines") or {}
    if result["backend"] != "auto" or not engines:
        return str(result["backend"])
    return "auto (" + ", ".join(f"{n}: {b}" for n, b in engines.items()) + ")"


WORKER_STAGES = ("decode", "preprocess")
"""Stages ``Detector.stream`` runs in its decoding threads (when it has any), beside the others."""


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "n/a (upstream failed on some images)"


def _table(result: dict[str, Any]) -> str:
    rows = [
        f"afd-trt bench: {result['detector']} + hrnetv2, backend {_backends(result)}, {result['precision']}, "
        f"device {result['machine']['device']}, flip {result['flip_test']}, {result['images']} images "
        f"({result['size']}), {result['faces']} faces"
    ]
    m = result["machine"]
    where = m.get("gpu") or f"{m.get('cpu')}, {m.get('cpu_isa')}, {m.get('torch_threads')} threads"
    rows.append(f"  machine: {where}")
    if result.get("images_source"):
        rows.append(f"  images: {result['images_source']}; weights: {result['weights']}")
    lat = result.get("latency")
    if lat:
        rows.append(
            f"  latency (batch 1): {lat['images_per_s']:.3f} images/s, p50 {lat['p50_ms']:.0f} ms, "
            f"p90 {lat['p90_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
        )
    up = result.get("upstream")
    if up:
        rows.append(
            f"  upstream 0.1.0:    {up['images_per_s']:.3f} images/s, p50 {up['p50_ms']:.0f} ms "
            f"-> ratio {result['speedup']:.2f}x (batch 1), {_ratio(result['speedup_stream'])} (stream); "
            f"outputs agree: {result['outputs_agree']} (identical: {result['outputs_identical']})"
        )
        dev, fc = result["max_deviation"], result["faces_compared"]
        rows.append(
            f"  vs upstream: {fc['pairs']} faces paired, {fc['unmatched_ours']} only ours, "
            f"{fc['unmatched_ref']} only upstream; worst box {dev['box_px']:.3g} px, box score "
            f"{dev['box_score']:.3g}, keypoint {dev['keypoint_px']:.3g} px (median "
            f"{result['keypoint_px_median']:.3g}, p99 {result['keypoint_px_p99']:.3g}), keypoint score "
            f"{dev['keypoint_score']:.3g}"
        )
    thr = result["throughput"]
    lat_b, gap = thr["batch_latency"], thr.get("batch_interval", {})
    rows.append(
        f"  stream (batch {thr['batch_size']}, {thr['workers']} decoding threads): {thr['images_per_s']:.3f} "
        f"images/s, {thr['faces_per_s']:.2f} faces/s, {thr['seconds']:.2f} s; per batch: latency p50 "
        f"{lat_b.get('p50_ms', 0):.0f} / p90 {lat_b.get('p90_ms', 0):.0f} / p99 {lat_b.get('p99_ms', 0):.0f} ms "
        f"(its first image read -> its last result, with the read-ahead full), interval p50 "
        f"{gap.get('p50_ms', 0):.0f} ms"
    )
    rows.append(
        "  stage            seconds   share   ms/image   GFLOP (all images)   GFLOP/s"
        + ("   (a separate, device-synchronised pass)" if thr.get("stages_pass", "same") != "same" else "")
    )
    total = sum(s["seconds"] for s in thr["stages"].values()) or 1.0
    for name, s in thr["stages"].items():
        gf = s.get("gflop")
        gfs = f"{gf:8.1f}             {s['gflop_per_s']:8.1f}" if gf is not None else ""
        rows.append(
            f"  {name:<15} {s['seconds']:8.2f}  {100 * s['seconds'] / total:5.1f}%  "
            f"{s['ms_per_image']:9.1f}  {gfs}"
        )
    overlapped = [n for n in WORKER_STAGES if n in thr["stages"]] if thr["workers"] else []
    if overlapped:
        rows.append(
            f"  ({' and '.join(overlapped)} run in the decoding threads, beside the other stages: "
            "shares are of the stages' summed seconds, not of the wall time)"
        )
    rows.append(
        f"  peak RSS {result['peak_rss_mb']:.0f} MiB"
        + (
            f", peak GPU memory {result['peak_gpu_mb']:.0f} MiB (torch's allocator; the device's whole use "
            f"after the stream {result['gpu_used_mb']:.0f} MiB)"
            if "peak_gpu_mb" in result
            else ""
        )
    )
    for key, who in (("failed", "failed, left out"), ("upstream_failed", "upstream failed on, left out")):
        if result.get(key):
            rows.append(f"  {who}: {len(result[key])} image(s); {result[key][0]}")
    if result.get("command"):
        rows.append(f"  command: {result['command']}")
    return "\n".join(rows)


@dataclass
class StreamPass:
    """One timed pass of ``Detector.stream``: its results in input order, per batch the seconds
    from the read of its first input to its last result (latency, read-ahead wait included) and
    from the previous batch's last result to its own (interval), and the wall seconds."""

    results: list[Any]
    batch_latency: list[float]
    batch_interval: list[float]
    wall: float


def _stream_pass(
    ours: Any, paths: list[Path], batch: int, workers: int | None, show: bool, label: str, *, timed: bool
) -> StreamPass:
    """One pass of ``ours.stream`` over ``paths`` (see :class:`StreamPass`); stage times are
    collected in ``ours.timings`` when ``timed``. The stream's batches are consecutive runs of
    ``batch`` inputs, so batch k holds results k*batch to (k+1)*batch - 1."""
    ours.timings.reset()
    ours.timings.enabled = timed
    read_at: list[float] = []

    def feed() -> Iterator[Path]:
        for p in paths:
            read_at.append(time.perf_counter())
            yield p

    out = StreamPass([], [], [], 0.0)
    try:
        t_start = t_last = time.perf_counter()
        for r in _progress(ours.stream(feed(), batch_size=batch, workers=workers), len(paths), label, show):
            out.results.append(r)
            n = len(out.results)
            if n % batch == 0 or n == len(paths):
                now = time.perf_counter()
                out.batch_latency.append(now - read_at[(n - 1) // batch * batch])
                out.batch_interval.append(now - t_last)
                t_last = now
        out.wall = time.perf_counter() - t_start
    finally:
        ours.timings.enabled = False
    return out


def reset_peak_rss() -> bool:
    """Start this process's peak resident set size over from its current size (Linux >= 4.0:
    ``/proc/self/clear_refs``), so that what ran before (making the images) is not in the
    figure; False where that cannot be done (the peak then counts from the start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB since :func:`reset_peak_rss` (``VmHWM``),
    else since it started (``ru_maxrss``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unwritable(path: Path) -> str | None:
    """Why a results file cannot be written at ``path`` (None when it can, as far as can be
    told without writing it)."""
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.is_dir():
        return f"folder {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "cannot be written (permissions)"
    return None


def run_bench(args: argparse.Namespace) -> int:
    from .detector import Detector, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images is not None and not Path(args.images).is_dir():
        logger.error("bench: --images %s is not a directory", args.images)
        return 2
    if args.json is not None and (why := _unwritable(args.json)) is not None:
        logger.error("bench: --json %s: %s", args.json, why)  # found now, not after the run
        return 2
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        logger.error("bench: --device %s: %s", args.device, e)
        return 2
    show = not args.quiet and sys.stderr.isatty()
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        try:
            paths, images_source = _image_paths(args, tmp)
        except OSError as e:  # a temporary folder that is full, a size JPEG cannot hold
            logger.error("bench: cannot write the generated images: %s", e)
            return 2
        except (ValueError, MemoryError) as e:
            logger.error("bench: cannot make the images: %s", e)
            return 2
        if not paths:
            logger.error("bench: --images %s holds no images (%s)", args.images, " ".join(IMAGE_EXTS))
            return 2
        reset_peak_rss()  # making the images (float64 noise for a large synthetic one) is not ours
        wdir = _weights_dir(args, tmp)
        det_ckpt, lm_ckpt = wdir / CHECKPOINTS[args.face_detector], wdir / CHECKPOINTS["hrnetv2"]
        flip = not args.no_flip
        try:
            ours = Detector(
                args.face_detector, det_ckpt, lm_ckpt, device=device, flip_test=flip,
                backend=args.backend, precision=args.precision,
                device_pipeline=None if args.device_pipeline == "auto" else args.device_pipeline == "on",
                jpeg_decoder=args.jpeg_decoder, cuda_graphs=args.cuda_graphs,
            )  # fmt: skip
        except (OSError, ValueError, RuntimeError) as e:
            logger.error("bench: cannot load the models: %s", e)
            return 2
        ref = None
        if args.compare_upstream:
            try:
                ref = UpstreamProcess(lm_ckpt, args.face_detector, det_ckpt, str(device), flip)
            except UpstreamError as e:
                logger.error("bench: --compare-upstream: %s", e)
                return 2
        try:
            result = _run_passes(args, device, paths, ours, ref, flip, show)
        finally:
            if ref is not None:
                ref.close()
    if result is None:
        return 1
    result["images_source"] = images_source
    result["weights"] = (
        str(Path(args.weights).resolve())
        if args.weights is not None
        else f"seeded TEST weights (seed {args.seed}): real timings, meaningless detections"
    )
    # a file name that is not UTF-8 (lone surrogates in Python) is printed escaped, not a crash
    print(_table(result).encode("utf-8", "backslashreplace").decode("utf-8"))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result, indent=2))
        except OSError as e:  # removed or filled since the check: the table above stands
            logger.error("bench: cannot write --json %s: %s", args.json, e.strerror or e)
            return 2
    return 1 if result["failed"] else 0


def _run_passes(
    args: argparse.Namespace,
    device: torch.device,
    paths: list[Path],
    ours: Detector,
    ref: UpstreamProcess | None,
    flip: bool,
    show: bool,
) -> dict[str, Any] | None:
    """The warm-up, latency and stream passes of :func:`run_bench`; the report, or None when no
    image could be run."""
    # One unreadable or failing image is reported (``failed``) and left out, never the end of
    # the run: each path's first failure is kept, by path.
    failures: dict[str, str] = {}

    def attempt(path: Path) -> list[Any] | None:
        try:
            return ours(path)
        except Exception as e:
            failures.setdefault(str(path), str(e))
            logger.warning("bench: %s", e)
            return None

    upstream_failed: dict[str, str] = {}
    warmed = 0
    # Generated images cycle through the sizes: the first len(sizes) hold one of each.
    n_warm = (
        max(args.warmup, len(parse_sizes(args.size))) if args.warmup and args.images is None else args.warmup
    )
    for path in paths:
        if warmed >= n_warm:
            break
        if attempt(path) is not None:
            warmed += 1
            if ref is not None:
                with contextlib.suppress(UpstreamError):  # the latency pass reports it
                    ref(str(path))
    batch = args.batch_size if args.batch_size is not None else ours.default_batch_size
    if device.type == "cuda" and warmed:
        # The stream's first batch meets shapes the single calls did not (the detector's batch,
        # HRNet's crop batches): cuDNN's plans and, with CUDA graphs, the captures are made
        # there, seconds of one-off work. One untimed batch keeps it out of the figures.
        _stream_pass(ours, paths[:batch], batch, args.workers, False, "warm-up", timed=False)

    # 1. latency, batch 1, interleaved with upstream
    t_ours: list[float] = []
    t_ref: list[float] = []
    worst = {"box_px": 0.0, "box_score": 0.0, "keypoint_px": 0.0, "keypoint_score": 0.0}
    counts = {"pairs": 0, "unmatched_ours": 0, "unmatched_ref": 0}
    dists: list[float] = []
    if not args.skip_latency or ref is not None:
        for path in _progress(paths, len(paths), "latency", show):
            t0 = time.perf_counter()
            got = attempt(path)
            if got is None:
                continue
            took = time.perf_counter() - t0
            if ref is not None:
                try:
                    exp, took_ref = ref(str(path))
                except UpstreamError as e:  # left out of the comparison, both timings with it
                    upstream_failed[str(path)] = str(e)
                    # %r: a name that is not UTF-8 comes out escaped, not as lone surrogates that a
                    # log file, or pytest-xdist's report channel, cannot encode
                    logger.warning(
                        "bench: upstream failed on %r (%s); left out of the comparison", str(path), e
                    )
                    continue
                t_ref.append(took_ref)
                cmp = compare_faces(got, exp)
                worst = {k: max(v, cmp[k]) for k, v in worst.items()}
                counts = {k: v + cmp[k] for k, v in counts.items()}
                dists.extend(cmp["keypoint_dist"])
            t_ours.append(took)

    # 2. throughput, the stream, with stage times. On a GPU, timing a stage synchronises the
    # device around it, which stops host and device work from overlapping: there the rate
    # comes from an untimed pass and the stage times from a second, timed one.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stages_apart = ours.timings.synchronizes
    main_pass = _stream_pass(ours, paths, batch, args.workers, show, "stream", timed=not stages_apart)
    results, wall = main_pass.results, main_pass.wall
    if stages_apart:
        _stream_pass(ours, paths, batch, args.workers, show, "stages (synchronised)", timed=True)
    for r in results:
        if not r.ok:
            failures.setdefault(str(r.source), str(r.error))
    failed = list(failures.values())
    n_ok = sum(1 for r in results if r.ok)
    if n_ok == 0:
        logger.error("bench: no image could be run (%d failed)", len(failed))
        return None
    faces = sum(len(r.faces or []) for r in results)
    gflop = _flops(ours, paths, results, flip)
    stages: dict[str, dict[str, float]] = {}
    for name, sec in ours.timings.seconds().items():
        s: dict[str, float] = {"seconds": sec, "ms_per_image": 1000 * sec / n_ok}
        if name in gflop:
            s["gflop"] = gflop[name]
            s["gflop_per_s"] = gflop[name] / sec if sec > 0 else 0.0
        stages[name] = s

    sizes = (
        list(dict.fromkeys(p.stem.rsplit("_", 1)[-1] for p in paths))
        if args.images is None
        else ["(directory)"]
    )
    result: dict[str, Any] = {
        "command": _command(getattr(args, "argv", None)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**_machine(device), "malloc": ours.host_malloc},
        "images": n_ok,
        "warmup_images": warmed,  # untimed runs before the passes (also timed in them)
        "size": ",".join(sizes),
        "faces": faces,
        "failed": failed,
        "detector": args.face_detector,
        "backend": args.backend,
        "engines": dict(ours.engines),
        "precision": ours.precision,
        "requested_precision": args.precision,
        "device_pipeline": ours.device_pipeline,
        "jpeg_decoder": ours.jpeg_decoder,
        "cuda_graphs": ours.cuda_graphs,
        "flip_test": flip,
        "throughput": {
            "batch_size": batch,
            "workers": ours.default_workers if args.workers is None else args.workers,
            "seconds": wall,
            "images_per_s": n_ok / wall,
            "faces_per_s": faces / wall,
            "batch_latency": percentiles_ms(main_pass.batch_latency),
            "batch_interval": percentiles_ms(main_pass.batch_interval),
            "stages": stages,
            "stages_pass": "separate, device-synchronised" if stages_apart else "same",
        },
        "peak_rss_mb": peak_rss_mib(),
    }
    if t_ours:
        # over the images both sides ran, with --compare-upstream (like for like): ``images`` says how many
        result["latency"] = {
            "images": len(t_ours),
            "images_per_s": len(t_ours) / sum(t_ours),
            **percentiles_ms(t_ours),
        }
    # Kept for scripts reading earlier reports: the headline rate (the stream's).
    result["afd_trt"] = {"images_per_s": result["throughput"]["images_per_s"]}
    if device.type == "cuda":
        # torch's allocator only: TensorRT's and ONNX Runtime's own memory is not in it (nor
        # upstream's, which runs in a process of its own). The device's whole use (every runtime,
        # every process, upstream's too) after the stream is beside it.
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        free, total = torch.cuda.mem_get_info(device)
        result["gpu_used_mb"] = (total - free) / 2**20
    if ref is not None:
        result["upstream_failed"] = [f"{p}: {e}" for p, e in upstream_failed.items()]
    if ref is not None and not t_ref:
        logger.error("bench: upstream ran none of the images: no comparison")
        ref = None
    if ref is not None:
        up_ips = len(t_ref) / sum(t_ref)
        result["upstream"] = {"images": len(t_ref), "images_per_s": up_ips, **percentiles_ms(t_ref)}
        result["speedup"] = sum(t_ref) / sum(t_ours)
        # The stream ran every image; upstream's rate is over those it ran: only a like-for-like
        # ratio is given.
        result["speedup_stream"] = (
            result["throughput"]["images_per_s"] / up_ips if not upstream_failed else None
        )
        same_faces = counts["unmatched_ours"] == 0 and counts["unmatched_ref"] == 0
        result["max_deviation"] = worst
        result["faces_compared"] = counts
        result["keypoint_px_median"] = float(np.median(dists)) if dists else 0.0
        result["keypoint_px_p99"] = float(np.percentile(dists, 99)) if dists else 0.0
        result["outputs_agree"] = (
            same_faces and worst["box_px"] <= 1e-3 and worst["keypoint_px"] <= 0.05
            and worst["box_score"] <= 1e-5 and worst["keypoint_score"] <= 1e-4
        )  # fmt: skip
        result["outputs_identical"] = same_faces and not any(worst.values())
    return result
