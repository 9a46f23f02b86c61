"""``afd-trt bench``: time the full pipeline, optionally side by side with upstream.

Images are a directory's or generated 1280x720 frames cut from the shared TADNE demo grid (or
synthetic ones when it is absent); weights are the given checkpoints or seeded test weights.
With ``--compare-upstream`` each image runs through upstream ``anime-face-detector`` and
through afd_trt in turn (interleaved, same process, same checkpoints), and the report gives both
rates, their ratio and the worst output deviation. Warm-up calls are excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["add_bench_args", "run_bench"]

logger = logging.getLogger(__name__)

GRID_NAME = "tadne_grid_3072.jpg"


def default_grid() -> Path:
    """The shared demo grid: ``$AFD_TRT_SHARED_DATA/<grid>``, else ``../shared/data/<grid>`` from the
    working directory (a checkout's sibling), else a path that does not exist (synthetic images)."""
    import os

    env = os.environ.get("AFD_TRT_SHARED_DATA")
    return Path(env) / GRID_NAME if env else Path.cwd().parent / "shared" / "data" / GRID_NAME


def _generated_images(n: int, size: tuple[int, int], seed: int, grid_path: Path) -> list[np.ndarray]:
    """n BGR uint8 images of size (w, h): windows of the TADNE grid, or synthetic line-art scenes."""
    from .test_weights import synthetic_image

    rng = np.random.default_rng(seed)
    w, h = size
    grid = cv2.imread(str(grid_path), cv2.IMREAD_COLOR) if grid_path.is_file() else None
    out = []
    for _ in range(n):
        if grid is not None:
            cw = int(rng.integers(1024, 3072))
            ch = min(3072, int(cw * h / w))
            x, y = int(rng.integers(0, 3072 - cw + 1)), int(rng.integers(0, 3072 - ch + 1))
            out.append(cv2.resize(grid[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA))
        else:
            out.append(synthetic_image(h, w, seed=int(rng.integers(0, 2**31))))
    return out


def _percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    q = np.percentile(np.asarray(xs) * 1000.0, [50, 90, 99])
    return {
        "p50_ms": float(q[0]),
        "p90_ms": float(q[1]),
        "p99_ms": float(q[2]),
        "mean_ms": statistics.fmean(xs) * 1000,
    }


def _max_dev(ours: list[dict[str, np.ndarray]], ref: list[dict[str, np.ndarray]]) -> dict[str, float] | None:
    if len(ours) != len(ref):
        return None
    d = {"box_px": 0.0, "keypoint_px": 0.0}
    for a, b in zip(ours, ref, strict=True):
        d["box_px"] = max(d["box_px"], float(np.abs(a["bbox"][:4] - b["bbox"][:4]).max()))
        d["keypoint_px"] = max(
            d["keypoint_px"], float(np.abs(a["keypoints"][:, :2] - b["keypoints"][:, :2]).max())
        )
    return d


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, default=None, help="directory of images (default: generated)")
    p.add_argument("--num-images", type=int, default=8, help="generated images (default 8)")
    p.add_argument("--size", default="1280x720", help="generated image size WxH (default 1280x720)")
    p.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="image to cut generated frames from (default: shared demo grid)",
    )
    p.add_argument("--weights", type=Path, default=None, help="directory with the three checkpoints")
    p.add_argument("--seed", type=int, default=0, help="test-weights and image seed")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compare-upstream", action="store_true", help="also run anime-face-detector 0.1.0")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--face-detector", choices=("yolov3", "faster-rcnn"), default="yolov3")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def _weights_dir(args: argparse.Namespace, tmp: Path) -> Path:
    if args.weights is not None:
        return Path(args.weights)
    from .test_weights import write_test_weights

    logger.warning(
        "benchmarking with seeded TEST weights (seed %d): timings are real, detections are not", args.seed
    )
    write_test_weights(tmp, seed=args.seed)
    return tmp


def run_bench(args: argparse.Namespace) -> int:
    from .detector import Detector
    from .image import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.images is not None:
        paths = sorted(
            p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        images = [load_image(p) for p in paths]
    else:
        grid = args.grid if args.grid is not None else default_grid()
        if not grid.is_file():
            logger.warning("bench: %s not found, using synthetic images", grid)
        images = _generated_images(args.num_images, (w, h), args.seed, grid)
    if not images:
        raise SystemExit("bench: no images")
    with tempfile.TemporaryDirectory() as tmp:
        wdir = _weights_dir(args, Path(tmp))
        det_file = {
            "yolov3": "mmdet_anime-face_yolov3.pth",
            "faster-rcnn": "mmdet_anime-face_faster-rcnn.pth",
        }
        det_ckpt, lm_ckpt = wdir / det_file[args.face_detector], wdir / "mmpose_anime-face_hrnetv2.pth"
        ours = Detector(
            args.face_detector,
            det_ckpt,
            lm_ckpt,
            device=args.device,
            flip_test=not args.no_flip,
            backend=args.backend,
        )
        ref = None
        if args.compare_upstream:
            import anime_face_detector

            ref = anime_face_detector.LandmarkDetector(
                lm_ckpt, args.face_detector, det_ckpt, device=args.device, flip_test=not args.no_flip
            )
        for img in images[: args.warmup]:
            ours(img)
            if ref is not None:
                ref(img)
        t_ours: list[float] = []
        t_ref: list[float] = []
        faces = 0
        worst: dict[str, float] = {"box_px": 0.0, "keypoint_px": 0.0}
        agree = True
        for img in images:
            t0 = time.perf_counter()
            got = ours(img)
            t_ours.append(time.perf_counter() - t0)
            faces += len(got)
            if ref is not None:
                t0 = time.perf_counter()
                exp = ref(img)
                t_ref.append(time.perf_counter() - t0)
                dev = _max_dev(got, exp)
                if dev is None:
                    agree = False
                else:
                    worst = {k: max(worst[k], v) for k, v in dev.items()}
    result: dict[str, Any] = {
        "command": "afd-trt bench "
        + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("bench") + 1 :])
        if "bench" in sys.argv
        else None,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "device": args.device,
        },
        "images": len(images),
        "size": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "faces": faces,
        "detector": args.face_detector,
        "backend": args.backend,
        "flip_test": not args.no_flip,
        "afd_trt": {"images_per_s": len(images) / sum(t_ours), **_percentiles(t_ours)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if ref is not None:
        result["upstream"] = {"images_per_s": len(images) / sum(t_ref), **_percentiles(t_ref)}
        result["speedup"] = sum(t_ref) / sum(t_ours)
        result["outputs_agree"] = agree and worst["box_px"] <= 1e-3 and worst["keypoint_px"] <= 0.05
        result["max_deviation"] = worst
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0
