"""The vanilla baseline: one network, cross-entropy, one head `net`."""
from __future__ import annotations

import torch
from torch import nn

from .. import losses, models
from ..base.registry import METHODS
from .base import Learner, TrainState


class Baseline(Learner):
    """A single network trained with cross-entropy (label smoothing optional, off by default)."""

    method = "baseline"

    def __init__(self, net: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.net = net
        self.label_smoothing = float(label_smoothing)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"net": self.net(x)}

    def loss(self, heads, y, state: TrainState):
        ce = losses.cross_entropy(heads["net"], y, self.label_smoothing)
        return ce, {"ce/net": ce}

    def deployable(self) -> nn.Module:
        return self.net


@METHODS.register("baseline", ranges={"label_smoothing": "[0, 1)"})
def build_baseline(model: str, num_classes: int, in_channels: int = 3, *,
                   label_smoothing: float = 0.0) -> Baseline:
    """Registry factory: the network ``model`` alone."""
    return Baseline(models.build(model, num_classes, in_channels), label_smoothing=label_smoothing)
