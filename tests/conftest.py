"""Shared fixtures: RNG restoration, the needs_cuda marker, test data paths."""

from __future__ import annotations

import random
from collections.abc import Iterator

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
