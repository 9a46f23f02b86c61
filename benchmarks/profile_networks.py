"""Where a network's CPU time goes: eager torch (upstream's arithmetic) and OpenVINO, layer by layer.

The measurement behind docs/benchmarks.md's "where the time goes" section; re-run it with::

    afd-trt make-test-weights /tmp/bw --seed 0
    python benchmarks/profile_networks.py --weights /tmp/bw --json profile.json

For each network at the pipeline's shape (``benchmarks/engines.py``'s ``SHAPES``):

- eager fp32 torch, the arithmetic that gives upstream's exact numbers (the input in the memory
  format the pipeline gives it, as upstream does: channels-last for HRNetV2): the median time, ATen
  ops by self time (``torch.profiler``), and oneDNN's primitives by kind and implementation, read
  from its verbose log (``torch.backends.mkldnn.verbose``). That log separates the convolution
  kernels from the layout reorders torch wraps around each convolution (plain NCHW to oneDNN's
  blocked layout and back, and the weights' reorder on every call);
- OpenVINO fp32 and bf16 (when installed): the median time, time per node type and the slowest
  layers, from OpenVINO's performance counters.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from engines import SHAPES, _network, _time

from afd_trt.engine_cache import EngineCache
from afd_trt.engines import cached_onnx

logger = logging.getLogger("benchmarks.profile_networks")

NETWORKS = ("yolov3", "hrnetv2")
# The memory format each network's input has in the pipeline, which is upstream's: HRNetV2 gets
# its crops channels-last (afd_trt.landmarks, ``LandmarkEstimator._heatmaps``), so eager torch
# runs it channels-last throughout; YOLOv3 gets a contiguous NCHW image.
INPUT_FORMATS = {"yolov3": torch.contiguous_format, "hrnetv2": torch.channels_last}


def aten_ops(fn: Callable[[], Any], top: int) -> list[dict[str, Any]]:
    """The ``top`` ATen ops of one call of ``fn`` by self CPU time: ``[{op, ms, calls}]``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [
        {"op": e.key, "ms": e.self_cpu_time_total / 1000, "calls": e.count}
        for e in prof.key_averages()
        if e.key.startswith("aten::")
    ]
    return sorted(rows, key=lambda r: -r["ms"])[:top]


def _is_weight_format(tag: str) -> bool:
    """oneDNN format tags of weights start with a blocked outer dimension (``Acdb16a``,
    ``ABcd16b16a``); activations' do not (``abcd``, ``aBcd16b``, ``acdb``)."""
    return tag[:1].isupper()


def parse_onednn_verbose(lines: list[str]) -> dict[str, dict[str, float]]:
    """oneDNN verbose ``exec`` lines -> ``{"kind impl": {"ms", "calls"}}``; reorders are split
    into ``reorder (weights)`` and ``reorder (activations)`` by their memory formats."""
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"ms": 0.0, "calls": 0})
    for line in lines:
        f = line.strip().split(",")
        if len(f) < 10 or f[0] != "onednn_verbose" or f[3] != "exec":
            continue
        kind, impl, mds = f[5], f[6], f[8]
        if kind == "reorder":
            tags = [md.split(":")[4] for md in mds.split() if md.count(":") >= 4]
            key = "reorder (weights)" if any(_is_weight_format(t) for t in tags) else "reorder (activations)"
        else:
            key = f"{kind} {impl}"
        try:
            out[key]["ms"] += float(f[-1])
        except ValueError:
            continue
        out[key]["calls"] += 1
    return dict(out)


def onednn_primitives(fn: Callable[[], Any]) -> dict[str, dict[str, float]]:
    """Run ``fn`` once with oneDNN's verbose log on (it writes to the process's stdout, which is
    redirected to a temporary file meanwhile) and sum its primitives (:func:`parse_onednn_verbose`)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            libc.fflush(None)  # the log's buffered tail goes to the file, not to the real stdout
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return parse_onednn_verbose(log.readlines())


def openvino_layers(onnx: Path, x: np.ndarray, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """OpenVINO's median time and performance counters for ``onnx`` at ``precision``
    (``"f32"``/``"bf16"``): ``{ms, by_type: {type: ms}, slowest: [{layer, type, impl, ms}]}``."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": True,
    }
    request = ov.Core().compile_model(str(onnx), "CPU", config).create_infer_request()
    ms = 1000 * _time(lambda: request.infer({0: x}), args.warmup, args.repeat)
    by_type: dict[str, float] = collections.Counter()
    layers = []
    for p in request.get_profiling_info():
        t = p.real_time.total_seconds() * 1000
        by_type[p.node_type] += t
        layers.append({"layer": p.node_name, "type": p.node_type, "impl": p.exec_type, "ms": t})
    slowest = sorted(layers, key=lambda r: -r["ms"])[: args.top]
    return {"ms": ms, "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])), "slowest": slowest}


def profile_network(name: str, args: argparse.Namespace) -> dict[str, Any]:
    net = _network(name, args.weights)
    shape = SHAPES[name]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=INPUT_FORMATS[name])
    module = net.module

    def eager() -> Any:
        with torch.no_grad():
            return module(x)

    result: dict[str, Any] = {"network": name, "shape": list(shape), "input_format": str(INPUT_FORMATS[name])}
    result["eager_ms"] = 1000 * _time(eager, args.warmup, args.repeat)
    result["aten_ops"] = aten_ops(eager, args.top)
    result["onednn"] = onednn_primitives(eager)
    try:
        onnx = cached_onnx(net, EngineCache(args.cache_dir))
    except ImportError as e:
        result["openvino"] = {"error": f"no ONNX export: {e}"}
        return result
    result["openvino"] = {}
    for precision in args.openvino:
        try:
            result["openvino"][precision] = openvino_layers(
                onnx, np.ascontiguousarray(x.numpy()), precision, args
            )
        except ImportError as e:
            result["openvino"][precision] = {"error": f"openvino is not installed: {e}"}
    return result


def report(r: dict[str, Any]) -> str:
    """A plain-text summary of :func:`profile_network`'s result."""
    lines = [
        f"## {r['network']} {tuple(r['shape'])} ({r['input_format']}): eager fp32 torch {r['eager_ms']:.1f} ms"
    ]
    total = sum(v["ms"] for v in r["onednn"].values()) or float("nan")  # nan: no oneDNN calls
    lines.append(f"oneDNN primitives ({total:.1f} ms):")
    for k, v in sorted(r["onednn"].items(), key=lambda kv: -kv[1]["ms"]):
        lines.append(f"  {k:40s} {v['ms']:9.1f} ms  {100 * v['ms'] / total:5.1f}%  {int(v['calls'])} calls")
    lines.append("ATen ops by self time:")
    lines.extend(f"  {o['op']:40s} {o['ms']:9.1f} ms  {o['calls']} calls" for o in r["aten_ops"])
    for precision, ov in r.get("openvino", {}).items():
        if "error" in ov:
            lines.append(f"OpenVINO {precision}: {ov['error']}")
            continue
        lines.append(f"OpenVINO {precision}: {ov['ms']:.1f} ms; by node type:")
        lines.extend(f"  {t:40s} {ms:9.1f} ms" for t, ms in ov["by_type"].items() if ms >= 0.05)
        lines.append("  slowest layers:")
        lines.extend(f"    {s['ms']:7.2f} ms {s['layer'][:70]} ({s['impl']})" for s in ov["slowest"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="directory with the .pth files")
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--openvino", nargs="*", choices=("f32", "bf16"), default=["f32", "bf16"])
    p.add_argument("--cache-dir", type=Path, default=None, help="engine cache for the ONNX export")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="ATen ops and OpenVINO layers listed")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [profile_network(n, args) for n in args.networks]
    sys.stdout.write(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, command: {' '.join(sys.argv)}\n"
    )
    sys.stdout.write("\n\n".join(report(r) for r in results) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
