"""Decoupled knowledge distillation (DKD; Zhao et al., CVPR 2022) as a `kd.Distill` kind.

The KD loss split in two (`cooplib.losses.dkd`): TCKD, the KL of the binary target /
non-target probabilities, and NCKD, the KL among the non-target classes, weighted
alpha 1 and beta 8 at T = 4, after CE with weight 1, the DKD term ramped in linearly over
the first 20 epochs: ``CE + min(epoch / 20, 1) * (alpha TCKD + beta NCKD)`` with a 1-based
epoch, as megvii-research/mdistiller@a08d46f does (mdistiller/distillers/DKD.py
``forward_train``; defaults in mdistiller/engine/cfg.py ``CFG.DKD``; its CIFAR-100 configs
change beta per pair, e.g. 2 for resnet56 -> resnet20, and train 240 epochs).

``dkd_warmup_scaled=True`` stretches the warm-up with the schedule: ``dkd_warmup`` epochs
per mdistiller's 240, i.e. dkd_warmup * epochs / 240 (a 24-epoch run warms up for 2).
Under ``convention="seed"`` the total is ``(1 - alpha) CE_ls + alpha * weight * ramp * DKD``,
as for every kind of `cooplib.methods.kd`.
"""
from __future__ import annotations

import torch

from .. import losses
from ..base.registry import METHODS
from .base import TrainState
from .kd import Distill, _build, register_kind

#: mdistiller's CFG.DKD defaults and its CIFAR schedule length (CFG.SOLVER.EPOCHS)
DKD_ALPHA, DKD_BETA, DKD_T, DKD_WARMUP, MDISTILLER_EPOCHS = 1.0, 8.0, 4.0, 20.0, 240

register_kind("dkd", taps=(), weight=1.0)


def warmup_factor(epoch: int, epochs: int, warmup: float, scaled: bool = False) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch (0-based `epoch` + 1);
    `scaled`: the warm-up is `warmup` epochs per 240 of the run. No warm-up at 0."""
    length = warmup * epochs / MDISTILLER_EPOCHS if scaled else warmup
    return 1.0 if length <= 0 else min((epoch + 1) / length, 1.0)


class DKD(Distill):
    """Student + frozen teacher; the distillation term is the ramped DKD loss on the logits."""

    def __init__(self, student, teacher, *, dkd_alpha: float = DKD_ALPHA, dkd_beta: float = DKD_BETA,
                 dkd_warmup: float = DKD_WARMUP, dkd_warmup_scaled: bool = False, **options) -> None:
        super().__init__("dkd", student, teacher, **options)
        self.dkd_alpha, self.dkd_beta = float(dkd_alpha), float(dkd_beta)
        self.dkd_warmup, self.dkd_warmup_scaled = float(dkd_warmup), bool(dkd_warmup_scaled)

    def distill_term(self, logits: torch.Tensor, y: torch.Tensor, state: TrainState) -> dict[str, torch.Tensor]:
        ramp = warmup_factor(state.epoch, state.epochs, self.dkd_warmup, self.dkd_warmup_scaled)
        term = losses.dkd(logits, self._teacher_out["logits"], y, self.dkd_alpha, self.dkd_beta, self.temperature)
        return {"dkd": ramp * term}


@METHODS.register("dkd", ranges={"dkd_alpha": (0, None), "dkd_beta": (0, None), "dkd_warmup": (0, None)})
def build_dkd(model: str, num_classes: int, in_channels: int = 3, *, teacher: str | None = None,
              convention: str = "repdistiller", weight: float | None = None, alpha: float = 0.5,
              label_smoothing: float | None = None, temperature: float = DKD_T, warmup_epochs: int | None = None,
              dkd_alpha: float = DKD_ALPHA, dkd_beta: float = DKD_BETA, dkd_warmup: float = DKD_WARMUP,
              dkd_warmup_scaled: bool = False) -> DKD:
    """Registry factory: DKD (``warmup_epochs`` is FT's option, accepted by every kind)."""
    return _build("dkd", model, num_classes, in_channels, teacher, cls=DKD, convention=convention, weight=weight,
                  alpha=alpha, label_smoothing=label_smoothing, temperature=temperature, warmup_epochs=warmup_epochs,
                  extra=dict(dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, dkd_warmup=dkd_warmup,
                             dkd_warmup_scaled=dkd_warmup_scaled))


__all__ = ["DKD", "build_dkd", "warmup_factor"]
