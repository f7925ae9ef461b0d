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

Stability options (both off by default, which is the scheduler as first written):

- ``exclude``: tensors whose gradient carries no signal keep the schedule's lr (ratio
  1) and are left out of the clip statistics. A bias right before a BatchNorm (ONE's
  ``gate_fc.bias``) has a gradient that is zero up to rounding (the BN subtracts the
  batch mean), so its "ratio" is noise that always hits the upper bound.
  ``exclusions(learner, "pre_bn")`` lists them (``Learner.gradient_ratio_exclusions``);
  ``"pre_bn+bn"`` adds every BatchNorm's affine weight and bias.
- ``ema``: the ratio is smoothed over steps before clipping, geometrically (an EMA of
  log ratio with weight ``ema`` on the past; a tensor's first step starts it), so one
  noisy batch cannot move a tensor's lr by the full clip range.

Clip statistics: every ``update`` counts, per tensor, whether its ratio sat at the lower
or the upper bound. ``epoch_stats()`` returns (and restarts) the percentages since its
last call: ``gradratio/at_hi`` and ``gradratio/at_lo`` over all tensor-steps of the
non-excluded tensors, ``gradratio/worst_at_bound``, the share of steps the most clipped
tensor spent at a bound, and ``gradratio/excluded``, the number of excluded tensors.
``last_lrs()``, which the training loop records once per epoch, includes them.

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

EXCLUDE = ("none", "pre_bn", "pre_bn+bn")


def exclusions(learner: nn.Module, policy: str = "pre_bn") -> list[nn.Parameter]:
    """The parameters the scheduler should leave at the schedule's lr under ``policy``:
    "none"; "pre_bn" (the Learner's ``gradient_ratio_exclusions()``, biases right before
    a BatchNorm); "pre_bn+bn" (those and every BatchNorm's affine weight and bias)."""
    if policy not in EXCLUDE:
        raise ValueError(f"exclude must be one of {EXCLUDE}, got {policy!r}")
    if policy == "none":
        return []
    out = list(getattr(learner, "gradient_ratio_exclusions", lambda: [])())
    if policy == "pre_bn+bn":
        for mod in learner.modules():
            if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.affine:
                out += [mod.weight, mod.bias]
    seen: set[int] = set()
    return [p for p in out if not (id(p) in seen or seen.add(id(p)))]


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
        *,
        exclude: Iterable[nn.Parameter] = (),
        ema: float = 0.0,
    ) -> None:
        lo, hi = (float(c) for c in clip)
        if not 0 < lo <= hi:
            raise ValueError(f"clip must be (lo, hi) with 0 < lo <= hi, got {clip!r}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema!r}")
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
        excluded = {id(p) for p in exclude}
        params = [g["params"][0] for g in optimizer.param_groups]
        unknown = excluded - {id(p) for p in params}
        if unknown:
            raise ValueError(f"{len(unknown)} excluded tensor(s) are not in the optimizer")
        self.excluded = [id(p) in excluded for p in params]
        self.ema = float(ema)
        self._log_ema: torch.Tensor | None = None  # smoothed log ratio per group (device)
        self._seen: torch.Tensor | None = None
        self._reset_stats()

    @classmethod
    def for_learner(
        cls,
        optimizer: torch.optim.Optimizer,
        learner: nn.Module,
        clip: tuple[float, float] = (0.1, 20.0),
        exclude: str = "none",
        ema: float = 0.0,
    ) -> "GradientRatio":
        """The scheduler for ``learner``'s optimizer, excluding ``exclusions(learner, exclude)``."""
        return cls(optimizer, learner.last_layer_parameters(), clip, exclude=exclusions(learner, exclude), ema=ema)

    def _reset_stats(self) -> None:
        n = len(self.optimizer.param_groups)
        self._at_hi, self._at_lo, self._counted = [0] * n, [0] * n, [0] * n

    def ratios(self) -> torch.Tensor:
        """Unclipped ratios of every group (1 where undefined), on the device, no sync."""
        return self._raw()[0]

    def _raw(self) -> tuple[torch.Tensor, list[int]]:
        """The unclipped ratios and the groups that have a gradient this step."""
        groups = self.optimizer.param_groups
        params = [g["params"][0] for g in groups]
        have = [i for i, p in enumerate(params) if p.grad is not None]
        last_have = tuple(i for i, p in enumerate(self.last_layer_params) if p.grad is not None)
        last = [self.last_layer_params[i].grad for i in last_have]
        if not have or not last:
            return torch.ones(len(groups)), have
        grads = [params[i].grad for i in have] + last
        sums = _abs_sums(grads)
        counts, index = self._layout((tuple(have), last_have), grads, sums.device)
        n = len(have)
        mean = sums[:n] / counts[:n]
        last_mean = sums[n:].sum() / counts[n:].sum()
        ok = (mean > 0) & (last_mean > 0)
        r = torch.where(ok, last_mean / torch.where(ok, mean, 1.0), 1.0)
        if index is None:
            return r, have
        return torch.ones(len(groups), device=r.device).index_copy_(0, index, r), have

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
        raw, have = self._raw()
        if self.ema > 0:
            raw = self._smooth(raw, have)
        if any(self.excluded):
            raw = torch.where(self._excluded_mask(raw.device), 1.0, raw)
        # the one host sync per step; clipping in python keeps the bounds exact
        self._ratios = [min(max(r, lo), hi) for r in raw.tolist()]
        for i in have:
            if not self.excluded[i]:
                r = self._ratios[i]
                self._counted[i] += 1
                self._at_hi[i] += r >= hi
                self._at_lo[i] += r <= lo
        lrs = []
        for group, r in zip(self.optimizer.param_groups, self._ratios):
            group["lr"] = group["base_lr"] * float(factor) * r
            lrs.append(group["lr"])
        self._lrs = lrs

    def _excluded_mask(self, device: torch.device) -> torch.Tensor:
        if getattr(self, "_mask", None) is None or self._mask.device != device:
            self._mask = torch.tensor(self.excluded, dtype=torch.bool, device=device)
        return self._mask

    def _smooth(self, raw: torch.Tensor, have: list[int]) -> torch.Tensor:
        """Geometric EMA of the ratio over the steps in which a tensor had a gradient."""
        n = len(self.optimizer.param_groups)
        if self._log_ema is None or self._log_ema.device != raw.device:
            self._log_ema = torch.zeros(n, device=raw.device)
            self._seen = torch.zeros(n, dtype=torch.bool, device=raw.device)
        now = torch.zeros(n, dtype=torch.bool)
        now[have] = True
        now = now.to(raw.device, non_blocking=True)
        log_r = raw.float().log()
        mixed = torch.where(self._seen, self.ema * self._log_ema + (1.0 - self.ema) * log_r, log_r)
        self._log_ema = torch.where(now, mixed, self._log_ema)
        self._seen = self._seen | now
        return torch.where(self._seen, self._log_ema.exp(), 1.0)

    def epoch_stats(self) -> dict[str, float]:
        """Clip statistics since the last call (percent; see the module doc), then restart."""
        counted = [c for c, x in zip(self._counted, self.excluded) if not x]
        total = sum(counted)
        hi, lo = sum(self._at_hi), sum(self._at_lo)
        worst = max(((h + l) / c for h, l, c in zip(self._at_hi, self._at_lo, self._counted) if c), default=0.0)
        out = {
            "gradratio/at_hi": 100.0 * hi / total if total else 0.0,
            "gradratio/at_lo": 100.0 * lo / total if total else 0.0,
            "gradratio/worst_at_bound": 100.0 * worst,
            "gradratio/excluded": float(sum(self.excluded)),
        }
        self._reset_stats()
        return out

    def bound_counts(self) -> list[tuple[int, int, int]]:
        """Per group (steps at the lower bound, steps at the upper bound, steps counted)
        since the last ``epoch_stats``; excluded tensors count no steps."""
        return list(zip(self._at_lo, self._at_hi, self._counted))

    def last_lrs(self) -> dict[str, float]:
        """Min / median / max of the lrs set by the last ``update``, and ``epoch_stats()``
        (which restarts the clip statistics: the loop calls this once per epoch)."""
        s = sorted(self._lrs)
        n = len(s)
        median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        return {"lr_min": s[0], "lr_median": median, "lr_max": s[-1], **self.epoch_stats()}

    def last_ratios(self) -> list[float]:
        """The clipped ratio of every group from the last ``update``."""
        return list(self._ratios)


__all__ = ["per_tensor_param_groups", "GradientRatio", "exclusions", "EXCLUDE"]
