"""Flat-minimum analysis: how fast a trained solution degrades when its weights move.

ONE (Lan et al. 2018), section 4.5: perturb a trained network theta along random
directions, theta(d, v) = theta + d * v, and plot train cross-entropy and test error
against d in [0, 5]. A solution whose loss stays low for larger d sits in a wider
(flatter) optimum, which is the paper's explanation of why ONE generalises better
(width: vanilla < DML < ONE).

Two kinds of direction:

- ``normalize="unit"`` (the paper's): a Gaussian direction over *all* trainable
  parameters, scaled so the concatenated vector has norm 1. Then d is a Euclidean
  distance in weight space. It is not scale invariant: two networks computing the same
  function with differently scaled weights (BN makes that easy) get different curves,
  and a bigger network spreads the same unit norm over more weights.
- ``normalize="filter"``: Li et al. 2018, *Visualizing the Loss Landscape of Neural
  Nets*: each filter (output slice along dim 0: a conv filter, a linear layer's row) of
  the Gaussian direction is rescaled to the norm of the same filter of theta, and 1-d
  parameters (BN scale/shift, biases) are zeroed (their ``--xignore biasbn``, the
  setting of their figures) or, with ``one_dim="copy"``, set to theta's values (their
  other option). Then d is in units of the weights' own scale (d = 1 moves every
  filter by its own norm), a scale-invariant second view; its default grid is [0, 1].

Buffers (BN running statistics) are never touched; evaluation is in eval mode under
no_grad, so they are used, not updated. The original weights are restored bit for bit
afterwards, also when an evaluation raises.

These curves are for looking at; widths are not read off them, since a fixed grid may end
before the loss rises: `cooplib.analysis.flatness` searches each direction's crossing instead, up
to a stated d_max, over training seeds and directions, with the ordering verdicts.

Which module to perturb matters: the direction lives in the parameters of the module
passed. For DML pass ``learner.deployable()`` (peer 0): perturbing the whole Learner
would spend part of the unit norm on peers that the head does not use.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Iterator, Literal, Sequence

import pandas as pd
import torch
from torch import nn

from ..data import DeviceLoader, ImageData

Normalize = Literal["unit", "filter"]
#: default grids: the paper's d in [0, 5] for unit directions; [0, 1] for filter-normalised
#: ones, where d = 1 already moves every filter by its own norm (Li et al. plot [-1, 1])
DEFAULT_DISTANCES: dict[str, tuple[float, ...]] = {
    "unit": tuple(0.5 * i for i in range(11)),  # 0, 0.5, ..., 5
    "filter": tuple(round(0.1 * i, 10) for i in range(11)),  # 0, 0.1, ..., 1
}
METRICS = ("train_ce", "train_error", "test_ce", "test_error")

__all__ = [
    "DEFAULT_DISTANCES", "eval_loaders", "perturbation_curves",
    "random_direction", "trainable_parameters",
]


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a direction spans, in ``module.parameters()`` order."""
    return [p for p in module.parameters() if p.requires_grad]


def random_direction(
    module: nn.Module,
    generator: torch.Generator | int = 0,
    normalize: Normalize = "unit",
    one_dim: Literal["zero", "copy"] = "zero",
) -> list[torch.Tensor]:
    """One random direction, a tensor per trainable parameter (same shape, device, dtype).

    Drawn in float32 on the CPU from ``generator`` (or a seed), so it is the same on every
    device. ``unit``: norm 1 over the concatenation of all trainable parameters.
    ``filter``: per-filter norms equal theta's, 1-d parameters zeroed or copied (module doc).
    """
    if normalize not in ("unit", "filter"):
        raise ValueError(f"normalize must be 'unit' or 'filter', got {normalize!r}")
    if one_dim not in ("zero", "copy"):
        raise ValueError(f"one_dim must be 'zero' or 'copy', got {one_dim!r}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    params = trainable_parameters(module)
    if not params:
        raise ValueError("the module has no trainable parameters to perturb")
    raw = [torch.randn(p.shape, generator=generator, dtype=torch.float32) for p in params]
    if normalize == "unit":
        norm = math.sqrt(sum(float(r.double().square().sum()) for r in raw))
        out = [r / norm for r in raw]
    else:
        out = [_filter_normalized(r, p.detach().float().cpu(), one_dim) for r, p in zip(raw, params)]
    return [o.to(device=p.device, dtype=p.dtype) for o, p in zip(out, params)]


def _filter_normalized(r: torch.Tensor, w: torch.Tensor, one_dim: str) -> torch.Tensor:
    """Li et al.'s filter normalisation of one parameter's direction ``r`` against ``w``."""
    if r.dim() <= 1:
        return torch.zeros_like(r) if one_dim == "zero" else w.clone()
    rf, wf = r.flatten(1), w.flatten(1)
    scale = wf.norm(dim=1, keepdim=True) / (rf.norm(dim=1, keepdim=True) + 1e-10)
    return (rf * scale).view_as(r)


def eval_loaders(
    data: ImageData,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    train_size: int | None = None,
    channels_last: bool = False,
) -> tuple[DeviceLoader, DeviceLoader]:
    """Un-augmented, unshuffled train and test loaders: train CE is measured on the
    training images as they are, so d = 0 is deterministic and comparable across models.
    ``train_size`` keeps a class-stratified subset of the training set (seed 0) for speed."""
    if train_size is not None:
        data = data.subset(train_size, None, seed=0)
    common = dict(device=device, mean=data.mean, std=data.std, augment=None, channels_last=channels_last)
    return (DeviceLoader(data.x_train, data.y_train, batch_size, **common),
            DeviceLoader(data.x_test, data.y_test, batch_size, **common))


class _OneHead(nn.Module):
    """Presents one head of ``module`` as ``{"out": logits}``, the shape `evaluate` takes."""

    def __init__(self, module: nn.Module, head: str | None) -> None:
        super().__init__()
        self.module = module
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            if self.head is not None:
                raise ValueError(f"head={self.head!r} given but the module returns one tensor, not a dict of heads")
            return {"out": out}
        head = self.head or _default_head(self.module, out)
        if head not in out:
            raise ValueError(f"head {head!r} not among the module's heads {sorted(out)}")
        return {"out": out[head]}


def _default_head(module: nn.Module, heads: dict[str, torch.Tensor]) -> str:
    primary = getattr(module, "primary_head", None)
    if isinstance(primary, str) and primary in heads:
        return primary
    if len(heads) == 1:
        return next(iter(heads))
    raise ValueError(f"the module returns heads {sorted(heads)}: pass head=... to choose one")


class _Limited:
    """The first ``n`` batches of a loader (all when n is None), re-iterable."""

    def __init__(self, loader: Iterable, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if self.n is not None and i >= self.n:
                return
            yield batch


def _check_loader(loader: Iterable, what: str) -> None:
    if isinstance(loader, DeviceLoader) and loader.augment.active:
        raise ValueError(f"{what} loader augments its batches, so the metrics would be random: "
                         f"make it with augment=None (cooplib.analysis.perturb.eval_loaders does)")


def _metrics(model: nn.Module, train: Iterable, test: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None) -> dict[str, float]:
    from ..engine.metrics import evaluate

    tr = evaluate(model, train, amp_dtype, device)
    te = evaluate(model, test, amp_dtype, device)
    return {"train_ce": tr["out/loss"], "train_error": 100.0 - tr["out/top1"],
            "test_ce": te["out/loss"], "test_error": 100.0 - te["out/top1"]}


@torch.no_grad()
def _set_weights(params: Sequence[torch.Tensor], origin: Sequence[torch.Tensor],
                 direction: Sequence[torch.Tensor] | None = None, d: float = 0.0) -> None:
    """params <- origin + d * direction, always from origin (no drift); no direction or
    d = 0 copies origin back exactly."""
    for i, (p, o) in enumerate(zip(params, origin)):
        p.copy_(o if direction is None or d == 0 else torch.add(o, direction[i], alpha=d))


def _progress(total: int, progress: bool):
    from tqdm.auto import tqdm

    disable = not progress or os.environ.get("COOPLIB_PROGRESS", "1") == "0"
    return tqdm(total=total, desc="perturbation", unit="eval", disable=disable, leave=False)


def perturbation_curves(
    module: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    distances: Sequence[float] | None = None,
    directions: int = 5,
    seed: int = 0,
    normalize: Normalize = "unit",
    head: str | None = None,
    max_batches: int | None = None,
    one_dim: Literal["zero", "copy"] = "zero",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train CE / error and test CE / error (percent) of ``module`` at theta + d * v.

    One row per (direction, distance): columns ``direction, distance, train_ce,
    train_error, test_ce, test_error``. ``distances`` default to
    ``DEFAULT_DISTANCES[normalize]``. Directions are drawn one after another from a
    generator seeded with ``seed`` (direction i is the same whatever ``directions`` is).
    ``head``: which output to score when the module returns a dict (default its
    ``primary_head``, or its only head). Loaders are any re-iterable of (x, y) batches on
    the module's device; the train one must not augment (see `eval_loaders`).
    ``max_batches`` caps the batches of each loader for a quick look. d = 0 is evaluated
    once at the untouched weights. Weights are restored bit-exactly, even on error.
    """
    if normalize not in DEFAULT_DISTANCES:
        raise ValueError(f"normalize must be 'unit' or 'filter', got {normalize!r}")
    dists = [float(d) for d in (DEFAULT_DISTANCES[normalize] if distances is None else distances)]
    if not dists or not all(math.isfinite(d) for d in dists):
        raise ValueError(f"distances must be a non-empty sequence of finite numbers, got {distances!r}")
    if int(directions) < 1:
        raise ValueError(f"directions must be >= 1, got {directions!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be None or >= 1, got {max_batches!r}")
    _check_loader(train_loader, "the train")
    _check_loader(test_loader, "the test")
    params = trainable_parameters(module)
    if not params:
        raise ValueError("the module has no trainable parameters to perturb")
    device = params[0].device
    model = _OneHead(module, head)
    train, test = _Limited(train_loader, max_batches), _Limited(test_loader, max_batches)
    generator = torch.Generator().manual_seed(int(seed))
    origin = [p.detach().clone() for p in params]
    modes = [(m, m.training) for m in module.modules()]  # `evaluate` skips this on error
    rows: list[dict] = []
    at_zero: dict[str, float] | None = None
    bar = _progress(int(directions) * sum(d != 0 for d in dists) + (0 in dists), progress)
    try:
        for i in range(int(directions)):
            v = random_direction(module, generator, normalize, one_dim)
            for d in dists:
                if d == 0:
                    if at_zero is None:
                        at_zero = _metrics(model, train, test, device, amp_dtype)
                        bar.update(1)
                    metrics = at_zero
                else:
                    _set_weights(params, origin, v, d)
                    metrics = _metrics(model, train, test, device, amp_dtype)
                    _set_weights(params, origin)
                    bar.update(1)
                rows.append({"direction": i, "distance": d, **metrics})
            del v
    finally:
        _set_weights(params, origin)
        for m, mode in modes:
            m.training = mode
        bar.close()
    return pd.DataFrame(rows, columns=["direction", "distance", *METRICS])


def curves_for_runs(
    solutions: dict[str, "str | os.PathLike"],
    weights: str = "last",
    eval_train_size: int | None = None,
    device: str = "auto",
    **curve_options,
) -> pd.DataFrame:
    """`perturbation_curves` of the deployed network of each named run directory.

    `solutions` maps a label (e.g. "vanilla", "DML", "ONE") to a run directory; each
    run's Learner is rebuilt from its files (`experiment.load_learner`), its deployable
    network (baseline net, DML peer 0, ONE branch 0 with the shared layers) perturbed
    on its own un-augmented data. Returns the curves with a `solution` column.
    """
    from ..engine import experiment, runs
    from ..engine.config import RunConfig
    from ..engine.runtime import resolve_device

    dev = resolve_device(device)
    frames = []
    for label, run_dir in solutions.items():
        config = RunConfig.from_dict(runs.read_json(os.path.join(run_dir, runs.CONFIG))["config"])
        net = experiment.load_learner(run_dir, weights).deployable().to(dev)
        train, test = eval_loaders(experiment.load_data(config), dev, train_size=eval_train_size)
        df = perturbation_curves(net, train, test, **curve_options)
        df.insert(0, "solution", label)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
