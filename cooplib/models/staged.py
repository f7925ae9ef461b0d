"""The layout every cooplib backbone shares, so one set of taps fits all of them.

``stem -> layer1 -> layer2 -> layer3 -> pool -> fc``, as in the CIFAR ResNets
(`cooplib.models.resnet`). Feature distillation reads ``layer1``..``layer3`` and ``pool``
through forward hooks (`cooplib.models.taps`), ONE-style branching copies ``layer3`` +
``pool`` + ``fc``, so every backbone names its parts this way:

- ``layer1`` / ``layer2`` / ``layer3``: the maps RepDistiller's ``forward(is_feat=True)``
  returns as feat[1], feat[2] and feat[-2] (HobbitLong/RepDistiller, models/*.py), so
  FitNets' hint layer 2, FT's last map and AT's first and last maps read what they read
  there. Where a network has more stages than three (VGG's five blocks, MobileNetV2's
  seven groups), ``layer3`` is a two-part ``nn.Sequential`` whose part ``layer3.0`` is
  RepDistiller's feat[3] (tap it by that dotted name);
- ``pool``: everything from the last map to the embedding the classifier reads
  (RepDistiller's feat[-1]): a global average pool and flatten, preceded by the final
  BN-ReLU of a pre-activation WRN or the 1x1 conv of ShuffleNetV2 / MobileNetV2;
- ``fc``: the linear classifier.

``feature_dims`` holds the channels of the three ``layer`` outputs (the ONE gate reads
``layer2``'s). Pools are adaptive, so any input size works unless a network says
otherwise through ``min_input_size`` (VGG's 2x2 max pools need 8x8 or more).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base.errors import ConfigError


class StagedNet(nn.Module):
    """Base of the non-ResNet backbones: subclasses set the six parts and ``feature_dims``."""

    feature_dims: tuple[int, int, int]
    #: smallest input height/width the network can take (each subclass says why)
    min_input_size: int = 1

    def _check_input(self, x: torch.Tensor) -> None:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ConfigError(f"{type(self).__name__} needs inputs of at least {self.min_input_size}x"
                              f"{self.min_input_size} pixels, got {tuple(x.shape[-2:])}")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the three ``layer`` outputs (as `CifarResNet.forward_features`)."""
        self._check_input(x)
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return self.fc(self.pool(f3)), [f1, f2, f3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


def init_like_repdistiller(net: nn.Module, linear_std: float | None = 0.01) -> None:
    """The init of RepDistiller's WRN / VGG / MobileNetV2: conv weights N(0, 2 / (k*k*out))
    (Kaiming normal, fan_out; also for grouped convs), conv biases 0, BN = identity,
    Linear biases 0 and, when ``linear_std`` is set, Linear weights N(0, linear_std)
    (VGG, MobileNetV2; the WRN keeps PyTorch's default Linear weights)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def global_pool() -> nn.Sequential:
    """Global average pool + flatten: (N, C, H, W) -> (N, C) for any H, W."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
