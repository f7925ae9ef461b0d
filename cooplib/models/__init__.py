"""Networks by name (``build``, ``names``), feature taps, parameter/FLOP accounting and branch expansion.
May import cooplib.base only (not data, losses or anything above).

Each architecture file registers its names with ``@MODELS.register``; importing the file
here makes them known:

- resnet.py: the CIFAR ResNets ``resnet{6n+2}``, ``resnet112``, ``resnet110_bottleneck``,
  RepDistiller's ``resnet8x4`` / ``resnet32x4``, and their options ``widths``,
  ``shortcut`` and ``stem_width``;
- wrn.py: ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2`` (any ``wrn_{6n+4}_{k}``);
- vgg.py: ``vgg8``, ``vgg13`` (BN variants); mobilenetv2.py: ``mobilenetv2`` (alias
  ``mobile_half``); shufflenet.py: ``shufflenetv1``, ``shufflenetv2`` (aliases
  ``shufflev1`` / ``shufflev2``).

The non-ResNet ones share the ResNets' layout ``stem -> layer1..3 -> pool -> fc``
(staged.py), so feature taps, FLOP counting and KD methods treat them alike.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..base.registry import MODELS
from . import mobilenetv2, shufflenet, vgg, wrn  # noqa: F401  (register their names)
from .resnet import BasicBlock, Bottleneck, CifarResNet
from .staged import StagedNet

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "MODELS", "StagedNet", "build", "names"]


def names() -> list[str]:
    """Registered model names (any other ``resnet{6n+2}`` or ``wrn_{6n+4}_{k}`` is accepted too)."""
    return MODELS.names()


def build(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a network by name; ``options`` (e.g. ``widths``) are the factory's keyword-only ones."""
    return MODELS.build(name, num_classes, in_channels, **options)
