"""The statistics every chapter relies on: intervals, verdicts, confounds, convergence, design checks.

Why one module: a chapter states a direction only through `decide`, so the rules that
make a claim carry (or not carry) live in one place, are pure functions on numbers,
dicts and frames (nothing here reads a run directory or trains), and are tested by hand.
`cooplib.report.tables` builds the chapters' tables on them; notebooks call
`stats.decide` themselves.

**Verdicts.** On the claim "B is better than A" (difference = B - A, positive = the
claim's direction), at confidence c (95 % unless asked) over n replicates, from the
Student-t interval of the mean difference:

- ``supported``      the whole interval lies above 0;
- ``contradicted``   the whole interval lies below 0;
- ``not resolved``   the interval contains 0;
- ``undecidable``    no interval exists: n < 2, or the replicates agree exactly.

**Zero spread.** Replicates whose differences are all equal (sample sd below 1e-12, e.g.
two seeds that both lost exactly the same images) give a zero-width interval, which
would "decide" from nothing. Without a stated resolution that verdict is
``undecidable``, and its sentence gives the common value. A caller who knows the
measurement's resolution states it as ``floor`` (in the difference's unit; for test
accuracy `test_resolution(n_test)` = one image = 100 / n_test points, or
`binomial_sd`): the interval then uses sd = max(sample sd, floor), and the sentence says
when the floor was used.

**Confounds.** Two arms should differ only in the treatment (the method, or one of its
arguments). `confounds` lists the run-configuration fields (`RUN_CONFIG_FIELDS`, and
``method_args.*`` / ``dataset_args.*`` as `runs.load_runs` flattens them) whose set of
values differs between the arms, leaving out the treatment (a field or a prefix:
``"method_args"`` covers ``method_args.peers``) and `DEFAULT_IGNORED` (the seed and how or
where a run executed: device, compile, progress, ...). Results, ids, paths and timings
are never config fields; a field missing from an older record counts as its default
(`LATER_DEFAULTS`). A verdict carries them (`Verdict.confounds`) and its sentence
ends with "; confounded by lr, epochs" (readable names from `GROUPS`). `check_comparison`
is the strict form for a design: it raises `DesignError` unless every such difference
is explicitly ``allowed``.

**Underfitting.** `convergence` reads a run's per-epoch records (`runs.load_metrics`
columns ``epoch``, ``train/<head>/top1``, ``test/<head>/top1``): final train and test
error (%), their gap, and the slope of the training error (least squares, points per
epoch) over the last `last` epochs (default: the last 25 % of epochs, at least 2). The
training top-1 is the running accuracy over each epoch's augmented batches, in train
mode, so it overstates the final net's training error a little. `underfit` turns it into
a caveat when the run shows neither sign of having converged (the two criteria of a
fitted run: training error well below test error, or a plateau of the training error):

- training error above three quarters of the test error (``max_ratio=0.75``) while above
  1 point (``min_train_error=1.0``): the net does not fit its own training data much
  better than unseen data (18 % vs 21 % fails this; 2.2 % vs 4.2 % and 2 % vs 12 % pass:
  the running, augmented training error makes a stricter ratio fail on nets that fit),
- AND the training error still falling faster than 0.5 points per epoch
  (``max_slope=0.5``) over the last epochs: no plateau either, so training stopped
  before it converged. A run that fails only one of the two has converged by the other
  (on a small augmented dataset the running training error stays near the test error
  even at a plateau);
- optionally an absolute ``max_train_error`` (off unless stated).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import ConfigError

CONFIDENCE = 0.95
#: a sample sd below this is zero spread (replicates that agree exactly)
ZERO_SD = 1e-12


# ---------------------------------------------------------------- intervals

def test_resolution(n_test: int) -> float:
    """One test image in top-1 points: 100 / n_test (the smallest possible change)."""
    if n_test <= 0:
        raise ConfigError(f"n_test must be a positive number of test images, got {n_test!r}")
    return 100.0 / n_test


test_resolution.__test__ = False  # a library function, not a pytest test


def binomial_sd(acc_percent: float, n_test: int) -> float:
    """Sampling sd (top-1 points) of an accuracy of `acc_percent` % measured on n_test images:
    100 * sqrt(p (1 - p) / n_test), p = acc_percent / 100."""
    if n_test <= 0:
        raise ConfigError(f"n_test must be a positive number of test images, got {n_test!r}")
    if not 0 <= acc_percent <= 100:
        raise ConfigError(f"acc_percent must be in [0, 100], got {acc_percent!r}")
    p = acc_percent / 100.0
    return 100.0 * math.sqrt(p * (1 - p) / n_test)


def seeds_for_half_width(sd: float, half_width: float, confidence: float = CONFIDENCE, most: int = 100) -> int | None:
    """The power calculation of a profile: the smallest n >= 2 whose t-interval of a mean
    of paired differences with standard deviation `sd` has half-width <= `half_width`
    (t_{n-1} sd / sqrt(n)); None when more than `most` would be needed."""
    from scipy import stats as sps

    if not (math.isfinite(sd) and sd >= 0 and half_width > 0):
        return None
    for n in range(2, most + 1):
        if sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    return None


def sd_from_interval(n: int, low: float, high: float, confidence: float = CONFIDENCE) -> float:
    """The sample sd behind a t-interval [low, high] of n replicates (nan when n < 2)."""
    from scipy import stats as sps

    if n is None or n < 2 or low is None or high is None:
        return math.nan
    return (high - low) / 2 * math.sqrt(n) / float(sps.t.ppf(0.5 + confidence / 2, n - 1))


def _clean(values: Iterable[float]) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE,
               floor: float | None = None) -> tuple[int, float, float, float]:
    """(n, mean, low, high): Student-t interval of the mean; low/high are nan for n < 2.

    With `floor`, the sd used is max(sample sd, floor). Zero spread without a floor gives
    a zero-width interval here; `decide` refuses to decide on it.
    """
    from scipy import stats

    v = _clean(values)
    n = len(v)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if n < 2:
        return n, mean, math.nan, math.nan
    sd = float(v.std(ddof=1))
    if floor is not None:
        sd = max(sd, float(floor))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return n, mean, mean - half, mean + half


# ---------------------------------------------------------------- confounds

#: the fields of `cooplib.engine.config.RunConfig` (tests/test_stats.py checks they match)
RUN_CONFIG_FIELDS = (
    "method", "method_args", "model", "dataset", "dataset_args", "data_root", "download", "train_size",
    "test_size", "augment", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule",
    "milestones", "gamma", "grad_ratio_lr", "grad_ratio_clip", "grad_ratio_exclude", "grad_ratio_ema", "seed",
    "eval_every", "init_from", "device", "precision", "channels_last", "sync_bn", "compile", "deterministic", "progress",
    "tensorboard",
)
#: config dicts flattened by `runs.load_runs` into `<prefix>.<key>` columns
NESTED_FIELDS = ("method_args", "dataset_args")
#: never a confound: the replicate index, how or where a run executed, and how often it
#: was evaluated (none of them changes the trained weights)
DEFAULT_IGNORED = frozenset({
    "seed", "eval_every", "data_root", "download", "device", "channels_last", "sync_bn", "compile", "deterministic",
    "progress", "tensorboard",
})
#: fields added to RunConfig after runs were recorded, with their defaults (`config.LATER_DEFAULTS`):
#: an older record without the field ran with the default, so a missing value counts as it
LATER_DEFAULTS = {"sync_bn": None, "grad_ratio_exclude": "none", "grad_ratio_ema": 0.0, "eval_every": 1}
#: readable names of groups of config fields, in the order a confound label lists them
GROUPS: dict[str, tuple[str, ...]] = {
    "lr": ("lr",),
    "epochs": ("epochs",),
    "schedule": ("schedule", "milestones", "gamma"),
    "data": ("dataset", "dataset_args", "train_size", "test_size", "augment"),
    "model": ("model",),
    "init": ("init_from",),
    "batch_size": ("batch_size",),
    "optimizer": ("momentum", "nesterov", "weight_decay"),
    "grad ratio": ("grad_ratio_lr", "grad_ratio_clip", "grad_ratio_exclude", "grad_ratio_ema"),
    "precision": ("precision",),
}


def is_config_field(name: str) -> bool:
    """A run-configuration field (or a flattened `method_args.x`), not a result, id, path or timing."""
    if not isinstance(name, str):
        return False
    head, dot, _ = name.partition(".")
    return name in RUN_CONFIG_FIELDS or (bool(dot) and head in NESTED_FIELDS)


def _as_tuple(names: str | Iterable[str] | None) -> tuple[str, ...]:
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _covered(name: str, prefixes: Iterable[str]) -> bool:
    """`name` is one of `prefixes` or lies under one ("method_args" covers "method_args.peers")."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _norm(value):
    """A hashable, comparable form of a config value: None for missing/NaN, JSON for lists/dicts."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _value(config: Mapping, name: str):
    value = _norm(config.get(name))
    return _norm(LATER_DEFAULTS[name]) if value is None and name in LATER_DEFAULTS else value


def _compared_fields(configs: Sequence[Mapping]) -> list[str]:
    keys = {k for c in configs for k in c if is_config_field(k)}
    # a flattened dict is compared key by key, not also as its JSON whole
    return sorted(k for k in keys if not (k in NESTED_FIELDS and any(o.startswith(k + ".") for o in keys)))


def _differing(configs_a: Sequence[Mapping], configs_b: Sequence[Mapping], treatment, ignore) -> dict[str, tuple[list, list]]:
    configs_a, configs_b = list(configs_a), list(configs_b)
    treatment, ignore = _as_tuple(treatment), tuple(ignore)
    out = {}
    for name in _compared_fields(configs_a + configs_b):
        if _covered(name, treatment) or _covered(name, ignore):
            continue
        va = {_value(c, name) for c in configs_a}
        vb = {_value(c, name) for c in configs_b}
        if va != vb:
            out[name] = (sorted(va, key=repr), sorted(vb, key=repr))
    return out


def confounds(configs_a: Iterable[Mapping], configs_b: Iterable[Mapping], treatment: str | Iterable[str] = (),
              ignore: Iterable[str] = DEFAULT_IGNORED) -> tuple[str, ...]:
    """Sorted config fields whose set of values differs between the arms, the treatment
    (fields or prefixes) and `ignore` left out. Configs are flat dicts (rows of
    `runs.load_runs`); keys that are not config fields (results, ids, paths) are skipped."""
    return tuple(_differing(configs_a, configs_b, treatment, ignore))


def confound_labels(fields: Iterable[str]) -> tuple[str, ...]:
    """Readable names of confound fields: "lr", "schedule (milestones)", then ungrouped fields."""
    fields = list(dict.fromkeys(fields))
    labels, used = [], set()
    for group, members in GROUPS.items():
        hit = [f for f in fields if f in members]
        if hit:
            used.update(hit)
            labels.append(group if hit == [group] else f"{group} ({', '.join(hit)})")
    return tuple(labels) + tuple(sorted(f for f in fields if f not in used))


class DesignError(ConfigError):
    """Two arms of a comparison differ in more than the treatment."""


def check_comparison(configs_a: Iterable[Mapping], configs_b: Iterable[Mapping], treatment: str | Iterable[str],
                     allowed: Iterable[str] = (), ignore: Iterable[str] = DEFAULT_IGNORED) -> tuple[str, ...]:
    """Raise `DesignError` when the arms differ in a config field outside the treatment that
    is not in `allowed`; return the allowed differences (the verdict's confound labels)."""
    diffs = _differing(configs_a, configs_b, treatment, ignore)
    allowed = _as_tuple(allowed)
    bad = {k: v for k, v in diffs.items() if not _covered(k, allowed)}
    if bad:
        what = "; ".join(f"{k}: {_values(a)} vs {_values(b)}" for k, (a, b) in bad.items())
        raise DesignError(
            f"the arms differ in more than the treatment {', '.join(_as_tuple(treatment)) or '(none)'}: {what}. "
            f"Give both arms the same {', '.join(bad)}, or pass allowed={tuple(bad)!r} to compare them "
            f"anyway with the difference stated as a confound")
    return tuple(k for k in diffs if _covered(k, allowed))


def _values(values: list) -> str:
    return values[0].__repr__() if len(values) == 1 else "{" + ", ".join(map(repr, values)) + "}"


# ---------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Verdict:
    """A claim "B better than A", its paired differences' interval and the wording from it."""

    claim: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    status: str  # supported | contradicted | not resolved | undecidable
    confidence: float = CONFIDENCE
    unit: str = "top-1 points"
    replicates: str = "seeds"
    differences: tuple = field(default=(), repr=False)
    #: config fields (other than the treatment) in which the two arms differ
    confounds: tuple[str, ...] = ()
    #: free-text warnings, e.g. "underfit: train error 18.2 % vs test 21.0 % (arm A)"
    caveats: tuple[str, ...] = ()
    #: the stated resolution the interval's sd was floored at, when that floor was used
    floor: float | None = None

    def _fmt(self, x: float) -> str:
        """Signed, with 2 decimals, or more when the numbers are small (e.g. areas of 0.003)."""
        scale = max((abs(v) for v in (self.mean, self.ci_low, self.ci_high) if math.isfinite(v)), default=0.0)
        decimals = 2 if scale == 0 else max(2, 1 - math.floor(math.log10(scale)))
        return f"{x:+.{decimals}f}"

    @property
    def identical(self) -> bool:
        """At least 2 replicates that agree exactly, so no interval exists."""
        return self.n >= 2 and self.status == "undecidable"

    @property
    def interval(self) -> str:
        """'+0.23 [-0.50, +0.96]' (mean and interval), or the mean alone when there is none."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self._fmt(self.mean)} (no interval at n = 1)"
        if self.identical:
            return f"{self._fmt(self.mean)} (identical {self.replicates}, no interval)"
        return f"{self._fmt(self.mean)} [{self._fmt(self.ci_low)}, {self._fmt(self.ci_high)}]"

    @property
    def sentence(self) -> str:
        reps = f"{self.n} {self.replicates if self.n != 1 else self.replicates.rstrip('s')}"
        if self.n == 0:
            text = f"{self.claim}: cannot be decided (no paired {self.replicates})"
        elif self.n < 2:
            text = (f"{self.claim}: cannot be decided at {reps} (an interval needs at least 2); "
                    f"the single difference is {self._fmt(self.mean)} {self.unit}")
        elif self.identical:
            text = (f"{self.claim}: cannot be decided at {reps}: the replicates agree exactly (every difference is "
                    f"{self._fmt(self.mean)} {self.unit}), so no interval exists; state the measurement's "
                    f"resolution (floor) to decide")
        else:
            text = (f"{self.claim}: {self.status} at {reps} (mean difference {self._fmt(self.mean)} {self.unit}, "
                    f"{self.confidence:.0%} CI [{self._fmt(self.ci_low)}, {self._fmt(self.ci_high)}]"
                    + (f"; sd floored at the stated resolution {self.floor:g} {self.unit}" if self.floor is not None else "")
                    + ")")
        for caveat in self.caveats:
            text += f"; {caveat}"
        if self.confounds:
            return text + "; confounded by " + ", ".join(confound_labels(self.confounds))
        return text + "."

    def __str__(self) -> str:
        return self.sentence

    def as_dict(self) -> dict:
        return {**asdict(self), "interval": self.interval, "sentence": self.sentence}


def decide(differences: Iterable[float], claim: str, unit: str = "top-1 points", replicates: str = "seeds",
           confidence: float = CONFIDENCE, *, floor: float | None = None, confounds: Iterable[str] = (),
           caveats: Iterable[str] = ()) -> Verdict:
    """The verdict on `claim` from its differences (positive = the claim's direction).

    `floor`: the measurement's resolution in `unit`; the interval's sd is max(sample sd,
    floor). Without it, replicates that agree exactly are `undecidable` (module docstring).
    `confounds` (config fields) and `caveats` (text) are carried into the sentence.
    """
    diffs = tuple(float(d) for d in differences)
    v = _clean(diffs)
    sd = float(v.std(ddof=1)) if len(v) >= 2 else math.nan
    used_floor = floor is not None and len(v) >= 2 and sd < float(floor)
    n, mean, low, high = t_interval(diffs, confidence, floor)
    if n < 2:
        status = "undecidable"
    elif sd < ZERO_SD and floor is None:
        status, low, high = "undecidable", math.nan, math.nan
    elif low > 0:
        status = "supported"
    elif high < 0:
        status = "contradicted"
    else:
        status = "not resolved"
    return Verdict(claim, n, mean, low, high, status, confidence, unit, replicates, diffs,
                   tuple(confounds), tuple(caveats), float(floor) if used_floor else None)


# ---------------------------------------------------------------- convergence

@dataclass(frozen=True)
class Convergence:
    """How far one run's training got: final errors (%) and the recent slope of the train error."""

    head: str
    epochs: int
    train_error: float  # % at the last epoch (100 - train top-1)
    test_error: float  # % at the last epoch
    gap: float  # test - train, points
    slope: float  # train error, points per epoch over the last `last` epochs (negative = falling)
    last: int  # epochs the slope is fitted on

    def as_dict(self) -> dict:
        return asdict(self)


def convergence(metrics, head: str, train_col_prefix: str = "train", test_col_prefix: str = "test",
                last: int | None = None) -> Convergence:
    """Final train/test error (%), gap and train-error slope of ONE run's per-epoch records.

    `metrics`: a frame with `epoch`, `<train_col_prefix>/<head>/top1` and
    `<test_col_prefix>/<head>/top1` (as `runs.load_metrics`); `last`: epochs for the slope
    (default max(2, ceil(25 % of the epochs))).
    """
    if "run" in metrics.columns and metrics["run"].nunique() > 1:
        raise ConfigError(f"convergence reads one run's records; this frame holds {metrics['run'].nunique()} runs "
                          f"(group by 'run' first)")
    cols = [f"{train_col_prefix}/{head}/top1", f"{test_col_prefix}/{head}/top1"]
    missing = [c for c in ["epoch", *cols] if c not in metrics.columns]
    if missing:
        heads = sorted({c.split("/")[1] for c in metrics.columns if c.startswith(f"{train_col_prefix}/") and c.endswith("/top1")})
        raise ConfigError(f"the records have no column {', '.join(missing)}; heads with a training top-1: {heads}")
    # the training error is recorded every epoch, the test error every `eval_every`-th
    g = metrics.dropna(subset=cols[:1]).sort_values("epoch")
    tested = metrics.dropna(subset=cols).sort_values("epoch")
    if len(tested) == 0:
        raise ConfigError(f"no epoch records both {cols[0]} and {cols[1]}")
    g = g[g["epoch"] <= tested["epoch"].iloc[-1]]
    epoch = g["epoch"].to_numpy(float)
    train = 100.0 - g[cols[0]].to_numpy(float)
    test = 100.0 - float(tested[cols[1]].iloc[-1])
    k = max(2, math.ceil(0.25 * len(g))) if last is None else int(last)
    k = min(k, len(g))
    slope = float(np.polyfit(epoch[-k:], train[-k:], 1)[0]) if k >= 2 else math.nan
    return Convergence(head, len(g), float(train[-1]), test, test - float(train[-1]), slope, k)


def underfit(conv: Convergence | Mapping, max_ratio: float = 0.75, min_train_error: float = 1.0,
             max_slope: float = 0.5, max_train_error: float | None = None, name: str | None = None) -> str | None:
    """A caveat when training neither fit nor reached a plateau (thresholds: module docstring), else None."""
    c = conv if isinstance(conv, Mapping) else asdict(conv)
    train, test, slope = c["train_error"], c["test_error"], c["slope"]
    reasons = []
    no_fit = train > min_train_error and train > max_ratio * test
    falling = math.isfinite(slope) and slope < -max_slope
    if no_fit and falling:
        reasons.append(f"train error {train:.1f} % vs test {test:.1f} % (train above {max_ratio:g} x test) and still "
                       f"falling {-slope:.2f} points/epoch over the last {c.get('last', '?')} epochs")
    if max_train_error is not None and train > max_train_error:
        reasons.append(f"train error {train:.1f} % above {max_train_error:g} %")
    if not reasons:
        return None
    return "underfit: " + ", and ".join(dict.fromkeys(reasons)) + (f" ({name})" if name else "")
