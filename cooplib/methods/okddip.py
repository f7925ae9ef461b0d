"""OKDDip: online knowledge distillation with diverse peers (Chen, Mei, Wang, Feng, Chen,
AAAI 2020).

m heads over a shared ``stem``/``layer1``/``layer2`` (``cooplib.models.shared_trunk``,
no gradient rescaling): m - 1 auxiliary *peers* and one *group leader*, the deployed
network. Two-level distillation, as DefangChen/OKDDip ``train_GL.py`` with
``models/model_cifar/resnet_GL.py`` (commit c6a05de892fc7d2b6767668548786688a388c2d6):

- every peer a has its own target, an attention-weighted aggregate of the peers' logits
  (itself included): t_a = sum_c alpha_{a,c} z_c, alpha_{a,.} = softmax_c(q_a . k_c),
  q = W_q f, k = W_k f, with f the peer's pooled ``layer3`` feature (D channels) and
  W_q, W_k bias-free linear maps to D / 8 (``factor``) dimensions, shared by the peers;
  no 1/sqrt(d) scaling;
- the leader's target is the peers' ensemble, the plain mean of their logits.

Loss, batch-mean (T = 3, ``alpha`` = 1 by default, as the reference)::

    sum_a CE(z_a, y) + CE(z_l, y)
      + alpha * w(e) * [ sum_a T^2 KL(softmax(t_a/T) || softmax(z_a/T))
                         + T^2 KL(softmax(mean_a z_a / T) || softmax(z_l/T)) ]

Nothing is detached in the reference: the peers' KL terms also train the peers through
the targets and, via the attention weights, W_q, W_k and the features (the only signal
W_q and W_k ever get); the leader's KL also trains the peers. That is the default here.
``detach_targets=True`` detaches the *logits* inside both targets (each head then learns
only from its own terms; the attention weights stay in the graph, so W_q and W_k still
learn). Left out: the reference's ``+ 1e-7`` on the target probabilities
(``utils.KL_Loss``); and its "consistency" ramp w(e) = exp(-5 (1 - e/80)^2) over the first
80 epochs (``--length 80``) is off by default (``ramp_epochs=0``, as cooplib's ONE and
CL-ILR; ``ramp_epochs=80`` is the reference).

Heads: ``branch0`` is the group leader (the reference's last branch, ``layer3_{m-1}``;
first here so that, as ONE's branch 0, it is the deployed network, initialised as
``models.build`` would be), ``branch1 .. branch{m-1}`` the peers, ``ensemble`` the
peers' mean (the leader's teacher and the reference's reported ensemble) and
``average`` the mean of all m heads. Loss parts: ``ce/peers``, ``ce/branch0``,
``kl/peers``, ``kl/branch0`` (the KL terms already weighted by alpha, T^2 and the ramp).

Checked against the reference code run as it is (outside cooplib, its network given this
network's weights, leader moved last; resnet8, 8 images, one batch): the same leader
logits, the loss within 3e-6 relative (the 1e-7), the gradients of W_q and of the shared
layers within 5e-7.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import losses
from ..models.shared_trunk import SharedTrunkNet
from ..base.registry import METHODS
from .base import TrainState
from .one import BranchLearner, sigmoid_ramp


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(P, B, d) queries and keys -> (B, P, P) weights, row a = softmax_c(q_a . k_c)."""
    energy = torch.einsum("abd,cbd->bac", q.float(), k.float())
    return torch.softmax(energy, dim=-1)


def peer_targets(peers: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """(P, B, C) peer logits, (B, P, P) weights -> (P, B, C): t_a = sum_c alpha_{a,c} z_c."""
    return torch.einsum("bac,cbn->abn", attention, peers.float())


def okddip_terms(
    leader: torch.Tensor,
    peers: torch.Tensor,
    attention: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    kl_scale: float = 1.0,
    detach_targets: bool = False,
) -> dict[str, torch.Tensor]:
    """The four named terms of the loss (module doc); their sum is the total."""
    source = peers.detach() if detach_targets else peers
    targets = peer_targets(source, attention)
    t = temperature
    kl_peers = sum(losses.kd_kl(z, tz, t) for z, tz in zip(peers.unbind(0), targets.unbind(0)))
    return {
        "ce/peers": sum(losses.cross_entropy(z, y) for z in peers.unbind(0)),
        "ce/branch0": losses.cross_entropy(leader, y),
        "kl/peers": kl_scale * kl_peers,
        "kl/branch0": kl_scale * losses.kd_kl(leader, source.mean(0), t),
    }


class OKDDip(BranchLearner):
    """A group leader and m - 1 auxiliary peers with attention-built targets (module doc)."""

    method = "okddip"

    def __init__(
        self,
        net: SharedTrunkNet,
        temperature: float = 3.0,
        alpha: float = 1.0,
        factor: int = 8,
        detach_targets: bool = False,
        ramp_epochs: int = 0,
    ) -> None:
        super().__init__()
        if net.num_branches < 3:
            raise ValueError(f"OKDDip needs a leader and at least 2 peers (branches >= 3), got {net.num_branches}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if not (isinstance(factor, int) and 1 <= factor <= net.feature_dim):
            raise ValueError(f"factor must be an integer in [1, {net.feature_dim}] (the feature width), got {factor!r}")
        if int(ramp_epochs) != ramp_epochs or ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be an integer >= 0, got {ramp_epochs!r}")
        self.net = net
        d = net.feature_dim // factor
        self.query = nn.Linear(net.feature_dim, d, bias=False)
        self.key = nn.Linear(net.feature_dim, d, bias=False)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.detach_targets = bool(detach_targets)
        self.ramp_epochs = int(ramp_epochs)
        self._attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z, f = self.net.forward_features(x)  # (m, B, C), (m, B, D)
        # kept (in the graph) for `loss`, as the distillation Learners keep teacher outputs
        self._attention = attention_weights(self.query(f[1:]), self.key(f[1:]))
        heads = {h: zi for h, zi in zip(self.branch_heads, z.unbind(0))}
        heads["ensemble"] = z[1:].mean(0)
        heads["average"] = z.mean(0)
        return heads

    def loss(self, heads, y, state: TrainState):
        if self._attention is None:
            raise RuntimeError("OKDDip.loss needs the attention of the forward pass that made `heads`: call the "
                               "learner on the batch first")
        peers = torch.stack([heads[h] for h in self.branch_heads[1:]])
        scale = self.alpha * sigmoid_ramp(state.epoch, self.ramp_epochs)
        parts = okddip_terms(heads["branch0"], peers, self._attention, y, self.temperature, scale,
                             self.detach_targets)
        self._attention = None
        return torch.stack(list(parts.values())).sum(), parts

    def diagnostics(self, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._attention = None  # evaluation computes no loss
        return super().diagnostics(heads)


@METHODS.register(
    "okddip",
    ranges={"branches": (3, None), "temperature": "(0, inf)", "alpha": (0, None), "factor": (1, None),
            "ramp_epochs": (0, None)},
)
def build_okddip(
    model: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    branches: int = 4,
    temperature: float = 3.0,
    alpha: float = 1.0,
    factor: int = 8,
    detach_targets: bool = False,
    ramp_epochs: int = 0,
) -> OKDDip:
    """Registry factory: OKDDip with ``branches`` heads (the leader + ``branches - 1``
    peers; 4 as the reference) on the backbone ``model`` (a CIFAR ResNet as the
    reference uses, or any staged backbone)."""
    net = SharedTrunkNet(model, num_classes, in_channels, branches=branches, sharing="layer2", bpscale=False)
    return OKDDip(net, temperature=temperature, alpha=alpha, factor=factor, detach_targets=detach_targets,
                  ramp_epochs=ramp_epochs)


__all__ = ["OKDDip", "build_okddip", "attention_weights", "peer_targets", "okddip_terms"]
