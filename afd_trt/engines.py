"""Network runners behind one small Protocol, chosen by name from a plain dict.

An engine runs one network: a float32 tensor in, a flat tuple of float32 tensors out (nested model
outputs are flattened depth-first, in :data:`NETWORKS`' output order). The pipelines never know
which backend runs. Backends (:data:`ENGINES`):

- ``torch``: the eager module (fp32; bf16 on CPU and CUDA; fp16 on CUDA).
- ``torchscript``: traced, ``torch.jit.freeze``-d, saved in the engine cache; CPU and CUDA; bf16,
  and fp16 on CUDA. On the CPU at fp32 it gives eager's (so upstream's) bits: the freeze keeps
  every operation as written (:func:`trace_torchscript`). Elsewhere it folds BatchNorms into the
  convolutions, and on CUDA ``optimize_for_inference`` fuses further.

Reduced precisions (``bf16``, ``fp16``) are opt-in: weights and activations in that type,
outputs returned as float32; results then deviate from upstream's fp32 (``afd-trt bench
--compare-upstream`` reports by how much). bf16 on a CPU is fast only with AVX512-BF16 or AMX.
- ``onnxruntime``: ONNX (opset 17, dynamic batch / height / width / RoI count, checked with
  ``onnx.checker``) run by ONNX Runtime (CPU; on a GPU its CUDA provider, behind its TensorRT
  provider over the config's profile where that is installed); fp32.
- ``openvino``: the same ONNX model compiled by OpenVINO for this CPU; fp32, and bf16 on CPUs with
  AVX512-BF16/AMX (``pip install 'afd_trt[openvino]'``). Measured fastest on the 2-core
  AVX512-BF16 development CPU (docs/benchmarks.md).
- ``tensorrt``: the ONNX model built into a TensorRT plan (10.x or 11.x) with the config's
  optimisation profile; CUDA only, fp32 or fp16. Plans are strongly typed (the only kind TensorRT
  11 builds): an fp16 plan comes from an fp16 export of the network (:func:`export_onnx`).

A network's ONNX model is exported once into the cache (:func:`cached_onnx`) and shared: ONNX
Runtime and OpenVINO load the fp32 file on any device and precision, TensorRT builds its plans
from the fp32 or the fp16 file.

``"auto"`` picks the fastest available per network and device (:func:`resolve_backend`). Built
engines live in an :class:`~afd_trt.engine_cache.EngineCache`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from .config import ModelConfig, ShapeProfile, config_hash
from .device_ops import with_index
from .engine_cache import (
    CACHE_FORMAT,
    EngineCache,
    EngineKey,
    EngineMismatchError,
    device_tag,
    state_dict_sha256,
)
from .weights import sha256_file

__all__ = [
    "AUTO_CPU",
    "BACKENDS",
    "ENGINES",
    "NETWORKS",
    "ONNX_PRECISIONS",
    "PRECISIONS",
    "BackendUnavailableError",
    "Engine",
    "Network",
    "NetworkIO",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "TensorRTEngine",
    "TorchEngine",
    "TorchScriptEngine",
    "build_tensorrt_plan",
    "cached_onnx",
    "create_engine",
    "current_runtimes",
    "engine_metadata",
    "exact_torchscript",
    "export_onnx",
    "flatten_outputs",
    "keeps_eager_arithmetic",
    "load_engine_file",
    "machine_device_tags",
    "networks_of",
    "onnx_key",
    "optimize_torchscript",
    "ort_providers",
    "resolve_backend",
    "strongly_typed_network_flags",
    "trace_torchscript",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
ONNX_OPSET = 17
ONNX_PRECISIONS = ("fp32", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine(Protocol):
    """Runs one network on a device."""

    name: str
    device: torch.device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


class BackendUnavailableError(RuntimeError):
    """A backend's runtime is not installed, or cannot run on the requested device/precision."""


def flatten_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    """Flatten nested tuples/lists of tensors depth-first into one tuple."""
    if isinstance(out, torch.Tensor):
        return (out,)
    flat: list[torch.Tensor] = []
    for item in out:
        flat.extend(flatten_outputs(item))
    return tuple(flat)


# Networks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkIO:
    """How a network is traced and exported.

    Attributes:
        input_name: name of the single input (also the key of its ``[engine.profiles.*]`` table).
        output_names: names of the flattened outputs, in order.
        input_dynamic: input axes that vary (batch, and height/width for the detectors).
        output_dynamic: axes of every output that vary.
        example_shape: input shape used for tracing/export (any valid shape works).
    """

    input_name: str
    output_names: tuple[str, ...]
    input_dynamic: tuple[int, ...]
    output_dynamic: tuple[int, ...]
    example_shape: tuple[int, ...]


_FPN = ("p2", "p3", "p4", "p5", "p6")
NETWORKS: dict[str, NetworkIO] = {
    "yolov3": NetworkIO("image", ("head_s32", "head_s16", "head_s8"), (0, 2, 3), (0, 2, 3), (1, 3, 320, 320)),
    "faster-rcnn": NetworkIO(
        "image",
        tuple(f"feat_{p}" for p in _FPN[:4])
        + tuple(f"rpn_cls_{p}" for p in _FPN)
        + tuple(f"rpn_reg_{p}" for p in _FPN),
        (0, 2, 3),
        (0, 2, 3),
        (1, 3, 256, 256),
    ),
    "faster-rcnn-box-head": NetworkIO("rois", ("cls", "reg"), (0,), (0,), (8, 256, 7, 7)),
    "hrnetv2": NetworkIO("crops", ("heatmaps",), (0,), (0,), (2, 3, 256, 256)),
}
"""Every network an engine can run: the three models, Faster R-CNN split into its two stages."""


@dataclass
class Network:
    """One network to run: its name (a key of :data:`NETWORKS`), eval-mode module and model config.

    The config gives the cache key's config hash and the TensorRT profile of the input; the
    weights' digest (:func:`~afd_trt.engine_cache.state_dict_sha256`) is computed on first use.
    """

    name: str
    module: nn.Module
    config: ModelConfig | None = None

    def __post_init__(self) -> None:
        if self.name not in NETWORKS:
            raise ValueError(f"network name must be one of {sorted(NETWORKS)}, got {self.name!r}")

    @property
    def io(self) -> NetworkIO:
        return NETWORKS[self.name]

    @functools.cached_property
    def weights_sha256(self) -> str:
        return state_dict_sha256(self.module)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config) if self.config is not None else "none"

    def profile(self) -> ShapeProfile | None:
        """The config's TensorRT optimisation profile of this network's input."""
        return self.config.engine.profile(self.io.input_name) if self.config is not None else None


def networks_of(model: str, module: nn.Module, config: ModelConfig | None = None) -> list[Network]:
    """The networks engines are built for from one model: Faster R-CNN gives its stage 1 and its
    box head (``module.roi_head.bbox_head``), the others themselves."""
    if model == "faster-rcnn":
        head = module.get_submodule("roi_head.bbox_head")
        return [Network("faster-rcnn", module, config), Network("faster-rcnn-box-head", head, config)]
    return [Network(model, module, config)]


# Building: TorchScript, ONNX, TensorRT
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch.jit / the TorchScript-based ONNX exporter warn that they are deprecated, and the
    tracer about shape arithmetic it records on purpose; neither is actionable here."""
    with warnings.catch_warnings():
        for cat in (FutureWarning, DeprecationWarning, torch.jit.TracerWarning):  # type: ignore[attr-defined]
            warnings.simplefilter("ignore", cat)
        yield


def exact_torchscript(device: torch.device, precision: str) -> bool:
    """Whether TorchScript keeps eager's arithmetic on ``device`` at ``precision``: on the CPU at
    fp32, the precision that reproduces upstream. Folding BatchNorm into the convolution weights
    moves outputs by about 2e-6 relative, which shifts the boxes by about 5e-4 px; the face crops
    are warped from uint8 pixels, so that changes crop pixels and, with weights whose heatmap peaks
    are nearly tied (seeded test weights), keypoints by up to hundreds of pixels. Kept as written,
    the frozen graph runs eager's kernels and was bit-equal to eager for every network (2-core
    AVX512 CPU, 2026-12-04: HRNetV2 on 16 channels-last crops 1.44 s, against 1.65 s folded and
    optimised for inference as before; YOLOv3 608x352 0.43 s against 0.40 s folded)."""
    return device.type == "cpu" and precision == "fp32"


def keeps_eager_arithmetic(backend: str, device: torch.device, precision: str) -> bool:
    """Whether engines of ``backend`` (a resolved name, not ``"auto"``) compute exactly what the
    eager module does on ``device`` at ``precision``: eager itself, and TorchScript where
    :func:`exact_torchscript`. Only on the CPU at fp32 is eager upstream's arithmetic, so only
    there does it matter (the pipeline then keeps upstream's batch composition too)."""
    if backend == "torchscript":
        return exact_torchscript(device, precision)
    return backend == "torch" and device.type == "cpu" and precision == "fp32"


def _optimize(device: torch.device) -> bool:
    """``torch.jit.optimize_for_inference`` on CUDA only: on the CPU it was measured no faster at
    bf16 and slower at fp32 (HRNetV2 on channels-last crops 1.65 s against 1.21 s folded only)."""
    return device.type == "cuda"


def trace_torchscript(
    module: nn.Module, io: NetworkIO, device: torch.device, precision: str = "fp32"
) -> torch.jit.ScriptModule:
    """Trace ``module`` on ``device`` at ``precision`` and freeze it: parameters become constants,
    and BatchNorms are folded into the convolutions except where :func:`exact_torchscript` keeps
    eager's arithmetic. Shapes are recorded symbolically, so the result runs at other batch sizes
    and image sizes. :func:`optimize_torchscript` is applied after loading (on CUDA)."""
    dtype = _DTYPES[precision]
    # A copy: ``nn.Module.to`` moves the module itself, and the caller's (a Network's, an eager
    # engine's) must stay on its device and dtype.
    module = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
    if dtype != torch.float32:
        module = module.to(memory_format=torch.channels_last)  # as TorchEngine: see there
    example = _engine_input(torch.zeros(io.example_shape), device, dtype)
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
        frozen = torch.jit.freeze(traced, optimize_numerics=not exact_torchscript(device, precision))
        return cast(torch.jit.ScriptModule, frozen)


def optimize_torchscript(module: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """``torch.jit.optimize_for_inference`` where it helps (:func:`_optimize`)."""
    if not _optimize(device):
        return module
    with _quiet_export():
        return torch.jit.optimize_for_inference(module)


class _HalfInside(nn.Module):
    """``module`` in float16 behind a float32 input and float32 outputs (flattened).

    Its ONNX export is a strongly typed fp16 network: float16 weights, every layer in float16,
    a Cast after the input and before each output, as TensorRT 11 wants them (it dropped the
    fp16 builder flag of TensorRT 10's weakly typed networks)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).to(torch.float16).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o.float() for o in flatten_outputs(self.inner(x.to(torch.float16))))


_HALF_TRACE_SIDE = 64
"""Pixels: the smallest height and width at which every level of both detectors exists (strides
up to 64, Faster R-CNN's p6)."""


def export_shape(io: NetworkIO, precision: str) -> tuple[int, ...]:
    """The input shape traced for the ONNX export at ``precision``: ``io.example_shape``, except
    that at fp16 the dynamic height and width are cut to 64 px. The traced values are thrown away,
    and torch computes float16 convolutions on the CPU in scalar code: tracing Faster R-CNN's stage
    1 at 256x256 took 42 s, YOLOv3 at 320x320 15 s, against about a second each at 64x64. Static
    axes (HRNetV2's crop size) and the batch keep their example size."""
    if precision != "fp16":
        return io.example_shape
    return tuple(
        min(n, _HALF_TRACE_SIDE) if axis >= 2 and axis in io.input_dynamic else n
        for axis, n in enumerate(io.example_shape)
    )


def export_onnx(
    module: nn.Module, io: NetworkIO, path: Path, opset: int = ONNX_OPSET, precision: str = "fp32"
) -> None:
    """Export ``module`` to ONNX at ``path`` with the dynamic axes of ``io``; the result is
    checked with ``onnx.checker``. Uses the TorchScript-based exporter (no onnxscript needed).

    ``precision``: ``"fp32"``, or ``"fp16"``: float16 weights and arithmetic between a float32
    input and float32 outputs (traced on the module's device; torch runs float16 on the CPU too).
    """
    import onnx

    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
    if precision == "fp16":
        module = _HalfInside(module)
    dev = next(module.parameters()).device
    example = torch.zeros(export_shape(io, precision), device=dev)
    dynamic = {io.input_name: {a: f"{io.input_name}_{a}" for a in io.input_dynamic}}
    dynamic.update({n: {a: f"{n}_{a}" for a in io.output_dynamic} for n in io.output_names})
    with _quiet_export():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[io.input_name],
            output_names=list(io.output_names),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)


def _tensorrt() -> Any:
    """The ``tensorrt`` module (10.x), or :class:`BackendUnavailableError` saying why not."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            "backend 'tensorrt' needs NVIDIA TensorRT >= 10 for Python (pip install tensorrt) and a CUDA GPU"
        ) from e
    if int(str(trt.__version__).split(".")[0]) < 10:
        raise BackendUnavailableError(f"backend 'tensorrt' needs TensorRT >= 10, found {trt.__version__}")
    return trt


_TRT_LOGGER: list[Any] = []


def _tensorrt_logger(trt: Any) -> Any:
    """The process's one ``trt.Logger``: TensorRT keeps the first logger it is given and warns
    about every builder or runtime created with another."""
    if not _TRT_LOGGER:
        _TRT_LOGGER.append(trt.Logger(trt.Logger.WARNING))
    return _TRT_LOGGER[0]


def strongly_typed_network_flags(tensorrt_version: str, strongly_typed_flag: int | None) -> int:
    """The ``create_network`` flags of a strongly typed network: TensorRT 11 builds nothing else
    (0, its default), TensorRT 10 sets ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
    (``strongly_typed_flag``, the enum's int value; None where the binding lacks it)."""
    major = int(tensorrt_version.split(".")[0])
    if major >= 11:
        return 0
    if strongly_typed_flag is None:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt_version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED; install TensorRT >= 10"
        )
    return 1 << strongly_typed_flag


def build_tensorrt_plan(
    onnx_path: Path, input_name: str, profile: ShapeProfile, workspace_bytes: int = 4 << 30
) -> bytes:
    """Build a serialized TensorRT plan from an ONNX model with one optimisation profile.

    The network is strongly typed: it runs in the types of the ONNX model (an fp16 plan comes from
    an fp16 export, :func:`export_onnx`), the same on TensorRT 10 and 11.

    Args:
        profile: min/opt/max shapes of ``input_name``.
    """
    trt = _tensorrt()
    log = _tensorrt_logger(trt)
    builder = trt.Builder(log)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(
        strongly_typed_network_flags(str(trt.__version__), None if flag is None else int(flag))
    )
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(plan)


# Runners
# ---------------------------------------------------------------------------------------------


def _as_float32(outs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(o if o.dtype == torch.float32 else o.float() for o in outs)


def _engine_input(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on ``device`` in ``dtype``; a 4-D ``x`` channels-last at reduced precision.

    Reduced precision is opt-in and not bit-exact anyway, so it takes the layout the fast kernels
    want: oneDNN's bf16 and the GPUs' fp16/bf16 tensor-core convolutions run NHWC (measured on
    the 2-core AVX512-BF16 CPU, TorchScript bf16 YOLOv3 at 608x352: 227 -> 204 ms per image).
    fp32 keeps upstream's layout, for upstream's bits.
    """
    if dtype != torch.float32 and x.dim() == 4:
        return x.to(device, dtype, memory_format=torch.channels_last)
    return x.to(device, dtype)


def _must_move(module: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``module.to(device, dtype)`` would change any parameter or buffer of ``module``
    (``device`` with its index)."""
    tensors = [*module.parameters(), *module.buffers()]
    return any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors)


class TorchEngine:
    """Eager PyTorch: the module as written, in eval mode under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, module: nn.Module, device: torch.device, precision: str = "fp32") -> None:
        self.dtype = _DTYPES[precision]
        if self.dtype != torch.float32:
            # Reduced precision is opt-in and not bit-exact anyway, so take the faster layout:
            # channels-last weights (measured on the 2-core AVX512-BF16 CPU: HRNetV2 26.0 -> 23.5
            # ms per crop, YOLOv3 608x352 127 -> 109 ms). fp32 keeps upstream's layout (exactness).
            module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        elif _must_move(module, with_index(device), self.dtype):
            # the caller's module stays where it is: an engine for another device made from it
            # later would otherwise move this engine's weights away under it
            module = copy.deepcopy(module)
        self.module = module.to(device=device, dtype=self.dtype).eval()
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            outs = self.module(*(_engine_input(x, self.device, self.dtype) for x in inputs))
            return _as_float32(flatten_outputs(outs))


class TorchScriptEngine:
    """A frozen TorchScript module (see :func:`trace_torchscript`)."""

    name = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, device: torch.device, precision: str = "fp32") -> None:
        self.module = module
        self.device = device
        self.dtype = _DTYPES[precision]

    @classmethod
    def load(
        cls, path: Path, io: NetworkIO, device: torch.device, precision: str = "fp32"
    ) -> TorchScriptEngine:
        """Load a file saved from :func:`trace_torchscript` and optimise it for ``device``."""
        with _quiet_export():
            module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        return cls(optimize_torchscript(module, device), device, precision)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            outs = self.module(*(_engine_input(x, self.device, self.dtype) for x in inputs))
            return _as_float32(flatten_outputs(outs))


Provider = str | tuple[str, dict[str, str]]


def _shape_option(input_name: str, shape: tuple[int, ...]) -> str:
    return f"{input_name}:{'x'.join(str(d) for d in shape)}"


def ort_providers(
    device: torch.device,
    available: list[str],
    trt_profile: tuple[str, ShapeProfile] | None = None,
    trt_cache_dir: Path | None = None,
) -> list[Provider]:
    """ONNX Runtime's execution providers for ``device``, best first.

    CPU: the CPU provider. CUDA: the CUDA provider (needs onnxruntime-gpu: ``available``, ONNX
    Runtime's ``get_available_providers()``, must list it), preceded by the TensorRT provider where
    it is available and ``trt_profile`` (input name, profile from the model config) is given: with
    the profile's min/opt/max shapes, so one TensorRT engine serves every input shape (without them
    it would build one per new shape), cached in ``trt_cache_dir``.
    """
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"backend 'onnxruntime' on {device}: this onnxruntime has no CUDAExecutionProvider "
            f"(providers: {available}); install onnxruntime-gpu"
        )
    index = str(device.index or 0)
    providers: list[Provider] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" in available and trt_profile is not None:
        name, profile = trt_profile
        options = {
            "device_id": index,
            "trt_profile_min_shapes": _shape_option(name, profile.min),
            "trt_profile_opt_shapes": _shape_option(name, profile.opt),
            "trt_profile_max_shapes": _shape_option(name, profile.max),
        }
        if trt_cache_dir is not None:
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt_cache_dir))
        providers.insert(0, ("TensorrtExecutionProvider", options))
    return providers


def _cuda_device_id(session: Any) -> str | None:
    """The ``device_id`` an ONNX Runtime session's CUDA provider runs on (None without it)."""
    options: dict[str, dict[str, str]] = session.get_provider_options()
    return options.get("CUDAExecutionProvider", {}).get("device_id")


class OnnxRuntimeEngine:
    """An ONNX model in an ONNX Runtime session: the CPU provider, or on a GPU device the CUDA
    provider, behind the TensorRT provider where installed (:func:`ort_providers`).

    ``threads``: intra-op threads; None follows ``torch.get_num_threads()`` so both runtimes
    share one setting. ``trt_profile``/``trt_cache_dir``: the input's TensorRT optimisation
    profile and where ONNX Runtime's TensorRT provider caches its engines (no TensorRT provider
    without a profile). ``providers``: those the session runs with.

    Tensors go through host memory (numpy) both ways; outputs come back on ``device``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | Path | bytes,
        device: torch.device,
        threads: int | None = None,
        trt_profile: tuple[str, ShapeProfile] | None = None,
        trt_cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        device = with_index(device)  # ONNX Runtime's device_id: the GPU torch means by "cuda"
        providers = ort_providers(device, ort.get_available_providers(), trt_profile, trt_cache_dir)
        first = providers[0]
        if trt_cache_dir is not None and isinstance(first, tuple) and first[0] == "TensorrtExecutionProvider":
            trt_cache_dir.mkdir(parents=True, exist_ok=True)  # ONNX Runtime's engine cache
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=providers)
        if device.type == "cuda" and _cuda_device_id(self.session) not in (None, str(device.index)):
            # A provider failed to start and ONNX Runtime retried by itself with CUDA and CPU but
            # without any provider's options, so on GPU 0: start again, on ours, without TensorRT.
            logger.warning(
                "onnxruntime on %s: its TensorRT provider did not start; running on the CUDA provider", device
            )
            providers = [
                p for p in providers if not (isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider")
            ]
            self.session = ort.InferenceSession(source, opts, providers=providers)
        self.providers: list[str] = list(self.session.get_providers())
        if device.type == "cuda":
            logger.info("onnxruntime on %s: providers %s", device, self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {
            n: x.detach().to("cpu", torch.float32).contiguous().numpy()
            for n, x in zip(self.input_names, inputs, strict=True)
        }
        outs = self.session.run(None, feed)
        return tuple(torch.from_numpy(o).to(self.device) for o in outs)


class OpenVinoEngine:
    """An ONNX model compiled by OpenVINO for this CPU.

    ``precision``: ``"fp32"`` (OpenVINO's ``f32`` inference precision, stated explicitly: on CPUs
    with bf16 support OpenVINO would otherwise run in bf16) or ``"bf16"``. ``threads``: inference
    threads; None follows ``torch.get_num_threads()``. One infer request, used under a lock, so the
    engine may be called from several threads; outputs are copied out of OpenVINO's buffers.
    """

    name = "openvino"

    def __init__(
        self, model: str | Path, device: torch.device, precision: str = "fp32", threads: int | None = None
    ) -> None:
        import openvino as ov

        if device.type != "cpu":
            raise BackendUnavailableError(f"backend 'openvino' runs on the CPU, got {device}")
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            "INFERENCE_NUM_THREADS": torch.get_num_threads() if threads is None else threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = ov.Core().compile_model(str(model), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {i: x.detach().to("cpu", torch.float32).contiguous().numpy() for i, x in enumerate(inputs)}
        with self._lock:
            results = self._request.infer(feed)
            return tuple(torch.from_numpy(np.array(results[o], copy=True)) for o in self.compiled.outputs)


_TRT_ALIGNMENT = 256  # bytes: TensorRT's requirement for the addresses of I/O tensors


class TensorRTEngine:
    """A deserialized TensorRT plan with one execution context, run on the current CUDA stream
    (on a stream of its own, ordered with it, when that is the legacy default stream).

    Inputs larger than the profile's maximum batch are run in chunks of that batch. Thread-safe:
    the context's shapes and addresses are set and enqueued under a lock, and each run waits
    (on the GPU, through a CUDA event) for the previous one, whatever stream that was on, since
    a context's activation memory serves one run at a time.
    """

    name = "tensorrt"

    def __init__(
        self, plan: bytes, device: torch.device, output_names: tuple[str, ...] | None = None
    ) -> None:
        trt = _tensorrt()
        if device.type != "cuda":
            raise BackendUnavailableError(f"backend 'tensorrt' runs on CUDA devices only, got {device}")
        self.device = device = with_index(device)
        self._runtime = trt.Runtime(_tensorrt_logger(trt))
        # TensorRT allocates on, and runs on, the current CUDA device: make it ``device``.
        with torch.cuda.device(device):
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise RuntimeError(
                    "TensorRT could not deserialize the plan (built by another TensorRT version or for another GPU?)"
                )
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"TensorRT could not create an execution context on {device} (out of memory?)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ValueError(f"TensorRT plan: expected one input tensor, got {inputs}")
        self._input = inputs[0]
        self._outputs = list(output_names) if output_names else [n for n in names if n != self._input]
        to_torch = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.BOOL: torch.bool,
        }
        self._dtypes = {n: to_torch[self._engine.get_tensor_dtype(n)] for n in names}
        lo, _, hi = self._engine.get_tensor_profile_shape(self._input, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self._lock = threading.Lock()
        self._last_run: torch.cuda.Event | None = None
        self._side: torch.cuda.Stream | None = None

    def _bind(self, name: str, t: torch.Tensor) -> None:
        if not self._context.set_tensor_address(name, t.data_ptr()):
            raise RuntimeError(
                f"TensorRT engine: the address of tensor {name!r} {tuple(t.shape)} was refused"
            )

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shape = tuple(x.shape)
        if any(
            s < a or s > b for s, a, b in zip(shape[1:], self.min_shape[1:], self.max_shape[1:], strict=True)
        ):
            raise ValueError(
                f"TensorRT engine: input shape {shape} outside its profile {self.min_shape}..{self.max_shape}; "
                "widen [engine.profiles] in the model config"
            )
        x = x.to(self.device, self._dtypes[self._input]).contiguous()
        if x.data_ptr() % _TRT_ALIGNMENT:  # a view into a batch: TensorRT wants aligned addresses
            x = x.clone()
        caller = torch.cuda.current_stream(self.device)
        with self._lock, torch.cuda.device(self.device):
            stream = caller
            if caller.cuda_stream == 0:
                # The legacy default stream, on which TensorRT synchronises the host around each
                # run (and warns): run on the engine's own stream, ordered after and before it.
                if self._side is None:
                    self._side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
                stream = self._side
                stream.wait_stream(caller)
            if self._last_run is not None:
                stream.wait_event(self._last_run)
            if not self._context.set_input_shape(self._input, shape):
                raise RuntimeError(f"TensorRT engine: input shape {shape} was refused")
            self._bind(self._input, x)
            outs = []
            for n in self._outputs:
                outs.append(
                    torch.empty(
                        tuple(self._context.get_tensor_shape(n)), dtype=self._dtypes[n], device=self.device
                    )
                )
                self._bind(n, outs[-1])
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for input shape {shape}")
            self._last_run = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._last_run.record(stream)
            if stream is not caller:
                caller.wait_stream(stream)  # the outputs (allocated on the caller's stream) are ready
        return _as_float32(tuple(outs))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        (x,) = inputs
        if len(x) == 0:
            raise ValueError("TensorRT engine: empty batch")
        step = self.max_shape[0]
        if len(x) <= step:
            return self._run(x)
        parts = [self._run(x[s : s + step]) for s in range(0, len(x), step)]
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))


# Backends: how each one is built into the cache and loaded back
# ---------------------------------------------------------------------------------------------


def _torch_runtime() -> str:
    return f"torch-{torch.__version__}"


def _ort_runtime() -> str:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(
            "backend 'onnxruntime' needs onnx and onnxruntime (pip install 'afd_trt[onnx]')"
        ) from e
    return f"onnxruntime-{ort.__version__}+torch-{torch.__version__}"


_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def _ov_runtime() -> str:
    try:
        import onnx  # noqa: F401
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError(
            "backend 'openvino' needs onnx and openvino (pip install 'afd_trt[openvino]')"
        ) from e
    return f"openvino-{ov.__version__}+torch-{torch.__version__}"


def _trt_runtime() -> str:
    return f"tensorrt-{_tensorrt().__version__}"


def _target_meta(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {"device_tag": device_tag(device), "torch": torch.__version__}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        meta.update(compute_capability=f"sm_{major}{minor}", gpu=torch.cuda.get_device_name(device))
    return meta


def _build_torchscript(
    net: Network, device: torch.device, precision: str, dest: Path, cache: EngineCache
) -> dict[str, Any]:
    module = trace_torchscript(net.module, net.io, device, precision)
    with _quiet_export():
        torch.jit.save(module, str(dest))
    return {
        "exact": exact_torchscript(device, precision),
        "optimize_for_inference_on_load": _optimize(device),
    }


def _load_torchscript(path: Path, net: Network, device: torch.device, precision: str) -> Engine:
    return TorchScriptEngine.load(path, net.io, device, precision)


def onnx_key(net: Network, precision: str = "fp32") -> EngineKey:
    """The cache key of ``net``'s ONNX model at ``precision`` (:data:`ONNX_PRECISIONS`). The fp32
    file serves every backend that runs ONNX (ONNX Runtime, OpenVINO, TensorRT's builder) on every
    device and precision but TensorRT's fp16, which has its own: an exported graph is portable, so
    only the weights, the config, the exporting torch, the opset and the precision make it."""
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
    return EngineKey(
        model=net.name,
        weights_sha256=net.weights_sha256,
        config_hash=net.config_hash,
        backend="onnx",
        device="portable",
        runtime=_onnx_runtime(),
        precision=precision,
    )


def _onnx_runtime() -> str:
    return f"torch-{torch.__version__}+opset-{ONNX_OPSET}"


def cached_onnx(net: Network, cache: EngineCache, precision: str = "fp32") -> Path:
    """``net``'s ONNX model at ``precision`` in ``cache`` (:func:`onnx_key`), exported (from a
    CPU copy of the module when it lives on a GPU) the first time it is asked for."""
    key = onnx_key(net, precision)

    def build(dest: Path) -> dict[str, Any]:
        module = net.module
        if next(module.parameters()).device.type != "cpu":
            module = copy.deepcopy(module).to("cpu")
        export_onnx(module, net.io, dest, precision=precision)
        return {"onnx_opset": ONNX_OPSET, "exported_by": f"torch-{torch.__version__}"}

    return cache.load_or_build(key, ".onnx", build, lambda p: p)


def _load_onnx(path: Path, net: Network, device: torch.device, precision: str) -> Engine:
    profile = net.profile() if device.type == "cuda" else None
    trt_profile = None if profile is None else (net.io.input_name, profile)
    # ONNX Runtime's TensorRT provider keys its cached engines itself (model, GPU, TensorRT).
    return OnnxRuntimeEngine(
        path, device, trt_profile=trt_profile, trt_cache_dir=path.parent / "ort-tensorrt"
    )


def _load_openvino(path: Path, net: Network, device: torch.device, precision: str) -> Engine:
    return OpenVinoEngine(path, device, precision)


def _profile_meta(name: str, p: ShapeProfile) -> dict[str, Any]:
    return {name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}}


def _build_tensorrt(
    net: Network, device: torch.device, precision: str, dest: Path, cache: EngineCache
) -> dict[str, Any]:
    trt = _tensorrt()
    profile = net.profile()
    if profile is None:
        raise ValueError(
            f"backend 'tensorrt' for {net.name}: the model config has no [engine.profiles.{net.io.input_name}] "
            "table (min/opt/max input shapes)"
        )
    onnx_path = cached_onnx(net, cache, precision)  # strongly typed: the ONNX types are the plan's
    with torch.cuda.device(device):
        dest.write_bytes(build_tensorrt_plan(onnx_path, net.io.input_name, profile))
    return {
        "onnx_sha256": sha256_file(onnx_path),
        "strongly_typed": True,
        "tensorrt": trt.__version__,
        "precision": precision,
        "profiles": _profile_meta(net.io.input_name, profile),
        "weights_sha256": net.weights_sha256,
        "config_hash": net.config_hash,
    }


def _load_tensorrt(path: Path, net: Network, device: torch.device, precision: str) -> Engine:
    return TensorRTEngine(path.read_bytes(), device, net.io.output_names)


@dataclass(frozen=True)
class Backend:
    """A backend whose engines come from the engine cache: the runtime version, the devices and
    precisions it supports, and how its file is built and loaded.

    ``suffix``/``build``: the backend's own file (a TorchScript module, a TensorRT plan); None for a
    runtime that loads the network's shared ONNX model (:func:`cached_onnx`) as it is.
    """

    name: str
    suffix: str | None
    runtime: Callable[[], str]
    devices: tuple[str, ...]
    precisions: Mapping[str, tuple[str, ...]]  # device type -> precisions
    build: Callable[[Network, torch.device, str, Path, EngineCache], dict[str, Any]] | None
    load: Callable[[Path, Network, torch.device, str], Engine]
    contains_code: bool

    def check(self, device: torch.device, precision: str) -> str:
        """Validate device and precision; return the runtime version string."""
        if device.type not in self.devices:
            raise BackendUnavailableError(
                f"backend {self.name!r} runs on {self.devices} devices, got {device}"
            )
        allowed = self.precisions[device.type]
        if precision not in allowed:
            raise ValueError(
                f"backend {self.name!r} on {device.type}: precision must be one of {allowed}, got {precision!r}"
            )
        return self.runtime()

    def key(self, net: Network, device: torch.device, precision: str) -> EngineKey:
        runtime = self.check(device, precision)  # first: a wrong device is named before it is probed
        return EngineKey(
            model=net.name,
            weights_sha256=net.weights_sha256,
            config_hash=net.config_hash,
            backend=self.name,
            device=device_tag(device),
            runtime=runtime,
            precision=precision,
        )

    def entry(self, net: Network, device: torch.device, precision: str) -> tuple[EngineKey, str]:
        """The cache key and file suffix of what :meth:`create` loads (device and precision checked)."""
        key = self.key(net, device, precision)
        if self.suffix is None:
            return onnx_key(net), ".onnx"
        return key, self.suffix

    def create(self, net: Network, device: torch.device, precision: str, cache: EngineCache) -> Engine:
        key = self.key(net, device, precision)
        if precision == "bf16":
            warn_if_slow_bf16(device)
        if self.suffix is None or self.build is None:
            return self.load(cached_onnx(net, cache), net, device, precision)
        build_file = self.build

        def build(dest: Path) -> dict[str, Any]:
            return {"target": _target_meta(device), **build_file(net, device, precision, dest, cache)}

        return cache.load_or_build(key, self.suffix, build, lambda p: self.load(p, net, device, precision))


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "torchscript", ".ts", _torch_runtime, ("cpu", "cuda"),
            {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}, _build_torchscript, _load_torchscript,
            True,
        ),
        Backend(
            "onnxruntime", None, _ort_runtime, ("cpu", "cuda"),
            {"cpu": ("fp32",), "cuda": ("fp32",)}, None, _load_onnx, False,
        ),
        Backend(
            "openvino", None, _ov_runtime, ("cpu",),
            {"cpu": ("fp32", "bf16")}, None, _load_openvino, False,
        ),
        Backend(
            "tensorrt", ".plan", _trt_runtime, ("cuda",),
            {"cuda": ("fp32", "fp16")}, _build_tensorrt, _load_tensorrt, True,
        ),
    )
}  # fmt: skip
"""Backends built into the engine cache, by name."""


def current_runtimes() -> dict[str, str | None]:
    """Cache backend (and ``"onnx"``, the shared ONNX model) -> the runtime string an engine
    built here now records; None where that runtime is not installed."""
    found: dict[str, str | None] = {"onnx": _onnx_runtime()}
    for name, backend in BACKENDS.items():
        try:
            found[name] = backend.runtime()
        except BackendUnavailableError:
            found[name] = None
    return found


def machine_device_tags() -> frozenset[str]:
    """The device tags engines built on this machine carry: its CPU, each visible GPU, and
    ``"portable"`` (ONNX models)."""
    tags = {"portable", device_tag(torch.device("cpu"))}
    if torch.cuda.is_available():
        tags.update(device_tag(torch.device("cuda", i)) for i in range(torch.cuda.device_count()))
    return frozenset(tags)


def _create_torch(net: Network, device: torch.device, precision: str, cache: EngineCache) -> Engine:
    allowed = ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    if precision not in allowed:
        raise ValueError(
            f"backend 'torch' on {device.type}: precision must be one of {allowed}, got {precision!r}"
        )
    if precision == "bf16":
        warn_if_slow_bf16(device)
    return TorchEngine(net.module, device, precision)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_slow_bf16(device: torch.device) -> None:
    """bf16 convolutions on a CPU without AVX512-BF16/AMX are emulated and slower than fp32."""
    if device.type == "cpu" and not cpu_has_bf16():
        logger.warning("precision 'bf16' on a CPU without AVX512-BF16/AMX: slower than fp32 here")


def resolve_precision(backend: str, device: torch.device, precision: str) -> str:
    """The precision ``backend`` runs at on ``device``: ``precision``, except that ``"auto"`` asked
    for bf16 on a CPU without AVX512-BF16/AMX runs fp32 (with a warning). There bf16 is emulated:
    on a 2-core AVX2 EPYC (2026-12-04, ``benchmarks/engines.py``) torch and TorchScript bf16 were
    6-8x slower than fp32 for every network, and OpenVINO, asked for bf16, compiles float32 anyway.
    ``auto`` promises the fastest engine for the device, so it runs the fp32 ones. A backend named
    explicitly keeps the precision asked for. ``ValueError`` for a precision that is none of
    fp32, bf16 and fp16, and for fp16 on the CPU (whatever ``auto`` would have picked)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' runs on CUDA devices only; on the CPU use 'fp32' or 'bf16'")
    if backend == "auto" and precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        logger.warning(
            "backend 'auto' with precision 'bf16' on a CPU without AVX512-BF16/AMX runs fp32: "
            "bf16 would be emulated here, several times slower"
        )
        return "fp32"
    return precision


EngineFactory = Callable[[Network, torch.device, str, EngineCache], Engine]

ENGINES: dict[str, EngineFactory] = {
    "torch": _create_torch,
    **{name: b.create for name, b in BACKENDS.items()},
}
"""Every backend by name: ``(network, device, precision, cache) -> Engine``."""

AUTO_CPU: dict[str, dict[str, tuple[str, ...]]] = {
    "fp32": {
        "yolov3": ("openvino", "onnxruntime", "torchscript"),
        "faster-rcnn": ("onnxruntime", "openvino", "torchscript"),
        "faster-rcnn-box-head": ("onnxruntime", "openvino", "torchscript"),
        "hrnetv2": ("openvino", "onnxruntime", "torchscript"),
    },
    "bf16": {
        "yolov3": ("openvino", "torchscript", "torch"),
        "faster-rcnn": ("openvino", "torch"),
        "faster-rcnn-box-head": ("torch", "openvino"),
        "hrnetv2": ("openvino", "torchscript", "torch"),
    },
}
"""``backend="auto"`` on CPU: per precision and network, backends fastest first; the first one
installed is used. Measured (median of 4 after 2 warm-up runs, 2 intra-op threads) on the shared
2-core AMD EPYC AVX512-BF16 development machine with torch 2.14.1, onnxruntime 1.32 and openvino
2026.4 at the pipeline's shapes (YOLOv3 1x3x352x608, Faster R-CNN 1x3x768x1344 and its box head
on 1000 RoIs, HRNetV2 8 crops), in ms::

    network               torch fp32  ORT fp32  OpenVINO fp32  torch bf16  TS bf16  OpenVINO bf16
    yolov3                       224       179            172         108      128             86
    faster-rcnn                 1826       933            951         543      722            476
    faster-rcnn-box-head         171        68             79          38       41             44
    hrnetv2                      525       289            248         211      301            139

(``benchmarks/engines.py`` re-measures this; ``docs/benchmarks.md`` has a later run.) Since
TorchScript bf16 runs channels-last (2026-12-03; ``benchmarks/engines.py --networks yolov3
hrnetv2``, the same machine at a slower moment, two runs of the old and new code alternated), it
comes before eager torch bf16: yolov3 197-199 ms against torch's 208-217 (TorchScript before:
211-223), hrnetv2 267-273 against 318-324 (before: 463), OpenVINO bf16 178-189 and 230-246.
"""


def _available(backend: str) -> bool:
    needs = {
        "onnxruntime": ("onnx", "onnxruntime"),
        "openvino": ("onnx", "openvino"),
        "tensorrt": ("tensorrt",),
    }
    return all(importlib.util.find_spec(m) is not None for m in needs.get(backend, ()))


def resolve_backend(backend: str, network: str, device: torch.device, precision: str = "fp32") -> str:
    """The backend to use: ``backend`` itself, or for ``"auto"`` TensorRT on CUDA (TorchScript
    without it) and on CPU the first installed of :data:`AUTO_CPU`'s choices for the precision
    (TorchScript, or eager torch for bf16, when none is)."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "tensorrt" if _available("tensorrt") and precision in ("fp32", "fp16") else "torchscript"
    choices = AUTO_CPU.get(precision, AUTO_CPU["fp32"]).get(network, ())
    return next((b for b in choices if _available(b)), "torch" if precision != "fp32" else "torchscript")


def create_engine(
    backend: str,
    network: Network,
    device: torch.device,
    *,
    precision: str = "fp32",
    cache: EngineCache | str | Path | None = None,
) -> Engine:
    """The engine named ``backend`` (a key of :data:`ENGINES`, or ``"auto"``) for ``network`` on
    ``device``, built into / loaded from ``cache`` (default :func:`default_engine_cache_dir`), at
    :func:`resolve_precision`'s precision."""
    precision = resolve_precision(backend, device, precision)
    name = resolve_backend(backend, network.name, device, precision)
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"backend must be one of {[*ENGINES, 'auto']}, got {backend!r}") from None
    if not isinstance(cache, EngineCache):
        cache = EngineCache(cache)
    if backend == "auto":
        logger.info("backend 'auto' for %s on %s: %s", network.name, device, name)
    return factory(network, device, precision, cache)


def load_engine_file(
    path: str | Path,
    backend: str,
    network: str,
    device: torch.device,
    *,
    precision: str = "fp32",
    trusted: bool = False,
    cache: EngineCache | None = None,
) -> Engine:
    """Load an engine file built earlier, e.g. copied from another machine.

    TorchScript files and TensorRT plans can carry code: they load only from inside ``cache`` (the
    default engine cache when None) or with ``trusted=True``. A file with a metadata sidecar
    (``<path>.json``) built for another device or runtime version is refused with
    :class:`~afd_trt.engine_cache.EngineMismatchError` naming both.
    """
    path = Path(path)
    try:
        spec = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}") from None
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {network!r}")
    cache = cache if cache is not None else EngineCache()
    if spec.contains_code and not trusted and not cache.contains(path):
        raise PermissionError(
            f"{path}: {backend} files can contain code and load only from the engine cache "
            f"({cache.root}) or with trusted=True"
        )
    runtime = spec.check(device, precision)
    meta = cache.read_metadata(path)
    if meta is not None and spec.suffix is None:
        # A runtime of an ONNX model: any device and runtime may load it. Before the shared
        # model, ONNX Runtime and OpenVINO each kept a copy under their own name.
        made_by = meta.get("key", {}).get("backend")
        if made_by not in ("onnx", "onnxruntime", "openvino"):
            raise EngineMismatchError(f"{path}: its metadata says a {made_by!r} engine, not an ONNX model")
    elif meta is not None:
        rec = meta.get("key", {})
        here = (device_tag(device), runtime)
        built = (rec.get("device"), rec.get("runtime"))
        if built != here:
            raise EngineMismatchError(
                f"{path}: built for {built[0]} with {built[1]}; this machine is {here[0]} with {here[1]}"
            )
        for what, asked in (("model", network), ("precision", precision)):
            if rec.get(what) != asked:
                raise EngineMismatchError(
                    f"{path}: its metadata says {what} {rec.get(what)!r}, asked for {asked!r}"
                )
        if rec.get("format") != CACHE_FORMAT:  # e.g. an fp32 TorchScript with BatchNorm folded
            raise EngineMismatchError(
                f"{path}: built in engine format {rec.get('format')!r}, this afd_trt builds {CACHE_FORMAT}: rebuild it"
            )
    else:
        logger.warning("%s: no metadata sidecar; cannot check which device/runtime built it", path)
    if meta is not None:  # the cache's own integrity checks: a damaged file fails here, plainly
        size = path.stat().st_size
        if meta.get("file_size") != size:
            raise ValueError(
                f"{path}: {size} bytes, its metadata records {meta.get('file_size')!r} (truncated or corrupt)"
            )
        if sha256_file(path) != meta.get("file_sha256"):
            raise ValueError(f"{path}: its sha256 differs from its metadata's (corrupt)")
    net = Network(network, nn.Identity())  # only its name and io are used by the loaders
    return spec.load(path, net, device, precision)


def engine_metadata(path: str | Path) -> dict[str, Any] | None:
    """The sidecar metadata of an engine file (None if it has none)."""
    return EngineCache().read_metadata(Path(path))
