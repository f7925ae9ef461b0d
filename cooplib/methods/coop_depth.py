"""Cooperative learning for cost-adaptive inference (Fang, Kim, Bradford, arXiv 2312.08532).

Only the paper's abstract and summary are known (see the chapter); what follows them:
two Teammates T1, T2 and a Leader L train together; each Teammate distils into its own
depth sub-networks (``cooplib.models.depth``) and mutually into the other Teammate;
the Leader learns from the labels and guides the Teammates; sub-network losses are
divided by their scaling factor s (SFSL: shallower ones weigh more). The loss is

    CE(L) + sum_j [CE(Tj) + a_lead KD(Tj <- L) + a_mut KD(Tj <- T_other)]
          + sum_j sum_{s in S} w(s) [b CE(Tj@s) + KD(Tj@s <- Tj)],

KD = T^2 KL(teacher || student), batch-mean, teacher detached. Our design choices, each
an option: a_lead = a_mut = b = 1, T = 3, w(s) = 1/s (``weighting="sfsl"``; "normalised"
divides by the sum of 1/s over S, "uniform" is 1), S = {0.2, 0.4, 0.6, 0.8} (the full
Teammate is s = 1), sub-networks keep the *first* blocks of each stage.

``resample``: "fixed" trains every factor of S each step; "epoch" / "step" draw
``sample_size`` factors of S (always the smallest) per epoch / per step, a pure function
of (seed, epoch[, step]) kept in a buffer, so a resumed run draws as an unbroken one.

``term_reduction`` (how each network's loss terms are combined): "sum" (default; the
paper's loss, a plain sum) or "mean", which divides the terms that update each network's
weights by their number (``terms_per_network``): a Teammate's 1 CE + 1 KD from the Leader
+ 1 mutual KD + (b != 0) CE + 1 KD per trained factor, the Leader's 1 CE. Why: the sum gives
a Teammate's weights a step several times larger than a CE-only network's at the same lr
(the Leader and the independent baselines take single-CE steps), so an accuracy gain over
them may be the effective learning rate. With every teacher detached, no gradient crosses
networks, so "mean" at lr is exactly "sum" at lr / n_j for network j (gradient term;
SGD momentum is linear; weight decay is not divided, i.e. "sum" at lr / n_j with weight
decay n_j times larger). The coefficients (a_lead, a_mut, b, w(s)) stay inside the mean,
so with SFSL (1/s > 1) the per-step gradient mass is ``coefficient_sum`` / n_j, still above
one CE; ``weighting="normalised"`` as well brings it nearer.

Factors that keep the same blocks (on ResNet-8 every factor is the full network) are a
``ConfigError`` at construction (``models.depth.check_distinct``): S, 1.0 and
``deploy_factor`` must be distinct sub-networks.

Heads (eval): ``t1@s`` / ``t2@s`` for s in S and 1.0, and ``leader``. In training only the
drawn factors' heads exist (train top-1 of a factor drawn in some steps only is averaged
over the whole epoch). Deployed: T1 at ``deploy_factor``, exported as a plain ResNet.
Ablations: ``leader=False``, ``mutual=False``, ``weighting="uniform"``, ``teammates=1``.
``depth_single`` (also here) is one plain network: the independently trained baseline.
"""
from __future__ import annotations

import typing

import torch
from torch import nn

from .. import losses, models
from ..base.errors import ConfigError, suggest
from ..models import depth
from ..models.resnet import Shortcut
from ..base.registry import METHODS
from .base import Learner, TrainState

WEIGHTINGS = ("sfsl", "normalised", "uniform")
RESAMPLES = ("fixed", "epoch", "step")
TERM_REDUCTIONS = ("sum", "mean")
#: ``shortcut`` of the CIFAR ResNets (``models.resnet``)
SHORTCUTS = typing.get_args(Shortcut)


def check_deploy_factor(options: dict) -> None:
    """``deploy_factor`` must be 1.0 or one of ``factors``: only those heads are evaluated,
    and the deployed one is the primary head (picks the best epoch)."""
    factors = sorted({float(s) for s in options["factors"]})
    if not factors:
        raise ConfigError("method 'coop_depth' option factors must be a non-empty list like [0.3, 0.6], got []")
    if float(options["deploy_factor"]) not in (*factors, 1.0):
        raise ConfigError(f"method 'coop_depth' option deploy_factor must be 1.0 or one of factors "
                          f"{[float(s) for s in options['factors']]}, got {options['deploy_factor']!r}")


def sfsl_weights(factors, weighting: str = "sfsl") -> dict[float, float]:
    """w(s) per factor: 1/s (SFSL), 1/s normalised to sum to 1 over the factors, or 1."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    raw = {float(s): (1.0 / s if weighting != "uniform" else 1.0) for s in factors}
    if weighting == "normalised":
        total = sum(raw.values())
        raw = {s: w / total for s, w in raw.items()}
    return raw


def head_name(net: str, factor: float) -> str:
    """'t1@0.25': network name and scaling factor."""
    return f"{net}@{float(factor):g}"


class StepDraw(nn.Module):
    """Random draws as a pure function of (seed, epoch, step), resumable.

    ``forward`` runs before ``loss`` knows the step, so the learner keeps the next
    (epoch, step) in a buffer that ``advance`` moves after each loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("draw", torch.tensor([torch.initial_seed() % (2**31), 0, 0], dtype=torch.long))

    def generator(self, per_step: bool) -> torch.Generator:
        seed, epoch, step = (int(v) for v in self.draw.tolist())
        return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + (step if per_step else -1))

    def advance(self, state: TrainState) -> None:
        nxt = (state.epoch, state.step + 1) if state.step + 1 < state.steps_per_epoch else (state.epoch + 1, 0)
        self.draw[1], self.draw[2] = nxt


def _kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return losses.kd_kl(student, teacher.detach(), t)


class CoopDepth(Learner):
    """Teammates with depth sub-networks, mutual KD and a Leader (see the module doc)."""

    method = "coop_depth"

    def __init__(self, teammates, leader: nn.Module | None, *, factors=(0.2, 0.4, 0.6, 0.8), spacing: str = "first",
                 temperature: float = 3.0, a_lead: float = 1.0, a_mut: float = 1.0, b: float = 1.0,
                 weighting: str = "sfsl", resample: str = "fixed", sample_size: int = 2,
                 deploy_factor: float = 1.0, term_reduction: str = "sum") -> None:
        super().__init__()
        factors = sorted({float(s) for s in factors})
        if not factors or not all(0 < s < 1 for s in factors):
            raise ConfigError(f"factors are sub-network scaling factors in (0, 1), got {factors!r}")
        if resample not in RESAMPLES:
            raise ConfigError(f"resample must be one of {RESAMPLES}, got {resample!r}{suggest(resample, RESAMPLES)}")
        if not 1 <= len(list(teammates)) <= 2:
            raise ConfigError("coop_depth needs one or two Teammates")
        if int(sample_size) < 1:
            raise ConfigError(f"sample_size must be >= 1, got {sample_size!r}")
        if term_reduction not in TERM_REDUCTIONS:
            raise ConfigError(f"term_reduction must be one of {TERM_REDUCTIONS}, got {term_reduction!r}"
                              f"{suggest(term_reduction, TERM_REDUCTIONS)}")
        self.teammates = nn.ModuleList(teammates)
        self.leader = leader
        self.factors, self.spacing, self.temperature = factors, spacing, float(temperature)
        self.a_lead, self.a_mut, self.b = float(a_lead), float(a_mut), float(b)
        self.weighting, self.weights = weighting, sfsl_weights(factors, weighting)
        self.resample, self.sample_size = resample, min(int(sample_size), len(factors))
        self.deploy_factor = float(deploy_factor)
        self.term_reduction = term_reduction
        depth.kept_blocks(self.teammates[0].blocks_per_stage, self.deploy_factor, spacing)  # validates it
        # every factor evaluated (S, the full network, the deployed one) must be its own sub-network;
        # resampling trains subsets of S, so checking S covers every draw
        depth.check_distinct(self.teammates[0], [*factors, 1.0, self.deploy_factor], spacing, what="coop_depth")
        check_deploy_factor({"factors": factors, "deploy_factor": self.deploy_factor})
        self.sampler = StepDraw()

    @property
    def names(self) -> list[str]:
        return [f"t{j + 1}" for j in range(len(self.teammates))]

    def train_factors(self) -> list[float]:
        """The factors trained now: all of S, or the smallest plus a draw of the others."""
        if self.resample == "fixed" or self.sample_size == len(self.factors):
            return list(self.factors)
        rest = self.factors[1:]
        g = self.sampler.generator(per_step=self.resample == "step")
        pick = torch.randperm(len(rest), generator=g)[: self.sample_size - 1].tolist()
        return [self.factors[0]] + sorted(rest[i] for i in pick)

    def factors_per_step(self) -> int:
        """How many factors of S one training step trains (every draw has this many)."""
        return len(self.factors) if self.resample == "fixed" else self.sample_size

    def _teammate_terms(self, n_factors: int) -> int:
        lead = int(self.leader is not None and bool(self.a_lead))
        mut = int(len(self.teammates) == 2 and bool(self.a_mut))
        return 1 + lead + mut + n_factors * (int(bool(self.b)) + 1)

    def terms_per_network(self) -> dict[str, int]:
        """Per network, the loss terms that update its weights in one training step:
        ``{"t1": 1 + [a_lead] + [a_mut] + (1 + [b]) * factors_per_step(), ..., "leader": 1}``
        (a bracket is 1 when that term is on). "mean" divides by these; under "sum" they
        are the factor by which a network's step exceeds a one-term network's at the same
        lr when the terms' gradients are of similar size."""
        n = {name: self._teammate_terms(self.factors_per_step()) for name in self.names}
        if self.leader is not None:
            n["leader"] = 1
        return n

    def coefficient_sum(self, factors=None) -> dict[str, float]:
        """Per network, the sum of the coefficients of its terms for ``factors`` (default:
        all of S, what ``resample="fixed"`` trains each step), before "mean" divides:
        ``1 + a_lead + a_mut + sum_s w(s) (b + 1)`` for a Teammate, 1 for the Leader."""
        fs = self.factors if factors is None else [float(s) for s in factors]
        lead = self.a_lead if self.leader is not None else 0.0
        mut = self.a_mut if len(self.teammates) == 2 else 0.0
        out = {name: 1.0 + lead + mut + sum(self.weights[s] * (self.b + 1.0) for s in fs) for name in self.names}
        if self.leader is not None:
            out["leader"] = 1.0
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        factors = self.train_factors() if self.training else self.factors
        heads = {}
        for name, net in zip(self.names, self.teammates):
            heads[head_name(name, 1.0)] = net(x)
            for s in factors:
                heads[head_name(name, s)] = depth.forward_at(net, x, s, self.spacing)
        if self.leader is not None:
            heads["leader"] = self.leader(x)
        return heads

    def loss(self, heads, y, state: TrainState):
        t = self.temperature
        parts: dict[str, torch.Tensor] = {}
        terms: dict[str, int] = {"leader": 1}  # per network: terms updating its weights ("mean" divides by it)
        if self.leader is not None:
            parts["ce/leader"] = losses.cross_entropy(heads["leader"], y)
        for j, name in enumerate(self.names):
            z = heads[head_name(name, 1.0)]
            parts[f"ce/{name}"] = losses.cross_entropy(z, y)
            if self.leader is not None and self.a_lead:
                parts[f"kd_lead/{name}"] = self.a_lead * _kd(z, heads["leader"], t)
            if len(self.names) == 2 and self.a_mut:
                other = head_name(self.names[1 - j], 1.0)
                parts[f"kd_mut/{name}"] = self.a_mut * _kd(z, heads[other], t)
            sub_ce, sub_kd = z.new_zeros((), dtype=torch.float32), z.new_zeros((), dtype=torch.float32)
            drawn = 0
            for s in self.factors:
                h = heads.get(head_name(name, s))
                if h is None:  # not drawn this step
                    continue
                drawn += 1
                sub_ce = sub_ce + self.weights[s] * self.b * losses.cross_entropy(h, y)
                sub_kd = sub_kd + self.weights[s] * _kd(h, z, t)
            parts[f"sub_ce/{name}"], parts[f"sub_kd/{name}"] = sub_ce, sub_kd
            terms[name] = self._teammate_terms(drawn)
        if self.term_reduction == "mean":  # each network's terms / their number (parts still sum to the total)
            parts = {k: v / terms[k.rsplit("/", 1)[1]] for k, v in parts.items()}
        if self.training:
            self.sampler.advance(state)
        return torch.stack(list(parts.values())).sum(), parts

    def deployable(self) -> nn.Module:
        """T1 at ``deploy_factor`` as a plain ResNet of that depth (a copy: for cost and export)."""
        return depth.export(self.teammates[0], self.deploy_factor, self.spacing)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [p for net in self.teammates for p in net.fc.parameters()]

    @property
    def primary_head(self) -> str:
        return head_name("t1", self.deploy_factor)


@METHODS.register(
    "coop_depth",
    ranges={"teammates": (1, 2), "factors": "(0, 1)", "temperature": "(0, inf)", "a_lead": (0, None),
            "a_mut": (0, None), "b": (0, None), "sample_size": (1, None), "deploy_factor": "(0, 1]"},
    choices={"shortcut": SHORTCUTS, "spacing": depth.SPACINGS, "weighting": WEIGHTINGS, "resample": RESAMPLES,
             "term_reduction": TERM_REDUCTIONS},
    check=check_deploy_factor,
)
def build_coop_depth(model: str, num_classes: int, in_channels: int = 3, *, leader_model: str | None = None,
                     leader: bool = True, teammates: int = 2, mutual: bool = True, shortcut: str = "projection",
                     factors: tuple = (0.2, 0.4, 0.6, 0.8), spacing: str = "first", temperature: float = 3.0,
                     a_lead: float = 1.0, a_mut: float = 1.0, b: float = 1.0, weighting: str = "sfsl",
                     resample: str = "fixed", sample_size: int = 2, deploy_factor: float = 1.0,
                     term_reduction: str = "sum") -> CoopDepth:
    """Registry factory: Teammates are ``model``, the Leader ``leader_model`` (default ``model``).

    Factors that keep the same blocks of ``model`` (S, the full 1.0, ``deploy_factor``) are a
    ``ConfigError`` before anything trains, and so is a ``deploy_factor`` that is neither 1.0
    nor one of ``factors`` (only those heads are evaluated). ``term_reduction="mean"``: see the module doc.
    Options left at their default are not stored in ``method_args``, so run names of
    configs that do not set ``term_reduction`` are unchanged."""
    nets = [models.build(model, num_classes, in_channels, shortcut=shortcut) for _ in range(int(teammates))]
    lead = models.build(leader_model or model, num_classes, in_channels, shortcut=shortcut) if leader else None
    return CoopDepth(nets, lead, factors=factors, spacing=spacing, temperature=temperature, a_lead=a_lead,
                     a_mut=a_mut if mutual else 0.0, b=b, weighting=weighting, resample=resample,
                     sample_size=sample_size, deploy_factor=deploy_factor, term_reduction=term_reduction)


class DepthSingle(Learner):
    """One plain network of one depth, CE only: the independently trained baseline."""

    method = "depth_single"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"net": self.net(x)}

    def loss(self, heads, y, state):
        ce = losses.cross_entropy(heads["net"], y)
        return ce, {"ce/net": ce}

    def deployable(self) -> nn.Module:
        return self.net


@METHODS.register("depth_single", choices={"shortcut": SHORTCUTS})
def build_depth_single(model: str, num_classes: int, in_channels: int = 3, *, shortcut: str = "projection") -> DepthSingle:
    """Registry factory: ``model`` alone (the baseline with the shortcut option)."""
    return DepthSingle(models.build(model, num_classes, in_channels, shortcut=shortcut))


__all__ = ["CoopDepth", "DepthSingle", "StepDraw", "sfsl_weights", "head_name", "check_deploy_factor", "WEIGHTINGS",
           "RESAMPLES", "TERM_REDUCTIONS", "SHORTCUTS"]
