"""``afd_trt.host_memory``: glibc's allocator set to keep freed memory, so a buffer freed and
allocated again does not fault its pages in afresh; the environment's opt-out and bad values.

The setting is process-wide and permanent, so each measurement runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from afd_trt import host_memory

needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

_MB = 64
_PROBE = f"""
import json, resource, sys
import torch
from afd_trt import host_memory

applied = host_memory.apply_setting()

def faults_of(make):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = make()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, x

faults = []
for _ in range(24):  # a buffer of {_MB} MB made, filled and freed, as a network's activation is
    n, x = faults_of(lambda: torch.empty({_MB} << 18).fill_(1.0))
    faults.append(n)
    del x
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def _probe(setting: str | None, cwd: Path) -> dict[str, object]:
    """Runs in ``cwd``, away from the checkout, whose ``afd_trt/`` sources would shadow the
    installed package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(host_memory.ENV_MALLOC, None)
    if setting is not None:
        env[host_memory.ENV_MALLOC] = setting
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@needs_glibc
def test_kept_memory_is_reused_without_page_faults_and_system_leaves_glibc_alone(tmp_path: Path) -> None:
    pages = (_MB << 20) // 4096
    kept = _probe(None, tmp_path)  # the default
    assert kept["applied"] == "keep"
    faults = kept["faults"]
    assert isinstance(faults, list)
    assert faults[0] >= pages * 0.9  # the first time the pages are new
    # Then freed blocks come back, mapped: after a few rounds (up to 9 seen), since torch's
    # 64-byte aligned block does not fit the hole the same block left (glibc's memalign), and
    # the heap grows until freed neighbours merge into a hole that fits.
    assert max(faults[-6:]) < pages * 0.05, faults
    system = _probe("system", tmp_path)
    assert system["applied"] == "system"
    faults = system["faults"]
    assert isinstance(faults, list)
    # glibc's own rule: a block this size is mapped for each allocation and unmapped when freed
    assert min(faults) >= pages * 0.9, faults


def test_setting_comes_from_the_environment_and_a_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(host_memory.ENV_MALLOC, raising=False)
    assert host_memory.malloc_setting() == "keep"
    monkeypatch.setenv(host_memory.ENV_MALLOC, " System ")
    assert host_memory.malloc_setting() == "system"
    monkeypatch.setenv(host_memory.ENV_MALLOC, "")
    assert host_memory.malloc_setting() == "keep"
    monkeypatch.setenv(host_memory.ENV_MALLOC, "jemalloc")
    with pytest.raises(
        ValueError, match=r"\$AFD_TRT_MALLOC must be one of \('keep', 'system'\), got 'jemalloc'"
    ):
        host_memory.malloc_setting()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "256", 2**31])
def test_thresholds_must_be_positive_byte_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="must be a positive number of bytes"):
        host_memory.keep_freed_memory(mmap_threshold=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trim_threshold must be a positive number of bytes"):
        host_memory.keep_freed_memory(trim_threshold=bad)  # type: ignore[arg-type]
