"""Build engines ahead of time into the engine cache.

``python -m build_engines`` and ``afd-trt build`` run the same code: for every requested model
(Faster R-CNN gives two networks, its stage 1 and its box head), backend and precision, the engine
is loaded from the cache when valid, else built into it (see ``afd_trt.engine_cache``). A JSON
summary (one record per engine: model, network, backend, precision, device, path, status, seconds) goes
to stdout. A model whose config or weights cannot be loaded is one ``failed`` record, and the
other models still build. Statuses: ``built``, ``cached``, ``failed``, ``unavailable`` (a backend,
device or precision this machine lacks) and ``eager`` (``auto`` runs eager torch for that network
here: no engine file to build, nothing missing). Exit status 1 when an engine could not be built
(unavailable backends only count with ``--strict``); 2 when the cache cannot be written.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from afd_trt.engine_cache import EngineCache, EngineKey
    from afd_trt.engines import Network

__all__ = ["add_arguments", "build", "main", "run"]

logger = logging.getLogger("build_engines")

MODELS = ("yolov3", "faster-rcnn", "hrnetv2")


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """``["yolov3=/a.pth", ...]`` -> ``{"yolov3": "/a.pth"}``, model names checked."""
    out = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or model not in MODELS or not value:
            raise ValueError(f"{what} must look like MODEL=PATH with MODEL one of {MODELS}, got {item!r}")
        out[model] = value
    return out


def _cache_dir(text: str) -> Path:
    """``--cache-dir``: a path, not an empty or blank string (``Path("")`` is the working folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path names no directory, got {text!r}")
    return Path(text)


def _check_writable(cache: EngineCache) -> None:
    """``OSError`` naming the cache when files cannot be made in it: a build there would go to the
    Detector's per-process scratch cache and be lost at exit."""
    try:
        cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache.root):
            pass
    except OSError as e:
        raise OSError(
            f"engine cache {cache.root} cannot be written ({type(e).__name__}: {e.strerror or e})"
        ) from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The build options (shared by ``python -m build_engines`` and ``afd-trt build``)."""
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all three")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=("torchscript", "onnxruntime", "openvino", "tensorrt", "auto"),
        default=["auto"],
        help="default: auto (the backend Detector(backend='auto') uses per network and device)",
    )
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"), default=["fp32"])
    p.add_argument("--device", default="auto", help="cpu, cuda:0, ... or auto (default)")
    p.add_argument(
        "--cache-dir", type=_cache_dir, default=None, help="engine cache (default: $AFD_TRT_CACHE/engines)"
    )
    p.add_argument(
        "--checkpoint", action="append", default=[], metavar="MODEL=PATH", help="weights file of a model"
    )
    p.add_argument(
        "--config", action="append", default=[], metavar="MODEL=PATH", help="config TOML of a model"
    )
    p.add_argument("--no-download", action="store_true", help="never download released weights")
    p.add_argument("--strict", action="store_true", help="fail on unavailable backends/precisions too")


def build(
    models: Sequence[str],
    backends: Sequence[str],
    precisions: Sequence[str],
    device: str = "auto",
    cache_dir: str | Path | None = None,
    checkpoints: dict[str, str] | None = None,
    configs: dict[str, str] | None = None,
    download: bool = True,
) -> list[dict[str, Any]]:
    """Build (or find valid in the cache) every requested engine; one record per engine."""
    from afd_trt.config import load_config
    from afd_trt.detector import resolve_device
    from afd_trt.engine_cache import EngineCache
    from afd_trt.engines import (
        BACKENDS,
        BackendUnavailableError,
        networks_of,
        resolve_backend,
        resolve_precision,
    )
    from afd_trt.models import build_model
    from afd_trt.weights import load_checkpoint, resolve_checkpoint

    dev = resolve_device(device)
    cache = EngineCache(cache_dir)
    _check_writable(cache)
    checkpoints, configs = checkpoints or {}, configs or {}
    records: list[dict[str, Any]] = []
    for model_name in models:
        t0 = time.perf_counter()
        try:
            cfg = load_config(configs.get(model_name, model_name))
            if cfg.type != model_name:
                raise ValueError(
                    f"config {configs[model_name]!r} describes a {cfg.type!r} model, not {model_name!r}"
                )
            path = resolve_checkpoint(cfg.weights, checkpoints.get(model_name), download=download)
            module = build_model(model_name)
            load_checkpoint(module, path)
            networks = networks_of(model_name, module.eval(), cfg)
        except Exception as e:  # this model's config or weights: the other models still build
            records.append(
                {
                    "model": model_name,
                    "network": model_name,
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            logger.error("%s: %s", model_name, e)
            continue
        for net in networks:
            for requested in backends:
                for asked in precisions:
                    rec: dict[str, Any] = {
                        "model": model_name,
                        "network": net.name,
                        "backend": requested,
                        "precision": asked,
                        "requested_precision": asked,
                        "device": str(dev),
                    }
                    t0 = time.perf_counter()
                    try:  # what this machine cannot build: a backend, device or precision it lacks
                        precision = resolve_precision(requested, dev, asked)
                        backend = resolve_backend(requested, net.name, dev, precision)
                        rec.update(backend=backend, precision=precision)
                        spec = BACKENDS.get(backend)
                        if spec is None:
                            raise BackendUnavailableError(f"backend {backend!r} builds no engine file")
                        key, suffix = spec.entry(net, dev, precision)
                    except (BackendUnavailableError, ValueError) as e:
                        if requested == "auto" and rec["backend"] == "torch":
                            # what the Detector runs here needs no file: nothing is missing
                            rec.update(status="eager", error=f"auto runs eager torch here: {e}")
                            logger.info("%s %s: %s", net.name, rec["precision"], rec["error"])
                        else:
                            rec.update(status="unavailable", error=str(e))
                            logger.warning("%s %s %s: %s", net.name, rec["backend"], rec["precision"], e)
                    else:
                        rec.update(_build_one(cache, key, suffix, backend, net, dev, precision))
                    rec["seconds"] = round(time.perf_counter() - t0, 3)
                    records.append(rec)
    return records


def _build_one(
    cache: EngineCache,
    key: EngineKey,
    suffix: str,
    backend: str,
    net: Network,
    dev: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Build (or find valid) one engine whose backend, device and precision were checked: its
    record's ``status`` (``built``, ``cached``, ``failed``, or ``unavailable`` for a runtime that
    turns out to lack a feature), ``path`` and ``error``. A ValueError here is a failed build (a
    config without the profile TensorRT needs, ...), not an unavailable backend."""
    from afd_trt.engines import BackendUnavailableError, create_engine

    entry = cache.path_for(key, suffix)
    was_valid = cache.validate(entry, key) is None
    try:
        create_engine(backend, net, dev, precision=precision, cache=cache)
    except BackendUnavailableError as e:
        logger.warning("%s %s %s: %s", net.name, backend, precision, e)
        return {"status": "unavailable", "error": str(e)}
    except Exception as e:  # a failed build: report it and go on with the others
        logger.exception("%s %s %s: build failed", net.name, backend, precision)
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    if not was_valid and (why := cache.validate(entry, key)) is not None:
        # built, but not kept: the Detector fell back to its scratch cache (a model folder that
        # cannot be written, say), which goes at exit
        return {"status": "failed", "error": f"built but not kept in the cache at {entry}: {why}"}
    return {"path": str(entry), "status": "cached" if was_valid else "built"}


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line (see :func:`add_arguments`); prints the JSON summary."""
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        logger.error("--cache-dir %s is not a directory", args.cache_dir)
        return 2
    try:
        records = build(
            args.models,
            args.backends,
            args.precisions,
            device=args.device,
            cache_dir=args.cache_dir,
            checkpoints=_pairs(args.checkpoint, "--checkpoint"),
            configs=_pairs(args.config, "--config"),
            download=not args.no_download,
        )
    except (OSError, ValueError, RuntimeError) as e:
        logger.error("%s", e)
        return 2
    print(json.dumps(records, indent=2))
    bad = {"failed", "unavailable"} if args.strict else {"failed"}
    return 1 if any(r["status"] in bad for r in records) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build_engines", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return run(args)
