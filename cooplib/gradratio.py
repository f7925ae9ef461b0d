"""The gradient-ratio learning-rate scheduler of the branch-expansion experiments.

Every parameter tensor t has its own learning rate, set every batch (book/methods.md)::

    lr_t = base_lr_t * factor * clip(mean|g_last| / mean|g_t|, lo, hi)    (lo, hi) = (0.1, 20)

where ``factor`` is the schedule's (step / cosine) multiplier and ``g_last`` pools the
gradients of the last layer (for ONE: every branch's classifier). Layers whose gradients
are small relative to the classifier's get a larger step ("geometric" per-layer lr).

Usage (per batch, after ``backward`` and before ``optimizer.step``)::

    opt = torch.optim.SGD(per_tensor_param_groups(params, base_lr), lr=base_lr, momentum=0.9)
    ratio = GradientRatio(opt, learner.last_layer_parameters())
    ...
    loss.backward(); ratio.update(lr_factor); opt.step()

All mean |grad| values come from one batched device computation; reading the ratios
back to set the groups' python-float lrs costs one host synchronisation per step. That
is accepted for this option (the plain loop has none).

Edge cases: a tensor whose gradient is None (unused this step; SGD skips it anyway) or
all zero (no signal, e.g. a dead gate unit) gets ratio 1, i.e. the schedule's lr, rather
than the maximum 20 that 0 in the denominator would give, which would only amplify its
weight decay and stale momentum. If the last layer has no gradient at all, every ratio
is 1.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def per_tensor_param_groups(params: Iterable[nn.Parameter], base_lr: float) -> list[dict]:
    """One optimizer param group per trainable tensor, each with its ``base_lr``."""
    return [
        {"params": [p], "lr": float(base_lr), "base_lr": float(base_lr)} for p in params if p.requires_grad
    ]


def _abs_sums(grads: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor sum |g| (float32, stacked), in one foreach call."""
    return torch.stack([n.to(torch.float32) for n in torch._foreach_norm(grads, 1)])


class GradientRatio:
    """Sets each (single-tensor) param group's lr from its gradient ratio to the last layer."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        last_layer_params: Iterable[nn.Parameter],
        clip: tuple[float, float] = (0.1, 20.0),
    ) -> None:
        lo, hi = (float(c) for c in clip)
        if not 0 < lo <= hi:
            raise ValueError(f"clip must be (lo, hi) with 0 < lo <= hi, got {clip!r}")
        for i, group in enumerate(optimizer.param_groups):
            if len(group["params"]) != 1:
                raise ValueError(
                    f"param group {i} holds {len(group['params'])} tensors; build the optimizer "
                    f"with per_tensor_param_groups() so every tensor has its own lr"
                )
            group.setdefault("base_lr", group["lr"])
        self.optimizer = optimizer
        self.last_layer_params = list(last_layer_params)
        if not self.last_layer_params:
            raise ValueError("last_layer_params is empty")
        self.clip = (lo, hi)
        self._lrs: list[float] = [g["lr"] for g in optimizer.param_groups]
        self._ratios: list[float] = [1.0] * len(self._lrs)
        self._cache_key: tuple | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor | None] = (torch.empty(0), None)

    def ratios(self) -> torch.Tensor:
        """Unclipped ratios of every group (1 where undefined), on the device, no sync."""
        groups = self.optimizer.param_groups
        params = [g["params"][0] for g in groups]
        have = [i for i, p in enumerate(params) if p.grad is not None]
        last_have = tuple(i for i, p in enumerate(self.last_layer_params) if p.grad is not None)
        last = [self.last_layer_params[i].grad for i in last_have]
        if not have or not last:
            return torch.ones(len(groups))
        grads = [params[i].grad for i in have] + last
        sums = _abs_sums(grads)
        counts, index = self._layout((tuple(have), last_have), grads, sums.device)
        n = len(have)
        mean = sums[:n] / counts[:n]
        last_mean = sums[n:].sum() / counts[n:].sum()
        ok = (mean > 0) & (last_mean > 0)
        r = torch.where(ok, last_mean / torch.where(ok, mean, 1.0), 1.0)
        if index is None:
            return r
        return torch.ones(len(groups), device=r.device).index_copy_(0, index, r)

    def _layout(self, which: tuple, grads: list[torch.Tensor], device: torch.device):
        """Element counts and scatter index for this set of tensors with gradients, cached
        so that a step copies nothing from the host."""
        key = (which, device)
        have = which[0]
        if self._cache_key != key:
            counts = torch.tensor([g.numel() for g in grads], dtype=torch.float32, device=device)
            full = len(have) == len(self.optimizer.param_groups)
            index = None if full else torch.tensor(have, dtype=torch.long, device=device)
            self._cache_key, self._cache = key, (counts, index)
        return self._cache

    def update(self, factor: float) -> None:
        """Set every group's lr = base_lr * factor * ratio (call after backward)."""
        lo, hi = self.clip
        # the one host sync per step; clipping in python keeps the bounds exact
        self._ratios = [min(max(r, lo), hi) for r in self.ratios().tolist()]
        lrs = []
        for group, r in zip(self.optimizer.param_groups, self._ratios):
            group["lr"] = group["base_lr"] * float(factor) * r
            lrs.append(group["lr"])
        self._lrs = lrs

    def last_lrs(self) -> dict[str, float]:
        """Min / median / max of the lrs set by the last ``update`` (for logging)."""
        s = sorted(self._lrs)
        n = len(s)
        median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        return {"lr_min": s[0], "lr_median": median, "lr_max": s[-1]}

    def last_ratios(self) -> list[float]:
        """The clipped ratio of every group from the last ``update``."""
        return list(self._ratios)


__all__ = ["per_tensor_param_groups", "GradientRatio"]
