"""afd_trt.cuda_graphs: batch bucketing, argument checks, and (on a CUDA GPU) graph replay against
the eager engine it wraps.

Deviation is ``max |graphed - eager| / max |eager|`` per output; graphed runs pad the batch, so
cuDNN may pick other kernels than for the eager batch: within 1e-5 with TF32 off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from images import tadne_crop
from keypoints import assert_keypoints_close
from torch import nn

import afd_trt
from afd_trt.cuda_graphs import DEFAULT_BUCKETS, CudaGraphEngine, bucket_batch, supports_graphs
from afd_trt.engines import NetworkIO, TorchEngine, TorchScriptEngine, optimize_torchscript, trace_torchscript

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
TOL = 1e-5
SHAPE = (3, 20, 20)  # input (C, H, W) of the test network
LOGGER = "afd_trt.cuda_graphs"


def _reference_bucket(n: int, buckets: tuple[int, ...]) -> int:
    return min((b for b in buckets if b >= n), default=n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 100, 128, 129, 1000])
@pytest.mark.parametrize("buckets", [DEFAULT_BUCKETS, (4, 1, 16), (3,), (1, 1, 2)])
def test_bucket_batch(n: int, buckets: tuple[int, ...]) -> None:
    got = bucket_batch(n, buckets)
    assert got == _reference_bucket(n, buckets)
    assert got >= n
    assert got == n or got in buckets


@pytest.mark.parametrize(
    ("n", "buckets", "match"),
    [
        (0, DEFAULT_BUCKETS, "got 0"),
        (-3, DEFAULT_BUCKETS, "got -3"),
        (1, (), r"empty, got \(\)"),
        (1, (1, 0, 4), "got 0 in"),
        (5, (8, -2), "got -2 in"),
    ],
)
def test_bucket_batch_input_errors(n: int, buckets: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bucket_batch(n, buckets)


def _tiny_engine(device: torch.device = CPU) -> TorchEngine:
    torch.manual_seed(0)
    return TorchEngine(nn.Conv2d(3, 4, 3), device)


def test_refuses_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="cpu"):
        CudaGraphEngine(_tiny_engine(), CPU)


def test_refuses_an_inner_engine_on_another_device() -> None:
    # An explicit index: the check needs no GPU.
    with pytest.raises(ValueError, match=r"cuda:0.*runs on cpu"):
        CudaGraphEngine(_tiny_engine(), torch.device("cuda", 0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_graphs": 0}, "max_graphs must be >= 1, got 0"),
        ({"warmup": 0}, "warmup must be >= 1, got 0"),
        ({"buckets": ()}, "buckets must not be empty"),
        ({"buckets": (2, 0)}, "got 0 in"),
    ],
)
def test_argument_errors(kwargs: dict[str, object], match: str) -> None:
    # Arguments are checked before the device, so this runs without a GPU.
    with pytest.raises(ValueError, match=match):
        CudaGraphEngine(_tiny_engine(), CUDA, **kwargs)


@dataclass
class _ForeignEngine:
    """Stands in for an engine of another runtime (only its name matters here)."""

    name: str
    device: torch.device = CUDA

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


def test_supports_graphs() -> None:
    engine = _tiny_engine()
    assert supports_graphs(engine, CUDA)
    assert supports_graphs(engine, torch.device("cuda", 1))
    io = NetworkIO("x", ("y",), (0,), (0,), (1, 3, 8, 8))
    torch.manual_seed(0)
    scripted = TorchScriptEngine(trace_torchscript(nn.Conv2d(3, 4, 3), io, CPU), CPU)
    assert supports_graphs(scripted, CUDA)
    assert not supports_graphs(scripted, CPU)
    assert not supports_graphs(engine, CPU)
    for name in ("onnxruntime", "tensorrt", "openvino"):
        assert not supports_graphs(_ForeignEngine(name), CUDA)


# CUDA
# ---------------------------------------------------------------------------------------------


class _TwoHeads(nn.Module):
    """Conv -> BN -> ReLU -> 1x1 conv, returning the map ``(n, 4, 18, 18)`` and its spatial mean
    ``(n, 4)``: two outputs, both batch-first, rows independent."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        return y, y.mean(dim=(2, 3))


class _SyncsOnHost(_TwoHeads):
    """The same network, but it reads a value back to the host (``.item()``), which cannot be
    captured into a CUDA graph; the value does not change the result."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, m = super().forward(x)
        return y * (1.0 + 0.0 * float(m.sum().item())), m


class _SyncsOnHostAtBatch4(_TwoHeads):
    """Reads a value back to the host at batch 4 only: that bucket cannot be captured, the
    others can."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, m = super().forward(x)
        if x.shape[0] == 4:
            y = y * (1.0 + 0.0 * float(m.sum().item()))
        return y, m


def _net(cls: type[_TwoHeads] = _TwoHeads, seed: int = 0) -> _TwoHeads:
    torch.manual_seed(seed)
    net = cls()
    bn = net.body[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _inputs(n: int, seed: int = 1, device: torch.device = CUDA) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000 * n)
    return torch.randn((n, *SHAPE), generator=g).to(device)


def _deviation(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype == torch.float32
        assert g.device.type == "cuda"
        scale = float(w.abs().max()) or 1.0
        worst = max(worst, float((g - w).abs().max()) / scale)
    return worst


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("n", [1, 3, 8, 17])
def test_graphed_matches_eager(n: int) -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    assert graphed.name == "torch"
    assert graphed.graphed
    assert graphed.inner is eager
    assert not supports_graphs(graphed, CUDA)
    x = _inputs(n)
    got = graphed(x)
    assert graphed.captures == 1
    assert _deviation(got, eager(x)) < TOL


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_graphs_are_reused_per_bucket() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    x3, x3b, x4, x5 = _inputs(3), _inputs(3, seed=2), _inputs(4), _inputs(5)
    first = graphed(x3)
    assert (graphed.captures, graphed.num_graphs) == (1, 1)
    second = graphed(x3b)
    assert (graphed.captures, graphed.num_graphs) == (1, 1)
    # Outputs are copies: the second replay did not overwrite the first call's results.
    assert _deviation(first, eager(x3)) < TOL
    assert _deviation(second, eager(x3b)) < TOL
    assert _deviation(graphed(x4), eager(x4)) < TOL  # bucket 4 again, unpadded
    assert graphed.captures == 1
    assert _deviation(graphed(x5), eager(x5)) < TOL  # bucket 8
    assert (graphed.captures, graphed.num_graphs) == (2, 2)


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_host_input_is_uploaded() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    x = _inputs(5, device=CPU)
    assert _deviation(graphed(x), eager(x.to(CUDA))) < TOL
    pinned = _inputs(6, device=CPU).pin_memory()
    assert _deviation(graphed(pinned), eager(pinned.to(CUDA))) < TOL
    assert graphed.captures == 1


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_channels_last_input() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    x = _inputs(3).contiguous(memory_format=torch.channels_last)
    assert _deviation(graphed(x), eager(x)) < TOL
    # A plain-layout input of the same shape gets a graph of its own.
    y = _inputs(3, seed=5)
    assert _deviation(graphed(y), eager(y)) < TOL
    assert graphed.captures == 2


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_lru_eviction() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA, max_graphs=2)
    for round_ in range(2):
        for n in (1, 2, 3):  # buckets 1, 2, 4: three graphs, room for two
            x = _inputs(n, seed=round_)
            assert _deviation(graphed(x), eager(x)) < TOL
            assert graphed.num_graphs <= 2
    assert graphed.captures == 6  # cycling through three keys with room for two: every call misses
    x = _inputs(3, seed=7)
    assert _deviation(graphed(x), eager(x)) < TOL
    assert graphed.captures == 6  # the most recent one is kept


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_batch_beyond_the_largest_bucket_runs_eagerly() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA, buckets=(1, 2))
    x = _inputs(3)
    assert _deviation(graphed(x), eager(x)) < TOL
    assert graphed.captures == 0


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_capture_failure_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    eager = TorchEngine(_net(_SyncsOnHost), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    x = _inputs(3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = graphed(x)
    assert _deviation(got, eager(x)) < TOL
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "(4, 3, 20, 20)" in warnings[0].getMessage()
    assert (graphed.captures, graphed.num_graphs) == (0, 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = graphed(x)
    assert _deviation(again, eager(x)) < TOL
    assert not [r for r in caplog.records if r.name == LOGGER]  # warned once per shape
    # The failed capture left CUDA usable: a capturable network still graphs fine.
    good = TorchEngine(_net(), CUDA)
    good_graphed = CudaGraphEngine(good, CUDA)
    assert _deviation(good_graphed(x), good(x)) < TOL
    assert good_graphed.captures == 1


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_failed_capture_leaves_the_wrapper_and_the_allocator_usable() -> None:
    """After one bucket's capture fails, the same wrapper still captures its other buckets (the
    graphs' memory pool is not left "being recorded"), and the caching allocator accepts
    ``empty_cache``, which asserts that no capture is under way."""
    eager = TorchEngine(_net(_SyncsOnHostAtBatch4), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    x3, x7, x2 = _inputs(3), _inputs(7), _inputs(2)
    assert _deviation(graphed(x3), eager(x3)) < TOL  # bucket 4: capture fails, runs eagerly
    assert graphed.captures == 0
    torch.cuda.empty_cache()
    assert _deviation(graphed(x7), eager(x7)) < TOL  # bucket 8
    assert _deviation(graphed(x2), eager(x2)) < TOL  # bucket 2
    assert (graphed.captures, graphed.num_graphs) == (2, 2)
    torch.cuda.empty_cache()
    assert _deviation(graphed(x7), eager(x7)) < TOL  # replayed after empty_cache


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_torchscript_engine() -> None:
    io = NetworkIO("x", ("map", "mean"), (0,), (0,), (2, *SHAPE))
    module = optimize_torchscript(trace_torchscript(_net(), io, CUDA), CUDA)
    eager = TorchScriptEngine(module, CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    assert graphed.name == "torchscript"
    for n in (1, 3, 3, 8):
        x = _inputs(n)
        assert _deviation(graphed(x), eager(x)) < TOL


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
def test_concurrent_callers_on_their_own_streams() -> None:
    eager = TorchEngine(_net(), CUDA)
    graphed = CudaGraphEngine(eager, CUDA)
    sizes = (1, 3, 5, 8)
    xs = {n: _inputs(n) for n in sizes}
    want = {n: eager(xs[n]) for n in sizes}
    torch.cuda.synchronize(CUDA)  # the threads' streams do not wait for this one
    results: list[tuple[int, tuple[torch.Tensor, ...]]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream(CUDA)):
                for i in range(12):
                    n = sizes[(i + offset) % len(sizes)]
                    results.append((n, graphed(xs[n])))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize(CUDA)
    assert not errors
    assert len(results) == 48
    for n, got in results:
        assert _deviation(got, want[n]) < TOL


# -- through the Detector -----------------------------------------------------------------------


def test_detector_refuses_cuda_graphs_off_cuda(
    seeded_weights: Callable[[int], dict[str, dict[str, Path]]],
) -> None:
    w = seeded_weights(0)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device, got device cpu"):
        afd_trt.Detector("yolov3", w["yolov3"]["pth"], w["hrnetv2"]["pth"], device="cpu", cuda_graphs=True)


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("face_detector", ["yolov3", "faster-rcnn"])
def test_detector_with_cuda_graphs_agrees(
    seeded_weights: Callable[[int], dict[str, dict[str, Path]]], face_detector: str
) -> None:
    """Graph replay of every network (HRNetV2 batches padded to buckets) gives the eager GPU
    pipeline's faces within the core tolerances, over images of several sizes and a batch: the
    same faces and boxes, and on those boxes the same keypoints (the padded batch may pick other
    kernels, so the heatmaps differ in their last bits: compared as tests/keypoints.py says)."""
    w = seeded_weights(0)
    kw: dict[str, Any] = {"device": "cuda"}
    eager = afd_trt.Detector(face_detector, w[face_detector]["pth"], w["hrnetv2"]["pth"], **kw)
    graphed = afd_trt.Detector(
        face_detector, w[face_detector]["pth"], w["hrnetv2"]["pth"], cuda_graphs=True, **kw
    )
    assert isinstance(graphed.landmarks.engine, CudaGraphEngine)
    images = [tadne_crop(0, 0, 1280, 720), tadne_crop(1024, 512, 517, 389), tadne_crop(2000, 2000, 640, 640)]
    want = eager.detect_batch(images)
    assert sum(len(faces) for faces in want) > 0
    for w_faces, g_faces in zip(want, graphed.detect_batch(images), strict=True):
        assert len(g_faces) == len(w_faces)
        for a, b in zip(w_faces, g_faces, strict=True):
            np.testing.assert_allclose(b["bbox"], a["bbox"], rtol=0, atol=1e-3)
    on_map = off_map = 0
    same_boxes = [[f["bbox"] for f in faces] for faces in want]
    for w_faces, g_faces in zip(want, graphed.detect_batch(images, boxes=same_boxes), strict=True):
        for a, b in zip(w_faces, g_faces, strict=True):
            np.testing.assert_allclose(b["keypoints"][:, 2], a["keypoints"][:, 2], rtol=0, atol=1e-4)
            on, off = assert_keypoints_close(b["keypoints"], a["keypoints"], a["bbox"])
            on_map, off_map = on_map + on, off_map + off
    assert off_map <= 0.02 * (on_map + off_map), f"{off_map} of {on_map + off_map} keypoints off the heatmap"
    assert graphed.landmarks.engine.captures >= 1
