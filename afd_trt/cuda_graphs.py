"""CUDA-graph replay of an engine's network, for the GPU serving path.

A network run eagerly launches one CUDA kernel per op from Python; at small batches the GPU
waits on those launches more than it computes. A CUDA graph records the launches once, at fixed
shapes and fixed addresses, and replays them with one launch. :class:`CudaGraphEngine` wraps an
eager engine (``torch`` or ``torchscript``, see :func:`supports_graphs`) and keeps one graph per
input shape.

Only the batch varies in practice: HRNetV2 crops are always 3x256x256, the Faster R-CNN box head
always takes 256x7x7 RoI features. The batch is padded up to a bucket (:func:`bucket_batch`), so a
handful of graphs serve every batch size; padding rows are zeros and their outputs are dropped.
Results agree with the eager engine within float rounding, not bit for bit: cuDNN may pick
different kernels for the padded batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .device_ops import is_out_of_memory, with_index
from .engines import Engine

__all__ = [
    "DEFAULT_BUCKETS",
    "GRAPHED_BACKENDS",
    "CudaGraphEngine",
    "bucket_batch",
    "empty_cache",
    "supports_graphs",
]

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Batch sizes graphs are captured at: powers of two, so padding at most doubles the work."""

GRAPHED_BACKENDS = ("torch", "torchscript")
"""Engines this wrapper captures. ONNX Runtime, TensorRT and OpenVINO run outside PyTorch's
allocator and streams (TensorRT has CUDA graphs of its own)."""

_CAPTURE_LOCK = threading.Lock()
"""One warm-up and capture at a time in the process, across all wrappers: captures must not
overlap, and a wrapper's side stream comes from PyTorch's small stream pool, so two wrappers can
share one."""


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` sorted and deduplicated; ValueError naming the value if empty or not positive."""
    if len(buckets) == 0:
        raise ValueError(f"buckets must not be empty, got {tuple(buckets)!r}")
    bad = [b for b in buckets if b < 1]
    if bad:
        raise ValueError(f"buckets must be positive, got {bad[0]!r} in {tuple(buckets)!r}")
    return tuple(sorted(set(buckets)))


def bucket_batch(n: int, buckets: Sequence[int]) -> int:
    """The batch size a batch of ``n`` is padded to: the smallest bucket >= ``n``.

    Beyond the largest bucket ``n`` itself is returned (no graph can take it; the caller runs
    eagerly). ``buckets`` need not be sorted.

    Raises:
        ValueError: ``n`` < 1, or ``buckets`` empty or holding a value < 1.
    """
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n!r}")
    return min((b for b in _check_buckets(buckets) if b >= n), default=n)


def supports_graphs(engine: Engine, device: torch.device) -> bool:
    """Whether :class:`CudaGraphEngine` can wrap ``engine`` on ``device``: a CUDA device and a
    PyTorch engine (:data:`GRAPHED_BACKENDS`) that is not already graphed."""
    return device.type == "cuda" and engine.name in GRAPHED_BACKENDS and not getattr(engine, "graphed", False)


class _Key(NamedTuple):
    """What a graph is specialised to: padded batch, the other input dims, dtype, layout."""

    batch: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool


@dataclass
class _Graph:
    """A captured graph and the tensors it reads and writes at fixed addresses.

    Attributes:
        graph: the captured graph.
        static_in: input buffer ``(batch, *shape)`` of the key's dtype and layout, on the device.
        static_outs: the inner engine's float32 outputs, each ``(batch, ...)``; overwritten on
            every replay of any graph of the wrapper (they share one memory pool).
    """

    graph: torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_outs: tuple[torch.Tensor, ...]


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out NHWC (and not also plain contiguous, as with C == 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _key_of(x: torch.Tensor, batch: int) -> _Key:
    return _Key(batch, tuple(x.shape[1:]), x.dtype, _is_channels_last(x))


def _describe(key: _Key) -> str:
    """``key`` for a log line, e.g. ``(4, 3, 256, 256) torch.float32 channels_last``."""
    layout = " channels_last" if key.channels_last else ""
    return f"{(key.batch, *key.shape)} {key.dtype}{layout}"


def _static_input(key: _Key, device: torch.device) -> torch.Tensor:
    """A zeroed input buffer for ``key`` on ``device``."""
    fmt = torch.channels_last if key.channels_last else torch.contiguous_format
    return torch.empty((key.batch, *key.shape), dtype=key.dtype, device=device, memory_format=fmt).zero_()


def empty_cache(device: torch.device) -> None:
    """``torch.cuda.empty_cache()``, but never while this module captures a CUDA graph in another
    thread: the caching allocator asserts that no capture is under way when it frees its blocks.
    Nothing for other devices."""
    if device.type != "cuda":
        return
    with _CAPTURE_LOCK, torch.cuda.device(device):
        torch.cuda.empty_cache()


def _clear_cublas_workspaces() -> None:
    """Drop PyTorch's cached cuBLAS workspaces (all streams), as torch.compile's CUDA-graph trees
    do around each capture.

    A capture reuses the workspace cached for its stream, which warm-up allocated from the
    ordinary allocator; a graph keeps its raw address. Cleared before capture, the captured
    invocation allocates its workspace from the graphs' private pool instead, which lives as long
    as any of this wrapper's graphs: destroying one graph (which in some PyTorch versions clears
    its stream's workspaces, pytorch/pytorch#193402) or anyone clearing the cache can then not
    pull a workspace out from under another live graph. Cleared after capture, so eager work on
    the side stream does not write into the pool.
    """
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def _abandon_capture(graph: torch.cuda.CUDAGraph, device: torch.device, pool: tuple[int, int]) -> None:
    """Clean up after a capture that raised. When the captured code fails, ``capture_end``
    raises before it tells the caching allocator to stop routing allocations into the graphs'
    pool, in PyTorch versions before the allocator tracked that itself: the pool then stays
    "being recorded", so a later capture into it fails ("already recording to mempool_id") and
    ``torch.cuda.empty_cache()`` asserts that no capture is under way. ``reset`` does this in
    newer versions; ending the recording by hand covers the older ones (and raises, ignored,
    where ``reset`` did it)."""
    with contextlib.suppress(Exception):
        graph.reset()
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    if end is not None and device.index is not None:
        with contextlib.suppress(Exception):
            end(device.index, pool)


def _error_text(e: BaseException) -> str:
    """``e`` and the exceptions it was raised while handling, innermost last: a failed capture
    surfaces as the end-of-capture error, raised while handling the op that broke it."""
    parts: list[str] = []
    cur: BaseException | None = e
    while cur is not None and len(parts) < 4:
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(parts)


class CudaGraphEngine:
    """Runs another engine's network by replaying CUDA graphs captured from it.

    Fixed-shape replay removes the per-kernel launch overhead of eager PyTorch. Graphs are
    specialised to an input shape, so the batch is padded up to the next of ``buckets``
    (:func:`bucket_batch`) and one graph is captured per (bucket, other input dims, dtype,
    layout) on first use: warm-up runs on a side stream, then capture of ``inner`` itself. Each
    call copies its input into the graph's static input (uploading it if it is on the host),
    zeroes the padding rows, replays, and returns copies of the first ``n`` output rows. Results
    agree with ``inner``'s within float rounding (cuDNN may choose other kernels for the padded
    batch). Batches larger than the largest bucket, and shapes whose capture failed, run
    ``inner`` eagerly.

    The wrapped network must take one tensor, return outputs whose first axis is the batch, and
    treat batch rows independently (eval-mode BatchNorm is fine): padding rows must not change
    real rows. It must also do the same work on every call for a given shape: anything decided on
    the host at capture time is frozen into the graph. Ops that cannot be captured (host syncs
    such as ``.item()``, ``.cpu()``, ``nonzero``) make the capture fail; that shape then runs
    eagerly, with one warning.

    Memory: all graphs of a wrapper share one private memory pool (their intermediates overlap),
    which is safe because calls are serialised by a lock and by a CUDA event (across streams),
    and outputs are copied out before the next replay. At most ``max_graphs`` graphs are kept;
    the least recently used is dropped beyond that (its memory goes back to the pool, for later
    captures, not to the device: the pool is freed with the wrapper).

    Thread-safe; calls from several threads (and streams) run one at a time. Returned tensors are
    new, on ``device``, float32, and ordered on the caller's current stream.

    Args:
        inner: the engine to capture, running on ``device``.
        device: a CUDA device.
        buckets: batch sizes to pad to (positive; any order).
        max_graphs: most graphs kept at once (>= 1).
        warmup: eager runs before each capture (>= 1): they initialise cuDNN/cuBLAS state and
            lazy buffers, which must not happen during capture.

    Raises:
        ValueError: ``device`` is not CUDA, ``inner`` runs on another device, or an argument is
            out of range (the message names the value).

    Attributes:
        name: ``inner``'s name (``"torch"``, ``"torchscript"``); ``graphed`` tells them apart.
        inner: the wrapped engine.
        device: the CUDA device the graphs run on (``inner``'s).
        buckets: the padded batch sizes, ascending.
    """

    graphed = True

    def __init__(
        self,
        inner: Engine,
        device: torch.device,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_graphs: int = 16,
        warmup: int = 3,
    ) -> None:
        self.buckets = _check_buckets(buckets)
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup!r}")
        if device.type != "cuda":
            raise ValueError(f"CudaGraphEngine runs on CUDA devices only, got device {device}")
        self.device = with_index(device)
        inner_device = with_index(inner.device)
        if inner_device != self.device:
            raise ValueError(
                f"CudaGraphEngine on {self.device}: the inner {inner.name!r} engine runs on {inner_device}"
            )
        self.inner = inner
        self.name = inner.name
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[_Key, _Graph] = OrderedDict()
        self._eager: set[_Key] = set()
        self._captures = 0
        self._lock = threading.Lock()
        self._pool = torch.cuda.graph_pool_handle()
        # High priority: not from the pool of low-priority streams torchvision's nvJPEG decoder
        # also draws from, whose host synchronisations would invalidate a capture on a shared one.
        self._stream = torch.cuda.Stream(self.device, priority=-1)  # type: ignore[no-untyped-call]
        # Recorded after each replay's output copies; the next call waits on it.
        self._done = torch.cuda.Event()  # type: ignore[no-untyped-call]

    @property
    def num_graphs(self) -> int:
        """Graphs held now (at most ``max_graphs``)."""
        return len(self._graphs)

    @property
    def captures(self) -> int:
        """Graphs captured so far, including evicted ones."""
        return self._captures

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the network on one input ``(n, ...)`` (any device, any ``n``); float32 outputs,
        each ``(n, ...)``, on :attr:`device`."""
        if len(inputs) != 1:
            raise ValueError(f"CudaGraphEngine runs single-input networks, got {len(inputs)} inputs")
        (x,) = inputs
        if x.dim() >= 1 and 1 <= x.shape[0] <= self.buckets[-1]:
            key = _key_of(x, next(b for b in self.buckets if b >= x.shape[0]))  # bucket_batch, checked
            with self._lock:
                graph = self._graph_for(key)
                if graph is not None:
                    return self._replay(graph, x)
        return self.inner(x)

    def _graph_for(self, key: _Key) -> _Graph | None:
        """The graph of ``key``, captured now if new; None where ``key`` runs eagerly. Holds
        ``self._lock``."""
        if key in self._eager:
            return None
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        try:
            graph = self._capture(key)
        except Exception as e:
            if is_out_of_memory(e):
                raise  # not the shape's fault: the caller may retry smaller (the Detector splits)
            self._eager.add(key)
            logger.warning(
                "%s engine: CUDA graph capture at input %s failed; running that shape eagerly (%s)",
                self.name,
                _describe(key),
                _error_text(e),
            )
            return None
        self._captures += 1
        self._graphs[key] = graph
        logger.debug("%s engine: captured a CUDA graph at input %s", self.name, _describe(key))
        if len(self._graphs) > self.max_graphs:
            # Before freeing an evicted graph's buffers, let its last replay finish (replays are
            # chained on this event, on whichever streams they ran).
            self._done.synchronize()
        while len(self._graphs) > self.max_graphs:
            old, _ = self._graphs.popitem(last=False)
            logger.debug("%s engine: dropped the CUDA graph at input %s (LRU)", self.name, _describe(old))
        return graph

    def _capture(self, key: _Key) -> _Graph:
        """Warm ``inner`` up at ``key``'s shape on the side stream, then capture it into the shared
        pool. Raises whatever warm-up or capture raised, or ValueError for outputs that are not
        batch-first."""
        with _CAPTURE_LOCK, torch.cuda.device(self.device), torch.inference_mode():
            caller = torch.cuda.current_stream(self.device)
            caller.wait_event(self._done)
            static_in = _static_input(key, self.device)
            side = self._stream
            side.wait_stream(caller)
            try:
                # The outer stream context restores the caller's stream even when a failed capture
                # leaves torch.cuda.graph's own context un-exited.
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        self.inner(static_in)
                    graph = torch.cuda.CUDAGraph()
                    _clear_cublas_workspaces()
                    try:
                        # thread_local: unsafe CUDA calls are errors in this thread only, not in
                        # other threads serving meanwhile (the default, "global", fails theirs).
                        with torch.cuda.graph(
                            graph, pool=self._pool, stream=side, capture_error_mode="thread_local"
                        ):
                            static_outs = self.inner(static_in)
                    except BaseException:
                        _abandon_capture(graph, self.device, self._pool)
                        self._pool = torch.cuda.graph_pool_handle()  # never begin a pool twice
                        raise
                    finally:
                        _clear_cublas_workspaces()
            finally:
                caller.wait_stream(side)
        not_batch_first = [tuple(o.shape) for o in static_outs if o.dim() == 0 or o.shape[0] != key.batch]
        if not_batch_first:
            raise ValueError(
                f"outputs {not_batch_first} do not all have the batch ({key.batch}) first; cannot pad it"
            )
        return _Graph(graph, static_in, static_outs)

    def _replay(self, graph: _Graph, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Copy ``x`` ``(n, ...)`` in, zero the padding rows, replay, copy the ``n`` output rows
        out, all on the caller's current stream. Holds ``self._lock``."""
        n = x.shape[0]
        with torch.cuda.device(self.device), torch.inference_mode():
            stream = torch.cuda.current_stream(self.device)
            # The previous call may have run on another stream: let it finish with the shared
            # buffers (static inputs, pool) before they are overwritten.
            stream.wait_event(self._done)
            # a host x is copied before returning: the caller may refill a pinned buffer at once
            graph.static_in[:n].copy_(x, non_blocking=x.is_cuda)
            if n < graph.static_in.shape[0]:
                graph.static_in[n:].zero_()
            graph.graph.replay()
            outs = tuple(o[:n].clone() for o in graph.static_outs)
            self._done.record(stream)
        return outs
