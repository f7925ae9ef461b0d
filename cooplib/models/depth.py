"""Depth-scalable CIFAR ResNets: nested sub-networks that keep some blocks of each stage.

A sub-network at scaling factor s keeps k = max(1, ceil(s * n)) of the n residual blocks
of every stage (``kept_blocks``). ``spacing="first"`` (default) keeps the first k, so the
sub-networks are nested; ``spacing="even"`` keeps k evenly spaced ones. The first block
of a stage (the one that changes stride and channels) is always kept; stem, final pool
and classifier are shared by every depth. Because every stage keeps the same k blocks,
a sub-network is exactly a plain ``CifarResNet`` with k blocks per stage (``export``),
so its FLOPs are those of that network, counted by ``cooplib.flops``.

Multi-exit networks (``MultiExitResNet``) put a classifier after each stage, for BYOT and
early-exit (BranchyNet / Shallow-Deep Networks) baselines.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from .resnet import CifarResNet

SPACINGS = ("first", "even")


def kept_blocks(n: int, factor: float, spacing: str = "first") -> list[int]:
    """Indices of the blocks a stage of ``n`` blocks keeps at ``factor`` (always block 0)."""
    if not 0 < factor <= 1:
        raise ValueError(f"a scaling factor must be in (0, 1], got {factor!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    # round first: 0.6 * 5 is 3.0000000000000004 in floating point and must stay 3
    k = max(1, math.ceil(round(factor * n, 9)))
    if spacing == "first" or k == 1:
        return list(range(k))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def forward_at(net: CifarResNet, x: torch.Tensor, factor: float = 1.0, spacing: str = "first") -> torch.Tensor:
    """Logits of ``net``'s sub-network at ``factor`` (the full network at 1.0)."""
    keep = kept_blocks(net.blocks_per_stage, factor, spacing)
    h = net.stem(x)
    for stage in (net.layer1, net.layer2, net.layer3):
        for i in keep:
            h = stage[i](h)
    return net.fc(net.pool(h))


def export(net: CifarResNet, factor: float, spacing: str = "first") -> CifarResNet:
    """A plain ``CifarResNet`` with the kept blocks (deep copies): same logits as ``forward_at``."""
    keep = kept_blocks(net.blocks_per_stage, factor, spacing)
    sub = copy.deepcopy(net)
    for name in ("layer1", "layer2", "layer3"):
        stage = getattr(net, name)
        setattr(sub, name, nn.Sequential(*(copy.deepcopy(stage[i]) for i in keep)))
    sub.blocks_per_stage = len(keep)
    sub.depth = len(keep) * 3 * (net.depth - 2) // (3 * net.blocks_per_stage) + 2
    return sub


def factor_table(net: CifarResNet, factors: Iterable[float], input_shape: tuple[int, int, int],
                 spacing: str = "first") -> list[dict]:
    """Per factor: kept blocks per stage, depth and FLOPs / MACs of the exported sub-network."""
    from ..flops import count_flops, count_params

    rows = []
    for s in factors:
        sub = export(net, s, spacing)
        f = count_flops(sub, input_shape)
        rows.append({"factor": float(s), "kept blocks": kept_blocks(net.blocks_per_stage, s, spacing),
                     "blocks per stage": sub.blocks_per_stage, "depth": sub.depth, "params": count_params(sub),
                     "FLOPs": f, "MACs": f // 2})
    return rows


@torch.no_grad()
def recalibrate_bn(module: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate BatchNorm running statistics from train-mode passes, in place.

    Shared BN statistics are averaged over every depth trained; a sub-network's own
    activations may differ, so its statistics are re-estimated here (cumulative mean
    over the given batches, no gradient). Weights are untouched; train/eval flags are
    restored.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = {m: m.training for m in module.modules()}
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    module.train()
    try:
        for x in batches:
            module(x)
    finally:
        for m, t in flags.items():
            m.training = t
        for m, mom in momenta.items():
            m.momentum = mom
    return module


class ExitHead(nn.Module):
    """A classifier after stage ``stage`` (0-based).

    ``kind="bottleneck"`` (BYOT style): stride-2 3x3 conv + BN + ReLU per stage still
    to come, reaching the last stage's channels and resolution, then pool and linear;
    the pooled vector is the feature of BYOT's hint. ``kind="linear"`` (Shallow-Deep
    Networks' cheapest form): pool and linear.
    """

    def __init__(self, dims: Sequence[int], stage: int, num_classes: int, kind: str = "bottleneck") -> None:
        super().__init__()
        if kind not in ("bottleneck", "linear"):
            raise ValueError(f"exit head kind must be 'bottleneck' or 'linear', got {kind!r}")
        layers: list[nn.Module] = []
        c = dims[stage]
        if kind == "bottleneck":
            for nxt in dims[stage + 1:]:
                layers += [nn.Conv2d(c, nxt, 3, 2, 1, bias=False), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
                c = nxt
        self.adapt = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(c, num_classes)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.pool(self.adapt(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(h))


class MultiExitResNet(nn.Module):
    """A ``CifarResNet`` with exits after stages 1 and 2; exit 3 is the network's own fc."""

    def __init__(self, net: CifarResNet, num_classes: int, head: str = "bottleneck") -> None:
        super().__init__()
        self.net = net
        self.heads = nn.ModuleList(ExitHead(net.feature_dims, i, num_classes, head) for i in range(2))
        self.num_exits = 3

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.net.stem, self.net.layer1), self.net.layer2, self.net.layer3]

    def forward_exits(self, x: torch.Tensor, upto: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits and pooled features of exits 0..upto (all by default)."""
        upto = self.num_exits - 1 if upto is None else upto
        logits, feats, h = [], [], x
        for i, stage in enumerate(self.stages()[: upto + 1]):
            h = stage(h)
            if i < 2:
                f = self.heads[i].features(h)
                logits.append(self.heads[i].fc(f))
            else:
                f = self.net.pool(h)
                logits.append(self.net.fc(f))
            feats.append(f)
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ExitPath(nn.Module):
    """The computation up to exit ``i``: every earlier head too when ``with_earlier``
    (what dynamic inference evaluates), else the trunk and exit i's head only."""

    def __init__(self, multi: MultiExitResNet, i: int, with_earlier: bool = False, head: bool = True) -> None:
        super().__init__()
        self.multi, self.i, self.with_earlier, self.head = multi, i, with_earlier, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        outs = []
        for j, stage in enumerate(self.multi.stages()[: self.i + 1]):
            h = stage(h)
            if self.head and (j == self.i or self.with_earlier):
                outs.append(self.multi.heads[j](h) if j < 2 else self.multi.net.fc(self.multi.net.pool(h)))
        return outs[-1] if outs else h


def exit_flops(multi: MultiExitResNet, input_shape: tuple[int, int, int]) -> list[dict]:
    """Per exit: trunk FLOPs, its head's FLOPs, the static cost (trunk + this head) and the
    dynamic cost (trunk + every head up to this one: what early exiting pays)."""
    from ..flops import count_flops

    rows = []
    for i in range(multi.num_exits):
        trunk = count_flops(ExitPath(multi, i, head=False), input_shape)
        static = count_flops(ExitPath(multi, i), input_shape)
        dynamic = count_flops(ExitPath(multi, i, with_earlier=True), input_shape)
        rows.append({"exit": i, "trunk FLOPs": trunk, "head FLOPs": static - trunk,
                     "FLOPs": static, "FLOPs with earlier heads": dynamic})
    return rows


__all__ = ["SPACINGS", "kept_blocks", "forward_at", "export", "factor_table", "recalibrate_bn",
           "ExitHead", "MultiExitResNet", "ExitPath", "exit_flops"]
