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


# ---------------------------------------------------------------- from run directories to points


def head_costs(learner: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, dict]:
    """Per head of a depth Learner: the FLOPs of the network that produces it alone (a
    sub-network exported at its factor, an exit with its head, a plain network) and the
    FLOPs a dynamic early exit pays there (every earlier head too)."""
    from ..models.flops import count_flops
    from ..methods.coop_depth import CoopDepth, DepthSingle, head_name
    from ..methods.multi_exit import _Exits
    from ..methods.sandwich import Sandwich
    from ..models import depth

    out = {}
    if isinstance(learner, (CoopDepth, Sandwich)):
        nets = dict(zip(learner.names, learner.teammates)) if isinstance(learner, CoopDepth) else {"net": learner.net}
        for name, net in nets.items():
            for s in [*learner.factors, 1.0]:
                sub = depth.export(net, s, learner.spacing)
                f = count_flops(sub, input_shape)
                out[head_name(name, s)] = {"flops": f, "dynamic_flops": f, "depth": sub.depth}
        if getattr(learner, "leader", None) is not None:
            out["leader"] = {"flops": count_flops(learner.leader, input_shape), "dynamic_flops": None,
                             "depth": learner.leader.depth}
    elif isinstance(learner, _Exits):
        for h, row in zip(learner.exit_heads, depth.exit_flops(learner.multi, input_shape)):
            out[h] = {"flops": row["FLOPs"], "dynamic_flops": row["FLOPs with earlier heads"], "depth": None}
    elif isinstance(learner, DepthSingle):
        out["net"] = {"flops": count_flops(learner.net, input_shape), "dynamic_flops": None, "depth": learner.net.depth}
    else:
        raise TypeError(f"no depth heads for {type(learner).__name__}")
    return out


@torch.no_grad()
def test_logits(learner: nn.Module, data, batch_size: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every head's logits on the whole test split (eval mode, CPU), and the labels."""
    from ..data import DeviceLoader

    learner.eval()
    loader = DeviceLoader(data.x_test, data.y_test, batch_size, device="cpu", mean=data.mean, std=data.std)
    outs: dict[str, list] = {}
    ys = []
    for x, y in loader:
        for h, z in learner(x).items():
            outs.setdefault(h, []).append(z.float())
        ys.append(y)
    return {h: torch.cat(v) for h, v in outs.items()}, torch.cat(ys)


def train_batches(data, n: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` normalised, un-augmented training batches (for BN recalibration)."""
    from ..data import DeviceLoader

    loader = DeviceLoader(data.x_train, data.y_train, batch_size, device="cpu", mean=data.mean, std=data.std,
                          shuffle=True, seed=seed, drop_last=True)
    return [x for (x, _), _ in zip(loader, range(n))]


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def run_points(run_dir, data, label: str, criterion: str = "max_softmax", sweep_points: int = 21,
               skip: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(static, dynamic) points of one run with its last weights: one row per head
    (FLOPs, test top-1), and for multi-exit runs the threshold sweep of early exiting.
    Heads starting with a prefix in ``skip`` are left out (e.g. T2 and the Leader, not deployed)."""
    from ..engine.experiment import load_learner
    from ..methods.multi_exit import _Exits
    from ..engine.runs import RunDir

    learner = load_learner(run_dir)
    seed = RunDir(run_dir).config().seed
    shape = tuple(data.x_test.shape[1:])
    costs = head_costs(learner, shape)
    logits, y = test_logits(learner, data)
    static = pd.DataFrame([{"label": label, "seed": seed, "head": h, "flops": costs[h]["flops"], "depth": costs[h]["depth"],
                            "top1": top1(logits[h], y)} for h in costs if h in logits and not h.startswith(tuple(skip))])
    dynamic = pd.DataFrame()
    if isinstance(learner, _Exits):
        ex = [logits[h] for h in learner.exit_heads]
        dynamic = threshold_sweep(ex, y, [costs[h]["dynamic_flops"] for h in learner.exit_heads], criterion, sweep_points)
        dynamic.insert(0, "label", label + " (dynamic)")
        dynamic.insert(1, "seed", seed)
        dynamic["point"] = range(len(dynamic))
    return static, dynamic


def at_budgets(points: pd.DataFrame, budgets: Sequence[float], by: Sequence[str] = ("label", "seed")) -> pd.DataFrame:
    """Per group (method, seed) and budget: the most accurate point within it (None: nothing fits)."""
    rows = []
    for key, g in points.groupby(list(by), sort=False):
        for b in budgets:
            best = pick_for_budget(g, b)
            head = None if best is None else best.get("head")
            choice = head if isinstance(head, str) else None if best is None else f"threshold {best['threshold']:.3g}"
            rows.append({**dict(zip(by, key)), "budget": b, "top1": None if best is None else best["top1"], "choice": choice,
                         "flops": None if best is None else best["flops"]})
    return pd.DataFrame(rows)


def bn_recalibration(run_dir, data, batches: int = 10, batch_size: int = 64) -> pd.DataFrame:
    """Test top-1 of each Teammate-1 sub-network with the shared BN statistics and after
    recalibrating them for that depth alone (``models.depth.recalibrate_bn``)."""
    from ..engine.experiment import load_learner
    from ..methods.coop_depth import head_name
    from ..models import depth
    from ..engine.runs import RunDir

    learner = load_learner(run_dir)
    seed = RunDir(run_dir).config().seed
    net = learner.teammates[0] if hasattr(learner, "teammates") else learner.net
    name = "t1" if hasattr(learner, "teammates") else "net"
    xs = train_batches(data, batches, batch_size, seed)
    rows = []
    for s in [*learner.factors, 1.0]:
        sub = depth.export(net, s, learner.spacing)
        before, y = test_logits(_Single(sub), data)
        depth.recalibrate_bn(sub, xs)
        after, _ = test_logits(_Single(sub), data)
        rows.append({"seed": seed, "head": head_name(name, s), "shared BN": top1(before["net"], y),
                     "recalibrated BN": top1(after["net"], y)})
    return pd.DataFrame(rows)


class _Single(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"net": self.net(x)}


def latency_table(nets: dict[str, nn.Module], input_shape, batches: Sequence[int], device="cpu", repeats: int = 20) -> pd.DataFrame:
    """Median forward latency (ms) of each network at each batch size on ``device``."""
    return pd.DataFrame([{"network": k, "batch": b, "ms": 1e3 * latency(m, input_shape, b, repeats, device=device)}
                         for k, m in nets.items() for b in batches])


__all__ = ["head_costs", "test_logits", "run_points", "at_budgets", "bn_recalibration", "latency_table", "CRITERIA", "confidence", "dynamic_exit", "threshold_sweep", "pareto_front", "pick_for_budget", "latency"]
