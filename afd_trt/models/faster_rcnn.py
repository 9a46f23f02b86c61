"""Faster R-CNN face detector network (ResNet-50, FPN, RPN head, Shared2FC box head).

Submodule names give exactly the state-dict keys of the released mmdet checkpoint
(``backbone.layer3.5.bn2.weight``, ``neck.fpn_convs.0.conv.bias``, ``rpn_head.rpn_cls.weight``,
``roi_head.bbox_head.shared_fcs.0.weight``, ...). The network stops at raw head tensors: anchor
decoding, proposal NMS and RoIAlign (which has no parameters) happen outside it, so the two
halves -- :meth:`FasterRCNN.forward` and :meth:`FasterRCNN.box_head` -- are traced separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Bottleneck, ConvModule

__all__ = ["FPN_STRIDES", "RPN_NUM_ANCHORS", "FasterRCNN", "Shared2FCBoxHead"]

FPN_STRIDES = (4, 8, 16, 32, 64)
RPN_NUM_ANCHORS = 3  # ratios 0.5, 1, 2 at one scale


def _res_layer(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    """ResNet stage: ``blocks`` bottlenecks; the first one strides and projects the identity."""
    downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [Bottleneck(in_ch, out_ch, stride, downsample)]
    layers += [Bottleneck(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 ('pytorch' style). ``(B,3,H,W) -> (C2, C3, C4, C5)``: strides 4/8/16/32,
    channels 256/512/1024/2048."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _res_layer(64, 256, 3, 1)
        self.layer2 = _res_layer(256, 512, 4, 2)
        self.layer3 = _res_layer(512, 1024, 6, 2)
        self.layer4 = _res_layer(1024, 2048, 3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals to 256 ch, top-down nearest upsampling (to the finer map's
    size) and sums, 3x3 output convs, plus P6 = max_pool2d(P5, kernel 1, stride 2).

    ``(C2..C5) -> (P2..P6)``, each ``(B, 256, h, w)`` at strides 4, 8, 16, 32, 64.
    """

    def __init__(self, in_chs: tuple[int, ...] = (256, 512, 1024, 2048), out_ch: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_ch, 1, norm=False, act=None) for c in in_chs)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_ch, out_ch, 3, padding=1, norm=False, act=None) for _ in in_chs
        )

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            finer = laterals[i - 1]
            laterals[i - 1] = finer + F.interpolate(laterals[i], size=finer.shape[2:], mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs to 3 objectness logits and 3x4 box deltas per cell.

    Per level ``(B,256,h,w) -> cls (B,3,h,w), reg (B,12,h,w)``; reg channel ``a*4 + k`` is delta
    ``k`` (dx, dy, dw, dh) of anchor ``a``.
    """

    def __init__(self, ch: int = 256) -> None:
        super().__init__()
        self.rpn_conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.rpn_cls = nn.Conv2d(ch, RPN_NUM_ANCHORS, 1)
        self.rpn_reg = nn.Conv2d(ch, RPN_NUM_ANCHORS * 4, 1)

    def forward(
        self, feats: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        hidden = [F.relu(self.rpn_conv(f)) for f in feats]
        return tuple(self.rpn_cls(h) for h in hidden), tuple(self.rpn_reg(h) for h in hidden)


class Shared2FCBoxHead(nn.Module):
    """Two shared FC+ReLU layers (12544 -> 1024 -> 1024), then class logits and box deltas.

    ``forward(roi_feats)``: float32 ``(K, 256, 7, 7)`` RoIAlign features ->
    ``(cls (K, 2) logits [face, background], reg (K, 4) deltas (dx, dy, dw, dh) for the face class)``.
    """

    def __init__(self, in_ch: int = 256, roi_size: int = 7, fc_ch: int = 1024, num_classes: int = 1) -> None:
        super().__init__()
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_ch * roi_size * roi_size, fc_ch), nn.Linear(fc_ch, fc_ch)]
        )
        self.fc_cls = nn.Linear(fc_ch, num_classes + 1)
        self.fc_reg = nn.Linear(fc_ch, 4 * num_classes)

    def forward(self, roi_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """Container that only exists for the ``roi_head.bbox_head.*`` key prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.bbox_head = Shared2FCBoxHead()


class FasterRCNN(nn.Module):
    """The anime-face Faster R-CNN (R50-FPN).

    ``forward(x)``: ``x`` float32 ``(B, 3, H, W)``, RGB normalised with the ImageNet mean/std (0..255
    scale), H and W multiples of 32. Returns ``(feats, rpn_cls, rpn_reg)``: ``feats`` the 4 FPN maps
    RoIAlign samples (strides 4, 8, 16, 32; each ``(B, 256, H/s, W/s)``), ``rpn_cls`` 5 maps
    ``(B, 3, h, w)`` and ``rpn_reg`` 5 maps ``(B, 12, h, w)`` for strides 4..64.

    ``box_head(roi_feats)`` runs the second stage, see :class:`Shared2FCBoxHead`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNet50()
        self.neck = FPN()
        self.rpn_head = RPNHead()
        self.roi_head = RoIHead()

    def forward(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        feats = self.neck(self.backbone(x))
        rpn_cls, rpn_reg = self.rpn_head(feats)
        return feats[:4], rpn_cls, rpn_reg

    def box_head(self, roi_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.roi_head.bbox_head(roi_feats)  # type: ignore[no-any-return]
