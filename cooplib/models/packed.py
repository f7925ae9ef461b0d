"""Packed execution: G copies of one architecture computed as one G-times-wider network.

ONE's branches and DML's peers are G networks (or G ``layer3`` + ``pool`` + ``fc``
heads) of the same architecture. Run one after another, each layer costs G kernel
launches; packed, it costs one:

- a conv becomes a grouped conv (``groups = G * groups``, G*C channels, copy g owns
  channels ``g*C:(g+1)*C``); a conv whose input is the *same* tensor for every copy
  (the image for DML peers, the shared ``layer2`` output for ONE branches) becomes a
  dense conv with the G weights stacked along the output channels, so the input is
  never repeated and its gradient is summed over the copies as autograd would;
- BatchNorm over G*C channels is per-copy BatchNorm (BN is per channel): the running
  statistics of every copy are updated exactly as its own module would update them;
- ReLU, pooling and flatten act per channel; the option-A zero-pad shortcut pads
  inside each copy's channel block;
- the G classifiers are one batched matmul; logits come out as (G, N, classes).

Parameter layout (the trade-off): the plain modules stay the owners of every parameter
and buffer; the packed weights are stacked with ``torch.cat`` at every forward. That
costs one small copy per weight (a ResNet-32 has 0.47M parameters; its activations at
batch 128 are hundreds of times more) and a few extra launches per BatchNorm (stacking and
writing back the running statistics), but keeps a single state-dict layout everywhere:
checkpoints, ``export_branch``, ``deployable()``, branch expansion (which maps optimizer
state by parameter), perturbation and the gradient-ratio scheduler all keep working,
and packing is a switch that can be flipped on a trained model. Owning packed
parameters would save the stacking but need conversions at each of those places.
Initialisation is that of G separately built networks by construction.

Speed: on a 2-core CPU packing does not pay (fp32, batch 128, 32x32, ResNet-32, forward
+ backward, median of 9 interleaved steps: ONE-3 0.80 s plain vs 0.81 s packed, DML-2
1.05 s vs 1.14 s): CPU kernels are compute-bound, and oneDNN's grouped convolutions are
no faster than G separate ones. The gain is meant for GPUs, where small convolutions are
bound by kernel launches; hence ``packed=False`` by default.

The plain per-copy loop stays the reference (tests compare logits, gradients and BN
statistics). The packed path does not call the copies' ``forward`` or their forward
hooks; use the plain path (or ``deployable()``) for hook-based analyses.

Module types are supported through ``RULES`` (``register`` adds more); ``check_packable``
says why a set of modules cannot be packed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, Bottleneck, CifarResNet, ZeroPadShortcut

#: rule(copies, x, shared) -> packed output; ``shared``: x is one tensor for all copies
Rule = Callable[[Sequence[nn.Module], torch.Tensor, bool], torch.Tensor]
RULES: dict[type, Rule] = {}


def register(cls: type, rule: Rule) -> None:
    """Teach packed execution a module type (its rule must mirror ``cls.forward``)."""
    RULES[cls] = rule


def forward(copies: Sequence[nn.Module], x: torch.Tensor, shared: bool = True) -> torch.Tensor:
    """Run G same-architecture modules as one packed network.

    ``x`` is one input for all copies when ``shared`` (N, C, ...), else the packed
    (N, G*C, ...) input. Convolutional outputs are packed (N, G*C, H, W); a module that
    ends in a Linear (a CifarResNet, a ONE branch) returns stacked logits (G, N, K).
    """
    rule = RULES.get(type(copies[0]))
    if rule is None:
        raise TypeError(f"packed execution has no rule for {type(copies[0]).__name__}; see packed.register")
    return rule(copies, x, shared)


def chain(names: Sequence[str]) -> Rule:
    """The rule of a module whose forward applies its children ``names`` in order."""

    def rule(copies: Sequence[nn.Module], x: torch.Tensor, shared: bool) -> torch.Tensor:
        for i, name in enumerate(names):
            x = forward(_children(copies, name), x, shared and i == 0)
        return x

    return rule


def _children(copies: Sequence[nn.Module], name: str) -> list[nn.Module]:
    return [getattr(c, name) for c in copies]


def _unshare(x: torch.Tensor, g: int) -> torch.Tensor:
    """The packed (N, G*C, ...) form of one input shared by all copies."""
    return x.repeat(1, g, *([1] * (x.dim() - 2)))


# ---------------------------------------------------------------- layer rules


def _conv(copies: Sequence[nn.Conv2d], x: torch.Tensor, shared: bool) -> torch.Tensor:
    m, g = copies[0], len(copies)
    if shared and m.groups != 1:
        x, shared = _unshare(x, g), False
    w = torch.cat([c.weight for c in copies])
    b = None if m.bias is None else torch.cat([c.bias for c in copies])
    groups = m.groups if shared else m.groups * g
    return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, groups)


def _batch_norm(copies: Sequence[nn.BatchNorm2d], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Per-copy BatchNorm, updating each copy's own running statistics (as BN.forward)."""
    m, g = copies[0], len(copies)
    if shared:
        x = _unshare(x, g)
    if any(c.training != m.training for c in copies):
        raise RuntimeError("packed BatchNorm copies disagree on train/eval mode; call .train()/.eval() on the whole model")
    track = m.track_running_stats
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and track:
        with torch.no_grad():
            counts = [c.num_batches_tracked for c in copies]
            torch._foreach_add_(counts, 1)  # one launch for all copies on CUDA
        if m.momentum is None:  # cumulative average, as BatchNorm: copies step together
            factor = 1.0 / float(copies[0].num_batches_tracked)
    use_batch = m.training or not track
    mean = var = None
    if track:
        mean = torch.cat([c.running_mean for c in copies])
        var = torch.cat([c.running_var for c in copies])
    w = None if m.weight is None else torch.cat([c.weight for c in copies])
    b = None if m.bias is None else torch.cat([c.bias for c in copies])
    y = F.batch_norm(x, mean, var, w, b, use_batch, factor, m.eps)
    if m.training and track:  # F.batch_norm updated the stacked copies: write them back
        with torch.no_grad():
            torch._foreach_copy_([c.running_mean for c in copies], list(mean.chunk(g)))
            torch._foreach_copy_([c.running_var for c in copies], list(var.chunk(g)))
    return y


def _channelwise(copies: Sequence[nn.Module], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Parameter-free per-channel modules (ReLU, pooling, flatten, identity): run copy 0."""
    y = copies[0](x)
    return _unshare(y, len(copies)) if shared else y


def _linear(copies: Sequence[nn.Linear], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """G classifiers as one batched matmul: (N, G*C) -> (G, N, K)."""
    g = len(copies)
    if shared:
        x = _unshare(x, g)
    xg = x.reshape(x.shape[0], g, -1).transpose(0, 1)  # (G, N, C)
    w = torch.stack([c.weight for c in copies]).transpose(1, 2)  # (G, C, K)
    if copies[0].bias is None:
        return torch.bmm(xg, w)
    b = torch.stack([c.bias for c in copies]).unsqueeze(1)  # (G, 1, K)
    return torch.baddbmm(b, xg, w)


def _zeropad(copies: Sequence[ZeroPadShortcut], x: torch.Tensor, shared: bool) -> torch.Tensor:
    m, g = copies[0], len(copies)
    if shared:
        return _unshare(m(x), g)
    x = x[:, :, :: m.stride, :: m.stride]
    n, gc, h, w = x.shape
    x = F.pad(x.reshape(n, g, gc // g, h, w), (0, 0, 0, 0, 0, m.extra_channels))
    return x.reshape(n, -1, h, w)


def _sequential(copies: Sequence[nn.Sequential], x: torch.Tensor, shared: bool) -> torch.Tensor:
    for i, layer in enumerate(zip(*copies)):
        x = forward(layer, x, shared and i == 0)
    return x


def _basic_block(copies: Sequence[BasicBlock], x: torch.Tensor, shared: bool) -> torch.Tensor:
    out = forward(_children(copies, "conv1"), x, shared)
    out = forward(_children(copies, "relu"), forward(_children(copies, "bn1"), out, False), False)
    out = forward(_children(copies, "bn2"), forward(_children(copies, "conv2"), out, False), False)
    out = out + forward(_children(copies, "shortcut"), x, shared)
    return forward(_children(copies, "relu"), out, False)


def _bottleneck(copies: Sequence[Bottleneck], x: torch.Tensor, shared: bool) -> torch.Tensor:
    relu = _children(copies, "relu")
    out = forward(relu, forward(_children(copies, "bn1"), forward(_children(copies, "conv1"), x, shared), False), False)
    out = forward(relu, forward(_children(copies, "bn2"), forward(_children(copies, "conv2"), out, False), False), False)
    out = forward(_children(copies, "bn3"), forward(_children(copies, "conv3"), out, False), False)
    out = out + forward(_children(copies, "shortcut"), x, shared)
    return forward(relu, out, False)


register(nn.Conv2d, _conv)
register(nn.BatchNorm2d, _batch_norm)
register(nn.Linear, _linear)
register(nn.Sequential, _sequential)
register(ZeroPadShortcut, _zeropad)
register(BasicBlock, _basic_block)
register(Bottleneck, _bottleneck)
for _cls in (nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d, nn.Flatten):
    register(_cls, _channelwise)
register(CifarResNet, chain(("stem", "layer1", "layer2", "layer3", "pool", "fc")))


# ---------------------------------------------------------------- checks


def _describe(module: nn.Module) -> list[tuple]:
    """Everything packing needs equal across copies: per submodule its name, type,
    plain attributes (stride, eps, ...) and parameter/buffer shapes."""
    out = []
    for name, m in module.named_modules():
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
        shapes = {k: tuple(t.shape) for k, t in [*m._parameters.items(), *m._buffers.items()] if t is not None}
        out.append((name, type(m), repr(sorted(attrs.items(), key=lambda kv: kv[0])), sorted(shapes.items())))
    return out


def packable(copies: Sequence[nn.Module]) -> str | None:
    """Why ``copies`` cannot run packed, or None when they can."""
    if len(copies) < 1:
        return "nothing to pack"
    ref = _describe(copies[0])
    for name, cls, _, _ in ref:
        if cls not in RULES:
            return f"{cls.__name__} ({name or 'top level'}) has no packed rule"
    for name, m in copies[0].named_modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return f"conv {name} uses padding_mode={m.padding_mode!r}; packing supports 'zeros' only"
        if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
            return f"flatten {name} must flatten dims 1..-1 to keep each copy's channels together"
    for i, c in enumerate(copies[1:], 1):
        other = _describe(c)
        if len(other) != len(ref):
            return f"copy {i} has {len(other)} modules, copy 0 has {len(ref)}"
        for a, b in zip(ref, other):
            if a != b:
                what = ("name", "type", "attributes", "tensor shapes")[next(k for k in range(4) if a[k] != b[k])]
                return f"copy {i} differs from copy 0 in the {what} of {a[0] or 'the top level'!r}"
    return None


def check_packable(copies: Sequence[nn.Module], what: str = "modules") -> None:
    """Raise a ValueError saying why ``copies`` cannot run packed (or return)."""
    reason = packable(copies)
    if reason is not None:
        raise ValueError(f"cannot pack these {what}: {reason}. Packing needs copies of one architecture; "
                         f"use packed=False")


__all__ = ["forward", "chain", "register", "packable", "check_packable", "RULES"]
