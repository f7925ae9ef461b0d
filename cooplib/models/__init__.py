"""Network registry: ``build(name, num_classes)`` and ``names()``.

Names:

- ``resnet{6n+2}`` (8, 14, 20, 32, 44, 56, 110 listed; any 6n+2 depth, e.g. ``resnet26``,
  is accepted): basic-block CIFAR ResNets with n blocks per stage.
- ``resnet112``: alias of ``resnet110``. The offline-KD papers call the 110-layer
  teacher "ResNet-112"; it is the same network.
- ``resnet110_bottleneck``: what the ONE reference code (Lan1991Xu/ONE_NeurIPS2018)
  builds for "ResNet-110": n = (110 - 2) // 6 = 18 *bottleneck* blocks per stage
  (1,727,284 params for 100 classes). That is NOT the 9n+2 bottleneck convention: it has
  164 weighted layers (the ResNet-164 shape), ``model.depth == 164``. A basic-block
  ResNet-110 happens to have about the same parameter count (1,736,564) and ~2% more
  FLOPs (5.063e8 vs 4.953e8).

``build(..., shortcut="zeropad")`` gives He et al.'s option-A shortcuts (see resnet.py);
the default projection shortcuts follow the ONE reference code.
"""
from __future__ import annotations

import difflib
import re
from typing import Any

from torch import nn

from .resnet import BasicBlock, Bottleneck, CifarResNet

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "build", "names"]

_BASIC_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
_ALIASES = {"resnet112": "resnet110"}
_BOTTLENECK = {"resnet110_bottleneck": 18}


def names() -> list[str]:
    """Registered model names (any other ``resnet{6n+2}`` is accepted too)."""
    return [f"resnet{d}" for d in _BASIC_DEPTHS] + list(_ALIASES) + list(_BOTTLENECK)


def build(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a network by name; extra kwargs (e.g. ``widths``) go to the constructor."""
    key = name.lower().replace("-", "")
    key = _ALIASES.get(key, key)
    if key in _BOTTLENECK:
        return CifarResNet(Bottleneck, _BOTTLENECK[key], num_classes, in_channels, **kwargs)
    m = re.fullmatch(r"resnet(\d+)", key)
    if m:
        depth = int(m.group(1))
        if depth < 8 or (depth - 2) % 6:
            lo = max(8, (depth - 2) // 6 * 6 + 2)
            raise ValueError(
                f"{name!r}: a basic-block CIFAR ResNet has depth 6n+2 with n >= 1 "
                f"(8, 14, 20, 26, 32, ...); nearest valid: resnet{lo} or resnet{lo + 6}"
            )
        return CifarResNet(BasicBlock, (depth - 2) // 6, num_classes, in_channels, **kwargs)
    close = difflib.get_close_matches(key, names(), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} Available: {', '.join(names())}.")
