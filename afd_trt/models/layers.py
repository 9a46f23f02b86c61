"""Building blocks shared by the three networks.

Attribute names follow the mm*-era checkpoints (``conv``/``bn``/``activate`` inside a conv
block, ``conv1``/``bn1``/.../``downsample`` inside residual blocks), so that the released
state dicts load with ``strict=True``. All tensors are float32 NCHW.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ConvModule", "conv_bn"]


class ConvModule(nn.Module):
    """Conv2d, then optionally BatchNorm2d, then optionally an activation.

    The conv carries a bias only when there is no norm layer (mmcv's ``bias='auto'``).
    ``act`` is ``None``, ``"relu"`` or ``"leaky"`` (LeakyReLU with slope 0.1, Darknet's).
    Input ``(B, in_ch, H, W)`` -> output ``(B, out_ch, H', W')``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        norm: bool = True,
        act: str | None = "leaky",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_ch)
        if act == "leaky":
            self.activate: nn.Module = nn.LeakyReLU(0.1, inplace=True)
        elif act == "relu":
            self.activate = nn.ReLU(inplace=True)
        elif act is not None:
            raise ValueError(f"ConvModule: act must be None, 'relu' or 'leaky', got {act!r}")
        self._norm = norm
        self._act = act is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self._norm:
            x = self.bn(x)
        if self._act:
            x = self.activate(x)
        return x


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, relu: bool = False) -> nn.Sequential:
    """``Sequential(Conv2d(bias=False), BatchNorm2d[, ReLU])`` with 'same' padding for odd kernels;
    state-dict keys ``0.weight``, ``1.{weight,bias,running_mean,running_var,num_batches_tracked}``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet bottleneck, 'pytorch' style (the stride sits on the 3x3 conv).

    1x1 conv ``in_ch -> out_ch/4``, 3x3 conv (stride), 1x1 conv ``-> out_ch``, each followed
    by BN; ReLU after the first two and after the residual sum. ``downsample`` maps the
    identity branch when the shape changes. ``(B, in_ch, H, W) -> (B, out_ch, H/s, W/s)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        mid = out_ch // 4
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)  # type: ignore[no-any-return]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, ReLU between and after the residual sum.
    ``(B, ch, H, W) -> (B, ch, H, W)`` (HRNet uses it without stride or downsample)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        if in_ch != out_ch:
            raise ValueError(f"BasicBlock without downsample needs in_ch == out_ch, got {in_ch} != {out_ch}")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)  # type: ignore[no-any-return]
