"""CIFAR ResNets (He et al. 2016) with named stages that the rest of cooplib relies on.

Layout: ``stem`` (3x3 conv + BN + ReLU) -> ``layer1`` / ``layer2`` / ``layer3`` (strides
1, 2, 2) -> ``pool`` (global average + flatten) -> ``fc``. Multi-branch, depth-scalable
and feature-distillation code reaches into these names, so keep them stable.

Shortcuts: by default those of the ONE reference code (Lan1991Xu/ONE_NeurIPS2018,
derived from fb.resnet.torch): a projection (1x1 conv + BN) wherever the shape changes,
identity elsewhere ("option B"). Parameters cannot tell the options apart (ResNet-32 on
CIFAR-100: 472,756 with projections, 470,004 with option A, both "0.47M"), FLOPs can:
only projections reproduce ONE's cost table (ONE-3 ResNet-32 2.285e8 vs 2.274e8). The
cooperative-depth paper's ResNet-56 MACs (125.5M) instead match the zero-padding
"option A" (125.49M; projections give 125.75M), so ``shortcut="zeropad"`` offers it.

The global pool is adaptive, so any input size works (8x8 digits, 28x28 Fashion-MNIST,
32x32 CIFAR, 64x64 Tiny ImageNet).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import ConfigError
from ..base.registry import MODELS

Shortcut = Literal["projection", "zeropad"]


class BasicBlock(nn.Module):
    """Two 3x3 convs; the residual add comes before the last ReLU (post-activation)."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "projection"
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, as in the ONE code."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "projection"
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ZeroPadShortcut(nn.Module):
    """He et al.'s "option A": subsample by the stride, zero-pad the new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def _shortcut(in_planes: int, out_planes: int, stride: int, kind: Shortcut) -> nn.Module:
    """Identity when the shape is kept; else a projection (1x1 conv + BN) or option A."""
    if kind not in ("projection", "zeropad"):
        raise ValueError(f"shortcut must be 'projection' or 'zeropad', got {kind!r}")
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "zeropad" and out_planes >= in_planes:
        return ZeroPadShortcut(out_planes - in_planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


Block = type[BasicBlock] | type[Bottleneck]


class CifarResNet(nn.Module):
    """A 3-stage CIFAR ResNet with ``blocks_per_stage`` blocks in each stage.

    ``feature_dims`` are the channels of the three stage outputs; ``depth`` counts the
    weighted layers on the main path (stem conv + block convs + fc), i.e. 6n+2 for basic
    blocks and 9n+2 for bottlenecks. ``stem_width`` (default ``widths[0]``) is the stem
    conv's channels; RepDistiller's "x4" ResNets widen the stem less than the stages.
    """

    def __init__(
        self,
        block: Block,
        blocks_per_stage: int,
        num_classes: int,
        in_channels: int = 3,
        *,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: Shortcut = "projection",
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if shortcut not in ("projection", "zeropad"):
            raise ValueError(f"shortcut must be 'projection' or 'zeropad', got {shortcut!r}")
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries (one per stage), got {widths!r}")
        stem_width = widths[0] if stem_width is None else stem_width
        if stem_width < 1:
            raise ConfigError(f"stem_width must be an integer >= 1 (or None: widths[0]), got {stem_width!r}")
        self.block = block
        self.blocks_per_stage = blocks_per_stage
        self.num_classes = num_classes
        self.shortcut = shortcut
        self.depth = blocks_per_stage * 3 * (3 if block is Bottleneck else 2) + 2
        self.feature_dims = tuple(w * block.expansion for w in widths)

        self.stem_width = stem_width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        in_planes = stem_width
        stages = []
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(block(in_planes, width, stride if i == 0 else 1, shortcut))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) convs and BN = identity, as the reference code;
        the classifier keeps PyTorch's default Linear init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the three stage outputs (for feature KD and representation analysis)."""
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return self.fc(self.pool(f3)), [f1, f2, f3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


# ---------------------------------------------------------------------------------------
# Registered names
#
# - ``resnet{6n+2}`` (8, 14, 20, 32, 44, 56, 110 listed; any 6n+2 depth, e.g. ``resnet26``,
#   is accepted): basic-block CIFAR ResNets with n blocks per stage.
# - ``resnet112``: alias of ``resnet110``. The offline-KD papers call the 110-layer
#   teacher "ResNet-112"; it is the same network.
# - ``resnet110_bottleneck``: what the ONE reference code (Lan1991Xu/ONE_NeurIPS2018)
#   builds for "ResNet-110": n = (110 - 2) // 6 = 18 *bottleneck* blocks per stage
#   (1,727,284 params for 100 classes). That is NOT the 9n+2 bottleneck convention: it has
#   164 weighted layers (the ResNet-164 shape), ``model.depth == 164``. A basic-block
#   ResNet-110 happens to have about the same parameter count (1,736,564) and ~2% more
#   FLOPs (5.063e8 vs 4.953e8).
#
# - ``resnet8x4``, ``resnet32x4``: RepDistiller's 4x-wide CIFAR ResNets (HobbitLong/
#   RepDistiller, models/resnet.py at b84f547: ``ResNet(depth, [32, 64, 128, 256])``): a
#   32-channel stem, stages of 64 / 128 / 256 channels, projection shortcuts (so layer1's
#   first block projects 32 -> 64). 1,233,540 and 7,433,860 parameters for 100 classes.
#
# Options (keyword-only): ``widths``, ``shortcut`` (``"zeropad"``: He et al.'s option A)
# and ``stem_width``.
# ---------------------------------------------------------------------------------------

LISTED_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def basic_resnet(depth: int) -> Callable[..., CifarResNet]:
    """The factory ``(num_classes, in_channels=3, *, widths, shortcut)`` of a 6n+2 ResNet."""
    return partial(CifarResNet, BasicBlock, (depth - 2) // 6)


for _depth in LISTED_DEPTHS:
    MODELS.register(f"resnet{_depth}", *(["resnet112"] if _depth == 110 else []))(basic_resnet(_depth))
MODELS.register("resnet110_bottleneck")(partial(CifarResNet, Bottleneck, 18))
for _depth in (8, 32):
    MODELS.register(f"resnet{_depth}x4")(
        partial(CifarResNet, BasicBlock, (_depth - 2) // 6, widths=(64, 128, 256), stem_width=32)
    )


@MODELS.register_family
def any_basic_depth(name: str) -> Callable[..., CifarResNet] | None:
    """``resnet{6n+2}`` at any depth; another depth is refused with the nearest valid ones."""
    match = re.fullmatch(r"resnet(\d+)", name)
    if match is None:
        return None
    depth = int(match.group(1))
    if depth < 8 or (depth - 2) % 6:
        lo = max(8, (depth - 2) // 6 * 6 + 2)
        raise ConfigError(
            f"{name!r}: a basic-block CIFAR ResNet has depth 6n+2 with n >= 1 "
            f"(8, 14, 20, 26, 32, ...); nearest valid: resnet{lo} or resnet{lo + 6}"
        )
    return basic_resnet(depth)
