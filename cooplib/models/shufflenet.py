"""ShuffleNet V1 / V2 for CIFAR, as RepDistiller builds its ``ShuffleV1`` / ``ShuffleV2``.

Follows HobbitLong/RepDistiller, models/ShuffleNetv1.py and models/ShuffleNetv2.py
(commit b84f547; from kuangliu/pytorch-cifar). Both have a 1x1 conv stem (24 channels,
stride 1, no max pool) and three stages that each halve the map (32 -> 16 -> 8 -> 4), so
``layer1``..``layer3`` are RepDistiller's feat[1..3] (see `cooplib.models.staged`).
Neither reference initialises its weights: PyTorch's defaults are kept.

- V1 (groups 3): stages of 4 / 8 / 4 bottlenecks with 240 / 480 / 960 channels. A
  bottleneck is grouped 1x1 (+ BN + ReLU), channel shuffle, 3x3 depthwise (+ BN + ReLU:
  the reference keeps this ReLU, the paper does not), grouped 1x1 (+ BN); the stage's
  first block has stride 2 and concatenates a 3x3 average-pooled input (so its convs
  output 240 - 24 = 216, ...), the others add the input; ReLU after. The very first 1x1
  conv (on the 24 stem channels) is not grouped.
- V2 (size 1x): stages of a down-sampling block + 3 / 7 / 3 basic blocks with 116 / 232
  / 464 channels, then a 1x1 conv to 1024 (+ BN + ReLU) in ``pool``. A basic block splits
  the channels in halves, passes one through 1x1 / 3x3 depthwise / 1x1 and concatenates;
  a down-sampling block runs both halves' paths on the whole input with stride 2; each
  ends with a channel shuffle of 2 groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.registry import MODELS
from .staged import StagedNet, global_pool

STEM = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups' channels (ShuffleNet's shuffle)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stem(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, STEM, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU(inplace=True))


# ------------------------------------------------------------------------- V1


class ShuffleV1Block(nn.Module):
    """ShuffleNet V1 bottleneck; stride 2 concatenates the average-pooled input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int | None = None) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.g1 = groups if first_groups is None else first_groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(StagedNet):
    def __init__(self, num_classes: int, in_channels: int = 3, *, widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.stem = _stem(in_channels)
        cin, stages = STEM, []
        for width, n in zip(widths, blocks):
            layers = []
            for i in range(n):
                first = cin == STEM  # the reference's ``g = 1 if in_planes == 24``
                layers.append(ShuffleV1Block(cin, width - cin if i == 0 else width, 2 if i == 0 else 1, groups,
                                             1 if first else None))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dims = tuple(widths)
        self.pool = global_pool()
        self.fc = nn.Linear(cin, num_classes)


@MODELS.register("shufflenetv1", "shufflev1")
def shufflenetv1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1``: groups 3, 240 / 480 / 960 channels, 4 / 8 / 4 blocks."""
    return ShuffleNetV1(num_classes, in_channels)


# ------------------------------------------------------------------------- V2


def _cbr(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class ShuffleV2Block(nn.Module):
    """Split in halves; 1x1 + BN + ReLU, 3x3 depthwise + BN, 1x1 + BN + ReLU on one; concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keep = channels // 2
        c = channels - self.keep
        self.branch = nn.Sequential(_cbr(c, c, 1), _cbr(c, c, 3, groups=c, relu=False), _cbr(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.keep], x[:, self.keep:]
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 block: both paths read the whole input; concat (doubling channels), shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(_cbr(cin, cin, 3, 2, groups=cin, relu=False), _cbr(cin, mid, 1))
        self.right = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, 2, groups=mid, relu=False), _cbr(mid, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(StagedNet):
    def __init__(self, num_classes: int, in_channels: int = 3, *, widths: tuple[int, int, int] = (116, 232, 464),
                 blocks: tuple[int, int, int] = (3, 7, 3), last: int = 1024) -> None:
        super().__init__()
        self.stem = _stem(in_channels)
        cin, stages = STEM, []
        for width, n in zip(widths, blocks):
            stages.append(nn.Sequential(ShuffleV2Down(cin, width), *(ShuffleV2Block(width) for _ in range(n))))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dims = tuple(widths)
        self.pool = nn.Sequential(_cbr(cin, last, 1), *global_pool())
        self.fc = nn.Linear(last, num_classes)


@MODELS.register("shufflenetv2", "shufflev2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2`` (net_size 1): 116 / 232 / 464 channels, 3 / 7 / 3 blocks, 1024."""
    return ShuffleNetV2(num_classes, in_channels)
