"""Cost-adaptive inference: budgets, dynamic early exits, Pareto fronts, latency.

A static method offers points (FLOPs, accuracy): its sub-networks or exits; under a FLOP
budget one deploys the most accurate point that fits (``pick_for_budget``). An early-exit
network offers a curve: a sample leaves at the first exit whose confidence passes a
threshold, and pays the trunk up to that exit plus every head evaluated on the way
(``dynamic_exit``); sweeping the threshold traces accuracy against average cost.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

CRITERIA = ("entropy", "max_softmax")


def confidence(logits: torch.Tensor, criterion: str = "max_softmax") -> torch.Tensor:
    """Per sample, larger = more confident: max softmax, or minus the entropy."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    logp = torch.log_softmax(logits.float(), dim=1)
    if criterion == "max_softmax":
        return logp.exp().max(1).values
    return (logp.exp() * logp).sum(1)  # = -entropy


def dynamic_exit(exit_logits: Sequence[torch.Tensor], y: torch.Tensor, exit_costs: Sequence[float],
                 threshold: float, criterion: str = "max_softmax") -> dict:
    """Accuracy (%), average cost and the fraction leaving at each exit.

    ``exit_costs[i]``: FLOPs of everything evaluated when a sample leaves at exit i (the
    trunk to exit i and heads 0..i, ``models.depth.exit_flops``' "FLOPs with earlier
    heads"). A sample leaves at the first exit whose confidence is >= ``threshold``
    (entropy: whose -entropy is); the last exit takes the rest.
    """
    n = y.shape[0]
    left = torch.ones(n, dtype=torch.bool)
    correct = torch.zeros(n, dtype=torch.bool)
    fractions = []
    for i, z in enumerate(exit_logits):
        stop = left & ((confidence(z, criterion) >= threshold) if i < len(exit_logits) - 1 else torch.ones_like(left))
        correct |= stop & (z.argmax(1) == y)
        fractions.append(float(stop.sum()) / n)
        left &= ~stop
    cost = float(sum(f * c for f, c in zip(fractions, exit_costs)))
    return {"threshold": threshold, "top1": 100.0 * float(correct.sum()) / n, "flops": cost, "fractions": fractions}


def threshold_sweep(exit_logits, y, exit_costs, criterion: str = "max_softmax", points: int = 21) -> pd.DataFrame:
    """``dynamic_exit`` over thresholds at quantiles of the first exit's confidence."""
    conf = confidence(exit_logits[0], criterion)
    qs = torch.linspace(0, 1, points)
    thresholds = sorted({float(v) for v in torch.quantile(conf, qs)} | {float(conf.max()) + 1.0})
    rows = [dynamic_exit(exit_logits, y, exit_costs, t, criterion) for t in thresholds]
    return pd.DataFrame(rows)


def pareto_front(points: pd.DataFrame, cost: str = "flops", acc: str = "top1") -> pd.DataFrame:
    """The points no other point beats (no more cost and strictly more accuracy), by cost."""
    df = points.sort_values([cost, acc], ascending=[True, False])
    best, keep = -np.inf, []
    for idx, row in df.iterrows():
        if row[acc] > best:
            keep.append(idx)
            best = row[acc]
    return df.loc[keep]


def pick_for_budget(points: pd.DataFrame, budget: float, cost: str = "flops", acc: str = "top1") -> pd.Series | None:
    """The most accurate point within ``budget`` FLOPs (None when nothing fits)."""
    fits = points[points[cost] <= budget]
    if fits.empty:
        return None
    return fits.loc[fits[acc].idxmax()]


@torch.no_grad()
def latency(module: nn.Module, input_shape: tuple[int, int, int], batch: int = 1, repeats: int = 20,
            warmup: int = 3, device: str | torch.device = "cpu") -> float:
    """Median seconds of one eval-mode forward pass of a batch (synchronised on CUDA)."""
    device = torch.device(device)
    was = module.training
    module.eval().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        module.train(was)
    return float(np.median(times))


__all__ = ["CRITERIA", "confidence", "dynamic_exit", "threshold_sweep", "pareto_front", "pick_for_budget", "latency"]
