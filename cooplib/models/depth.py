"""Depth-scalable CIFAR ResNets: nested sub-networks that keep some blocks of each stage.

A sub-network at scaling factor s keeps k = max(1, ceil(s * n)) of the n residual blocks
of every stage (``kept_blocks``). ``spacing="first"`` (default) keeps the first k, so the
sub-networks are nested; ``spacing="even"`` keeps k evenly spaced ones. The first block
of a stage (the one that changes stride and channels) is always kept; stem, final pool
and classifier are shared by every depth. Because every stage keeps the same k blocks,
a sub-network is exactly a plain ``CifarResNet`` with k blocks per stage (``export``),
so its FLOPs are those of that network, counted by ``cooplib.models.flops``.

Distinct budgets: on a shallow network several factors keep the same blocks (on ResNet-8,
one block per stage, every factor is the full network), so a "sub-network" can be the full
network under another name. ``distinct_budgets`` groups factors by the blocks they keep,
``check_distinct`` refuses factors that collide and ``require_budgets`` refuses a design
with too few distinct budgets; ``suggest_factors`` gives factors that keep different blocks.

Multi-exit networks (``MultiExitResNet``) put a classifier after each stage, for BYOT and
early-exit (BranchyNet / Shallow-Deep Networks) baselines.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from ..base.errors import ConfigError
from .resnet import Bottleneck, CifarResNet

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


#: basic-block depths a "use a deeper model" message may suggest, shallowest first
SUGGESTED_DEPTHS = (20, 32, 44, 56, 110)


def _blocks_and_name(model_or_n) -> tuple[int, str]:
    """(blocks per stage, a name for messages) of a model name, a network or a block count."""
    if isinstance(model_or_n, bool):
        raise TypeError(f"expected a model name, a network or a block count, got {model_or_n!r}")
    if isinstance(model_or_n, int):
        if model_or_n < 1:
            raise ValueError(f"blocks per stage must be >= 1, got {model_or_n}")
        return model_or_n, f"a ResNet with {model_or_n} block{'s' if model_or_n != 1 else ''} per stage"
    if isinstance(model_or_n, str):
        from . import build

        return build(model_or_n, 10).blocks_per_stage, model_or_n
    n = getattr(model_or_n, "blocks_per_stage", None)
    if not isinstance(n, int):
        raise TypeError(f"expected a model name, a network with blocks_per_stage or a block count, got {model_or_n!r}")
    if getattr(model_or_n, "block", None) is Bottleneck:
        name = "resnet110_bottleneck" if n == 18 else f"a bottleneck ResNet with {n} blocks per stage"
    else:
        name = f"resnet{getattr(model_or_n, 'depth', 6 * n + 2)}"
    return n, name


def _per_stage(n: int) -> str:
    return f"{n} block{'s' if n != 1 else ''} per stage"


def _fmt(factors) -> str:
    """'0.3, 0.6 and 1.0 (the full network)'."""
    fs = [("1.0 (the full network)" if float(s) == 1.0 else f"{float(s):g}") for s in factors]
    return fs[0] if len(fs) == 1 else ", ".join(fs[:-1]) + " and " + fs[-1]


def _fmt_suggestion(factors) -> str:
    """'[0.33, 0.66] with the full 1.0': the sub-network factors, then the full network."""
    subs = [f"{s:g}" for s in factors if s < 1.0]
    return f"[{', '.join(subs)}] with the full 1.0" if subs else "the full network alone"


def distinct_budgets(model_or_n, factors: Iterable[float], spacing: str = "first") -> list[dict]:
    """The distinct sub-networks (budgets) that ``factors`` give on a model, shallowest first.

    ``model_or_n``: a model name (``"resnet20"``), a ``CifarResNet`` or its blocks per
    stage. One row per distinct set of kept blocks: ``{"kept blocks": [...], "blocks per
    stage": k, "factors": [the factors that keep them]}``. Every stage keeps the same k
    blocks, so distinct kept-block sets are distinct FLOPs (FLOPs grow with k). The full
    network counts only if 1.0 is among ``factors``.
    """
    n, _ = _blocks_and_name(model_or_n)
    groups: dict[tuple[int, ...], list[float]] = {}
    for s in sorted({float(s) for s in factors}):
        groups.setdefault(tuple(kept_blocks(n, s, spacing)), []).append(s)
    return [{"kept blocks": list(k), "blocks per stage": len(k), "factors": fs}
            for k, fs in sorted(groups.items(), key=lambda kv: len(kv[0]))]


def suggest_factors(model_or_n, count: int) -> list[float]:
    """``count`` factors (the last is 1.0) keeping ``count`` different, evenly spread block
    counts of a model, each the largest short decimal at most k/n (so it keeps k blocks)."""
    n, name = _blocks_and_name(model_or_n)
    if not 1 <= count <= n:
        raise ValueError(f"{name} ({_per_stage(n)}) has {n} distinct budget{'s' if n != 1 else ''}, not {count}")
    out = []
    for i in range(1, count + 1):
        k = math.ceil(round(i * n / count, 9))
        for digits in range(2, 12):
            s = math.floor(round(k / n * 10**digits, 6)) / 10**digits
            if s > 0 and len(kept_blocks(n, s)) == k:
                break
        out.append(s)
    return out


def _deeper(n: int, count: int) -> list[tuple[str, int]]:
    """Two basic-block models deeper than n blocks per stage with >= count blocks per stage."""
    ks = [(d - 2) // 6 for d in SUGGESTED_DEPTHS]
    ok = [k for k in ks if k > n and k >= count] or [max(count, n + 1)]
    return [(f"resnet{6 * k + 2}", k) for k in ok[:2]]


def _advice(n: int, name: str, count: int, fewer_ok: bool = True) -> str:
    """'use a deeper model, e.g. ..., or factors that keep different blocks, e.g. ...'."""
    (m1, k1), *rest = _deeper(n, count)
    there = _fmt_suggestion(suggest_factors(k1, count))
    deeper = f"use a deeper model, e.g. {m1} ({_per_stage(k1)}) with factors {there}"
    if rest:
        deeper += f", or {rest[0][0]} ({_per_stage(rest[0][1])})"
    if count <= n:
        same = _fmt_suggestion(suggest_factors(n, count))
        return f"{deeper}; or factors that keep different blocks of {name}, e.g. {same}"
    if n > 1 and fewer_ok:
        every = _fmt_suggestion(suggest_factors(n, n))
        return f"{deeper}; or at most {n} distinct budgets on {name}, e.g. factors {every}"
    return f"{name} has only {n} distinct budget{'s' if n != 1 else ''}: {deeper}"


def check_distinct(model_or_n, factors: Iterable[float], spacing: str = "first", what: str = "") -> list[dict]:
    """Refuse factors of which two keep the same blocks (the same sub-network, the same FLOPs).

    Raises ``ConfigError`` naming the model, its blocks per stage, the colliding factors,
    their kept blocks and what to do; returns ``distinct_budgets`` otherwise. Pass every
    factor the design evaluates, the full 1.0 included. ``what`` prefixes the message.
    """
    n, name = _blocks_and_name(model_or_n)
    factors = sorted({float(s) for s in factors})
    budgets = distinct_budgets(n, factors, spacing)
    clashes = [b for b in budgets if len(b["factors"]) > 1]
    if clashes:
        said = "; ".join(f"factors {_fmt(b['factors'])} keep the same blocks {b['kept blocks']} of each stage"
                         for b in clashes)
        raise ConfigError(f"{what + ': ' if what else ''}{name} ({_per_stage(n)}): {said}, so they are the same "
                          f"sub-network with the same FLOPs; {_advice(n, name, len(factors))}")
    return budgets


def require_budgets(model_or_n, factors: Iterable[float], minimum: int = 3, spacing: str = "first",
                    what: str = "") -> list[dict]:
    """``distinct_budgets``, or ``ConfigError`` when there are fewer than ``minimum`` of them.

    For a chapter that compares depths: with fewer than ``minimum`` distinct kept-block
    sets (distinct FLOPs) among ``factors`` (pass the full 1.0 too) there is no trade-off
    to show. The message says how many distinct budgets there are and how to get more.
    """
    n, name = _blocks_and_name(model_or_n)
    factors = sorted({float(s) for s in factors})
    budgets = distinct_budgets(n, factors, spacing)
    if len(budgets) < minimum:
        have = "; ".join(f"{b['blocks per stage']} for {', '.join(f'{s:g}' for s in b['factors'])}" for b in budgets)
        raise ConfigError(f"{what + ': ' if what else ''}{name} ({_per_stage(n)}): factors {_fmt(factors)} give "
                          f"{len(budgets)} distinct budget{'s' if len(budgets) != 1 else ''} (blocks per stage kept: "
                          f"{have}), fewer than the {minimum} needed; {_advice(n, name, minimum, fewer_ok=False)}")
    return budgets


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
    from .flops import count_flops, count_params

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
    from .flops import count_flops

    rows = []
    for i in range(multi.num_exits):
        trunk = count_flops(ExitPath(multi, i, head=False), input_shape)
        static = count_flops(ExitPath(multi, i), input_shape)
        dynamic = count_flops(ExitPath(multi, i, with_earlier=True), input_shape)
        rows.append({"exit": i, "trunk FLOPs": trunk, "head FLOPs": static - trunk,
                     "FLOPs": static, "FLOPs with earlier heads": dynamic})
    return rows


__all__ = ["SPACINGS", "kept_blocks", "distinct_budgets", "suggest_factors", "check_distinct", "require_budgets",
           "forward_at", "export", "factor_table", "recalibrate_bn",
           "ExitHead", "MultiExitResNet", "ExitPath", "exit_flops"]
