"""MobileNetV2 at width 0.5 for CIFAR: RepDistiller's ``mobile_half`` ("MobileNetV2").

Follows HobbitLong/RepDistiller, models/mobilenetv2.py (commit b84f547; from the RCO
code): ``mobilenetv2_T_w(T=6, W=0.5)``. It differs from torchvision's MobileNetV2 in
ways that change parameters and FLOPs, kept here:

- the stem is a stride-2 3x3 conv (32x32 -> 16x16) with 16 channels (32 x 0.5);
- every inverted residual has its 1x1 expansion conv, even at expansion 1;
- ReLU, not ReLU6; the last 1x1 conv keeps 1280 channels (it is only widened, never
  narrowed, by the width multiplier), and there is no dropout.

Groups (t, c, n, s) at width 0.5: (1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2),
(6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1). Layout (see
`cooplib.models.staged`): ``layer1`` = groups 0-1 (RepDistiller's feat[1], 16x16),
``layer2`` = group 2 (feat[2], 8x8), ``layer3`` = (groups 3-4, groups 5-6): ``layer3.0``
is feat[3] (4x4), ``layer3`` feat[4] (2x2); ``pool`` = 1x1 conv to 1280 + BN + ReLU +
global average (RepDistiller's fixed-size average equals it on 32x32 inputs).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base.errors import ConfigError
from ..base.registry import MODELS
from .staged import StagedNet, global_pool, init_like_repdistiller

#: (expansion t, channels c, blocks n, first stride s) at width 1, RepDistiller's order
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU, 3x3 depthwise (stride) + BN + ReLU, 1x1 project + BN;
    the input is added when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(*_conv_bn_relu(cin, hidden, 1), *_conv_bn_relu(hidden, hidden, 3, stride, hidden),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(StagedNet):
    """CIFAR MobileNetV2 (expansion ``expansion``, width ``width``) in the shared layout."""

    def __init__(self, num_classes: int, in_channels: int = 3, *, expansion: int = 6, width: float = 0.5) -> None:
        super().__init__()
        if int(16 * width) < 1:  # the narrowest group (16 channels at width 1) would be empty
            raise ConfigError(f"MobileNetV2 width must be >= 0.0625 (1/16) so every group keeps a channel, got {width}")
        self.width = width
        cin = int(32 * width)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, cin, 3, 2))
        groups = []
        for t, c, n, s in SETTINGS:
            t = t if t == 1 else expansion
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            groups.append(blocks)
        self.layer1 = nn.Sequential(*groups[0], *groups[1])
        self.layer2 = nn.Sequential(*groups[2])
        self.layer3 = nn.Sequential(nn.Sequential(*groups[3], *groups[4]), nn.Sequential(*groups[5], *groups[6]))
        self.feature_dims = (int(24 * width), int(32 * width), cin)
        last = int(1280 * width) if width > 1.0 else 1280
        self.pool = nn.Sequential(*_conv_bn_relu(cin, last, 1), *global_pool())
        self.fc = nn.Linear(last, num_classes)
        init_like_repdistiller(self, linear_std=0.01)


@MODELS.register("mobilenetv2", "mobile_half", ranges={"expansion": (1, None), "width": "(0, inf)"})
def mobilenetv2(num_classes: int, in_channels: int = 3, *, expansion: int = 6, width: float = 0.5) -> MobileNetV2:
    """RepDistiller's ``mobile_half`` by default (expansion 6, width 0.5)."""
    return MobileNetV2(num_classes, in_channels, expansion=expansion, width=width)
