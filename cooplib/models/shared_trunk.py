"""Peer heads over shared low layers, with optional backpropagation rescaling (no gate).

The network of CL-ILR (Song & Chai, *Collaborative learning for deep neural networks*,
NeurIPS 2018) and of OKDDip (Chen et al., AAAI 2020): every head is a network of
cooplib's shared layout (a CIFAR ResNet, or any backbone of `cooplib.models.staged`: WRN,
VGG, MobileNetV2, ShuffleNets) whose low stages it may share with other heads. The
references use CIFAR ResNets; on the other backbones the split points are the same named
stages (e.g. VGG's blocks 3-4 or MobileNetV2's groups 3-6 are a head's ``layer3``). Three
sharing patterns:

- ``sharing="layer2"``: ``stem``, ``layer1`` and ``layer2`` shared, one ``layer3`` +
  ``pool`` + ``fc`` per head; the layout of DefangChen/OKDDip
  ``models/model_cifar/resnet_one.py`` (``avg=True``) and ``resnet_GL.py`` (commit
  c6a05de892fc7d2b6767668548786688a388c2d6), i.e. ONE's network without its gate.
- ``sharing="tree"``: the hierarchical sharing of winycg/MCL-OKD
  ``models/cl_ilr_resnet.py`` (commit 5de042a5fbd4829f82caa68facc7586f59ea3732):
  ``stem`` + ``layer1`` shared by all, ``ceil(m/2)`` copies of ``layer2``, copy g
  shared by heads 2g and 2g+1, one ``layer3`` + ``pool`` + ``fc`` per head.
- ``sharing="layer1"``: ``stem`` + ``layer1`` shared, one ``layer2`` + ``layer3`` +
  ``pool`` + ``fc`` per head; the network of MCL-OKD itself (winycg/MCL-OKD
  ``models/mcl_okd_resnet.py``, same commit), which has no gradient rescaling.

``bpscale=True`` inserts *backpropagation rescaling* (``scale_grad``) at every split
point: the forward pass is the identity and the gradient into the shared part is divided
by the number of consumers, so the shared layers get the *mean* of the heads' gradients
rather than their sum (the paper's fix for the shared layers otherwise learning m times
faster than the heads). ``layer2``: 1/m on the ``layer2`` output (as resnet_one.py's
``ILR``). ``tree`` and ``layer1``: 1/(number of ``layer2`` copies) on the ``layer1`` output and
1/(heads sharing the copy) on each ``layer2`` copy's output. MCL-OKD hard-codes 1/2 at
both points, which is the same for its default of 4 heads (and for 3); with another head
count its constant no longer matches the consumer count, and this module follows the
consumer count.

One ``models.build(base)`` network is built per head, in order; head i keeps its
``layer3`` + ``pool`` + ``fc``, the shared parts come from the first network reading
them. So head 0 with its path initialises exactly as ``models.build(base)`` would under
the same seed, and every copy starts independent, as separate networks would.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import models as _models  # late lookup: models/__init__ may import this module
from .resnet import CifarResNet
from .staged import StagedNet

SHARINGS = ("layer2", "tree", "layer1")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``factor`` (1: no node at all)."""
    return x if factor == 1 else _ScaleGrad.apply(x, float(factor))


class PathNet(nn.Module):
    """Head i with the low layers on its path, as one plain network (the deployed model).

    It holds the very modules of the shared-trunk network (parameters shared, not copied)
    and its ``state_dict`` has the layout of ``models.build(base)``. No gradient scaling:
    alone, a head is a plain ResNet.
    """

    def __init__(self, model: "SharedTrunkNet", i: int) -> None:
        super().__init__()
        self.stem, self.layer1, self.layer2 = model.stem, model.layer1, model.layer2s[model.group_of(i)]
        head = model.heads[i]
        self.layer3, self.pool, self.fc = head.layer3, head.pool, head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class Head(nn.Module):
    """``layer3`` -> ``pool`` (the feature OKDDip's attention reads) -> ``fc``."""

    def __init__(self, net: CifarResNet | StagedNet) -> None:
        super().__init__()
        self.layer3, self.pool, self.fc = net.layer3, net.pool, net.fc

    def forward(self, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled layer3 feature)."""
        f = self.pool(self.layer3(f2))
        return self.fc(f), f


class SharedTrunkNet(nn.Module):
    """m heads over shared low stages (see the module doc).

    ``forward(x)`` returns ``branch0 .. branch{m-1}`` (each head's logits);
    ``forward_features(x)`` returns the (m, B, C) logits and the (m, B, D) pooled
    ``layer3`` features. ``feature_dim`` is D.
    """

    def __init__(
        self,
        base: str,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 4,
        sharing: str = "layer2",
        bpscale: bool = True,
        **resnet_kwargs: Any,  # options of models.build(base)
    ) -> None:
        super().__init__()
        if not isinstance(branches, int) or branches < 1:
            raise ValueError(f"branches must be an integer >= 1, got {branches!r}")
        if sharing not in SHARINGS:
            raise ValueError(f"sharing must be one of {SHARINGS}, got {sharing!r}")
        self.base, self.num_classes, self.in_channels = base, num_classes, in_channels
        self.sharing, self.bpscale = sharing, bool(bpscale)
        self.resnet_kwargs = dict(resnet_kwargs)
        nets = [self._build_net() for _ in range(branches)]
        self.stem, self.layer1 = nets[0].stem, nets[0].layer1
        groups = math.ceil(branches / self._per_group(branches))
        # layer2 copy g is network (g * heads per copy)'s, so head 0's path is network 0
        self.layer2s = nn.ModuleList(nets[g * self._per_group(branches)].layer2 for g in range(groups))
        self.heads = nn.ModuleList(Head(n) for n in nets)
        self.feature_dim = nets[0].feature_dims[2]
        self._check_input = nets[0]._check_input if isinstance(nets[0], StagedNet) else None

    def _build_net(self) -> CifarResNet | StagedNet:
        net = _models.build(self.base, self.num_classes, self.in_channels, **self.resnet_kwargs)
        if not isinstance(net, (CifarResNet, StagedNet)):
            raise TypeError(f"{self.base!r} is not in cooplib's shared layout; shared heads need "
                            "stem/layer1..3/pool/fc")
        return net

    def _per_group(self, m: int) -> int:
        """Heads reading one ``layer2`` copy."""
        return {"layer2": m, "tree": 2, "layer1": 1}[self.sharing]

    @property
    def num_branches(self) -> int:
        return len(self.heads)

    @property
    def layer2(self) -> nn.Module:
        """The shared ``layer2`` (``sharing="layer2"`` only)."""
        if len(self.layer2s) != 1:
            raise AttributeError(f"a network shared at {self.sharing!r} has {len(self.layer2s)} layer2 copies: use layer2s")
        return self.layer2s[0]

    def group_of(self, i: int) -> int:
        """Index of the ``layer2`` copy head i reads."""
        return i // self._per_group(self.num_branches)

    def consumers(self) -> tuple[int, list[int]]:
        """(copies of layer2 reading layer1's output, heads reading each layer2 copy)."""
        m, g = self.num_branches, len(self.layer2s)
        return g, [sum(self.group_of(i) == c for i in range(m)) for c in range(g)]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, B, C) logits and (m, B, D) pooled layer3 features of every head."""
        n_copies, n_heads = self.consumers()
        scale = self.bpscale
        if self._check_input is not None:  # e.g. VGG's max pools need 8x8 or more
            self._check_input(x)
        f1 = self.layer1(self.stem(x))
        f1 = scale_grad(f1, 1 / n_copies) if scale else f1
        f2 = []
        for layer2, k in zip(self.layer2s, n_heads):
            f = layer2(f1)
            f2.append(scale_grad(f, 1 / k) if scale else f)
        out = [head(f2[self.group_of(i)]) for i, head in enumerate(self.heads)]
        return torch.stack([z for z, _ in out]), torch.stack([f for _, f in out])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z, _ = self.forward_features(x)
        return {f"branch{i}": zi for i, zi in enumerate(z.unbind(0))}

    def branch_net(self, i: int = 0) -> PathNet:
        """Head i with its low stages as one network sharing this model's parameters."""
        if not 0 <= i < self.num_branches:
            raise IndexError(f"branch {i} out of range: the model has {self.num_branches} branches")
        return PathNet(self, i)

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of every head's classifier (the "last layer")."""
        return [p for h in self.heads for p in h.fc.parameters()]


__all__ = ["SharedTrunkNet", "PathNet", "Head", "scale_grad", "SHARINGS"]
