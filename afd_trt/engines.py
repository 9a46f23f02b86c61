"""Network runners behind one small Protocol, chosen by name from a plain dict.

An engine runs one network: float32 tensors in, a flat tuple of float32 tensors out (nested
model outputs are flattened depth-first). The pipelines never know which backend runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["ENGINES", "Engine", "TorchEngine", "create_engine", "flatten_outputs"]

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """Runs one network on a device."""

    name: str
    device: torch.device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


def flatten_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    """Flatten nested tuples/lists of tensors depth-first into one tuple."""
    if isinstance(out, torch.Tensor):
        return (out,)
    flat: list[torch.Tensor] = []
    for item in out:
        flat.extend(flatten_outputs(item))
    return tuple(flat)


class TorchEngine:
    """Eager PyTorch: the module as written, in eval mode under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            return flatten_outputs(self.module(*(x.to(self.device) for x in inputs)))


EngineFactory = Callable[[nn.Module, torch.device], Engine]

ENGINES: dict[str, EngineFactory] = {
    "torch": TorchEngine,
}


def create_engine(backend: str, module: nn.Module, device: torch.device) -> Engine:
    """Build the engine named ``backend`` for ``module`` on ``device``."""
    try:
        factory = ENGINES[backend]
    except KeyError:
        raise ValueError(f"backend must be one of {sorted(ENGINES)}, got {backend!r}") from None
    return factory(module, device)
