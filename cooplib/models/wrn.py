"""Wide ResNets (Zagoruyko & Komodakis 2016) as RepDistiller builds them for CIFAR.

Follows HobbitLong/RepDistiller, models/wrn.py (commit b84f547): WRN-d-k has a 16-channel
3x3 stem conv, three stages of n = (d - 4) / 6 pre-activation blocks with 16k, 32k, 64k
channels (strides 1, 2, 2), then BN-ReLU, global average pool and the classifier. A
block is BN-ReLU-conv3x3-BN-ReLU-conv3x3; where the channels change, a bias-free 1x1
conv on the *activated* input is the shortcut, otherwise the raw input is added. No
dropout (RepDistiller's dropRate 0).

Pre-activation means a stage's output has no final BN-ReLU: ``layer3`` is the raw sum,
as RepDistiller's feat[3], and ``pool`` holds the network's last BN-ReLU before the
average (its feat[4]).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..base.errors import ConfigError
from ..base.registry import MODELS
from .staged import StagedNet, global_pool, init_like_repdistiller


class WideBlock(nn.Module):
    """Pre-activation basic block; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        same = in_planes == planes and stride == 1
        self.shortcut = None if same else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(a))))
        # RepDistiller adds the raw input when shapes agree, the projected activation otherwise
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(StagedNet):
    """WRN-``depth``-``widen`` (depth = 6n + 4) with the shared stem/layer/pool/fc layout."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"a WRN has depth 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen < 1:
            raise ConfigError(f"a WRN's widen factor must be >= 1, got {widen}")
        n = (depth - 4) // 6
        self.depth, self.widen, self.blocks_per_stage = depth, widen, n
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.feature_dims = widths
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        stages, cin = [], 16
        for width, stride in zip(widths, (1, 2, 2)):
            stages.append(nn.Sequential(*(WideBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(n))))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), *global_pool())
        self.fc = nn.Linear(cin, num_classes)
        init_like_repdistiller(self, linear_std=None)


def wide_resnet(depth: int, widen: int) -> Callable[..., WideResNet]:
    """The factory ``(num_classes, in_channels=3)`` of WRN-depth-widen."""
    return partial(WideResNet, depth, widen)


# RepDistiller's names; any other wrn_{6n+4}_{k} is accepted by the family below
for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    MODELS.register(f"wrn_{_depth}_{_widen}")(wide_resnet(_depth, _widen))


@MODELS.register_family
def any_wrn(name: str) -> Callable[..., WideResNet] | None:
    """``wrn_{depth}_{widen}`` at any depth 6n+4 and widen factor >= 1."""
    match = re.fullmatch(r"wrn_(\d+)_(\d+)", name)
    if match is None:
        return None
    depth, widen = int(match[1]), int(match[2])
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        raise ConfigError(f"{name!r}: a WRN is wrn_{{depth}}_{{widen}} with depth 6n+4, n >= 1 "
                          f"(10, 16, 22, 28, 34, 40, ...) and widen >= 1, e.g. wrn_16_2 or wrn_40_2")
    return wide_resnet(depth, widen)
