"""Multi-exit baselines of the cooperative-depth chapter, on ``models.depth.MultiExitResNet``.

**BYOT** ("Be Your Own Teacher", Zhang et al., ICCV 2019): exits after every stage, the
shallow ones with bottleneck heads. As the official code computes it
(ArchipLab-LinfengZhang/pytorch-self-distillation-final@47ca93b, train.py): the deepest
exit learns from the labels; each shallow exit i adds

    (1 - alpha) CE(z_i, y) + alpha softCE(z_i, sg(z_deep); T) [+ beta ||A_i(f_i) - sg(f_deep)||_2],

alpha = 0.3, T = 3, beta = 0.03, softCE = -sum softmax(sg(z_deep)/T) log softmax(z_i/T)
(batch-mean, no T^2; alpha and beta are weights in [0, 1], checked when built), f the
pooled feature before each exit's classifier, A_i a linear adaptation layer (the code's
``adaptation_layers``, trained with the network, not deployed) and ||.||_2 the norm over
the whole batch (``torch.dist``). The feature hint skips one exit: the code's rule
``index != 1`` over outputs ordered deepest first leaves out the shallow exit right
below the deepest (its comment says "the shallowest", its code does not); here exit2.
``hint_exits="all"`` puts the hint on every shallow exit (the paper's equation), and
``adaptation=False`` compares the features directly (the conference version).

**Early exit** (BranchyNet / Shallow-Deep Networks style): the same exits trained by the
joint weighted CE sum_i w_i CE(z_i, y); at test time a sample stops at the first exit
whose confidence passes a threshold (``cooplib.analysis.adaptive.dynamic_exit``). Heads
``linear`` (pool + fc, SDN's cheapest) or ``bottleneck``.

Heads of both: ``exit1``, ``exit2``, ``exit3`` (exit3 is the full network, deployed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses, models
from ..models.depth import MultiExitResNet
from ..base.registry import METHODS
from .base import Learner, TrainState
from .coop_depth import SHORTCUTS

#: the kinds of exit head (``models.depth.ExitHead``)
EXIT_HEADS = ("linear", "bottleneck")


def soft_ce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """-sum softmax(teacher/T) log softmax(student/T), batch-mean (BYOT's soft CE, no T^2)."""
    t = float(temperature)
    p = F.softmax(teacher.float() / t, dim=1)
    return -(p * F.log_softmax(student.float() / t, dim=1)).sum(1).mean()


class _Exits(Learner):
    def __init__(self, multi: MultiExitResNet) -> None:
        super().__init__()
        self.multi = multi
        self._feats: list[torch.Tensor] = []

    @property
    def exit_heads(self) -> list[str]:
        return [f"exit{i + 1}" for i in range(self.multi.num_exits)]

    def forward(self, x):
        logits, self._feats = self.multi.forward_exits(x)
        return dict(zip(self.exit_heads, logits))

    def deployable(self) -> nn.Module:
        return self.multi.net

    def last_layer_parameters(self):
        return [p for h in self.multi.heads for p in h.fc.parameters()] + list(self.multi.net.fc.parameters())

    @property
    def primary_head(self) -> str:
        return self.exit_heads[-1]


#: which shallow exits get BYOT's feature hint
HINT_EXITS = ("official", "all")


class BYOT(_Exits):
    """Self-distillation from the deepest exit (logits and pooled features)."""

    method = "byot"

    def __init__(self, multi, alpha: float = 0.3, temperature: float = 3.0, beta: float = 0.03,
                 hint_exits: str = "official", adaptation: bool = True) -> None:
        super().__init__(multi)
        if hint_exits not in HINT_EXITS:
            raise ValueError(f"hint_exits must be one of {HINT_EXITS}, got {hint_exits!r}")
        self.alpha, self.temperature, self.beta = float(alpha), float(temperature), float(beta)
        shallow = self.exit_heads[:-1]
        # official train.py: `if index != 1` with outputs deepest first skips the exit below the deepest
        self.hinted = [h for h in shallow if hint_exits == "all" or h != shallow[-1]]
        dims = self._feature_dims()
        self.adaptation = nn.ModuleDict({h: nn.Linear(dims[h], dims[self.exit_heads[-1]])
                                         for h in self.hinted}) if adaptation else None

    @torch.no_grad()
    def _feature_dims(self) -> dict[str, int]:
        """Width of each exit's pooled feature (the heads' classifier inputs)."""
        fcs = [h.fc for h in self.multi.heads] + [self.multi.net.fc]
        return {h: fc.in_features for h, fc in zip(self.exit_heads, fcs)}

    def loss(self, heads, y, state: TrainState, feats: list[torch.Tensor] | None = None):
        feats = self._feats if feats is None else feats
        deep, f_deep = heads[self.exit_heads[-1]], feats[-1].detach()
        parts = {"ce/deep": losses.cross_entropy(deep, y)}
        ce = kd = hint = deep.new_zeros((), dtype=torch.float32)
        for h, f in zip(self.exit_heads[:-1], feats[:-1]):
            ce = ce + (1 - self.alpha) * losses.cross_entropy(heads[h], y)
            kd = kd + self.alpha * soft_ce(heads[h], deep.detach(), self.temperature)
            if h in self.hinted:
                a = self.adaptation[h](f) if self.adaptation is not None else f
                hint = hint + self.beta * torch.dist(a.float(), f_deep.float())
        parts.update({"ce/shallow": ce, "kd/shallow": kd, "hint/shallow": hint})
        return torch.stack(list(parts.values())).sum(), parts


class EarlyExit(_Exits):
    """Joint weighted CE over the exits."""

    method = "early_exit"

    def __init__(self, multi, exit_weights=(1.0, 1.0, 1.0)) -> None:
        super().__init__(multi)
        if len(exit_weights) != multi.num_exits:
            raise ValueError(f"exit_weights needs {multi.num_exits} values, got {exit_weights!r}")
        self.exit_weights = [float(w) for w in exit_weights]

    def loss(self, heads, y, state: TrainState):
        parts = {f"ce/{h}": w * losses.cross_entropy(heads[h], y) for h, w in zip(self.exit_heads, self.exit_weights)}
        return torch.stack(list(parts.values())).sum(), parts


@METHODS.register("byot", ranges={"alpha": (0, 1), "beta": (0, 1), "temperature": "(0, inf)"},
                  choices={"shortcut": SHORTCUTS, "hint_exits": HINT_EXITS})
def build_byot(model: str, num_classes: int, in_channels: int = 3, *, shortcut: str = "projection",
               alpha: float = 0.3, temperature: float = 3.0, beta: float = 0.03, hint_exits: str = "official",
               adaptation: bool = True) -> BYOT:
    """Registry factory: BYOT exits (bottleneck heads) on ``model``."""
    net = models.build(model, num_classes, in_channels, shortcut=shortcut)
    return BYOT(MultiExitResNet(net, num_classes, "bottleneck"), alpha, temperature, beta, hint_exits, adaptation)


@METHODS.register("early_exit", ranges={"exit_weights": (0, None)},
                  choices={"shortcut": SHORTCUTS, "head": EXIT_HEADS})
def build_early_exit(model: str, num_classes: int, in_channels: int = 3, *, shortcut: str = "projection",
                     head: str = "linear", exit_weights: tuple = (1.0, 1.0, 1.0)) -> EarlyExit:
    """Registry factory: early exits (``head`` linear or bottleneck) on ``model``."""
    net = models.build(model, num_classes, in_channels, shortcut=shortcut)
    return EarlyExit(MultiExitResNet(net, num_classes, head), exit_weights)


__all__ = ["BYOT", "EarlyExit", "HINT_EXITS", "soft_ce"]
