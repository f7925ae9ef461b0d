"""Any-depth training with the sandwich rule and in-place distillation (the
slimmable-network recipe, applied to depth instead of width).

Each step trains the largest network (s = 1) on the labels, and the smallest factor
plus ``n_random`` random factors (uniform in (smallest, 1), a pure function of seed,
epoch and step) by KD from the largest's detached logits only:

    CE(z_1, y) + sum_{s in {s_min, r_1..r_n}} T^2 KL(sg(p_1) || p_s),   T = 1 by default.

``sub_ce=True`` adds CE to the smaller ones too. Heads (eval): ``net@s`` for the grid
``factors`` and 1.0; in training ``net@1``, ``net@min`` and ``net@rand{i}``.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import losses, models
from ..models import depth
from ..base.registry import METHODS
from .base import Learner, TrainState
from .coop_depth import SHORTCUTS, StepDraw, head_name


def sandwich_factors(generator: torch.Generator, smallest: float, n_random: int) -> list[float]:
    """[1.0, smallest, r_1 .. r_n] with r uniform in (smallest, 1): the sandwich rule."""
    r = smallest + (1.0 - smallest) * torch.rand(n_random, generator=generator)
    return [1.0, float(smallest)] + [float(v) for v in r]


class Sandwich(Learner):
    method = "sandwich"

    def __init__(self, net, *, factors=(0.2, 0.4, 0.6, 0.8), smallest: float | None = None, n_random: int = 2,
                 temperature: float = 1.0, sub_ce: bool = False, spacing: str = "first") -> None:
        super().__init__()
        self.net = net
        self.factors = sorted(float(s) for s in factors)
        self.smallest = float(smallest) if smallest is not None else self.factors[0]
        self.n_random, self.temperature, self.sub_ce, self.spacing = int(n_random), float(temperature), bool(sub_ce), spacing
        self.sampler = StepDraw()

    def forward(self, x):
        if not self.training:
            return {head_name("net", s): depth.forward_at(self.net, x, s, self.spacing) for s in [*self.factors, 1.0]}
        fs = sandwich_factors(self.sampler.generator(per_step=True), self.smallest, self.n_random)
        names = ["net@1", "net@min"] + [f"net@rand{i}" for i in range(self.n_random)]
        return {n: (self.net(x) if s == 1.0 else depth.forward_at(self.net, x, s, self.spacing)) for n, s in zip(names, fs)}

    def loss(self, heads, y, state: TrainState):
        big = heads["net@1"]
        parts = {"ce/largest": losses.cross_entropy(big, y)}
        kd = ce = big.new_zeros((), dtype=torch.float32)
        for name, z in heads.items():
            if name == "net@1":
                continue
            kd = kd + losses.kd_kl(z, big.detach(), self.temperature)
            if self.sub_ce:
                ce = ce + losses.cross_entropy(z, y)
        parts["kd/smaller"] = kd
        if self.sub_ce:
            parts["ce/smaller"] = ce
        if self.training:
            self.sampler.advance(state)
        return torch.stack(list(parts.values())).sum(), parts

    def deployable(self) -> nn.Module:
        return self.net

    @property
    def primary_head(self) -> str:
        return head_name("net", 1.0)


@METHODS.register("sandwich", ranges={"factors": "(0, 1)", "smallest": "(0, 1)", "n_random": (0, None),
                                      "temperature": "(0, inf)"},
                  choices={"shortcut": SHORTCUTS, "spacing": depth.SPACINGS})
def build_sandwich(model: str, num_classes: int, in_channels: int = 3, *, shortcut: str = "projection",
                   factors: tuple = (0.2, 0.4, 0.6, 0.8), smallest: float | None = None, n_random: int = 2,
                   temperature: float = 1.0, sub_ce: bool = False, spacing: str = "first") -> Sandwich:
    """Registry factory: sandwich-rule any-depth training of ``model``."""
    net = models.build(model, num_classes, in_channels, shortcut=shortcut)
    return Sandwich(net, factors=factors, smallest=smallest, n_random=n_random, temperature=temperature,
                    sub_ce=sub_ce, spacing=spacing)


__all__ = ["Sandwich", "sandwich_factors"]
