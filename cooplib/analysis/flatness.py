"""Widths that discriminate: where the training loss actually rises, over seeds and directions.

`perturb.perturbation_curves` evaluates a fixed grid of distances. On a grid that ends
before the loss rises (the ONE paper's d in [0, 5] along unit directions, for small
networks), every width is "beyond the grid" and the excess areas are tiny, so nothing is
compared. This module measures the width itself, per direction:

- **the crossing search** (`crossing_widths`): along each random direction v (the same
  draws as `perturbation_curves` with the same seed), the train cross-entropy c(d) at
  theta + d v is evaluated at d_start, growth * d_start, growth^2 * d_start, ... until it
  reaches the target c(0) + ``rise`` nats, or until ``d_max`` (evaluated itself) without
  reaching it; when c(d_start) is already above the target, d is divided by ``growth``
  instead until it is below. Every direction after the first starts at the previous
  direction's width (``warm_start``), which saves most of the doubling. The crossing is
  then bracketed by bisection, [low, high] with c(low) < target <= c(high) and
  high - low <= rtol * high, and the width is the linear interpolation between the two
  (so it lies in the bracket). A direction that never
  reaches the target is reported as "beyond d_max", with d_max stated, never as a number.
  The search finds *a* crossing: when c rises and falls between two evaluated points,
  the reported one need not be the first (nor the same from another start).
- **several directions per solution and several training seeds** (`widths_for_runs`):
  one row per (solution, training seed, direction), with the unperturbed train CE, train
  error, test CE and test error (d = 0) of that solution beside its width, so that
  solutions that are not matched (one fits the training set further than another)
  show it. ``weights="best"`` takes each run's best-epoch weights instead of the last.
  ``target="common"`` measures every width up to one absolute train-CE level shared by
  the solutions compared (the highest c(0) of a training seed plus ``rise``), so that a
  solution starting at a higher loss is not credited with a head start.
- **the ordering claim** (`ordering_verdicts`): differences of width between adjacent
  solutions of a claimed ordering, paired by (training seed, direction index): direction
  i of training seed s is drawn from the same generator seed for every solution. Through
  `report.decide`, so the sentence's wording follows its 95 % interval.

Filter-normalised directions (Li et al. 2018) are the default: they move every filter by
a fraction of its own norm, so two networks with differently scaled weights are compared
on the same footing. Unit directions (the ONE paper's) remain available.

Weights are restored bit-exactly after every evaluation and at the end, also on error
(the arithmetic of `perturb`: theta + d v is always formed from the saved origin).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import perturb
from .perturb import Normalize

#: where the search starts and the largest distance it tries, per kind of direction.
#: Unit: d is a Euclidean distance in weight space (a ResNet's weights have norm ~10-100);
#: filter: d = 1 moves every filter by its own norm.
DEFAULT_D_START: dict[str, float] = {"unit": 0.5, "filter": 0.05}
DEFAULT_D_MAX: dict[str, float] = {"unit": 1000.0, "filter": 10.0}
#: the columns of one search row (besides the solution's labels)
_MAX_BISECTIONS = 60
COLUMNS = ("direction", "direction_seed", "width", "low", "high", "beyond", "d_max", "target", "evaluations",
           "train_ce0", "train_error0", "test_ce0", "test_error0")

__all__ = ["COLUMNS", "DEFAULT_D_MAX", "DEFAULT_D_START", "crossing_widths", "curve_grid", "direction_seed",
           "ordering_verdicts", "search_facts", "width_summary", "width_text", "widths_for_runs"]


def _train_ce(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype) -> float:
    from ..engine.metrics import evaluate

    return float(evaluate(model, loader, amp_dtype, device)["out/loss"])


def crossing_widths(
    module: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    rise: float = 1.0,
    directions: int = 5,
    seed: int = 0,
    normalize: Normalize = "filter",
    d_start: float | None = None,
    d_max: float | None = None,
    growth: float = 2.0,
    rtol: float = 0.02,
    warm_start: bool = True,
    target: float | None = None,
    head: str | None = None,
    max_batches: int | None = None,
    one_dim: Literal["zero", "copy"] = "zero",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per random direction, the distance where the train CE first reaches the target.

    One row per direction, columns `COLUMNS`: ``width`` (inf when ``beyond``), its
    bracket ``low``/``high`` (c(low) < target <= c(high); for a direction beyond d_max,
    low = d_max and high = inf), ``d_max``, the ``target`` level (c(0) + ``rise`` unless
    an absolute ``target`` is given), the number of train evaluations, and the
    unperturbed train CE / error and test CE / error (percent). Directions are drawn as in
    `perturb.perturbation_curves` (direction i from a generator seeded with ``seed``,
    i-th draw), so a width can be checked against that function's curve. The test set is
    evaluated once, at d = 0. See the module doc for the search.
    """
    if normalize not in DEFAULT_D_MAX:
        raise ValueError(f"normalize must be 'unit' or 'filter', got {normalize!r}")
    d_start = float(DEFAULT_D_START[normalize] if d_start is None else d_start)
    d_max = float(DEFAULT_D_MAX[normalize] if d_max is None else d_max)
    if not (math.isfinite(d_start) and math.isfinite(d_max) and 0 < d_start <= d_max):
        raise ValueError(f"need 0 < d_start <= d_max, both finite; got d_start={d_start!r}, d_max={d_max!r}")
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth!r}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    if target is None and not rise > 0:
        raise ValueError(f"rise must be > 0 (nats of train CE above c(0)), got {rise!r}")
    if int(directions) < 1:
        raise ValueError(f"directions must be >= 1, got {directions!r}")
    perturb._check_loader(train_loader, "the train")
    perturb._check_loader(test_loader, "the test")
    params = perturb.trainable_parameters(module)
    if not params:
        raise ValueError("the module has no trainable parameters to perturb")
    device = params[0].device
    model = perturb._OneHead(module, head)
    train, test = perturb._Limited(train_loader, max_batches), perturb._Limited(test_loader, max_batches)
    generator = torch.Generator().manual_seed(int(seed))
    origin = [p.detach().clone() for p in params]
    modes = [(m, m.training) for m in module.modules()]
    rows: list[dict] = []
    previous: float | None = None
    bar = perturb._progress(int(directions), progress)
    try:
        at_zero = perturb._metrics(model, train, test, device, amp_dtype)
        c0 = at_zero["train_ce"]
        level = c0 + rise if target is None else float(target)
        for i in range(int(directions)):
            v = perturb.random_direction(module, generator, normalize, one_dim)
            evaluations = 0

            def c(d: float) -> float:
                nonlocal evaluations
                perturb._set_weights(params, origin, v, d)
                try:
                    evaluations += 1
                    return _train_ce(model, train, device, amp_dtype)
                finally:
                    perturb._set_weights(params, origin)

            start = previous if warm_start and previous is not None else d_start
            width, low, high, beyond = _search(c, c0, level, start, d_max, growth, rtol)
            if math.isfinite(width) and width > 0:
                previous = width
            rows.append({"direction": i, "direction_seed": int(seed), "width": width, "low": low, "high": high,
                         "beyond": beyond, "d_max": d_max, "target": level, "evaluations": evaluations,
                         "train_ce0": c0, "train_error0": at_zero["train_error"], "test_ce0": at_zero["test_ce"],
                         "test_error0": at_zero["test_error"]})
            bar.update(1)
    finally:
        perturb._set_weights(params, origin)
        for m, mode in modes:
            m.training = mode
        bar.close()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _search(c, c0: float, level: float, d_start: float, d_max: float, growth: float,
            rtol: float) -> tuple[float, float, float, bool]:
    """(width, low, high, beyond) of the curve ``c`` (c(0) = c0) against ``level``."""
    if c0 >= level:  # an absolute target the unperturbed solution already reaches
        return 0.0, 0.0, 0.0, False
    def above(value: float) -> bool:
        return not math.isfinite(value) or value >= level  # an overflowing loss is above any level

    lo, c_lo = 0.0, c0
    d = min(d_start, d_max)
    cd = c(d)
    if above(cd):  # down by `growth` until below the level (or give up: the bracket starts at 0)
        hi, c_hi = d, cd
        for _ in range(_MAX_BISECTIONS):
            d /= growth
            cd = c(d)
            if not above(cd):
                lo, c_lo = d, cd
                break
            hi, c_hi = d, cd
    else:  # up by `growth` until above the level, or d_max evaluated without reaching it
        lo, c_lo = d, cd
        while True:
            if d >= d_max:
                return math.inf, d_max, math.inf, True
            d = min(d * growth, d_max)
            cd = c(d)
            if above(cd):
                hi, c_hi = d, cd
                break
            lo, c_lo = d, cd
    for _ in range(_MAX_BISECTIONS):  # a jump of c at d -> 0 would shrink hi forever
        if hi - lo <= rtol * hi:
            break
        mid = 0.5 * (lo + hi)
        cm = c(mid)
        if above(cm):
            hi, c_hi = mid, cm
        else:
            lo, c_lo = mid, cm
    if not math.isfinite(c_hi) or c_hi == c_lo:
        return hi, lo, hi, False
    return lo + (level - c_lo) * (hi - lo) / (c_hi - c_lo), lo, hi, False


def direction_seed(seed: int, training_seed: int) -> int:
    """The generator seed of the directions for a run of ``training_seed``: shared by every
    solution of that training seed (so they pair), different between training seeds (so
    the pooled directions are fresh draws)."""
    return int(seed) + 1000 * int(training_seed)


def widths_for_runs(
    solutions: Mapping[object, "str | os.PathLike"],
    weights: str = "last",
    target: Literal["rise", "common"] = "rise",
    rise: float = 1.0,
    seed: int = 0,
    eval_train_size: int | None = None,
    device: str = "auto",
    **search_options,
) -> pd.DataFrame:
    """`crossing_widths` of the deployed network of each run directory.

    ``solutions`` maps a label, or a (label, seed) pair as the notebooks key their runs,
    to a run directory. Each run's Learner is rebuilt with its ``weights`` ("last" or
    "best"; `experiment.load_learner`) and its deployable network (baseline net, DML peer
    0, ONE branch 0 with the shared layers) is searched on its own un-augmented data.
    Directions of a run with training seed s come from generator seed
    ``direction_seed(seed, s)``. ``target="common"``: every run of a training seed is
    searched up to the same absolute train-CE level, max of their c(0) + ``rise``.
    Returns one row per (solution, seed, direction): ``solution``, ``seed``, ``weights``
    and the `COLUMNS`.
    """
    from ..engine import experiment, runs
    from ..engine.config import RunConfig
    from ..engine.runtime import resolve_device

    if weights not in ("last", "best"):
        raise ValueError(f"weights must be 'last' or 'best', got {weights!r}")
    if target not in ("rise", "common"):
        raise ValueError(f"target must be 'rise' or 'common', got {target!r}")
    dev = resolve_device(device)
    prepared = []
    for key, run_dir in solutions.items():
        label = key[0] if isinstance(key, tuple) else key
        config = RunConfig.from_dict(runs.read_json(os.path.join(run_dir, runs.CONFIG))["config"])
        prepared.append((label, config, run_dir))
    levels: dict[int, float] = {}
    if target == "common":
        for label, config, run_dir in prepared:
            net = experiment.load_learner(run_dir, weights).deployable().to(dev)
            train, _ = perturb.eval_loaders(experiment.load_data(config), dev, train_size=eval_train_size)
            c0 = _train_ce(perturb._OneHead(net, search_options.get("head")),
                           perturb._Limited(train, search_options.get("max_batches")), dev, search_options.get("amp_dtype"))
            levels[config.seed] = max(levels.get(config.seed, -math.inf), c0 + rise)
    frames = []
    for label, config, run_dir in prepared:
        net = experiment.load_learner(run_dir, weights).deployable().to(dev)
        train, test = perturb.eval_loaders(experiment.load_data(config), dev, train_size=eval_train_size)
        df = crossing_widths(net, train, test, rise=rise, seed=direction_seed(seed, config.seed),
                             target=levels.get(config.seed), **search_options)
        df.insert(0, "weights", weights)
        df.insert(0, "seed", int(config.seed))
        df.insert(0, "solution", label)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- tables and verdicts

def width_text(widths: Sequence[float], d_max: float) -> str:
    """'mean [95% CI] (min-max)' over the finite widths, and how many lie beyond d_max."""
    from ..base.stats import t_interval

    finite = [float(w) for w in widths if math.isfinite(w)]
    if not finite:
        return f"beyond d_max = {d_max:g} (all {len(widths)} directions)"
    n, mean, low, high = t_interval(finite)
    text = f"{mean:.3g}" + (f" [{low:.3g}, {high:.3g}]" if n >= 2 else "") + f" (range {min(finite):.3g}-{max(finite):.3g})"
    missing = len(widths) - len(finite)
    return text + (f"; {missing} of {len(widths)} directions beyond d_max = {d_max:g}" if missing else "")


def width_summary(widths: pd.DataFrame, by: str = "solution") -> pd.DataFrame:
    """Per solution: runs, directions, the unperturbed train CE / train error / test CE /
    test error (mean over its runs, range over runs), and the width over every (seed,
    direction): mean, 95 % t-interval, range and the count beyond d_max."""
    from ..base.stats import t_interval

    def spread(values: pd.Series, fmt: str) -> str:
        lo, hi = values.min(), values.max()
        return f"{values.mean():{fmt}}" + (f" ({lo:{fmt}}-{hi:{fmt}})" if len(values) > 1 and hi > lo else "")

    rows = []
    for key, g in widths.groupby(by, sort=False):
        per_run = g.drop_duplicates(["seed"]) if "seed" in g else g.iloc[:1]
        d_max = float(g["d_max"].max())
        n, mean, low, high = t_interval(g["width"][np.isfinite(g["width"])])
        rows.append({by: key, "runs": len(per_run), "directions": len(g),
                     "train CE at d=0": spread(per_run["train_ce0"], ".4f"),
                     "train error % at d=0": spread(per_run["train_error0"], ".2f"),
                     "test CE at d=0": spread(per_run["test_ce0"], ".4f"),
                     "test error % at d=0": spread(per_run["test_error0"], ".2f"),
                     "width": width_text(g["width"].tolist(), d_max),
                     "beyond d_max": f"{int(g['beyond'].sum())} of {len(g)} (d_max = {d_max:g})"})
    return pd.DataFrame(rows).set_index(by)


def ordering_verdicts(widths: pd.DataFrame, order: Sequence[str], by: str = "solution", pooled: bool = True,
                      view: str = "") -> list:
    """Verdicts on "least flat < ... < flattest", one per adjacent pair of ``order``.

    The difference is width(flatter) - width(less flat), paired by (seed, direction):
    positive = the claimed order. A width beyond d_max counts as d_max (the least it can
    be), which can only shrink a difference in its favour, never invent one; pairs where
    both are beyond d_max carry no information and are dropped (the sentence counts the
    pairs used). ``pooled``: every (seed, direction) pair is a replicate; otherwise the
    mean over directions per seed is (n = seeds: the conservative reading, since the
    directions of one seed share that seed's trained solution).
    """
    from ..base.stats import decide

    w = widths.assign(capped=np.where(widths["beyond"], widths["d_max"], widths["width"]))
    index = ["seed", "direction"] if "seed" in w else ["direction"]
    suffix = f" ({view})" if view else ""
    out = []
    for lo, hi in zip(order[:-1], order[1:]):
        a = w[w[by] == lo].set_index(index)
        b = w[w[by] == hi].set_index(index)
        keys = a.index.intersection(b.index)
        keys = keys[~(a.loc[keys, "beyond"].to_numpy(bool) & b.loc[keys, "beyond"].to_numpy(bool))]
        diff = b.loc[keys, "capped"] - a.loc[keys, "capped"]
        if pooled:
            values, reps = diff.tolist(), "seed x direction pairs"
        else:
            values = diff.groupby(level="seed").mean().tolist() if "seed" in index else [diff.mean()]
            reps = "seeds"
        unit = f"width (d, +{_rise(widths)} nat)"
        out.append(decide(values, f"{hi} flatter than {lo}{suffix}", unit=unit, replicates=reps))
    return out


def _rise(widths: pd.DataFrame) -> str:
    rises = (widths["target"] - widths["train_ce0"]).round(6).unique()
    return f"{rises[0]:g}" if len(rises) == 1 else "common level"


def search_facts(widths: pd.DataFrame, by: str = "solution") -> pd.DataFrame:
    """The set-up of a width search per solution, exact on any machine: training seeds,
    directions per seed, the kind of weights, d_max, and the target."""
    g = widths.groupby(by, sort=False)
    return pd.DataFrame({"seeds": g["seed"].nunique(), "directions per seed": g["direction"].nunique(),
                         "weights": g["weights"].first(), "d_max": g["d_max"].max(),
                         "target": "c(0) + " + _rise(widths) + " nat" if _rise(widths) != "common level"
                         else "a common train-CE level per seed"})


def curve_grid(widths: pd.DataFrame, points: int = 11, factor: float = 1.5) -> list[float]:
    """An evenly spaced grid from 0 to ``factor`` x the largest finite width (or d_max when
    none is finite), so that the curves drawn on it show every solution's rise."""
    finite = widths["width"][np.isfinite(widths["width"])]
    end = factor * float(finite.max()) if len(finite) and finite.max() > 0 else float(widths["d_max"].max())
    return [float(x) for x in np.round(np.linspace(0.0, end, int(points)), 6)]
