"""Every backend against eager PyTorch on seeded weights: raw network outputs.

Each (network, backend) engine is built once into a temporary engine cache, at the network's
example shape, then run at other batch sizes and image sizes (the dynamic axes really used).
Deviation is measured per output as ``max |engine - eager| / max |eager|``; TorchScript on the CPU
at fp32 must give eager's bits (its freeze keeps every operation as written:
``engines.exact_torchscript``), ONNX Runtime and OpenVINO (fp32) stay within 1e-4. Engines loaded
back from the cache must give the same outputs as the engine that built them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from afd_trt.config import ShapeProfile, load_config
from afd_trt.engine_cache import CACHE_FORMAT, EngineCache, EngineMismatchError
from afd_trt.engines import (
    AUTO_CPU,
    ENGINES,
    NETWORKS,
    BackendUnavailableError,
    Engine,
    Network,
    OnnxRuntimeEngine,
    TorchEngine,
    _cuda_device_id,
    _engine_input,
    cached_onnx,
    cpu_has_bf16,
    create_engine,
    export_shape,
    load_engine_file,
    ort_providers,
    resolve_backend,
    resolve_precision,
    strongly_typed_network_flags,
    trace_torchscript,
)
from afd_trt.models import build_model
from afd_trt.weights import sha256_file

CPU = torch.device("cpu")
TOL = {"torchscript": 0.0, "onnxruntime": 1e-4, "openvino": 1e-4}
CONFIG_OF = {
    "yolov3": "yolov3",
    "faster-rcnn": "faster-rcnn",
    "faster-rcnn-box-head": "faster-rcnn",
    "hrnetv2": "hrnetv2",
}
# Input shapes per network; the engines are built at NETWORKS[name].example_shape, which differs.
SHAPES = {
    "yolov3": [(1, 3, 288, 352), (2, 3, 256, 416), (1, 3, 160, 96)],
    "faster-rcnn": [(1, 3, 256, 320), (2, 3, 192, 128)],
    "faster-rcnn-box-head": [(1, 256, 7, 7), (37, 256, 7, 7)],
    "hrnetv2": [(1, 3, 256, 256), (3, 3, 256, 256)],
}
CASES = [(n, b) for n in SHAPES for b in TOL]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the machines running these tests are small and shared, and
    oversubscribed OpenMP spinning makes them many times slower. Results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeded_module(network: str, seed: int = 0) -> nn.Module:
    """The network with seeded random weights, BatchNorm statistics included."""
    model = build_model("faster-rcnn" if network == "faster-rcnn-box-head" else network)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.dim() > 1:  # conv / linear weights: fan-in scaled, so activations stay O(1)
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
            else:  # BatchNorm weights
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    return model.roi_head.bbox_head if network == "faster-rcnn-box-head" else model


@pytest.fixture(scope="module")
def networks() -> dict[str, Network]:
    return {n: Network(n, seeded_module(n), load_config(CONFIG_OF[n])) for n in SHAPES}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def engines(networks: dict[str, Network], cache_dir: Path) -> dict[tuple[str, str], Engine]:
    """Built lazily, once per (network, backend)."""

    class Lazy(dict[tuple[str, str], Engine]):
        def __missing__(self, key: tuple[str, str]) -> Engine:
            self[key] = create_engine(key[1], networks[key[0]], CPU, cache=cache_dir)
            return self[key]

    return Lazy()


def inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def rel_dev(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> list[float]:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype == torch.float32
    return [float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want, strict=True)]


@pytest.mark.parametrize(("network", "backend"), CASES)
def test_backend_matches_eager(
    network: str, backend: str, networks: dict[str, Network], engines: dict[tuple[str, str], Engine]
) -> None:
    eager = create_engine("torch", networks[network], CPU)
    engine = engines[network, backend]
    assert engine.name == backend
    assert NETWORKS[network].example_shape not in SHAPES[network]
    for i, shape in enumerate(SHAPES[network]):
        x = inputs(shape, i)
        want = eager(x)
        assert len(want) == len(NETWORKS[network].output_names)
        dev = rel_dev(engine(x), want)
        assert max(dev) <= TOL[backend], f"{network} {backend} {shape}: relative deviations {dev}"


@pytest.mark.parametrize(("network", "backend"), CASES)
def test_reloaded_engine_agrees(
    network: str,
    backend: str,
    networks: dict[str, Network],
    engines: dict[tuple[str, str], Engine],
    cache_dir: Path,
) -> None:
    first = engines[network, backend]
    # Its own file (TorchScript), or the network's shared ONNX model (ONNX Runtime, OpenVINO).
    files = sorted(cache_dir.glob(f"{network}/{backend if backend == 'torchscript' else 'onnx'}-*"))
    assert files
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = create_engine(backend, networks[network], CPU, cache=cache_dir)
    assert again is not first
    assert {p: p.stat().st_mtime_ns for p in files} == stamps, "loaded back, not rebuilt"
    x = inputs(SHAPES[network][-1], 7)
    for a, b in zip(again(x), first(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_engine_files_and_metadata(
    networks: dict[str, Network], engines: dict[tuple[str, str], Engine], cache_dir: Path
) -> None:
    import onnx

    engines["faster-rcnn-box-head", "onnxruntime"]
    engines["faster-rcnn-box-head", "torchscript"]
    (onnx_path,) = cache_dir.glob("faster-rcnn-box-head/onnx-fp32-portable-*.onnx")
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.name == "rois"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic RoI count
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [256, 7, 7]
    assert [o.name for o in model.graph.output] == ["cls", "reg"]
    meta = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
    assert meta["key"]["backend"] == "onnx"
    assert meta["key"]["device"] == "portable"
    assert meta["key"]["config_hash"] == networks["faster-rcnn-box-head"].config_hash
    assert meta["key"]["weights_sha256"] == networks["faster-rcnn-box-head"].weights_sha256
    assert meta["onnx_opset"] >= 17
    assert meta["exported_by"] == f"torch-{torch.__version__}"
    (ts_path,) = cache_dir.glob("faster-rcnn-box-head/torchscript-fp32-*.ts")
    ts_meta = json.loads(ts_path.with_name(ts_path.name + ".json").read_text())
    assert ts_meta["key"]["backend"] == "torchscript"
    assert ts_meta["target"]["device_tag"].startswith("cpu-")


def test_onnx_runtimes_share_one_onnx_file(networks: dict[str, Network], tmp_path: Path) -> None:
    """ONNX Runtime, and OpenVINO at both precisions (bf16 where the CPU has it), load the one
    ONNX model exported into the cache: no copy per backend or precision."""
    net = networks["hrnetv2"]
    x = inputs(SHAPES["hrnetv2"][0], 11)
    ort = create_engine("onnxruntime", net, CPU, cache=tmp_path)
    (onnx_path,) = tmp_path.glob("hrnetv2/*.onnx")
    stamp = onnx_path.stat().st_mtime_ns
    ov32 = create_engine("openvino", net, CPU, cache=tmp_path)
    want = create_engine("torch", net, CPU)(x)
    assert max(rel_dev(ort(x), want)) <= TOL["onnxruntime"]
    assert max(rel_dev(ov32(x), want)) <= TOL["openvino"]
    assert [e.name for e in (ort, ov32)] == ["onnxruntime", "openvino"]
    if _openvino_has_bf16():
        ov16 = create_engine("openvino", net, CPU, precision="bf16", cache=tmp_path)
        assert max(rel_dev(ov16(x), want)) <= 0.05
    assert sorted(p.name for p in tmp_path.glob("hrnetv2/*")) == [
        onnx_path.name,
        f"{onnx_path.name}.json",
        f"{onnx_path.name}.lock",
    ]
    assert onnx_path.stat().st_mtime_ns == stamp


def test_detector_onnx_has_dynamic_image_axes(
    engines: dict[tuple[str, str], Engine], cache_dir: Path
) -> None:
    import onnx

    engines["yolov3", "onnxruntime"]
    (onnx_path,) = cache_dir.glob("yolov3/onnx-fp32-portable-*.onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert dims[1].dim_value == 3


def test_engine_files_need_trust_outside_the_cache(
    networks: dict[str, Network], engines: dict[tuple[str, str], Engine], cache_dir: Path, tmp_path: Path
) -> None:
    first = engines["faster-rcnn-box-head", "torchscript"]
    (ts,) = cache_dir.glob("faster-rcnn-box-head/torchscript-*.ts")
    copy = tmp_path / ts.name
    shutil.copy(ts, copy)
    shutil.copy(ts.with_name(ts.name + ".json"), copy.with_name(copy.name + ".json"))
    with pytest.raises(PermissionError, match="trusted=True"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU)
    inside = load_engine_file(ts, "torchscript", "faster-rcnn-box-head", CPU, cache=EngineCache(cache_dir))
    trusted = load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True)
    x = inputs((5, 256, 7, 7), 3)
    for a, b, c in zip(trusted(x), inside(x), first(x), strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    # ONNX holds no code: it loads from anywhere, into either ONNX runtime, its sidecar or not.
    engines["faster-rcnn-box-head", "onnxruntime"]
    (onnx_path,) = cache_dir.glob("faster-rcnn-box-head/onnx-*.onnx")
    bare = tmp_path / "bare" / onnx_path.name
    bare.parent.mkdir()
    shutil.copy(onnx_path, bare)
    onnx_engine = load_engine_file(bare, "onnxruntime", "faster-rcnn-box-head", CPU)
    assert onnx_engine.name == "onnxruntime"
    onnx_copy = tmp_path / onnx_path.name
    shutil.copy(onnx_path, onnx_copy)
    shutil.copy(onnx_path.with_name(onnx_path.name + ".json"), onnx_copy.with_name(onnx_copy.name + ".json"))
    for backend in ("onnxruntime", "openvino"):
        engine = load_engine_file(onnx_copy, backend, "faster-rcnn-box-head", CPU)
        for a, c in zip(engine(x), first(x), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    # So does a per-backend copy of older afd_trt versions, with its sidecar.
    meta = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text())
    meta["key"].update(
        backend="onnxruntime", device="cpu-x86_64-avx2", runtime="onnxruntime-1.18.0+torch-2.4.0"
    )
    onnx_copy.with_name(onnx_copy.name + ".json").write_text(json.dumps(meta))
    assert load_engine_file(onnx_copy, "openvino", "faster-rcnn-box-head", CPU).name == "openvino"
    # A sidecar that records another kind of engine is refused.
    shutil.copy(ts.with_name(ts.name + ".json"), onnx_copy.with_name(onnx_copy.name + ".json"))
    with pytest.raises(EngineMismatchError, match="'torchscript' engine, not an ONNX model"):
        load_engine_file(onnx_copy, "openvino", "faster-rcnn-box-head", CPU)


def test_engine_file_from_another_runtime_is_refused(
    engines: dict[tuple[str, str], Engine], cache_dir: Path, tmp_path: Path
) -> None:
    engines["faster-rcnn-box-head", "torchscript"]
    (ts,) = cache_dir.glob("faster-rcnn-box-head/torchscript-*.ts")
    copy = tmp_path / ts.name
    shutil.copy(ts, copy)
    meta = json.loads(ts.with_name(ts.name + ".json").read_text())
    here = meta["key"]["runtime"]
    meta["key"]["runtime"] = "torch-1.0.0"
    copy.with_name(copy.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError, match=rf"torch-1\.0\.0.*{here.replace('+', '.')}"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True)
    # Loaded as another network or precision than its sidecar records: refused (it loaded, and
    # ran as that network, or failed deep inside TorchScript at the first call).
    shutil.copy(ts.with_name(ts.name + ".json"), copy.with_name(copy.name + ".json"))
    with pytest.raises(EngineMismatchError, match="says model 'faster-rcnn-box-head', asked for 'hrnetv2'"):
        load_engine_file(copy, "torchscript", "hrnetv2", CPU, trusted=True)
    with pytest.raises(EngineMismatchError, match="says precision 'fp32', asked for 'bf16'"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, precision="bf16", trusted=True)
    assert (
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True).name == "torchscript"
    )
    # An older engine format (an fp32 TorchScript with BatchNorm folded, not eager's bits) is
    # refused, as the cache would rebuild it; a damaged file is named as such, not as a file
    # from another runtime or GPU.
    meta["key"]["runtime"] = here
    meta["key"]["format"] = CACHE_FORMAT - 1
    copy.with_name(copy.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError, match=f"engine format {CACHE_FORMAT - 1}, this afd_trt builds"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True)
    shutil.copy(ts.with_name(ts.name + ".json"), copy.with_name(copy.name + ".json"))
    copy.write_bytes(copy.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True)
    data = bytearray(ts.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs"):
        load_engine_file(copy, "torchscript", "faster-rcnn-box-head", CPU, trusted=True)


def _openvino_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tracing_leaves_the_callers_module_alone(precision: str) -> None:
    """``trace_torchscript`` converts a copy: the module it was given keeps its device and dtype
    (the eager engine built beside a CUDA TorchScript engine reads the same module object).
    Checked through the dtype, which a CPU can change: a float64 module traced at fp32 or bf16."""
    module = seeded_module("faster-rcnn-box-head").double()
    trace_torchscript(module, NETWORKS["faster-rcnn-box-head"], CPU, precision)
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    assert {b.dtype for b in module.buffers() if b.is_floating_point()} <= {torch.float64}


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "torchscript",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(
                not _openvino_has_bf16(), reason="OpenVINO reports no BF16 capability on this CPU"
            ),
        ),
    ],
)
@pytest.mark.parametrize("network", ["yolov3", "hrnetv2", "faster-rcnn-box-head"])
def test_bf16_on_cpu_is_close_to_fp32(
    network: str, backend: str, networks: dict[str, Network], cache_dir: Path
) -> None:
    """Opt-in bf16 (8 mantissa bits): outputs float32, within a few percent of fp32 eager, and
    really computed in bf16 (not silently fp32)."""
    eager = create_engine("torch", networks[network], CPU)
    engine = create_engine(backend, networks[network], CPU, precision="bf16", cache=cache_dir)
    x = inputs(SHAPES[network][1], 5)
    want = eager(x)
    dev = rel_dev(engine(x), want)
    assert max(dev) <= 0.05, f"{network} {backend} bf16: relative deviations {dev}"
    assert max(dev) > 1e-5, "bf16 results equal fp32's: the engine did not run in bf16"
    if backend == "torchscript":
        assert list(cache_dir.glob(f"{network}/torchscript-bf16-*"))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_reduced_precision_inputs_go_channels_last(precision: str) -> None:
    """The torch engines hand a 4-D input to the network channels-last at bf16/fp16 (the layout
    of the fast reduced-precision kernels) and in the caller's layout at fp32 (upstream's
    arithmetic); other ranks pass as they are. Values are only cast."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    y = _engine_input(x, CPU, dtype)
    assert y.dtype == dtype
    assert torch.equal(y, x.to(dtype))
    assert y.is_contiguous(memory_format=torch.channels_last) == (precision != "fp32")
    assert y.is_contiguous() == (precision == "fp32")
    flat = _engine_input(x[0], CPU, dtype)
    assert flat.is_contiguous()
    assert flat.shape == (3, 5, 7)


def test_bad_backend_precision_and_device(networks: dict[str, Network]) -> None:
    net = networks["faster-rcnn-box-head"]
    with pytest.raises(ValueError, match="backend must be one of"):
        create_engine("tensorflow", net, CPU)
    for backend in ("torch", "torchscript", "onnxruntime", "openvino", "auto"):
        # named as fp16's problem, not as that of whichever backend 'auto' would have picked
        with pytest.raises(ValueError, match="precision 'fp16' runs on CUDA devices only"):
            create_engine(backend, net, CPU, precision="fp16")
        with pytest.raises(
            ValueError, match=r"precision must be one of \('fp32', 'bf16', 'fp16'\), got 'half'"
        ):
            create_engine(backend, net, CPU, precision="half")
    with pytest.raises(ValueError, match="engine cache: an empty path names no directory"):
        create_engine("torchscript", net, CPU, cache="")
    with pytest.raises(ValueError, match="precision must be one of"):
        create_engine("onnxruntime", net, CPU, precision="bf16")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        create_engine("tensorrt", net, CPU)
    # checked before any CUDA call, so this holds on machines without a GPU too
    with pytest.raises(BackendUnavailableError, match=r"'openvino' runs on \('cpu',\) devices, got cuda:0"):
        create_engine("openvino", net, torch.device("cuda:0"))
    with pytest.raises(ValueError, match="network name must be one of"):
        Network("resnet", net.module)


def test_auto_backend_on_cpu() -> None:
    """Every precision's table names every network, with backends that run it on the CPU; with
    all of them installed (as in the test environment) the first choice is taken."""
    from afd_trt.engines import BACKENDS

    for precision, table in AUTO_CPU.items():
        assert set(table) == set(NETWORKS)
        for name, choices in table.items():
            assert choices
            for b in choices:
                assert b in ENGINES
                if b in BACKENDS:
                    assert precision in BACKENDS[b].precisions["cpu"], (precision, name, b)
            assert resolve_backend("auto", name, CPU, precision) == choices[0]
            assert resolve_backend("torch", name, CPU, precision) == "torch"


def test_auto_backend_falls_back_when_runtimes_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenVINO the next choice is taken; with neither ONNX runtime, TorchScript."""
    real = importlib.util.find_spec
    missing = {"openvino"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m in missing else real(m, *a))
    assert resolve_backend("auto", "hrnetv2", CPU) == "onnxruntime"
    assert resolve_backend("auto", "hrnetv2", CPU, "bf16") == "torchscript"
    missing.add("onnxruntime")
    assert resolve_backend("auto", "yolov3", CPU) == "torchscript"
    assert resolve_backend("auto", "faster-rcnn", CPU, "bf16") == "torch"


def test_auto_engine_is_the_chosen_backend(networks: dict[str, Network], cache_dir: Path) -> None:
    engine = create_engine("auto", networks["faster-rcnn-box-head"], CPU, cache=cache_dir)
    assert engine.name == AUTO_CPU["fp32"]["faster-rcnn-box-head"][0]
    engine = create_engine("auto", networks["hrnetv2"], CPU, precision="bf16", cache=cache_dir)
    assert engine.name == AUTO_CPU[resolve_precision("auto", CPU, "bf16")]["hrnetv2"][0]


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_auto_runs_fp32_where_bf16_would_be_emulated(
    native: bool,
    networks: dict[str, Network],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``auto`` at bf16 on a CPU without AVX512-BF16/AMX (oneDNN's answer stood in for, as on the
    two kinds of development CPU) runs fp32, the faster there, and says so; a backend named
    explicitly, another precision or another device keep what was asked for."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert cpu_has_bf16() is native
    with caplog.at_level(logging.WARNING, logger="afd_trt.engines"):
        assert resolve_precision("auto", CPU, "bf16") == ("bf16" if native else "fp32")
    assert ("runs fp32" in caplog.text) is not native
    for backend in ("torch", "torchscript", "openvino"):
        assert resolve_precision(backend, CPU, "bf16") == "bf16"
    assert resolve_precision("auto", CPU, "fp32") == "fp32"
    assert resolve_precision("auto", torch.device("cuda"), "bf16") == "bf16"
    if not native:
        # The box head's first bf16 choice is eager torch, 7.5x slower than fp32 where emulated:
        # the engine made is the fp32 table's, at fp32 (eager's outputs within ONNX's tolerance).
        net = networks["faster-rcnn-box-head"]
        engine = create_engine("auto", net, CPU, precision="bf16", cache=cache_dir)
        assert engine.name == AUTO_CPU["fp32"]["faster-rcnn-box-head"][0] != "torch"
        x = torch.randn(SHAPES[net.name][1])
        with torch.no_grad():
            want = net.module(x)
        for g, w in zip(engine(x), want, strict=True):
            assert float((g - w).abs().max()) <= 1e-4 * float(w.abs().max())


# The fp16 ONNX model TensorRT builds its fp16 plans from (TensorRT 11 builds only strongly typed
# networks: the types in the graph are the types the plan runs)
# ---------------------------------------------------------------------------------------------

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto data types
FP16_TOL = 2e-2  # max |fp16 - eager fp32| / max |eager fp32|; measured 4e-4 to 5e-3 (ONNX Runtime)


def _onnx_types(model: Any) -> dict[str, int]:
    """Tensor name -> ONNX element type, after strict shape inference of ``model``."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_fp16_export_traces_the_detectors_small() -> None:
    """The fp16 export traces the detectors at 64x64 (torch's float16 convolutions on the CPU are
    scalar code); the runs below check the graph at other sizes. Fixed axes keep their size."""
    assert export_shape(NETWORKS["yolov3"], "fp16") == (1, 3, 64, 64)
    assert export_shape(NETWORKS["faster-rcnn"], "fp16") == (1, 3, 64, 64)
    for name, io in NETWORKS.items():
        assert export_shape(io, "fp32") == io.example_shape
        if name not in ("yolov3", "faster-rcnn"):
            assert export_shape(io, "fp16") == io.example_shape


@pytest.mark.parametrize("network", list(SHAPES))
def test_fp16_onnx_computes_in_half_between_float32_ends(
    network: str, networks: dict[str, Network], cache_dir: Path
) -> None:
    """float32 input and outputs; every convolution and matrix product on float16 tensors and
    weights; no float32 tensor made inside but the output casts and Resize's scales; run by ONNX
    Runtime, within half precision of eager fp32 and clearly not fp32 arithmetic."""
    import onnx

    net = networks[network]
    path = cached_onnx(net, EngineCache(cache_dir), "fp16")
    assert path.name.startswith("onnx-fp16-portable-")
    assert path != cached_onnx(net, EngineCache(cache_dir))  # the fp32 model is another file
    model = onnx.load(str(path))
    types = _onnx_types(model)
    g = model.graph
    assert [types[v.name] for v in g.input] == [FLOAT]
    outputs = [v.name for v in g.output]
    assert outputs == list(NETWORKS[network].output_names)
    assert {types[n] for n in outputs} == {FLOAT}
    products = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert products
    for node in products:
        assert {types[i] for i in node.input if i} == {FLOAT16}, (node.name, node.input)
    for node in g.node:
        made_float = [o for o in node.output if types[o] == FLOAT]
        if not made_float:
            continue
        assert node.op_type in ("Cast", "Constant"), (node.name, node.op_type)
        if node.op_type == "Cast":
            assert made_float[0] in outputs, f"{node.name}: a float32 tensor inside the fp16 network"
        else:
            users = [
                (u.op_type, list(u.input).index(made_float[0])) for u in g.node if made_float[0] in u.input
            ]
            assert users, node.name
            assert all(u == ("Resize", 2) for u in users), (node.name, users)

    engine = OnnxRuntimeEngine(path, CPU)
    eager = create_engine("torch", net, CPU)
    for i, shape in enumerate(SHAPES[network]):
        x = inputs(shape, 30 + i)
        dev = rel_dev(engine(x), eager(x))
        assert max(dev) <= FP16_TOL, f"{network} {shape}: {dev}"
        assert max(dev) > 1e-4, f"{network} {shape}: {dev}: fp32 arithmetic, not fp16"


@pytest.mark.parametrize(
    ("version", "flag", "want"),
    [("10.0.1", 5, 1 << 5), ("10.16.1.11", 5, 1 << 5), ("11.4.0.106", None, 0), ("11.0.0", 5, 0)],
)
def test_strongly_typed_network_flags(version: str, flag: int | None, want: int) -> None:
    assert strongly_typed_network_flags(version, flag) == want


def test_strongly_typed_flag_missing_in_tensorrt_10_is_named() -> None:
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 10\.0\.0 has no .*STRONGLY_TYPED"):
        strongly_typed_network_flags("10.0.0", None)


def test_bad_onnx_precision_is_refused(networks: dict[str, Network], cache_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"ONNX precision must be one of \('fp32', 'fp16'\), got 'bf16'"):
        cached_onnx(networks["faster-rcnn-box-head"], EngineCache(cache_dir), "bf16")


# ONNX Runtime's execution providers: CPU; CUDA; TensorRT (with the config's profile) before CUDA
# ---------------------------------------------------------------------------------------------

ALL_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
PROFILE = ShapeProfile((1, 3, 64, 64), (1, 3, 352, 608), (16, 3, 1344, 1344))


def test_ort_providers_on_cpu_and_without_onnxruntime_gpu() -> None:
    assert ort_providers(CPU, ALL_ORT, ("image", PROFILE)) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match=r"cuda:1: .*no CUDAExecutionProvider.*onnxruntime-gpu"):
        ort_providers(torch.device("cuda:1"), ["AzureExecutionProvider", "CPUExecutionProvider"])


def test_ort_providers_on_cuda(tmp_path: Path) -> None:
    cuda1 = torch.device("cuda", 1)
    cuda_cpu = [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    assert ort_providers(cuda1, ALL_ORT[1:], ("image", PROFILE), tmp_path) == cuda_cpu
    # TensorRT without a profile would build an engine per input shape: not used
    assert ort_providers(cuda1, ALL_ORT, None, tmp_path) == cuda_cpu
    assert ort_providers(cuda1, ALL_ORT, ("image", PROFILE), tmp_path) == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": "1",
                "trt_profile_min_shapes": "image:1x3x64x64",
                "trt_profile_opt_shapes": "image:1x3x352x608",
                "trt_profile_max_shapes": "image:16x3x1344x1344",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(tmp_path),
            },
        ),
        *cuda_cpu,
    ]
    no_cache = ort_providers(torch.device("cuda"), ALL_ORT, ("crops", PROFILE))
    assert no_cache[0] == (
        "TensorrtExecutionProvider",
        {
            "device_id": "0",
            "trt_profile_min_shapes": "crops:1x3x64x64",
            "trt_profile_opt_shapes": "crops:1x3x352x608",
            "trt_profile_max_shapes": "crops:16x3x1344x1344",
        },
    )


def test_onnxruntime_engine_on_cpu_runs_the_cpu_provider(engines: dict[tuple[str, str], Engine]) -> None:
    engine = engines["hrnetv2", "onnxruntime"]
    assert isinstance(engine, OnnxRuntimeEngine)
    assert engine.providers == ["CPUExecutionProvider"]
    assert _cuda_device_id(engine.session) is None  # read from ONNX Runtime: no CUDA provider


# GPU: TorchScript fp32/fp16, ONNX Runtime's CUDA provider, TensorRT fp32/fp16
# ---------------------------------------------------------------------------------------------

CUDA = torch.device("cuda:0")
# Against eager fp32 on the CPU. fp32 on a GPU runs TF32 convolutions (10 mantissa bits, like
# fp16's) by default in cuDNN (torch's default, so upstream's too), TensorRT and ONNX Runtime's
# CUDA provider: fp16-like deviations (4e-4..5e-3 measured for the fp16 ONNX on the CPU).
GPU_TOL = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 5e-2}
GPU_TOL_NO_TF32 = 1e-4  # TorchScript fp32 with TF32 off: fp32 arithmetic, other kernels' order


def _gpu_case(
    network: str,
    backend: str,
    precision: str,
    networks: dict[str, Network],
    cache_dir: Path,
    tol: float | None = None,
) -> list[float]:
    """The engine on CUDA against eager fp32 on the CPU at every test shape; the worst relative
    deviation per output."""
    net = networks[network]
    eager = create_engine("torch", net, CPU)
    engine = create_engine(backend, net, CUDA, precision=precision, cache=cache_dir)
    tol = GPU_TOL[precision] if tol is None else tol
    worst = [0.0] * len(net.io.output_names)
    for i, shape in enumerate(SHAPES[network]):
        x = inputs(shape, i)
        got = tuple(t.cpu() for t in engine(x.to(CUDA)))
        dev = rel_dev(got, eager(x))
        assert max(dev) <= tol, f"{network} {backend} {precision} {shape}: {dev}"
        worst = [max(a, b) for a, b in zip(worst, dev, strict=True)]
    print(
        f"\n{network} {backend} {precision} on {torch.cuda.get_device_name(CUDA)}: worst relative deviation {worst}"
    )
    return worst


@pytest.mark.needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("network", ["yolov3", "faster-rcnn-box-head", "hrnetv2"])
def test_torchscript_cuda(
    network: str, precision: str, networks: dict[str, Network], cache_dir: Path
) -> None:
    worst = _gpu_case(network, "torchscript", precision, networks, cache_dir)
    if precision != "fp32":
        assert max(worst) > 1e-5, f"{precision} results equal fp32's: the engine did not run in {precision}"


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("network", ["yolov3", "faster-rcnn-box-head", "hrnetv2"])
def test_torchscript_cuda_fp32_without_tf32(
    network: str, networks: dict[str, Network], cache_dir: Path
) -> None:
    """With TF32 off the CUDA engine computes in float32: within 1e-4 of the CPU's eager fp32."""
    _gpu_case(network, "torchscript", "fp32", networks, cache_dir, tol=GPU_TOL_NO_TF32)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("network", ["yolov3", "hrnetv2"])
def test_onnxruntime_cuda(network: str, networks: dict[str, Network], cache_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})")
    _gpu_case(network, "onnxruntime", "fp32", networks, cache_dir)
    engine = create_engine("onnxruntime", networks[network], CUDA, cache=cache_dir)
    assert isinstance(engine, OnnxRuntimeEngine)
    assert "CUDAExecutionProvider" in engine.providers


@pytest.mark.needs_cuda
def test_onnxruntime_tensorrt_provider(networks: dict[str, Network], cache_dir: Path) -> None:
    """Where ONNX Runtime has its TensorRT provider (and TensorRT loads), it runs first, over the
    config's profile: every test shape within tolerance, its engines cached beside the ONNX file."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no TensorrtExecutionProvider ({ort.get_available_providers()})")
    engine = create_engine("onnxruntime", networks["hrnetv2"], CUDA, cache=cache_dir)
    assert isinstance(engine, OnnxRuntimeEngine)
    if engine.providers[0] != "TensorrtExecutionProvider":
        pytest.skip(f"ONNX Runtime could not start its TensorRT provider here: {engine.providers}")
    _gpu_case("hrnetv2", "onnxruntime", "fp32", networks, cache_dir)
    assert any((cache_dir / "hrnetv2" / "ort-tensorrt").iterdir())


needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None,
    reason="TensorRT (the tensorrt Python package) is not installed",
)


@pytest.mark.needs_cuda
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("network", ["yolov3", "faster-rcnn-box-head", "hrnetv2"])
def test_tensorrt(network: str, precision: str, networks: dict[str, Network], cache_dir: Path) -> None:
    _gpu_case(network, "tensorrt", precision, networks, cache_dir)
    (plan,) = cache_dir.glob(f"{network}/tensorrt-{precision}-*.plan")
    meta = json.loads(plan.with_name(plan.name + ".json").read_text())
    major, minor = torch.cuda.get_device_capability(CUDA)
    assert meta["target"]["compute_capability"] == f"sm_{major}{minor}"
    assert meta["precision"] == precision
    assert meta["weights_sha256"] == networks[network].weights_sha256
    assert meta["config_hash"] == networks[network].config_hash
    assert NETWORKS[network].input_name in meta["profiles"]
    # the plan's source: the fp32 or the fp16 export (strongly typed plans take the ONNX types)
    (onnx_file,) = cache_dir.glob(f"{network}/onnx-{precision}-portable-*.onnx")
    assert meta["onnx_sha256"] == sha256_file(onnx_file)
    assert meta["strongly_typed"] is True


@pytest.mark.needs_cuda
@needs_tensorrt
def test_tensorrt_engine_serves_threads_on_their_own_streams(
    networks: dict[str, Network], cache_dir: Path
) -> None:
    """One plan, one execution context, four threads each on its own CUDA stream with its own
    batch shape: every answer equals that input's answer alone."""
    engine = create_engine("tensorrt", networks["hrnetv2"], CUDA, precision="fp32", cache=cache_dir)
    xs = [inputs((n, 3, 256, 256), 10 + n).to(CUDA) for n in (1, 2, 3, 4)] * 3
    alone = [tuple(t.cpu() for t in engine(x)) for x in xs]

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.cuda.stream(torch.cuda.Stream(CUDA)):
            out = engine(x)
            torch.cuda.current_stream(CUDA).synchronize()
        return tuple(t.cpu() for t in out)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, xs))
    for got, want in zip(answers, alone, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


@pytest.mark.needs_cuda
@needs_tensorrt
def test_tensorrt_plan_from_another_gpu_is_refused(
    networks: dict[str, Network], cache_dir: Path, tmp_path: Path
) -> None:
    create_engine("tensorrt", networks["faster-rcnn-box-head"], CUDA, cache=cache_dir)
    (plan,) = cache_dir.glob("faster-rcnn-box-head/tensorrt-fp32-*.plan")
    copy = tmp_path / plan.name
    shutil.copy(plan, copy)
    meta = json.loads(plan.with_name(plan.name + ".json").read_text())
    meta["key"]["device"] = "cuda-sm_10"
    copy.with_name(copy.name + ".json").write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError, match=r"cuda-sm_10.*cuda-sm_\d+"):
        load_engine_file(copy, "tensorrt", "faster-rcnn-box-head", CUDA, trusted=True)


# The [engine] section of the model configs
# ---------------------------------------------------------------------------------------------


def test_packaged_configs_have_profiles_for_every_network_input() -> None:
    for network, io in NETWORKS.items():
        profile = load_config(CONFIG_OF[network]).engine.profile(io.input_name)
        assert profile is not None, f"{CONFIG_OF[network]}.toml has no [engine.profiles.{io.input_name}]"
        assert len(profile.min) == len(io.example_shape)
        fixed = [a for a in range(len(io.example_shape)) if a not in io.input_dynamic]
        for a in fixed:  # axes that cannot vary must be pinned to the network's size
            assert profile.min[a] == profile.opt[a] == profile.max[a] == io.example_shape[a]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("min = [1, 3, 64, 64]\nopt = [1, 3, 32, 64]\nmax = [2, 3, 64, 64]", "min <= opt <= max"),
        ("min = [1, 3, 64]\nopt = [1, 3, 64, 64]\nmax = [2, 3, 64, 64]", "ranks differ"),
        ("min = [0, 3, 64, 64]\nopt = [1, 3, 64, 64]\nmax = [2, 3, 64, 64]", "positive integers"),
        ("min = [1, 3, 64, 64]\nopt = [1, 3, 64, 64]", "missing key 'max'"),
    ],
)
def test_bad_engine_profile_is_rejected(tmp_path: Path, table: str, match: str) -> None:
    text = (Path(__file__).parent.parent / "configs" / "hrnetv2.toml").read_text()
    text = text[: text.index("[engine.profiles.crops]")] + "[engine.profiles.crops]\n" + table + "\n"
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_torch_engine_leaves_the_callers_module_where_it_was() -> None:
    """An fp32 engine takes the module as it is when nothing must change (no copy of the weights),
    and a copy when it must move or convert it: the caller's module, which other engines may be
    made from, keeps its device and dtype, and the two no longer share weights."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    same = TorchEngine(net, torch.device("cpu"))
    assert same.module is net
    wide = net.to(torch.float64)
    engine = TorchEngine(wide, torch.device("cpu"))
    assert engine.module is not wide
    assert all(
        t.dtype == torch.float64 for t in [*wide.parameters(), *wide.buffers()] if t.is_floating_point()
    )
    assert all(
        t.dtype == torch.float32
        for t in [*engine.module.parameters(), *engine.module.buffers()]
        if t.is_floating_point()
    )
    x = torch.randn(1, 3, 8, 8)
    (got,) = engine(x)
    torch.testing.assert_close(got, wide(x.double()).float(), rtol=1e-5, atol=1e-5)
