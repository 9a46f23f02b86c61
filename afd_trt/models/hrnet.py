"""HRNetV2-W18 landmark network with the 28-keypoint heatmap head.

Submodule names give exactly the state-dict keys of the released mmpose checkpoint
(``backbone.stage3.2.branches.1.3.conv2.weight``, ``backbone.stage4.0.fuse_layers.3.0.2.1.bias``,
``keypoint_head.final_layer.3.weight``, ...). Positions that hold no parameters in the original
(the "same branch" slot of a fuse row, unchanged branches of a transition) are ``nn.Identity``
here, so the numbering of the others matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BasicBlock, Bottleneck, conv_bn

__all__ = ["BRANCH_CHANNELS", "HEATMAP_SIZE", "INPUT_SIZE", "NUM_KEYPOINTS", "HRNetV2"]

BRANCH_CHANNELS = (18, 36, 72, 144)
NUM_KEYPOINTS = 28
INPUT_SIZE = (256, 256)  # (w, h)
HEATMAP_SIZE = (64, 64)  # (w, h)


def _fuse_path(j: int, i: int) -> nn.Module:
    """Map branch ``j``'s features onto branch ``i``'s resolution and channels.

    ``j > i``: 1x1 conv+BN then bilinear upsampling by ``2**(j-i)`` (align_corners=False).
    ``j < i``: ``i-j`` stride-2 3x3 conv+BN steps (ReLU between them, not after the last).
    """
    cj, ci = BRANCH_CHANNELS[j], BRANCH_CHANNELS[i]
    if j > i:
        return nn.Sequential(
            nn.Conv2d(cj, ci, 1, bias=False),
            nn.BatchNorm2d(ci),
            nn.Upsample(scale_factor=float(2 ** (j - i)), mode="bilinear", align_corners=False),
        )
    if j == i:
        return nn.Identity()
    steps = [conv_bn(cj, cj, 3, stride=2, relu=True) for _ in range(i - j - 1)]
    steps.append(conv_bn(cj, ci, 3, stride=2))
    return nn.Sequential(*steps)


class HRModule(nn.Module):
    """``n`` parallel branches of 4 BasicBlocks, then every output branch ``i`` sums all
    branches mapped to its resolution and applies ReLU. ``list of n (B,C_k,H_k,W_k)`` -> same shapes."""

    def __init__(self, num_branches: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(BRANCH_CHANNELS[k], BRANCH_CHANNELS[k]) for _ in range(4)))
            for k in range(num_branches)
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_path(j, i) for j in range(num_branches)) for i in range(num_branches)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        outs = []
        for row in cast(Iterable[nn.ModuleList], self.fuse_layers):
            y = row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + row[j](xs[j])
            outs.append(self.relu(y))
        return outs


def _transition(num_pre: int, num_cur: int, pre_last_ch: int) -> nn.ModuleList:
    """Branches entering a stage: existing ones pass through (Identity) unless their channel count
    changes (3x3 conv+BN+ReLU); the new branch is a stride-2 3x3 conv+BN+ReLU from the last old one."""
    layers: list[nn.Module] = []
    for i in range(num_cur):
        if i < num_pre:
            in_ch = pre_last_ch if num_pre == 1 else BRANCH_CHANNELS[i]
            same = in_ch == BRANCH_CHANNELS[i]
            layers.append(nn.Identity() if same else conv_bn(in_ch, BRANCH_CHANNELS[i], 3, relu=True))
        else:
            src = pre_last_ch if num_pre == 1 else BRANCH_CHANNELS[num_pre - 1]
            layers.append(nn.Sequential(conv_bn(src, BRANCH_CHANNELS[i], 3, stride=2, relu=True)))
    return nn.ModuleList(layers)


class HRNetW18(nn.Module):
    """HRNetV2-W18 backbone. ``(B,3,256,256)`` -> 4 maps ``(B,18,64,64), (B,36,32,32),
    (B,72,16,16), (B,144,8,8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(
            Bottleneck(64, 256, downsample=downsample), *(Bottleneck(256, 256) for _ in range(3))
        )
        self.transition1 = _transition(1, 2, 256)
        self.stage2 = nn.Sequential(HRModule(2))
        self.transition2 = _transition(2, 3, 0)
        self.stage3 = nn.Sequential(*(HRModule(3) for _ in range(4)))
        self.transition3 = _transition(3, 4, 0)
        self.stage4 = nn.Sequential(*(HRModule(4) for _ in range(3)))

    @staticmethod
    def _enter(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        """Apply a transition: branch ``i`` from ``ys[i]`` if it exists, else from the last branch."""
        return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            ys = self._enter(transition, ys)
            for module in stage:
                ys = module(ys)
        return ys


class HeatmapHead(nn.Module):
    """resize_concat (bilinear, align_corners=False) of the 4 branches to the first one's size
    (270 channels), then ``final_layer`` = 1x1 conv 270->270, BN, ReLU, 1x1 conv 270->28."""

    def __init__(self) -> None:
        super().__init__()
        ch = sum(BRANCH_CHANNELS)
        self.final_layer = nn.Sequential(
            nn.Conv2d(ch, ch, 1),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, NUM_KEYPOINTS, 1),
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], 1)
        return self.final_layer(x)  # type: ignore[no-any-return]


class HRNetV2(nn.Module):
    """The anime-face landmark model.

    ``forward(x)``: ``x`` float32 ``(B, 3, 256, 256)`` face crops, RGB in [0, 1] normalised with the
    ImageNet mean/std. Returns float32 heatmaps ``(B, 28, 64, 64)`` (heatmap pixel = 4 input pixels).
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = HRNetW18()
        self.keypoint_head = HeatmapHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(x))  # type: ignore[no-any-return]
