"""The ONE network: a CIFAR ResNet whose last stage is split into m gated branches.

Lan, Zhu, Gong, *Knowledge Distillation by On-the-Fly Native Ensemble* (NeurIPS 2018),
as in the reference code (Lan1991Xu/ONE_NeurIPS2018): ``stem``, ``layer1`` and
``layer2`` are shared; each branch is its own copy of ``layer3`` + ``pool`` + ``fc``.
The gate global-average-pools the shared ``layer2`` output and computes
``softmax(ReLU(BN(Linear(pooled))) + gate_prior)``; the teacher ("ONE-E") is the
gate-weighted sum of the branch logits.

Every part comes from ``models.build(base, ...)`` instances, so any CIFAR ResNet of
cooplib works, and so does any backbone in the shared layout (`cooplib.models.staged`:
WRN, VGG, MobileNetV2, ShuffleNets; their branch is ``layer3`` + ``pool`` + ``fc``, e.g.
VGG's blocks 3-4 or MobileNetV2's groups 3-6 and last 1x1 conv). Branch 0 with the
shared layers is initialised exactly as ``models.build(base)`` would be under the same
seed; the other branches are initialised independently, as separate networks would be.
``packed=True`` knows the ResNets' modules only.

``gate_prior`` (a buffer, zeros by default) is an additive per-branch offset of the
gate logits. The optimizer never changes it; branch expansion (``cooplib.models.expand``) uses
it so that an expanded network computes the same ensemble as the network it came from,
and ONE's ``expand_anneal`` moves it back to 0 on a schedule.

``last_gate`` holds the (B, m) gate weights of the latest forward pass, detached (for
diagnostics such as ``ONE.diagnostics``; no copy, no host sync).

``share=False`` is the paper's "w/o sharing layers" ablation (Table 5): m independent
full networks with the same gate and teacher. The gate then reads the pooled ``layer2``
output of network 0 (the deployed one). A mean over the networks would be symmetric, but
it changes when networks are added, so an expanded network would no longer compute the
old function; network 0 is always kept.

``packed=True`` (also settable later: ``net.packed = True``) computes the m branches (or
the m networks when not shared) as one wider network (``cooplib.models.packed``): the
same parameters, state-dict layout and heads; logits and gradients equal the per-branch
loop's to float32 rounding.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import models as _models  # late lookup: models/__init__ may import this module
from . import packed as packing
from .resnet import CifarResNet
from .staged import StagedNet


class BranchHead(nn.Module):
    """One branch of a shared-trunk ONE network: ``layer3`` -> ``pool`` -> ``fc``."""

    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.layer3, self.pool, self.fc = net.layer3, net.pool, net.fc

    def forward(self, f2: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(f2)))


packing.register(BranchHead, packing.chain(("layer3", "pool", "fc")))


class BranchNet(nn.Module):
    """Branch i with the shared layers, as one network (the deployed model, TeCost).

    It holds the very modules of the multi-branch network (parameters are shared, not
    copied), and its ``state_dict`` has the layout of ``models.build(base)``.
    """

    def __init__(self, model: "MultiBranchResNet", i: int) -> None:
        super().__init__()
        head = model.branches[i]
        self.stem, self.layer1, self.layer2 = model.stem, model.layer1, model.layer2
        self.layer3, self.pool, self.fc = head.layer3, head.pool, head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class MultiBranchResNet(nn.Module):
    """m branches over shared low stages, a gate and two ensembles.

    ``forward(x)`` returns ``branch0 .. branch{m-1}`` (logits of each branch),
    ``ensemble`` (gate-weighted sum, the ONE teacher, "ONE-E") and ``average`` (plain
    mean of the branch logits, the "w/o gating" teacher). ``gate_weights(x)`` gives the
    gate's (B, m) weights for analysis.

    Note: the gate's BatchNorm1d cannot train on a batch of one image (eval mode can).
    """

    def __init__(
        self,
        base: str,
        num_classes: int,
        in_channels: int = 3,
        branches: int = 3,
        share: bool = True,
        packed: bool = False,
        **resnet_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(branches, int) or branches < 1:
            raise ValueError(f"branches must be an integer >= 1, got {branches!r}")
        self.base, self.num_classes, self.in_channels = base, num_classes, in_channels
        self.share = bool(share)
        self.resnet_kwargs = dict(resnet_kwargs)
        nets = [self._build_net() for _ in range(branches)]
        if self.share:
            self.stem, self.layer1, self.layer2 = nets[0].stem, nets[0].layer1, nets[0].layer2
            self.branches = nn.ModuleList(BranchHead(n) for n in nets)
        else:
            self.branches = nn.ModuleList(nets)
        c2 = nets[0].feature_dims[1]
        self.gate_fc = nn.Linear(c2, branches)
        self.gate_bn = nn.BatchNorm1d(branches)
        self.register_buffer("gate_prior", torch.zeros(branches))
        self.last_gate: torch.Tensor | None = None
        self.packed = packed

    def _build_net(self) -> CifarResNet:
        net = _models.build(self.base, self.num_classes, self.in_channels, **self.resnet_kwargs)
        if not isinstance(net, (CifarResNet, StagedNet)):
            raise TypeError(f"{self.base!r} is not a CIFAR ResNet or staged backbone; ONE needs stem/layer1..3/pool/fc")
        return net

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def packed(self) -> bool:
        """Whether the branches run as one packed network (see the module doc)."""
        return self._packed_on

    @packed.setter
    def packed(self, value: bool) -> None:
        if value:
            packing.check_packable(list(self.branches), "ONE branches")
        self._packed_on = bool(value)

    # ------------------------------------------------------------ computation

    def _gate(self, f2: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.gate_bn(self.gate_fc(f2.mean((2, 3)))))
        return torch.softmax(a + self.gate_prior, dim=1)

    def _trunk(self, x: torch.Tensor, i: int = 0) -> torch.Tensor:
        """The layer2 output of the shared trunk (or of network i when not shared)."""
        t = self if self.share else self.branches[i]
        return t.layer2(t.layer1(t.stem(x)))

    def _logits_and_f2(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, B, C) branch logits and the gate's input (network 0's layer2 output)."""
        if self.packed:
            return self._packed_logits_and_f2(x)
        if self.share:
            f2 = self._trunk(x)
            return torch.stack([b(f2) for b in self.branches]), f2
        f2 = None
        logits = []
        for i, net in enumerate(self.branches):
            f = net.layer2(net.layer1(net.stem(x)))
            f2 = f if i == 0 else f2
            logits.append(net.fc(net.pool(net.layer3(f))))
        return torch.stack(logits), f2

    def _packed_logits_and_f2(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = list(self.branches)
        if self.share:
            f2 = self._trunk(x)
            return packing.forward(heads, f2, shared=True), f2
        low = packing.chain(("stem", "layer1", "layer2"))(heads, x, True)  # (B, m*C2, H, W)
        z = packing.chain(("layer3", "pool", "fc"))(heads, low, False)
        return z, low[:, : heads[0].feature_dims[1]]

    def branch_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.share and not self.packed:
            f2 = self._trunk(x)
            return [b(f2) for b in self.branches]
        if not self.packed:
            return [net(x) for net in self.branches]
        return list(self._packed_logits_and_f2(x)[0].unbind(0))

    def forward_with_gate(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The heads and the (B, m) gate weights, from one pass."""
        zs, f2 = self._logits_and_f2(x)  # (m, B, C)
        g = self._gate(f2)
        self.last_gate = g.detach()
        z = zs.transpose(0, 1)  # (B, m, C)
        heads = {f"branch{i}": zi for i, zi in enumerate(zs.unbind(0))}
        # elementwise product + sum, not a matmul: the teacher costs no counted FLOPs
        heads["ensemble"] = (g.unsqueeze(-1) * z).sum(1)
        heads["average"] = z.mean(1)
        return heads, g

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_gate(x)[0]

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) softmax gate weights (rows sum to 1); runs only the trunk and the gate."""
        return self._gate(self._trunk(x, 0))

    # ------------------------------------------------------------ parts

    def branch_net(self, i: int = 0) -> nn.Module:
        """Branch i with its low stages as one network sharing this model's parameters."""
        if not 0 <= i < self.num_branches:
            raise IndexError(f"branch {i} out of range: the model has {self.num_branches} branches")
        return BranchNet(self, i) if self.share else self.branches[i]

    def pre_norm_biases(self) -> list[nn.Parameter]:
        """Biases added right before a BatchNorm (the gate's ``gate_fc.bias``): the BN
        subtracts the batch mean, so their gradient is zero up to rounding and the
        gradient-ratio scheduler must not scale their lr by it."""
        return [self.gate_fc.bias] if self.gate_fc.bias is not None else []

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of every branch's classifier (the "last layer")."""
        return [p for b in self.branches for p in b.fc.parameters()]


def export_branch(model: MultiBranchResNet, i: int = 0) -> CifarResNet:
    """A standalone ``models.build(base)`` network holding the shared layers + branch i.

    The result is an independent copy (same state-dict layout as ``models.build``),
    suitable for deployment or for loading wherever a plain cooplib ResNet is expected.
    """
    net = _models.build(model.base, model.num_classes, model.in_channels, **model.resnet_kwargs)
    src = model.branch_net(i)
    ref = next(src.parameters())
    net.load_state_dict(src.state_dict(), strict=True)
    return net.to(device=ref.device, dtype=ref.dtype).train(model.training)


__all__ = ["MultiBranchResNet", "BranchHead", "BranchNet", "export_branch"]
