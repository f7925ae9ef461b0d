"""PCL: Peer Collaborative Learning for Online Knowledge Distillation (Wu & Gong, AAAI 2021).

There is no official code, and the paper's full text was not at hand when this was
written: this is the paper's method section as we restate it, to be checked against it (multi-branch network
with per-peer input augmentation, peer ensemble teacher, peer mean teachers) as restated
below, with every choice the paper leaves open named as an option.

Network (`PCLNet`): a CIFAR ResNet (or any backbone of the shared layout,
`cooplib.models.staged`) whose ``stem``, ``layer1`` and ``layer2`` are shared
and whose last stage is one branch ("peer") per copy of ``layer3`` + ``pool`` + ``fc``, as
ONE's (`cooplib.models.multibranch`), with no gate. Each peer gets its own random
augmentation of the batch (``Learner.views`` = m; the shared layers run once on all m views
stacked, so their BatchNorm sees the m*B images as one batch). The **peer ensemble
teacher** is an extra linear classifier on the concatenated pooled features of the m peers,
z_e = W [h_1; ...; h_m] + b (in place of ONE's gated logit sum, which the paper argues
cannot be optimised further). The **peer mean teachers** are the temporal mean of the whole
network (shared layers and every peer): after each optimizer step (`after_step`)

    theta'_t = a_t * theta'_{t-1} + (1 - a_t) * theta_t,   a_t = min(1 - 1/(t + 1), ema_decay)

(the min is Mean Teacher's warm-up, ``ema_warmup``; without it a_t = ema_decay)

for every parameter (BatchNorm statistics of the mean network come from its own forward
passes, in train mode during training, as in Mean Teacher: CuriousAI/mean-teacher,
pytorch/main.py ``update_ema_variables``). The mean network starts as a copy of the
network; it never gets gradients and the optimizer never sees it. Its forward pass runs
every step, so the recorded training FLOPs (TrCost) include it; the parameter count (only
what the optimizer trains) does not.

Loss, batch means, T = ``temperature``, every teacher detached:

    sum_i CE(z_i, y) + CE(z_e, y)                                             (peers, ensemble)
    + pe_weight * T^2 * sum_i KL(p_e || p_i)                                  (peer ensemble teacher)
    + pm_weight * w(e) * T^2 * sum_i 1/(m-1) sum_{l != i} KL(p~_l || p_i)     (peer mean teachers)

with p = softmax(z / T), p~_l the mean network's peer l on peer l's view, and w(e) the
sigmoid ramp exp(-5 (1 - e/ramp_epochs)^2) over the first ``ramp_epochs`` (integer) epochs,
1 after (0 = no ramp, the default).

Deployment: the temporal mean of peer 0 (with the shared layers), ``primary_head =
"mean0"``. Heads: ``branch0..`` (peers), ``ensemble`` (peer ensemble teacher) and
``mean0..`` (peer mean teachers), all evaluated every epoch.

Defaults chosen here (options): ``branches`` = 3, ``temperature`` = 3 (as ONE),
``ema_decay`` = 0.999 (Mean Teacher's), ``pe_weight`` = ``pm_weight`` = 1,
``ramp_epochs`` = 0.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import losses, models
from ..base.errors import ConfigError
from ..base.registry import METHODS
from ..models.multibranch import BranchHead, BranchNet
from ..models.resnet import CifarResNet
from ..models.staged import StagedNet
from .base import Learner, TrainState, split_views


class PCLNet(nn.Module):
    """Shared low stages, m peer branches and the peer-ensemble classifier.

    ``forward(x)`` takes one (B, C, H, W) batch (every peer sees it) or m views
    (m, B, C, H, W) and returns (list of m peer logits, ensemble logits). Branch 0 with
    the shared layers is initialised exactly as ``models.build(base)`` under the same seed.
    """

    def __init__(self, base: str, num_classes: int, in_channels: int = 3, branches: int = 3) -> None:
        super().__init__()
        if int(branches) != branches or branches < 2:
            raise ConfigError(f"PCL needs at least 2 branches (peers), got {branches!r}")
        nets = [models.build(base, num_classes, in_channels) for _ in range(int(branches))]
        if not isinstance(nets[0], (CifarResNet, StagedNet)):
            raise ConfigError(f"PCL needs a backbone of the shared layout (stem/layer1..3/pool/fc), not {base!r}")
        self.stem, self.layer1, self.layer2 = nets[0].stem, nets[0].layer1, nets[0].layer2
        self.branches = nn.ModuleList(BranchHead(n) for n in nets)
        self.feature_dim = nets[0].fc.in_features
        self.ensemble_fc = nn.Linear(self.feature_dim * len(nets), num_classes)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        m = self.num_branches
        if x.ndim == 5:  # the shared layers once over all views
            split_views(x, m)  # (checks the shape)
            f2 = self.layer2(self.layer1(self.stem(x.flatten(0, 1))))
            f2s = list(f2.unflatten(0, (m, x.shape[1])).unbind(0))
        else:
            f2s = [self.layer2(self.layer1(self.stem(x)))] * m
        feats = [head.pool(head.layer3(f)) for head, f in zip(self.branches, f2s)]
        logits = [head.fc(h) for head, h in zip(self.branches, feats)]
        return logits, self.ensemble_fc(torch.cat(feats, 1))

    def branch_net(self, i: int = 0) -> nn.Module:
        """Peer i with the shared layers, as one network (parameters shared, not copied)."""
        return BranchNet(self, i)  # duck-typed: stem/layer1/layer2 and branches[i]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for head in self.branches for p in head.fc.parameters()] + list(self.ensemble_fc.parameters())


def sigmoid_ramp(epoch: int, ramp_epochs: int) -> float:
    """exp(-5 (1 - e/ramp)^2) for e < ramp, else 1 (and 1 when ramp_epochs <= 0)."""
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return 1.0
    phase = 1.0 - max(0, epoch) / ramp_epochs
    return math.exp(-5.0 * phase * phase)


class PCL(Learner):
    """Peers on their own views, a feature-level peer ensemble teacher and temporal-mean peer teachers."""

    method = "pcl"

    def __init__(
        self,
        net: PCLNet,
        temperature: float = 3.0,
        ema_decay: float = 0.999,
        pe_weight: float = 1.0,
        pm_weight: float = 1.0,
        ramp_epochs: int = 0,
        separate_views: bool = True,
        ema_warmup: bool = True,
    ) -> None:
        super().__init__()
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if not (float(pe_weight) >= 0 and float(pm_weight) >= 0):
            raise ConfigError(f"pe_weight and pm_weight must be >= 0, got {pe_weight!r}, {pm_weight!r}")
        if int(ramp_epochs) != ramp_epochs or ramp_epochs < 0:
            raise ConfigError(f"ramp_epochs must be an integer >= 0, got {ramp_epochs!r}")
        self.net = net
        self.mean_net = copy.deepcopy(net).requires_grad_(False)
        self.temperature, self.ema_decay = float(temperature), float(ema_decay)
        self.pe_weight, self.pm_weight = float(pe_weight), float(pm_weight)
        self.ramp_epochs = int(ramp_epochs)
        self.separate_views = bool(separate_views)
        self.ema_warmup = bool(ema_warmup)
        #: one augmented view per peer (the loader's V)
        self.views = net.num_branches if self.separate_views else 1

    @property
    def num_branches(self) -> int:
        return self.net.num_branches

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, ensemble = self.net(x)
        heads = {f"branch{i}": z for i, z in enumerate(logits)}
        heads["ensemble"] = ensemble
        with torch.no_grad():
            mean_logits, _ = self.mean_net(x)
        heads.update({f"mean{i}": z for i, z in enumerate(mean_logits)})
        return heads

    def loss(self, heads, y, state: TrainState):
        m, t = self.num_branches, self.temperature
        peers = [heads[f"branch{i}"] for i in range(m)]
        ce = torch.stack([losses.cross_entropy(z, y) for z in peers])
        ce_e = losses.cross_entropy(heads["ensemble"], y)
        parts = {"ce/branches": ce.sum(), "ce/ensemble": ce_e}
        total = ce.sum() + ce_e
        if self.pe_weight > 0:
            target = heads["ensemble"].detach()
            pe = torch.stack([losses.kd_kl(z, target, t) for z in peers]).sum() * self.pe_weight
            parts["kl/ensemble"] = pe
            total = total + pe
        w = self.pm_weight * sigmoid_ramp(state.epoch, self.ramp_epochs)
        if w > 0:
            means = [heads[f"mean{i}"].detach() for i in range(m)]
            pm = sum(losses.kd_kl(peers[i], means[j], t) for i in range(m) for j in range(m) if j != i)
            pm = pm * (w / (m - 1))
            parts["kl/mean"] = pm
            total = total + pm
        return total, parts

    @torch.no_grad()
    def decay(self, state: TrainState) -> float:
        """The EMA factor of this step: `ema_decay`, or with `ema_warmup` Mean Teacher's
        min(1 - 1/(t + 1), ema_decay) at global step t = 1, 2, ... (CuriousAI/mean-teacher,
        pytorch/main.py ``update_ema_variables``: "use the true average until the exponential
        average is more correct"); without it a short run deploys mostly the initial weights
        (0.999 ** 144 = 0.87 of them after 144 steps)."""
        if not self.ema_warmup:
            return self.ema_decay
        t = state.epoch * state.steps_per_epoch + state.step + 1
        return min(1.0 - 1.0 / (t + 1), self.ema_decay)

    def after_step(self, state: TrainState) -> None:
        """theta' <- decay * theta' + (1 - decay) * theta, every parameter (`decay`)."""
        a = self.decay(state)
        mean = list(self.mean_net.parameters())
        live = [p.detach() for p in self.net.parameters()]
        torch._foreach_mul_(mean, a)
        torch._foreach_add_(mean, live, alpha=1.0 - a)

    def deployable(self) -> nn.Module:
        """The temporal mean of peer 0 with the shared layers (the paper's deployed model)."""
        return self.mean_net.branch_net(0)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The peers' classifiers and the ensemble classifier (the trained ones)."""
        return self.net.classifier_parameters()

    @property
    def primary_head(self) -> str:
        return "mean0"


@METHODS.register(
    "pcl",
    ranges={"branches": (2, None), "temperature": "(0, inf)", "ema_decay": "[0, 1)", "pe_weight": (0, None),
            "pm_weight": (0, None), "ramp_epochs": (0, None)},
)
def build_pcl(
    model: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    branches: int = 3,
    temperature: float = 3.0,
    ema_decay: float = 0.999,
    pe_weight: float = 1.0,
    pm_weight: float = 1.0,
    ramp_epochs: int = 0,
    separate_views: bool = True,
    ema_warmup: bool = True,
) -> PCL:
    """Registry factory: PCL with ``branches`` peers on the backbone ``model``."""
    return PCL(PCLNet(model, num_classes, in_channels, branches), temperature=temperature, ema_decay=ema_decay,
               pe_weight=pe_weight, pm_weight=pm_weight, ramp_epochs=ramp_epochs, separate_views=separate_views,
               ema_warmup=ema_warmup)


__all__ = ["PCL", "PCLNet", "build_pcl", "sigmoid_ramp"]
