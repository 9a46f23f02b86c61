"""Per-network engine timings: every backend and precision at the pipeline's shapes and layouts.

This is the measurement behind ``afd_trt.engines.AUTO_CPU`` (which backend ``backend="auto"``
takes per network and precision); re-run it to re-derive the table on another machine::

    afd-trt make-test-weights /tmp/bw --seed 0
    python benchmarks/engines.py --weights /tmp/bw --json engines.json

Each engine is built into the engine cache first (not timed), then called ``--warmup`` times and
timed ``--repeat`` times on one random input; the median is reported with its ratio to eager
fp32 torch, which is upstream's arithmetic, and the output's relative deviation from it
(``max |out - eager| / max |eager|``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from afd_trt.bench import script_command
from afd_trt.config import load_config
from afd_trt.engines import BackendUnavailableError, Network, create_engine
from afd_trt.models import build_model
from afd_trt.weights import load_checkpoint

logger = logging.getLogger("benchmarks.engines")

SHAPES = {
    "yolov3": (1, 3, 352, 608),  # a 1280x720 image at img_scale 608
    "faster-rcnn": (1, 3, 768, 1344),  # 1280x720 at (1333, 800), padded to 32
    "faster-rcnn-box-head": (1000, 256, 7, 7),  # rpn_max_per_img RoIs
    "hrnetv2": (8, 3, 256, 256),  # 8 face crops
}
CHECKPOINTS = {
    "yolov3": "mmdet_anime-face_yolov3.pth",
    "faster-rcnn": "mmdet_anime-face_faster-rcnn.pth",
    "hrnetv2": "mmpose_anime-face_hrnetv2.pth",
}
RUNS = [
    ("torch", "fp32"),
    ("torchscript", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("torch", "bf16"),
    ("torchscript", "bf16"),
    ("openvino", "bf16"),
]


def _network(name: str, weights: Path) -> Network:
    model_name = "faster-rcnn" if name == "faster-rcnn-box-head" else name
    module = build_model(model_name)
    load_checkpoint(module, weights / CHECKPOINTS[model_name])
    module.eval()
    if name == "faster-rcnn-box-head":
        module = module.get_submodule("roi_head.bbox_head")
    return Network(name, module, load_config(model_name))


def _time(fn: Any, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    cpu = torch.device("cpu")
    rows: list[dict[str, Any]] = []
    for name in args.networks:
        net = _network(name, args.weights)
        x = torch.rand(SHAPES[name], generator=torch.Generator().manual_seed(0))
        if name == "hrnetv2":  # the pipeline's crops are channels-last (upstream's layout)
            x = x.contiguous(memory_format=torch.channels_last)
        eager = create_engine("torch", net, cpu)
        want = eager(x)
        base = None
        for backend, precision in RUNS:
            row: dict[str, Any] = {"network": name, "shape": list(SHAPES[name]), "backend": backend}
            row["precision"] = precision
            try:
                engine = create_engine(backend, net, cpu, precision=precision, cache=args.cache_dir)
            except (BackendUnavailableError, ValueError) as e:
                row["error"] = str(e)
                rows.append(row)
                continue
            got = engine(x)
            sec = _time(lambda e=engine, x=x: e(x), args.warmup, args.repeat)
            base = sec if (backend, precision) == ("torch", "fp32") else base
            dev = max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want, strict=True))
            row.update(ms=1000 * sec, vs_eager_fp32=(base / sec) if base is not None else None, rel_dev=dev)
            rows.append(row)
            logger.info("%s %s %s: %.1f ms", name, backend, precision, 1000 * sec)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``run``'s rows: the median in ms, the speed-up over eager fp32 torch
    ("n/a" when that failed or is unavailable for the network) and the relative deviation."""
    lines = [
        "| network | backend | precision | ms (median) | vs eager fp32 | rel. deviation |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['network']} | {r['backend']} | {r['precision']} | unavailable: {r['error']} | | |"
            )
        else:
            vs = "n/a" if r["vs_eager_fp32"] is None else f"{r['vs_eager_fp32']:.2f}x"
            lines.append(
                f"| {r['network']} | {r['backend']} | {r['precision']} | {r['ms']:.1f} | "
                f"{vs} | {r['rel_dev']:.1e} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="directory with the three .pth files")
    p.add_argument("--networks", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default: afd_trt's)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    sys.stdout.write(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, command: {script_command('benchmarks/engines.py', argv)}\n"
    )
    sys.stdout.write(table(rows) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
