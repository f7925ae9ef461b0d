"""VGG with BatchNorm for CIFAR, as RepDistiller builds its ``vgg8`` / ``vgg13``.

Follows HobbitLong/RepDistiller, models/vgg.py (commit b84f547; ``vgg8_bn``, ``vgg13_bn``,
which its model_dict calls vgg8 / vgg13): five blocks of 3x3 conv (with bias) + BN +
ReLU, 64 / 128 / 256 / 512 / 512 channels (one conv per block for vgg8, config "S"; two
for vgg13, config "B"), a 2x2 max pool between blocks 0-1, 1-2 and 2-3, none between
blocks 3 and 4 on 32x32 inputs (RepDistiller pools there only for 64x64 inputs; here:
whenever block 3's map is 8x8 or larger, which is the same for 32x32 and 64x64 and any
input of 64 pixels or more), then global average pool and one linear classifier (no
hidden FC layers).

Layout (see `cooplib.models.staged`): ``stem`` = block 0; ``layer1`` / ``layer2`` = pool +
block 1 / 2; ``layer3`` = (pool + block 3, [pool +] block 4): ``layer3.0`` is
RepDistiller's feat[3], ``layer3`` its feat[4]. Three 2x2 max pools need inputs of at
least 8x8 pixels (8 -> 4 -> 2 -> 1); smaller ones are a ConfigError.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base.registry import MODELS
from .staged import StagedNet, global_pool, init_like_repdistiller

#: conv channels per block (RepDistiller's cfg "S" and "B")
CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _block(cin: int, channels: Sequence[int], pool: nn.Module | None = None) -> nn.Sequential:
    """[pool,] then conv3x3 (bias) + BN + ReLU per entry of ``channels``."""
    layers: list[nn.Module] = [] if pool is None else [pool]
    for c in channels:
        layers += [nn.Conv2d(cin, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        cin = c
    return nn.Sequential(*layers)


class MaxPoolIfLarge(nn.Module):
    """2x2 max pool only when the map is at least ``min_size`` high and wide (else identity):
    RepDistiller's ``if h == 64: x = self.pool3(x)``, stated on the map instead of the input."""

    def __init__(self, min_size: int = 8) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= self.min_size:
            return F.max_pool2d(x, 2, 2)
        return x


class VGG(StagedNet):
    """A five-block BN-VGG with the shared stem/layer/pool/fc layout."""

    min_input_size = 8  # three 2x2 max pools: 8 -> 4 -> 2 -> 1

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        c = [block[-1] for block in config]
        self.stem = _block(in_channels, config[0])
        self.layer1 = _block(c[0], config[1], nn.MaxPool2d(2, 2))
        self.layer2 = _block(c[1], config[2], nn.MaxPool2d(2, 2))
        self.layer3 = nn.Sequential(_block(c[2], config[3], nn.MaxPool2d(2, 2)),
                                    _block(c[3], config[4], MaxPoolIfLarge(8)))
        self.feature_dims = (c[1], c[2], c[4])
        self.pool = global_pool()
        self.fc = nn.Linear(c[4], num_classes)
        init_like_repdistiller(self, linear_std=0.01)


def _vgg(name: str) -> Callable[..., VGG]:
    return partial(VGG, CONFIGS[name])


for _name in CONFIGS:
    MODELS.register(_name)(_vgg(_name))
