"""Networks by name (``build``, ``names``), feature taps, parameter/FLOP accounting and branch expansion.
May import cooplib.base only (not data, losses or anything above).

Each architecture file registers its names with ``@MODELS.register`` (resnet.py: the
CIFAR ResNets ``resnet{6n+2}``, ``resnet112``, ``resnet110_bottleneck``, and their
options ``widths`` and ``shortcut``); importing the file here makes them known.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..base.registry import MODELS
from .resnet import BasicBlock, Bottleneck, CifarResNet

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "MODELS", "build", "names"]


def names() -> list[str]:
    """Registered model names (any other ``resnet{6n+2}`` is accepted too)."""
    return MODELS.names()


def build(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a network by name; ``options`` (e.g. ``widths``) are the factory's keyword-only ones."""
    return MODELS.build(name, num_classes, in_channels, **options)
