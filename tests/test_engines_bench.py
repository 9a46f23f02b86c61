"""benchmarks/engines.py: the results table and the recorded command (the timings themselves
take minutes, so main is not run here)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from afd_trt.bench import script_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import engines


def _row(backend: str, precision: str, ms: float, vs: float | None) -> dict[str, object]:
    return {
        "network": "hrnetv2", "shape": [8, 3, 256, 256], "backend": backend, "precision": precision,
        "ms": ms, "vs_eager_fp32": vs, "rel_dev": 1e-7,
    }  # fmt: skip


def test_table_without_eager_fp32_says_n_a() -> None:
    """Eager fp32 torch unavailable for a network: its other rows have no ratio, shown as n/a."""
    rows = [
        {"network": "hrnetv2", "shape": [8, 3, 256, 256], "backend": "torch", "precision": "fp32",
         "error": "no such backend"},
        _row("onnxruntime", "fp32", 12.34, None),
        _row("openvino", "fp32", 10.0, 1.5),
    ]  # fmt: skip
    lines = engines.table(rows).splitlines()
    assert len(lines) == 5
    assert lines[2] == "| hrnetv2 | torch | fp32 | unavailable: no such backend | | |"
    assert lines[3] == "| hrnetv2 | onnxruntime | fp32 | 12.3 | n/a | 1.0e-07 |"
    assert lines[4] == "| hrnetv2 | openvino | fp32 | 10.0 | 1.50x | 1.0e-07 |"


def test_command_line_is_python_and_the_quoted_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--weights", "/tmp/my weights", "--networks", "yolov3", "hrnetv2", "--json", "it's.json"]
    line = script_command("benchmarks/engines.py", argv)
    assert line.startswith("python benchmarks/engines.py --weights '/tmp/my weights' ")
    assert shlex.split(line) == ["python", "benchmarks/engines.py", *argv]
    # main() without argv: the process's own arguments
    monkeypatch.setattr(sys, "argv", ["benchmarks/engines.py", "--weights", "a b"])
    assert script_command("benchmarks/engines.py", None) == "python benchmarks/engines.py --weights 'a b'"
