"""YOLOv3 face detector network (Darknet-53 backbone, YOLOv3 neck, 3-level head).

Submodule names give exactly the state-dict keys of the released mmdet checkpoint
(``backbone.conv_res_block3.res0.conv1.conv.weight``, ``neck.detect1.conv1.bn.running_mean``,
``bbox_head.convs_pred.0.bias``, ...). ``forward`` returns the raw prediction maps only;
anchor decoding, thresholds and NMS happen outside the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvModule

__all__ = ["NUM_ANCHORS", "NUM_ATTRIB", "STRIDES", "YOLOv3"]

NUM_ANCHORS = 3
NUM_ATTRIB = 6  # tx, ty, tw, th, objectness, face class
STRIDES = (32, 16, 8)


class DarknetResBlock(nn.Module):
    """1x1 conv to half the channels, 3x3 conv back, plus the input. ``(B,C,H,W) -> (B,C,H,W)``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = ConvModule(ch, ch // 2, 1)
        self.conv2 = ConvModule(ch // 2, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x  # type: ignore[no-any-return]


def _conv_res_block(in_ch: int, out_ch: int, repeats: int) -> nn.Sequential:
    """A stride-2 3x3 conv (key ``conv``) then ``repeats`` residual blocks (keys ``res0``, ``res1``, ...)."""
    block = nn.Sequential()
    block.add_module("conv", ConvModule(in_ch, out_ch, 3, stride=2, padding=1))
    for i in range(repeats):
        block.add_module(f"res{i}", DarknetResBlock(out_ch))
    return block


class Darknet53(nn.Module):
    """Darknet-53. ``(B,3,H,W) -> (C3, C4, C5)``: strides 8/16/32, channels 256/512/1024."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvModule(3, 32, 3, padding=1)
        self.conv_res_block1 = _conv_res_block(32, 64, 1)
        self.conv_res_block2 = _conv_res_block(64, 128, 2)
        self.conv_res_block3 = _conv_res_block(128, 256, 8)
        self.conv_res_block4 = _conv_res_block(256, 512, 8)
        self.conv_res_block5 = _conv_res_block(512, 1024, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv_res_block2(self.conv_res_block1(self.conv1(x)))
        c3 = self.conv_res_block3(x)
        c4 = self.conv_res_block4(c3)
        c5 = self.conv_res_block5(c4)
        return c3, c4, c5


class DetectionBlock(nn.Module):
    """Five convs alternating 1x1 (``out_ch``) and 3x3 (``2*out_ch``). ``(B,in_ch,H,W) -> (B,out_ch,H,W)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvModule(in_ch, out_ch, 1)
        self.conv2 = ConvModule(out_ch, 2 * out_ch, 3, padding=1)
        self.conv3 = ConvModule(2 * out_ch, out_ch, 1)
        self.conv4 = ConvModule(out_ch, 2 * out_ch, 3, padding=1)
        self.conv5 = ConvModule(2 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))  # type: ignore[no-any-return]


class YOLOv3Neck(nn.Module):
    """Top-down path: C5 -> detect1; 1x1 conv, nearest 2x upsample, concat [up, C4] -> detect2; same with C3.

    ``(C3, C4, C5) -> (P5 (B,512,H/32,W/32), P4 (B,256,H/16,W/16), P3 (B,128,H/8,W/8))``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.detect1 = DetectionBlock(1024, 512)
        self.conv1 = ConvModule(512, 256, 1)
        self.detect2 = DetectionBlock(256 + 512, 256)
        self.conv2 = ConvModule(256, 128, 1)
        self.detect3 = DetectionBlock(128 + 256, 128)

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = feats
        p5 = self.detect1(c5)
        up = F.interpolate(self.conv1(p5), scale_factor=2.0, mode="nearest")
        p4 = self.detect2(torch.cat((up, c4), 1))
        up = F.interpolate(self.conv2(p4), scale_factor=2.0, mode="nearest")
        p3 = self.detect3(torch.cat((up, c3), 1))
        return p5, p4, p3


class YOLOv3Head(nn.Module):
    """Per level: 3x3 ConvModule bridge, then a 1x1 conv to ``3 anchors * 6 attributes`` channels.

    Channel ``a*6 + k`` of a map is attribute ``k`` (tx, ty, tw, th, objectness, class) of anchor ``a``.
    """

    def __init__(self) -> None:
        super().__init__()
        in_chs, mid_chs = (512, 256, 128), (1024, 512, 256)
        self.convs_bridge = nn.ModuleList(
            ConvModule(i, m, 3, padding=1) for i, m in zip(in_chs, mid_chs, strict=True)
        )
        self.convs_pred = nn.ModuleList(nn.Conv2d(m, NUM_ANCHORS * NUM_ATTRIB, 1) for m in mid_chs)

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p5, p4, p3 = feats
        b, p = self.convs_bridge, self.convs_pred
        return p[0](b[0](p5)), p[1](b[1](p4)), p[2](b[2](p3))


class YOLOv3(nn.Module):
    """The anime-face YOLOv3.

    ``forward(x)``: ``x`` float32 ``(B, 3, H, W)``, RGB scaled to [0, 1] (``/255``, no mean), H and W
    multiples of 32. Returns the raw prediction maps for strides 32, 16, 8, each float32
    ``(B, 18, H/s, W/s)`` (see :class:`YOLOv3Head` for the channel layout).
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Darknet53()
        self.neck = YOLOv3Neck()
        self.bbox_head = YOLOv3Head()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.bbox_head(self.neck(self.backbone(x)))  # type: ignore[no-any-return]
