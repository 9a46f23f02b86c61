"""Memory over a long stream: the resident set size while ``Detector.stream`` reads N images.

The throughput issue asks that memory stay flat over 10,000 images (bounded queues). This writes
``--distinct`` JPEG files (windows of the shared TADNE grid, or synthetic scenes without it),
streams ``--num-images`` paths cycling over them through one ``Detector`` (so every image is read
from disk and decoded, in the stream's worker threads) and samples the process's resident set
size from ``/proc/self/statm`` (on CUDA also the GPU memory torch holds in tensors) every
``--every`` images. It reports the RSS after the warm-up (the first ``--warmup`` images: engines,
allocator pools and thread pools are made there), the peak and last samples after it, and the
least-squares growth over the samples taken at or after the warm-up in MiB per 1,000 images.
The growth needs at least two such samples spanning at least ``--every`` images; with fewer the
verdict is inconclusive (no growth: null in the JSON). ``--max-seconds`` ends the stream early
(at the next sample) to fit a time budget.

Exit status: 0 the memory stayed flat (growth at most ``--max-growth``); 1 it grew past
``--max-growth``, or an image failed; 2 bad arguments; 3 inconclusive (fewer than two samples at
or after the warm-up, or spanning less than ``--every`` images: stream more images, or lower
``--warmup`` or ``--every``).

10,000 images through the full networks take hours on a 2-core CPU, so the detector's config can
be made cheaper: ``--img-scale`` (the detector's input size) and ``--max-faces`` (its
``max_per_img``, so the landmark batch stays small). Every stage still runs for every image::

    afd-trt make-test-weights /tmp/bw --seed 0
    python benchmarks/memory.py --weights /tmp/bw --num-images 10000 --img-scale 128 \\
        --max-faces 1 --flip off --json memory.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import afd_trt
from afd_trt.argtypes import int_at_least, number
from afd_trt.bench import default_grid, parse_sizes, script_command, write_generated_jpegs
from afd_trt.config import load_config

logger = logging.getLogger("benchmarks.memory")

MIB = 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth_per_1000(images: Sequence[int], rss: Sequence[int]) -> float:
    """Least-squares slope of ``rss`` (bytes, one per sample) against ``images`` (image counts,
    same length, at least two distinct), in MiB per 1,000 images."""
    if len(set(images)) < 2:
        raise ValueError(f"a slope needs samples at two image counts at least, got {list(images)}")
    slope = np.polyfit(np.asarray(images, dtype=np.float64), np.asarray(rss, dtype=np.float64), 1)[0]
    return float(slope) * 1000 / MIB


def fit_growth(
    samples: Sequence[tuple[int, int]], warmup: int, every: int
) -> tuple[float | None, str | None]:
    """The growth after the warm-up: ``samples`` are (images done, bytes) in order; only those at
    or after ``warmup`` images count. Returns (MiB per 1,000 images, None) when at least two of
    them span at least ``every`` images, else (None, why the growth is inconclusive)."""
    after = [s for s in samples if s[0] >= warmup]
    if len(after) >= 2 and after[-1][0] - after[0][0] >= every:
        return growth_per_1000([s[0] for s in after], [s[1] for s in after]), None
    # the first sample at or after the warm-up is at the first multiple of --every there
    needed = math.ceil(warmup / every) * every + every
    if not after:
        last = f" (the last at {samples[-1][0]} images)" if samples else ""
        got = f"no sample at or after the {warmup}-image warm-up{last}"
    elif len(after) == 1:
        got = f"1 sample at or after the {warmup}-image warm-up (at {after[0][0]} images)"
    else:
        got = (
            f"{len(after)} samples at or after the {warmup}-image warm-up, spanning "
            f"{after[-1][0] - after[0][0]} images ({after[0][0]} to {after[-1][0]})"
        )
    why = (
        f"{got}; the growth needs 2 samples spanning at least --every {every} images: stream at "
        f"least {needed} images (--num-images, --max-seconds) or lower --warmup or --every"
    )
    return None, why


def summarize(
    samples: Sequence[tuple[int, int]], warmup: int, every: int, what: str = "rss"
) -> dict[str, Any]:
    """``samples``: (images done, bytes) in order, one every ``every`` images. Figures in MiB
    (None when no sample is at or after the warm-up), keys prefixed ``what``, over the samples
    taken at or after ``warmup`` images; ``{what}_after_warmup_images`` is the image count of the
    first of them. The growth (MiB per 1,000 images) is None when inconclusive, and
    ``{what}_growth_inconclusive`` then says why (see ``fit_growth``)."""
    after = [s for s in samples if s[0] >= warmup]
    used = [s[1] for s in after]
    growth, why = fit_growth(samples, warmup, every)
    return {
        f"{what}_after_warmup_images": after[0][0] if after else None,
        f"{what}_after_warmup_mib": used[0] / MIB if used else None,
        f"{what}_peak_mib": max(used) / MIB if used else None,
        f"{what}_last_mib": used[-1] / MIB if used else None,
        f"{what}_growth_mib_per_1000_images": growth,
        f"{what}_growth_inconclusive": why,
        f"{what}_samples": [[n, b / MIB] for n, b in samples],
    }


def verdict(result: dict[str, Any], max_growth: float) -> int:
    """The exit status from a ``run`` result: 1 when an image failed or the RSS (or, on CUDA, the
    GPU memory torch holds in tensors) grew by more than ``max_growth`` MiB per 1,000 images after
    the warm-up; else 3 when a growth is inconclusive (None); else 0."""
    keys = ["rss_growth_mib_per_1000_images", "gpu_growth_mib_per_1000_images"]
    growth = [result[k] for k in keys if k in result]
    if result["failed"] or any(g is not None and g > max_growth for g in growth):
        return 1
    return 3 if any(g is None for g in growth) else 0


def _detector(args: argparse.Namespace, weights: Path) -> afd_trt.Detector:
    config = load_config(args.detector)
    if args.img_scale is not None:
        config = dataclasses.replace(
            config, input=dataclasses.replace(config.input, img_scale=(args.img_scale, args.img_scale))
        )
    if args.max_faces is not None:
        config = dataclasses.replace(config, max_per_img=args.max_faces)
    return afd_trt.Detector(
        args.detector,
        weights / config.weights.file,
        weights / load_config("hrnetv2").weights.file,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        flip_test=args.flip == "on",
        face_detector_config=config,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="afd_trt-memory-") as tmp_name:
        tmp = Path(tmp_name)
        if args.weights is None:
            from afd_trt.test_weights import write_test_weights

            write_test_weights(tmp / "weights", seed=args.seed)
            weights = tmp / "weights"
        else:
            weights = args.weights
        grid = args.grid if args.grid is not None else default_grid()
        paths = write_generated_jpegs(args.distinct, parse_sizes(args.size), args.seed, grid, tmp, "memory")
        det = _detector(args, weights)

        def inputs() -> Iterator[str]:
            for p in itertools.islice(itertools.cycle(paths), args.num_images):
                yield str(p)

        cuda = det.device.type == "cuda"

        def gpu_bytes() -> int:
            return torch.cuda.memory_allocated(det.device) if cuda else 0

        samples: list[tuple[int, int]] = [(0, rss_bytes())]
        gpu_samples: list[tuple[int, int]] = [(0, gpu_bytes())]
        faces = failed = done = 0
        t0 = time.perf_counter()
        stream = det.stream(inputs(), batch_size=args.batch_size, workers=args.workers)
        for r in stream:
            if r.ok:
                faces += len(r.faces or [])
            else:
                failed += 1
                logger.error("%s: %s", r.source, r.error)
            done = r.index + 1
            if done % args.every == 0 or done == args.num_images:
                samples.append((done, rss_bytes()))
                gpu_samples.append((done, gpu_bytes()))
                logger.info(
                    "%d images, RSS %.1f MiB%s",
                    done,
                    samples[-1][1] / MIB,
                    f", GPU tensors {gpu_samples[-1][1] / MIB:.1f} MiB" if cuda else "",
                )
                if args.max_seconds is not None and time.perf_counter() - t0 > args.max_seconds:
                    logger.warning(
                        "stopping after %d images: --max-seconds %g reached", done, args.max_seconds
                    )
                    stream.close()
                    break
        seconds = time.perf_counter() - t0
    result = {
        "images": done,
        "images_asked": args.num_images,
        "distinct_files": len(paths),
        "faces": faces,
        "failed": failed,
        "seconds": seconds,
        "images_per_s": done / seconds,
        "detector": args.detector,
        "backend": args.backend,
        "precision": args.precision,
        "flip": args.flip,
        "batch_size": args.batch_size,
        "workers": det.default_workers if args.workers is None else args.workers,
        "img_scale": args.img_scale,
        "max_faces": args.max_faces,
        "warmup_images": args.warmup,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        **summarize(samples, args.warmup, args.every),
    }
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(det.device)
        result.update(summarize(gpu_samples, args.warmup, args.every, "gpu"))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--weights", type=Path, help="directory of the three checkpoints (default: seeded test weights)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the test weights and images")
    p.add_argument("--num-images", type=int_at_least(1), default=10_000)
    p.add_argument("--distinct", type=int_at_least(1), default=16, help="distinct JPEG files cycled over")
    p.add_argument("--size", default="320x240", help="WxH[,WxH...] of the files (default 320x240)")
    p.add_argument("--grid", type=Path, default=None, help="the TADNE grid (default ../shared/data/...)")
    p.add_argument("--detector", choices=("yolov3", "faster-rcnn"), default="yolov3")
    p.add_argument(
        "--img-scale", type=int_at_least(32), default=None, help="detector input size (default: config)"
    )
    p.add_argument(
        "--max-faces", type=int_at_least(1), default=None, help="faces kept per image (default: config)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--flip", choices=("on", "off"), default="on")
    p.add_argument("--batch-size", type=int_at_least(1), default=4)
    p.add_argument(
        "--workers", type=int_at_least(0), default=None, help="decoding threads (default: the Detector's)"
    )
    p.add_argument("--every", type=int_at_least(1), default=250, help="sample the RSS every N images")
    p.add_argument("--warmup", type=int_at_least(0), default=500, help="images before the growth is measured")
    p.add_argument(
        "--max-seconds",
        type=number(minimum=0, strict=True),
        default=None,
        help="stop at the first sample after this many seconds of streaming (the report covers what ran)",
    )
    p.add_argument(
        "--max-growth", type=number(), default=1.0, help="MiB per 1,000 images tolerated (exit 1 above)"
    )
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    if args.warmup >= args.num_images:
        p.error(
            f"--warmup ({args.warmup}) must be under --num-images ({args.num_images}): growth is measured after it"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write ``--json``, log the summary; returns the exit status (see ``verdict``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = {"command": script_command("benchmarks/memory.py", argv), **run(args)}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(
        "%d images (%d faces, %d failed) at %.1f images/s",
        result["images"],
        result["faces"],
        result["failed"],
        result["images_per_s"],
    )
    if result["rss_after_warmup_images"] is not None:
        logger.info(
            "RSS %.1f MiB after %d images, peak %.1f, last %.1f",
            result["rss_after_warmup_mib"],
            result["rss_after_warmup_images"],
            result["rss_peak_mib"],
            result["rss_last_mib"],
        )
    if result["rss_growth_mib_per_1000_images"] is None:
        logger.warning("growth inconclusive (exit status 3): %s", result["rss_growth_inconclusive"])
    else:
        logger.info("growth %.3f MiB per 1,000 images", result["rss_growth_mib_per_1000_images"])
    return verdict(result, args.max_growth)


if __name__ == "__main__":
    sys.exit(main())
