"""benchmarks/profile_networks.py: oneDNN's verbose log is captured and split into convolution
kernels and the reorders torch wraps around them, on a real convolution."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_networks

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)"
)


# batch >= 2: for a batch of one this small, torch may take a convolution path other than oneDNN
@pytest.mark.parametrize("batch", [2, 3])
def test_a_plain_layout_convolution_shows_its_kernel_and_reorders(batch: int) -> None:
    torch.manual_seed(batch)
    x = torch.randn(batch, 32, 20, 24)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1, bias=False).eval()

    def run() -> torch.Tensor:
        with torch.no_grad():
            return conv(x)

    prims = profile_networks.onednn_primitives(run)
    convs = {k: v for k, v in prims.items() if k.startswith("convolution ")}
    assert sum(v["calls"] for v in convs.values()) == 1, prims
    # NCHW in and out: the input goes to the blocked layout and the output comes back
    assert prims["reorder (activations)"]["calls"] == 2, prims
    assert prims["reorder (weights)"]["calls"] == 1, prims
    assert all(v["ms"] >= 0 for v in prims.values())


def test_verbose_lines_other_than_exec_are_ignored() -> None:
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.9.0",
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,"
        "memory_descriptors,attributes,auxiliary,problem_desc,exec_time",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 "
        "dst:f32::blocked:Acdb16a::f0,attr-scratchpad:user,,64x3x3x3,0.25",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src:f32::blocked:aBcd16b::f0 "
        "dst:f32::blocked:abcd::f0,attr-scratchpad:user,,8x64x128x128,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,"
        "src:f32:a:blocked:abcd::f0,attr-scratchpad:user,alg:convolution_direct,mb8,2.0",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef",  # a torn line
        "some other output",
    ]
    got = profile_networks.parse_onednn_verbose(lines)
    assert got == {
        "reorder (weights)": {"ms": 0.25, "calls": 1},
        "reorder (activations)": {"ms": 1.5, "calls": 1},
        "convolution jit:avx512_core": {"ms": 2.0, "calls": 1},
    }
