"""Optimizer and learning rate: SGD, the per-epoch schedule, carried momentum, gradient ratio.

The schedule is a pure function of the epoch (`lr_factor`), applied to the optimizer
by `set_lr` and logged from what was applied, so a schedule that is never called can
not pass unnoticed (the defect of the scripts this replaces).
"""
from __future__ import annotations

import math

import torch

from .config import RunConfig
from ..base.errors import RunDirError
from ..methods.base import Learner


def lr_factor(config: RunConfig, epoch: int) -> float:
    """Multiplier of the base learning rate during 0-based `epoch`."""
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    drops = sum(epoch >= round(m * config.epochs) for m in config.milestones)
    return config.gamma**drops


def make_optimizer(learner: Learner, config: RunConfig, device: torch.device) -> torch.optim.SGD:
    params = [p for p in learner.parameters() if p.requires_grad]
    if config.grad_ratio_lr:  # one group per tensor: each gets its own lr every step
        from .gradratio import per_tensor_param_groups

        params = per_tensor_param_groups(params, config.lr)
    opt = torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )
    for group in opt.param_groups:
        group["base_lr"] = config.lr
    return opt


def carry_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load per-parameter state (momentum buffers) but keep this optimizer's hyperparameters."""
    current = opt.state_dict()
    n_params = sum(len(g["params"]) for g in current["param_groups"])
    bad = [k for k in state["state"] if not 0 <= int(k) < n_params]
    if bad:
        raise RunDirError(f"optimizer state refers to parameters {bad[:5]} that this learner does not have ({n_params} tensors)")
    current["state"] = state["state"]
    opt.load_state_dict(current)


def set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    """Set the scheduled lr of every group; return it (the value logged as `lr`)."""
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor
    return opt.param_groups[0]["base_lr"] * factor


def gradient_ratio(learner: Learner, opt: torch.optim.Optimizer, config: RunConfig):
    """The per-tensor gradient-ratio lr scaler when `config.grad_ratio_lr` is on, else None."""
    if not config.grad_ratio_lr:
        return None
    from .gradratio import GradientRatio

    return GradientRatio.for_learner(opt, learner, clip=config.grad_ratio_clip, exclude=config.grad_ratio_exclude,
                                     ema=config.grad_ratio_ema)
