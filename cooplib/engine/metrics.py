"""What the loop measures: every head's top-1/top-5 and CE on a split, the Learner's own
per-image diagnostics (``Learner.diagnostics``, e.g. ONE's gate weights and branch
disagreement), and the per-epoch means of the training terms, accumulated on the device
(one host sync per epoch, none per step) and summed over ranks when several processes
train one run.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from . import distributed
from ..data import DeviceLoader


def _topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == y[:, None]
    return hit[:, 0].sum(), hit.any(dim=1).sum()


def _learner(model):
    """The Learner inside a DDP wrapper and/or torch.compile's module."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def evaluate(model, loader: DeviceLoader, amp_dtype: torch.dtype | None, device: torch.device) -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of every head over `loader`, and the
    per-image means of the Learner's ``diagnostics(heads)`` (named as it names them)."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    diagnose = getattr(_learner(model), "diagnostics", None)
    diag_names: tuple[str, ...] = ()
    diag_sum: torch.Tensor | None = None
    n = 0
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for x, y in loader:
        with amp:
            heads = model(x)
        for h, logits in heads.items():
            top1, top5 = _topk_correct(logits, y)
            ce = F.cross_entropy(logits.float(), y, reduction="sum")
            acc = torch.stack([top1.float(), top5.float(), ce])
            sums[h] = sums[h] + acc if h in sums else acc
        diag = diagnose(heads) if diagnose is not None else None
        if diag:
            vec = torch.stack([v.float() for v in diag.values()])
            diag_names, diag_sum = tuple(diag), vec if diag_sum is None else diag_sum + vec
        n += y.shape[0]
    model.train(was_training)
    names = list(sums)
    if not names:
        return {}
    stacked = torch.stack([sums[h] for h in names]).flatten()
    if diag_sum is not None:
        stacked = torch.cat([stacked, diag_sum.to(stacked.device)])
    summed = distributed.all_sum(torch.cat([stacked, stacked.new_tensor([n])])).tolist()  # the one sync
    n, values = summed[-1], [summed[3 * i : 3 * i + 3] for i in range(len(names))]
    diag_values = summed[3 * len(names) : -1]
    out = {}
    for h, (top1, top5, ce) in zip(names, values):
        out[f"{h}/top1"] = 100.0 * top1 / n
        out[f"{h}/top5"] = 100.0 * top5 / n
        out[f"{h}/loss"] = ce / n
    for name, v in zip(diag_names, diag_values):
        out[name] = v / n
    return out


def step_terms(total, parts: dict, heads: dict | None, y: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor]:
    """One step's terms as (names, device vector): batch-summed loss terms, then correct
    counts of every head; a handful of kernels whatever the number of heads."""
    bs = y.shape[0]
    names = ("loss", *parts)
    vec = torch.stack([total.detach().float(), *(v.detach().float() for v in parts.values())]) * bs
    if heads:
        logits = torch.stack([h.detach() for h in heads.values()])  # (heads, N, classes)
        vec = torch.cat([vec, (logits.argmax(-1) == y).sum(-1).float() * 100.0])
        names += tuple(f"{h}/top1" for h in heads)
    return names, vec


def epoch_means(sums: dict[tuple[str, ...], torch.Tensor], n: int) -> dict[str, float]:
    """`train/<name>` per-sample means of the accumulated terms (top-1 in percent);
    names that recur across substeps (e.g. `loss`) are summed over them."""
    keys = list(sums)
    if not keys:
        return {}
    vec = torch.cat([sums[k] for k in keys])
    values = distributed.all_sum(torch.cat([vec, vec.new_tensor([n])])).tolist()  # summed over ranks
    n, values = values[-1], values[:-1]
    out: dict[str, float] = {}
    flat = [name for k in keys for name in k]
    for name, v in zip(flat, values):
        out[f"train/{name}"] = out.get(f"train/{name}", 0.0) + v / n
    return out
