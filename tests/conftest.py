"""Shared fixtures: RNG restoration, the needs_cuda marker, test data paths."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs_cuda: no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng_state() -> Iterator[None]:
    """Tests may seed freely; the global RNG state is put back afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)  # noqa: NPY002
    torch.set_rng_state(torch_state)


_WEIGHTS: dict[int, dict[str, dict[str, Path]]] = {}


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 CUDA convolutions and matmuls in full precision for the test. TF32 (cuDNN's default on
    Ampere and newer) has fp16's 10 mantissa bits: deviations of ~1e-3 between kernels."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, dict[str, Path]]]:
    """seed -> {model: {"pth"|"safetensors": path}} of afd_trt's seeded test checkpoints, written once per seed."""
    from afd_trt.test_weights import write_test_weights

    def get(seed: int) -> dict[str, dict[str, Path]]:
        if seed not in _WEIGHTS:
            _WEIGHTS[seed] = write_test_weights(tmp_path_factory.mktemp(f"weights_seed{seed}"), seed=seed)
        return _WEIGHTS[seed]

    return get
