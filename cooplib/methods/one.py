"""ONE: On-the-fly Native Ensemble (Lan, Zhu, Gong, NeurIPS 2018).

Loss, exactly as the paper (batch-mean, T = 3 by default)::

    sum_i CE(z_i, y) + CE(z_e, y) + w(e) * T^2 * sum_i KL(softmax(z_e/T).detach() || softmax(z_i/T))

with z_e the gate-weighted teacher. The teacher is detached in the KL term, so
distillation trains the branches towards the teacher, never the teacher (gate) towards
the branches; the teacher learns from its own CE term only.

Ablations of the paper's Table 5: ``distill=False`` drops the KL term ("w/o online
distillation"); ``teacher="average"`` uses the plain mean of the branch logits as the
teacher, in the CE and the KL terms ("w/o gating"; the gate then gets no gradient);
"w/o sharing layers" is ``MultiBranchResNet(share=False)``.

``init_from(parent)`` (used by ``RunConfig.init_from``) starts from a trained ONE
network; when this one has more branches, it is the parent expanded by
``cooplib.models.expand.expand_branches`` (``expand``, ``expand_noise``, ``expand_prior``) with
the momentum carried over likewise. The expansion is seeded with the torch seed in
force when this learner was built (``experiment.build_learner`` seeds with
``config.seed``), so replicate runs differ and each is reproducible.

After an expansion, ``expand_anneal`` > 0 moves the gate prior linearly from its value
at the expansion to 0 over that many epochs (``cooplib.models.expand.annealed_prior``), so
parked branches (``"fresh"``, ``"new_head"``: prior -10) become real members of the
teacher and a duplicate group's shared weight grows; the function at the moment of
expansion is unchanged (the prior starts where the expansion put it). The prior for the
next step is set at the end of each ``loss`` call from ``state`` (epoch + (step + 1) /
steps per epoch), so a run resumed from a checkpoint continues the same schedule (the
prior is a buffer of the state dict). 0, the default, keeps the prior fixed.

``diagnostics`` reports, every evaluation, each branch's mean gate weight and the
pairwise disagreement and KL between branches (`branch_sums`; read back by ``cooplib.analysis.diversity``).

``ramp_epochs`` > 0 multiplies the KL term by the reference code's sigmoid ramp
w(e) = exp(-5 (1 - e/ramp)^2) for e < ramp, 1 after (a README tip of
Lan1991Xu/ONE_NeurIPS2018, probably not in the paper). As there, e is the integer
0-based epoch (``state.epoch``), so w is constant within an epoch and epoch-level loss
logs stay comparable; w(0) = exp(-5) ~ 0.0067. The default 0 disables the ramp.

``packed=True`` computes the branches as one wider network (grouped convolutions,
``cooplib.models.packed``): same parameters, state dict, heads and loss, equal to
float32 rounding. Off by default: on a 2-core CPU it is no faster than the per-branch
loop (see ``cooplib.models.packed``).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from .. import losses
from ..base.registry import METHODS
from ..models import expand as _expand
from ..models.multibranch import MultiBranchResNet
from .base import Learner, TrainState

TEACHERS = ("gate", "average")


def sigmoid_ramp(epoch: int, ramp_epochs: int) -> float:
    """exp(-5 (1 - e/ramp)^2) for e < ramp, else 1 (and 1 when ramp_epochs <= 0)."""
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return 1.0
    phase = 1.0 - max(0, epoch) / ramp_epochs
    return math.exp(-5.0 * phase * phase)


def branch_sums(branch_logits: torch.Tensor, gate: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-batch *sums* over images of ONE's branch diagnostics (``metrics.evaluate``
    divides by the image count; the terms are described, and read back from run records,
    in `cooplib.analysis.diversity`): ``branch_logits`` (m, B, C), ``gate`` (B, m) or None.
    A handful of batched kernels, no host synchronisation."""
    z = branch_logits.float()
    m = z.shape[0]
    out: dict[str, torch.Tensor] = {}
    if gate is not None:
        g = gate.float().sum(0)
        out.update({f"gate/branch{i}": g[i] for i in range(m)})
    if m < 2:
        return out
    top = z.argmax(-1)  # (m, B)
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    # cross[i, j] = sum_b sum_c p_i log p_j ; kl(i || j) = cross[i, i] - cross[i, j]
    cross = torch.einsum("ibc,jbc->ij", p, logp)
    ent = cross.diagonal()
    kl = ent[:, None] - cross  # (m, m): sum over the batch of KL(p_i || p_j)
    sym = 0.5 * (kl + kl.T)
    differ = (top[:, None, :] != top[None, :, :]).float().sum(-1) * 100.0  # (m, m)
    for i, j in itertools.combinations(range(m), 2):
        out[f"disagree/branch{i}-branch{j}"] = differ[i, j]
        out[f"kl/branch{i}-branch{j}"] = sym[i, j]
    return out


class BranchLearner(Learner):
    """A Learner over a network of m branches (``self.net``: ``num_branches``,
    ``branch_net(i)``, ``classifier_parameters()``): heads ``branch0 ..``, branch 0 with
    its shared layers deployed, every branch's classifier the gradient-ratio reference."""

    @property
    def branch_heads(self) -> list[str]:
        return [f"branch{i}" for i in range(self.net.num_branches)]

    def diagnostics(self, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pairwise disagreement and KL between the branches (`branch_sums`)."""
        return branch_sums(torch.stack([heads[h] for h in self.branch_heads]))

    def deployable(self) -> nn.Module:
        """Branch 0 with its shared layers (sharing parameters)."""
        return self.net.branch_net(0)

    @property
    def primary_head(self) -> str:
        return "branch0"

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Every branch's classifier."""
        return self.net.classifier_parameters()


class ONE(BranchLearner):
    """m branches trained with CE, plus CE of the teacher and KL from it to each branch.

    Heads: ``branch0..branch{m-1}``, ``ensemble`` (ONE-E) and ``average``. The deployed
    network is branch 0 with the shared layers (``primary_head = "branch0"``).
    Loss parts (named `term/head`, as every method's): ``ce/branches`` (sum over
    branches), ``ce/ensemble`` (``ce/average`` with the average teacher) and, when
    distilling, ``kl/branches`` (sum over branches, already multiplied by T^2 and the ramp).
    """

    method = "one"

    def __init__(
        self,
        net: MultiBranchResNet,
        temperature: float = 3.0,
        distill: bool = True,
        teacher: str = "gate",
        ramp_epochs: int = 0,
        expand: str = "duplicate",
        expand_noise: float = 0.01,
        expand_prior: float = -10.0,
        expand_anneal: float = 0.0,
        packed: bool | None = None,
    ) -> None:
        super().__init__()
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if int(ramp_epochs) != ramp_epochs or ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be an integer >= 0, got {ramp_epochs!r}")
        if expand not in _expand.STRATEGIES:
            raise ValueError(f"expand must be one of {_expand.STRATEGIES}, got {expand!r}")
        if expand_noise < 0:
            raise ValueError(f"expand_noise must be >= 0, got {expand_noise!r}")
        if not expand_anneal >= 0:
            raise ValueError(f"expand_anneal must be >= 0 epochs, got {expand_anneal!r}")
        self.net = net
        if packed is not None:  # None: as the network was built
            self.packed = packed
        self.expand, self.expand_noise, self.expand_prior = expand, float(expand_noise), float(expand_prior)
        self.expand_anneal = float(expand_anneal)
        # the gate prior at the moment of expansion (set by init_from; not in the state dict)
        self.register_buffer("prior_at_expansion", None, persistent=False)
        self._seed = torch.initial_seed()
        self.temperature = float(temperature)
        self.distill = bool(distill)
        self.teacher = teacher
        self.ramp_epochs = int(ramp_epochs)

    @property
    def packed(self) -> bool:
        """Whether the branches run as one packed network (settable, as DML's)."""
        return self.net.packed

    @packed.setter
    def packed(self, value: bool) -> None:
        self.net.packed = value

    @property
    def teacher_head(self) -> str:
        return "ensemble" if self.teacher == "gate" else "average"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x)

    def kl_weight(self, state: TrainState) -> float:
        return sigmoid_ramp(state.epoch, self.ramp_epochs)

    def loss(self, heads, y, state: TrainState):
        z_t = heads[self.teacher_head]
        ce_branches = sum(losses.cross_entropy(heads[h], y) for h in self.branch_heads)
        ce_teacher = losses.cross_entropy(z_t, y)
        parts = {"ce/branches": ce_branches, f"ce/{self.teacher_head}": ce_teacher}
        total = ce_branches + ce_teacher
        if self.distill:
            target = z_t.detach()
            kl = sum(losses.kd_kl(heads[h], target, self.temperature) for h in self.branch_heads)
            kl = kl * self.kl_weight(state)
            parts["kl/branches"] = kl
            total = total + kl
        if self.training:
            self._anneal_prior(state)
        return total, parts

    @torch.no_grad()
    def _anneal_prior(self, state: TrainState) -> None:
        """Set the gate prior of the next step (no-op without an expansion or anneal)."""
        start = self.prior_at_expansion
        if start is None or self.expand_anneal <= 0:
            return
        done = state.epoch + (state.step + 1) / max(1, state.steps_per_epoch)
        self.net.gate_prior.copy_(_expand.annealed_prior(start, done, self.expand_anneal))

    def diagnostics(self, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gate weight of every branch, pairwise disagreement and KL (`branch_sums`)."""
        zs = torch.stack([heads[h] for h in self.branch_heads])
        gate = self.net.last_gate if self.teacher == "gate" else None
        return branch_sums(zs, gate)

    def gradient_ratio_exclusions(self) -> list[nn.Parameter]:
        """The gate's bias (it sits right before the gate's BatchNorm)."""
        return self.net.pre_norm_biases()

    def init_from(self, parent: Learner, optimizer_state: dict | None = None) -> dict | None:
        """Start from a trained ONE learner: the same branch count loads strictly; fewer
        branches are expanded to ours (the function kept, up to ``expand_noise``).

        Duplicates default to noise 0.01 (relative to each tensor's std), unlike
        ``expand_branches``' exact default: identical copies get identical gradients and
        would never diverge in training.
        """
        if not isinstance(parent, ONE):
            raise TypeError(f"ONE can start only from a ONE learner, not {type(parent).__name__}")
        m_old, m_new = parent.net.num_branches, self.net.num_branches
        if m_old == m_new:
            return super().init_from(parent, optimizer_state)
        if m_old > m_new:
            raise ValueError(f"cannot start a {m_new}-branch ONE from a {m_old}-branch one (only expansion)")
        grown = _expand.expand_branches(
            parent.net, m_new, self.expand, noise=self.expand_noise, seed=self._seed, fresh_prior=self.expand_prior
        )
        _expand.load_state_strict(self.net, grown.state_dict())
        self.prior_at_expansion = self.net.gate_prior.detach().clone()
        if optimizer_state is None:
            return None
        return _expand.expanded_optimizer_state(optimizer_state, parent, self, grown.branch_sources, grown.fresh_fc)


@METHODS.register(
    "one",
    ranges={"branches": (1, None), "temperature": "(0, inf)", "ramp_epochs": (0, None), "expand_noise": (0, None),
            "expand_anneal": (0, None)},
    choices={"teacher": TEACHERS, "expand": _expand.STRATEGIES},
)
def build_one(
    model: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    branches: int = 3,
    share: bool = True,
    packed: bool = False,
    temperature: float = 3.0,
    distill: bool = True,
    teacher: str = "gate",
    ramp_epochs: int = 0,
    expand: str = "duplicate",
    expand_noise: float = 0.01,
    expand_prior: float = -10.0,
    expand_anneal: float = 0.0,
) -> ONE:
    """Registry factory: ONE with ``branches`` branches on the CIFAR ResNet ``model``;
    ``packed`` runs them as one wider network (same weights and results)."""
    net = MultiBranchResNet(model, num_classes, in_channels, branches=branches, share=share, packed=packed)
    return ONE(net, temperature=temperature, distill=distill, teacher=teacher, ramp_epochs=ramp_epochs,
               expand=expand, expand_noise=expand_noise, expand_prior=expand_prior, expand_anneal=expand_anneal)


__all__ = ["ONE", "BranchLearner", "build_one", "branch_sums", "sigmoid_ramp", "TEACHERS"]
