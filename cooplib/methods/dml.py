"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018).

K >= 2 peer networks (any cooplib models, heterogeneous allowed) learn together: peer
k minimises

    L_k = CE(z_k, y) + 1/(K-1) * sum_{j != k} T^2 KL(p_j || p_k),   p = softmax(z / T),

with every target p_j detached, so each peer only ever receives the gradient of its
own loss. Heads: ``peer0`` .. ``peer{K-1}`` and ``average`` (the mean of the peer
logits, i.e. the K-net ensemble of the peers). Peer 0 is the deployed network.

``mutual=False`` drops the KL terms: the same K networks trained independently, the
control that isolates what mutual learning adds (and whose ``average`` head is the
paper's "K-Net ensemble" row).

Two update schedules:

- ``update="joint"`` (default): one optimizer step on ``sum_k L_k``. Since the targets
  are detached, peer k's parameters get exactly dL_k/dtheta_k, so this equals updating
  all peers in parallel on the same batch.
- ``update="sequential"``: the paper's Algorithm 1. Peers are updated one after another
  on the same mini-batch, each from predictions recomputed after the earlier peers'
  update. The Learner sets ``substeps = K``; the training loop runs K forward / loss /
  step rounds per batch with ``state.substep = s``, and ``loss`` then returns peer s's
  loss only (the other peers get no gradient, so SGD leaves them alone, weight decay
  and momentum included). As in Algorithm 1, every round re-runs every peer in train
  mode, so BatchNorm running statistics see each batch K times.

``packed=True`` computes K peers of one architecture as one K-times-wider network
(grouped convolutions, ``cooplib.models.packed``): the same parameters (the state dict
is unchanged), heads and loss, equal to float32 rounding. Heterogeneous peers cannot be
packed, nor can ``update="sequential"`` (a packed pass would give the peers that are not
being updated zero gradients instead of none). Off by default: on a 2-core CPU it is slower than the per-peer loop.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import losses, models
from ..models import packed as packing
from ..base.registry import METHODS
from .base import Learner, TrainState

UPDATES = ("joint", "sequential")


class DML(Learner):
    """K peer networks trained with CE plus the mean KL towards the other (detached) peers."""

    method = "dml"

    def __init__(
        self,
        peers: Sequence[nn.Module],
        temperature: float = 1.0,
        mutual: bool = True,
        update: str = "joint",
        packed: bool = False,
    ) -> None:
        super().__init__()
        peers = list(peers)
        if len(peers) < 2:
            raise ValueError(f"DML needs at least 2 peer networks, got {len(peers)}")
        if not all(isinstance(p, nn.Module) for p in peers):
            raise TypeError("DML peers must be nn.Module instances (e.g. cooplib.models.build(...))")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        self.peers = nn.ModuleList(peers)
        self.temperature = float(temperature)
        self.mutual = bool(mutual)
        self.update = update
        #: optimizer steps per batch the training loop takes (K for Algorithm 1)
        self.substeps = len(peers) if update == "sequential" else 1
        self.packed = packed

    @property
    def num_peers(self) -> int:
        return len(self.peers)

    @property
    def packed(self) -> bool:
        """Whether the peers run as one packed network (settable; see the module doc)."""
        return self._packed_on

    @packed.setter
    def packed(self, value: bool) -> None:
        if value and self.update == "sequential":
            raise ValueError("packed=True needs update='joint': in sequential mode only the updated peer may get "
                             "a gradient, but a packed pass gives every peer one (zeros, which SGD's weight decay "
                             "and momentum would still apply); use packed=False")
        if value:
            packing.check_packable(list(self.peers), "DML peers")
        self._packed_on = bool(value)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.packed:
            z = packing.forward(list(self.peers), x, shared=True)  # (K, B, C)
            logits = list(z.unbind(0))
        else:
            logits = [peer(x) for peer in self.peers]
            z = torch.stack(logits)
        heads = {f"peer{k}": zk for k, zk in enumerate(logits)}
        heads["average"] = z.mean(0)
        return heads

    def peer_loss(
        self, logits: Sequence[torch.Tensor], k: int, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Peer k's named terms: ``ce/peer{k}`` and, when mutual, ``kl/peer{k}``."""
        parts = {f"ce/peer{k}": losses.cross_entropy(logits[k], y)}
        if self.mutual:
            others = [j for j in range(len(logits)) if j != k]
            kl = sum(losses.kd_kl(logits[k], logits[j].detach(), self.temperature) for j in others)
            parts[f"kl/peer{k}"] = kl / len(others)
        return parts

    def loss(self, heads, y, state: TrainState):
        logits = [heads[f"peer{k}"] for k in range(self.num_peers)]
        if self.update == "sequential":
            s = int(state.substep)
            if not 0 <= s < self.num_peers:
                raise ValueError(f"substep {s} out of range for {self.num_peers} peers")
            trained = [s]
        else:
            trained = list(range(self.num_peers))
        parts: dict[str, torch.Tensor] = {}
        for k in trained:
            parts.update(self.peer_loss(logits, k, y))
        total = torch.stack(list(parts.values())).sum()
        return total, parts

    def deployable(self) -> nn.Module:
        return self.peers[0]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Every peer's classifier (as ONE pools every branch's) for the gradient-ratio
        scheduler; in sequential mode only the peer being updated has gradients."""
        missing = [k for k, peer in enumerate(self.peers) if getattr(peer, "fc", None) is None]
        if missing:
            raise NotImplementedError(f"DML peers {missing} have no `fc` classifier")
        return [p for peer in self.peers for p in peer.fc.parameters()]

    @property
    def primary_head(self) -> str:
        return "peer0"


def peer_names(model: str | Sequence[str], peers: int | None = None) -> list[str]:
    """The architecture of every peer: ``model`` repeated ``peers`` times (default 2), or a
    list of names / a ``"resnet32+resnet56"`` string for heterogeneous peers."""
    if isinstance(model, str):
        names = [m.strip() for m in model.split("+")] if "+" in model else [model]
    else:
        names = [str(m) for m in model]
    if len(names) == 1:
        k = 2 if peers is None else int(peers)
        names = names * k
    elif peers is not None and int(peers) != len(names):
        raise ValueError(f"peers={peers} but {len(names)} peer models were named ({names}); "
                         f"drop peers= or name one model per peer")
    if len(names) < 2:
        raise ValueError(f"DML needs at least 2 peers, got {len(names)}")
    return names


@METHODS.register("dml", ranges={"peers": (2, None), "temperature": "(0, inf)"}, choices={"update": UPDATES})
def build_dml(
    model: str | Sequence[str],
    num_classes: int,
    in_channels: int = 3,
    *,
    peers: int | None = None,
    temperature: float = 1.0,
    mutual: bool = True,
    update: str = "joint",
    packed: bool = False,
) -> DML:
    """Registry factory: a DML Learner; each peer built (and so initialised) independently, in order.

    ``model``: one name (``peers`` copies, default 2), a list of names, or names joined
    by ``+`` (``"resnet32+resnet56"``, handy for RunConfig.model, which is a string).
    """
    nets = [models.build(name, num_classes, in_channels) for name in peer_names(model, peers)]
    return DML(nets, temperature=temperature, mutual=mutual, update=update, packed=packed)
