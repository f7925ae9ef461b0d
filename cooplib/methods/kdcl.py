"""KDCL: Online Knowledge Distillation via Collaborative Learning (Guo, Wang, Wu, Yu, Liang,
Hu, Luo, CVPR 2020).

There is no official code, and the paper's full text was not at hand when this was
written: the rules below are its published description as we state it, to be checked
against the paper (Sec. 3, "Knowledge Distillation via
Collaborative Learning": the per-student loss, the four ways of building the ensemble
teacher, and the per-student input distortion). K >= 2 students (any cooplib models,
heterogeneous allowed) each see their *own* random augmentation of the batch
(``Learner.views`` = K; ``separate_views=False`` feeds them all one view, the ablation);
from their logits z_1..z_K, all on the same images, a teacher z_t is built and every
student i minimises

    L_i = CE(z_i, y) + kd_weight * T^2 KL(softmax(z_t / T) || softmax(z_i / T)),

with z_t detached: the teacher is a target, not a path for gradients between students.

The teacher rules (``rule``; the function of each is below and tested against its formula):

- ``"naive"`` (KDCL-Naive): for each image the logits of the student with the lowest
  cross-entropy on it: z_t = z_k, k = argmin_i CE(z_i, y). (Per image: the paper's z is
  one image's logit vector.)
- ``"linear"`` (KDCL-Linear): z_t = sum_i w_i z_i with the weights on the simplex
  (w_i >= 0, sum w_i = 1) that minimise the batch's mean CE(sum_i w_i z_i, y). The paper
  states the problem, not the solver: here ``linear_steps`` iterations of accelerated
  projected gradient (FISTA, step 1/L with L an upper bound of the Hessian's largest
  eigenvalue, projection onto the simplex by sorting), in float32 on the device, no host
  synchronisation. With the default 100 steps the batch CE came within ~2e-4 of scipy's
  SLSQP optimum on 3 students x 128 images x 100 classes (300 steps: ~1e-6).
- ``"minlogit"`` (KDCL-MinLogit, the default): subtract each student's target logit from
  its logits, z^c_i = z_i - z_{i,y}, and take the element-wise minimum over students,
  z_t = min_i z^c_i: the target entry is 0 and every other class gets its smallest margin,
  so softmax(z_t) puts at least as much mass on y as any student.
- ``"mean"``: the plain mean of the logits, a control that is *not* one of the paper's rules.

KDCL-General (weights from a generalisation-error estimate on held-out data) is not
implemented: it needs a validation split the training loop does not have, and its weight
formula could not be restated here with confidence.

Heads: ``peer0`` .. ``peer{K-1}`` and ``average`` (mean of the peer logits): the teacher
rules need the labels, so no head can compute them at test time. Peer 0 is deployed.
Defaults chosen here (options): ``temperature`` = 2, ``kd_weight`` = 1, ``linear_steps`` = 100.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses, models
from ..base.errors import ConfigError, suggest
from ..base.registry import METHODS
from .base import Learner, TrainState, split_views

RULES = ("naive", "linear", "minlogit", "mean")


# ---------------------------------------------------------------- the teacher rules
# z: (K, B, C) student logits, y: (B,) labels; each returns (B, C) teacher logits in float32.


def naive_teacher(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KDCL-Naive: per image, the logits of the student with the lowest cross-entropy."""
    z = z.float()
    k, b, c = z.shape
    ce = F.cross_entropy(z.reshape(k * b, c), y.repeat(k), reduction="none").view(k, b)
    best = ce.argmin(0)  # (B,)
    return z.gather(0, best.view(1, b, 1).expand(1, b, c)).squeeze(0)


def minlogit_teacher(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KDCL-MinLogit: min over students of z_i - z_{i,y} (class by class)."""
    z = z.float()
    target = z.gather(2, y.view(1, -1, 1).expand(z.shape[0], -1, 1))
    return (z - target).amin(0)


def mean_teacher(z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the student logits (a control, not one of the paper's rules)."""
    return z.float().mean(0)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a (K,) vector onto {w >= 0, sum w = 1} (sort-based, as
    Duchi et al. 2008, Fig. 1), in tensor operations only (no host synchronisation)."""
    u = v.sort(descending=True).values
    css = u.cumsum(0) - 1.0
    ind = torch.arange(1, len(v) + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / ind > 0).sum()  # >= 1: the first entry always qualifies
    theta = css.gather(0, (rho - 1).view(1)) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def linear_weights(z: torch.Tensor, y: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """KDCL-Linear's weights: argmin over the simplex of mean_b CE(sum_i w_i z_ib, y_b), by
    `steps` FISTA iterations from the uniform weights.

    The gradient is mean_b Z_b^T (softmax(Z_b w) - e_y); the Hessian mean_b Z_b^T S_b Z_b with
    S_b = diag(p) - p p^T <= I/2, so L = trace(mean_b Z_b^T Z_b) / 2 bounds its largest
    eigenvalue. Logits are first centred over the classes (sum w = 1 makes that a per-image
    constant shift of the combination, which CE ignores), which makes L smaller."""
    z = z.detach().float()
    k, b, c = z.shape
    z = z - z.mean(2, keepdim=True)
    onehot = F.one_hot(y, c).to(z.dtype)
    lip = 0.5 * z.pow(2).sum() / b  # trace of mean_b Z_b^T Z_b, halved
    step = 1.0 / lip.clamp(min=1e-12)
    w = torch.full((k,), 1.0 / k, device=z.device, dtype=z.dtype)
    v, t = w, 1.0
    for _ in range(int(steps)):
        p = torch.softmax(torch.einsum("kbc,k->bc", z, v), dim=1)
        grad = torch.einsum("kbc,bc->k", z, p - onehot) / b
        w_next = project_simplex(v - step * grad)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        v = w_next + ((t - 1.0) / t_next) * (w_next - w)
        w, t = w_next, t_next
    return w


def linear_teacher(z: torch.Tensor, y: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """KDCL-Linear: the CE-minimising convex combination of the student logits."""
    w = linear_weights(z, y, steps)
    return torch.einsum("kbc,k->bc", z.float(), w)


def ensemble_teacher(rule: str, z: torch.Tensor, y: torch.Tensor, linear_steps: int = 100) -> torch.Tensor:
    """The teacher logits (B, C) of `rule` from student logits `z` (K, B, C)."""
    if rule == "naive":
        return naive_teacher(z, y)
    if rule == "linear":
        return linear_teacher(z, y, linear_steps)
    if rule == "minlogit":
        return minlogit_teacher(z, y)
    if rule == "mean":
        return mean_teacher(z, y)
    raise ConfigError(f"KDCL rule must be one of {RULES}, got {rule!r}{suggest(rule, RULES)}")


# ---------------------------------------------------------------- the Learner


class KDCL(Learner):
    """K students on their own augmented views, each distilled from one ensemble teacher."""

    method = "kdcl"

    def __init__(
        self,
        peers: Sequence[nn.Module],
        rule: str = "minlogit",
        temperature: float = 2.0,
        kd_weight: float = 1.0,
        linear_steps: int = 100,
        separate_views: bool = True,
    ) -> None:
        super().__init__()
        peers = list(peers)
        if len(peers) < 2:
            raise ConfigError(f"KDCL needs at least 2 students, got {len(peers)}")
        if rule not in RULES:
            raise ConfigError(f"KDCL rule must be one of {RULES}, got {rule!r}{suggest(rule, RULES)}")
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not float(kd_weight) >= 0:
            raise ConfigError(f"kd_weight must be >= 0, got {kd_weight!r}")
        if int(linear_steps) != linear_steps or linear_steps < 1:
            raise ConfigError(f"linear_steps must be an integer >= 1, got {linear_steps!r}")
        self.peers = nn.ModuleList(peers)
        self.rule = rule
        self.temperature, self.kd_weight = float(temperature), float(kd_weight)
        self.linear_steps = int(linear_steps)
        self.separate_views = bool(separate_views)
        #: one augmented view per student (the loader's V)
        self.views = len(peers) if self.separate_views else 1

    @property
    def num_peers(self) -> int:
        return len(self.peers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = [peer(xk) for peer, xk in zip(self.peers, split_views(x, self.num_peers))]
        heads = {f"peer{k}": zk for k, zk in enumerate(logits)}
        heads["average"] = torch.stack(logits).mean(0)
        return heads

    def teacher(self, heads: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """The (detached, float32) ensemble teacher logits of this batch."""
        z = torch.stack([heads[f"peer{k}"].detach().float() for k in range(self.num_peers)])
        return ensemble_teacher(self.rule, z, y, self.linear_steps)

    def loss(self, heads, y, state: TrainState):
        names = [f"peer{k}" for k in range(self.num_peers)]
        ce = torch.stack([losses.cross_entropy(heads[h], y) for h in names])
        parts = {f"ce/{h}": ce[k] for k, h in enumerate(names)}
        total = ce.sum()
        if self.kd_weight > 0:
            z_t = self.teacher(heads, y)
            kl = torch.stack([losses.kd_kl(heads[h], z_t, self.temperature) for h in names]) * self.kd_weight
            parts.update({f"kl/{h}": kl[k] for k, h in enumerate(names)})
            total = total + kl.sum()
        return total, parts

    def deployable(self) -> nn.Module:
        return self.peers[0]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        missing = [k for k, peer in enumerate(self.peers) if getattr(peer, "fc", None) is None]
        if missing:
            raise NotImplementedError(f"KDCL students {missing} have no `fc` classifier")
        return [p for peer in self.peers for p in peer.fc.parameters()]

    @property
    def primary_head(self) -> str:
        return "peer0"


def student_names(model: str | Sequence[str], students: int | None) -> list[str]:
    """Every student's architecture: ``model`` repeated ``students`` times (default 2), or a
    list of names / a ``"resnet32+resnet56"`` string (one name per student)."""
    names = [m.strip() for m in model.split("+")] if isinstance(model, str) else [str(m) for m in model]
    if len(names) == 1:
        names = names * (2 if students is None else int(students))
    elif students is not None and int(students) != len(names):
        raise ConfigError(f"students={students} but {len(names)} student models were named ({names}); "
                          f"drop students= or name one model per student")
    if len(names) < 2:
        raise ConfigError(f"KDCL needs at least 2 students, got {len(names)}")
    return names


@METHODS.register(
    "kdcl",
    ranges={"students": (2, None), "temperature": "(0, inf)", "kd_weight": (0, None), "linear_steps": (1, None)},
    choices={"rule": RULES},
)
def build_kdcl(
    model: str | Sequence[str],
    num_classes: int,
    in_channels: int = 3,
    *,
    students: int | None = None,
    rule: str = "minlogit",
    temperature: float = 2.0,
    kd_weight: float = 1.0,
    linear_steps: int = 100,
    separate_views: bool = True,
) -> KDCL:
    """Registry factory: a KDCL Learner, each student built (so initialised) independently, in order."""
    nets = [models.build(name, num_classes, in_channels) for name in student_names(model, students)]
    return KDCL(nets, rule=rule, temperature=temperature, kd_weight=kd_weight, linear_steps=linear_steps,
                separate_views=separate_views)


__all__ = ["KDCL", "RULES", "build_kdcl", "ensemble_teacher", "linear_weights", "minlogit_teacher",
           "naive_teacher", "mean_teacher", "project_simplex"]
