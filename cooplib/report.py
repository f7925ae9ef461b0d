"""Tables, intervals and verdicts computed from run frames (`runs.load_runs`), for the notebooks.

Nothing here is typed by hand: every number comes from a run directory. Every comparison
goes through `decide`, which turns a set of paired differences into a `Verdict` (a t
confidence interval and a wording chosen from it), so no chapter states a direction
that its interval does not carry.

Wording of a verdict on the claim "B is better than A" (difference = B - A, positive =
the claim's direction), at confidence c (95 % unless asked) over n replicates:

- ``supported``      the whole interval lies above 0;
- ``contradicted``   the whole interval lies below 0;
- ``not resolved``   the interval contains 0;
- ``undecidable``    n < 2: no interval exists, the verdict says it cannot be decided.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
#: the `best/...` columns: the epoch with the highest test top-1 of the run's primary head,
#: i.e. selected on the test set (as the ONE reference code does) — an optimistic number
BEST_LABEL = "best epoch, selected on test"


# ---------------------------------------------------------------- intervals and verdicts

def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[int, float, float, float]:
    """(n, mean, low, high): Student-t interval of the mean; low/high are nan for n < 2."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    n = len(v)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if n < 2:
        return n, mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return n, mean, mean - half, mean + half


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

    def _fmt(self, x: float) -> str:
        """Signed, with 2 decimals, or more when the numbers are small (e.g. areas of 0.003)."""
        scale = max((abs(v) for v in (self.mean, self.ci_low, self.ci_high) if math.isfinite(v)), default=0.0)
        decimals = 2 if scale == 0 else max(2, 1 - math.floor(math.log10(scale)))
        return f"{x:+.{decimals}f}"

    @property
    def interval(self) -> str:
        """'+0.23 [-0.50, +0.96]' (mean and interval), or the mean alone when n < 2."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self._fmt(self.mean)} (no interval at n = 1)"
        return f"{self._fmt(self.mean)} [{self._fmt(self.ci_low)}, {self._fmt(self.ci_high)}]"

    @property
    def sentence(self) -> str:
        reps = f"{self.n} {self.replicates if self.n != 1 else self.replicates.rstrip('s')}"
        if self.n == 0:
            return f"{self.claim}: cannot be decided (no paired {self.replicates})."
        if self.status == "undecidable":
            return (f"{self.claim}: cannot be decided at {reps} (an interval needs at least 2); "
                    f"the single difference is {self._fmt(self.mean)} {self.unit}.")
        return (f"{self.claim}: {self.status} at {reps} (mean difference {self._fmt(self.mean)} {self.unit}, "
                f"{self.confidence:.0%} CI [{self._fmt(self.ci_low)}, {self._fmt(self.ci_high)}]).")

    def __str__(self) -> str:
        return self.sentence

    def as_dict(self) -> dict:
        return {**asdict(self), "interval": self.interval, "sentence": self.sentence}


def decide(differences: Iterable[float], claim: str, unit: str = "top-1 points", replicates: str = "seeds",
           confidence: float = CONFIDENCE) -> Verdict:
    """The verdict on `claim` from its differences (positive = the claim's direction)."""
    diffs = tuple(float(d) for d in differences)
    n, mean, low, high = t_interval(diffs, confidence)
    if n < 2:
        status = "undecidable"
    elif low > 0:
        status = "supported"
    elif high < 0:
        status = "contradicted"
    else:
        status = "not resolved"
    return Verdict(claim, n, mean, low, high, status, confidence, unit, replicates, diffs)


def paired_difference(frame: pd.DataFrame, a: str, b: str, column: str, by: str = "label",
                      confidence: float = CONFIDENCE) -> dict:
    """b - a paired by seed: mean, a t confidence interval, and the per-seed values."""
    left = frame[frame[by] == a].set_index("seed")[column]
    right = frame[frame[by] == b].set_index("seed")[column]
    seeds = sorted(set(left.index) & set(right.index))
    diff = (right.loc[seeds] - left.loc[seeds]).astype(float)
    n, mean, low, high = t_interval(diff.tolist(), confidence)
    return {"a": a, "b": b, "metric": column, "n": n, "mean": mean, "ci_low": low, "ci_high": high,
            "confidence": confidence, "per_seed": dict(zip(seeds, diff.tolist()))}


def compare(frame: pd.DataFrame, a: str, b: str, column: str, by: str = "label", claim: str | None = None,
            unit: str = "top-1 points", confidence: float = CONFIDENCE) -> Verdict:
    """Verdict on "b better than a" in `column` (higher is better), paired by seed."""
    d = paired_difference(frame, a, b, column, by, confidence)
    return decide(d["per_seed"].values(), claim or f"{b} better than {a}", unit, "seeds", confidence)



def verdict_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """One row per verdict: the claim, n, unit, mean difference [interval], verdict."""
    return pd.DataFrame([{"claim": v.claim, "n": f"{v.n} {v.replicates}", "unit": v.unit,
                          f"difference [{v.confidence:.0%} CI]": v.interval, "verdict": v.status} for v in verdicts])


# ---------------------------------------------------------------- summary tables

def mean_std(values: pd.Series, digits: int = 2) -> str:
    """'m ± s' over seeds (just 'm' for one value)."""
    v = values.dropna().astype(float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def per_run_table(frame: pd.DataFrame, head: str = "net") -> pd.DataFrame:
    """One row per run: seed, last and best test top-1/top-5 of `head`, cost, time."""
    cols = {
        "method": "method",
        "model": "model",
        "dataset": "dataset",
        "seed": "seed",
        "epochs_done": "epochs",
        f"last/test/{head}/top1": "top-1 (last)",
        f"last/test/{head}/top5": "top-5 (last)",
        f"best/test/{head}/top1": f"top-1 ({BEST_LABEL})",
        "best_epoch": "best epoch",
        "params": "params",
        "test_flops": "FLOPs (test)",
        "seconds": "train s",
    }
    present = {k: v for k, v in cols.items() if k in frame.columns}
    out = frame[list(present)].rename(columns=present)
    return out.sort_values(["method", "model", "seed"]).reset_index(drop=True)


def summary_table(frame: pd.DataFrame, head: str = "net", by: tuple[str, ...] = ("method", "model", "dataset")) -> pd.DataFrame:
    """Mean ± std over seeds of last- and best-epoch test top-1 (and last top-5), one row per group."""
    rows = []
    for key, g in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["seeds"] = len(g)
        row["top-1 % (last)"] = mean_std(g[f"last/test/{head}/top1"])
        row[f"top-1 % ({BEST_LABEL})"] = mean_std(g[f"best/test/{head}/top1"])
        row["top-5 % (last)"] = mean_std(g[f"last/test/{head}/top5"])
        row["error % (last)"] = mean_std(100 - g[f"last/test/{head}/top1"])
        rows.append(row)
    return pd.DataFrame(rows)


def _peer_mean(g: pd.DataFrame, k: int, which: str = "last", split: str = "test", stat: str = "top1") -> pd.Series:
    """Per run: the mean over its K peers of `which/split/peer<i>/stat`."""
    return g[[f"{which}/{split}/peer{i}/{stat}" for i in range(k)]].mean(axis=1)


def dml_verdicts(frame: pd.DataFrame, which: str = "last") -> dict[int, Verdict]:
    """Per K: "DML peers better than independent peers" on the mean peer test top-1, paired by seed."""
    out = {}
    for k in sorted(frame["method_args.peers"].unique()):
        g = frame[frame["method_args.peers"] == k]
        acc = g.assign(_acc=_peer_mean(g, int(k), which),
                       _arm=g["method_args.mutual"].map({True: "DML", False: "independent"}))
        out[int(k)] = compare(acc, "independent", "DML", "_acc", by="_arm",
                              claim=f"K = {int(k)}: DML peers better than independent peers ({which} epoch)")
    return out


def dml_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """DML vs independent peers, per number of peers K (mean ± std over seeds).

    Peer accuracy is the mean over the K peers of each run, then over seeds; the
    ensemble is the `average` head. The gain is DML minus independent at the same K,
    paired by seed, with its 95 % t-interval and verdict (`dml_verdicts`).
    """
    gains = dml_verdicts(frame)
    rows = []
    for (k, mutual), g in frame.groupby(["method_args.peers", "method_args.mutual"]):
        k = int(k)
        gain = gains.get(k) if mutual else None
        rows.append({
            "peers": k, "training": "DML" if mutual else "independent", "seeds": len(g),
            "peer top-1 % (last)": mean_std(_peer_mean(g, k)),
            f"peer top-1 % ({BEST_LABEL})": mean_std(_peer_mean(g, k, "best")),
            "peer top-5 % (last)": mean_std(_peer_mean(g, k, stat="top5")),
            "peer train top-1 %": mean_std(_peer_mean(g, k, split="train")),
            "peer train CE": mean_std(g[[f"last/train/ce/peer{i}" for i in range(k)]].mean(axis=1), 4),
            "ensemble top-1 % (last)": mean_std(g["last/test/average/top1"]),
            "gain over independent [95% CI]": gain.interval if gain else "",
            "verdict": gain.status if gain else "",
        })
    out = pd.DataFrame(rows).sort_values(["peers", "training"], ascending=[True, False])
    return out.reset_index(drop=True)


def _branch_heads(frame: pd.DataFrame) -> list[str]:
    heads = sorted({c.split("/")[2] for c in frame.columns if c.startswith("last/test/branch") and c.endswith("/top1")},
                   key=lambda h: int(h[len("branch"):]))
    return heads


def one_summary(frame: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """ONE-style results per variant: branches (mean ± std over branches and seeds),
    branch 0 (the deployed net), ONE-E (gate ensemble) and the plain average, top-1 and
    top-5 of the last epoch, plus branch 0 and ONE-E at the best epoch (selected on test).

    A baseline run appears with its single head `net` as its only "branch".
    """
    rows = []
    for label, g in frame.groupby(by, sort=False):
        heads = [h for h in _branch_heads(g) if g[f"last/test/{h}/top1"].notna().any()] or ["net"]
        row = {by: label, "branches": len(heads), "seeds": len(g)}
        for stat in ("top1", "top5"):
            row[f"branch {stat} %"] = mean_std(pd.concat([g[f"last/test/{h}/{stat}"] for h in heads]))
            row[f"branch0 {stat} %"] = mean_std(g[f"last/test/{heads[0]}/{stat}"])
            for head, name in (("ensemble", "ONE-E"), ("average", "average")):
                col = f"last/test/{head}/{stat}"
                row[f"{name} {stat} %"] = mean_std(g[col]) if col in g and g[col].notna().any() else ""
        row[f"branch0 top1 % ({BEST_LABEL})"] = mean_std(g[f"best/test/{heads[0]}/top1"])
        col = "best/test/ensemble/top1"
        row[f"ONE-E top1 % ({BEST_LABEL})"] = mean_std(g[col]) if col in g and g[col].notna().any() else ""
        row["branch0 error % (last)"] = mean_std(100 - g[f"last/test/{heads[0]}/top1"])
        row[f"branch0 error % ({BEST_LABEL})"] = mean_std(100 - g[f"best/test/{heads[0]}/top1"])
        rows.append(row)
    return pd.DataFrame(rows)


def deployed_top1(frame: pd.DataFrame, which: str = "last") -> pd.Series:
    """Test top-1 of the deployed network of each run: ONE's branch 0, else the baseline's net."""
    col = f"{which}/test/branch0/top1"
    net = frame[f"{which}/test/net/top1"] if f"{which}/test/net/top1" in frame else pd.Series(np.nan, frame.index)
    return frame[col].fillna(net) if col in frame else net


def one_verdicts(frame: pd.DataFrame, baseline: str, one: str, which: str = "last", by: str = "label") -> list[Verdict]:
    """ONE against the baseline, paired by seed: branch 0 (deployed), mean branch, ONE-E."""
    heads = _branch_heads(frame[frame[by] == one].dropna(axis=1, how="all"))
    base = deployed_top1(frame, which)
    acc = frame.assign(
        _deployed=deployed_top1(frame, which),
        _mean_branch=frame[[f"{which}/test/{h}/top1" for h in heads]].mean(axis=1).fillna(base),
        _ensemble=frame[f"{which}/test/ensemble/top1"].fillna(base),
    )
    names = {"_deployed": "branch 0 (deployed, same test cost)", "_mean_branch": "mean branch",
             "_ensemble": "ONE-E (gate ensemble)"}
    return [compare(acc, baseline, one, col, by, claim=f"{one} {name} better than {baseline} ({which} epoch)")
            for col, name in names.items()]


def pairwise_verdicts(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]], columns: Mapping[str, str],
                      by: str = "label") -> list[Verdict]:
    """"b better than a" for every (a, b) pair and column {column: name}, paired by seed."""
    return [compare(frame, a, b, col, by, claim=f"{b} better than {a} ({name})") for a, b in pairs for col, name in columns.items()]


def dml_labels(frame: pd.DataFrame) -> pd.Series:
    """'K=2 DML' / 'K=2 independent' per run, to group DML runs by arm."""
    return ("K=" + frame["method_args.peers"].astype(int).astype(str) + " "
            + frame["method_args.mutual"].map({True: "DML", False: "independent"}))


def cost_table(frame: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Error of the deployed net (last epoch) with training and test cost (ONE paper Tables 3/4)."""
    rows = []
    for label, g in frame.groupby(by, sort=False):
        rows.append({
            by: label, "error % (deployed, last)": mean_std(100 - deployed_top1(g)),
            "params train": int(g["params"].iloc[0]), "TrCost FLOPs": f"{g['train_flops'].iloc[0]:.3e}",
            "params test": int(g["test_params"].iloc[0]), "TeCost FLOPs": f"{g['test_flops'].iloc[0]:.3e}",
        })
    return pd.DataFrame(rows)


def error(frame: pd.DataFrame, label: str, head: str, by: str = "label", which: str = "last") -> str:
    """Test top-1 error (%) of `head` at the `which` ("last" or "best") epoch, mean ± std over runs."""
    return mean_std(100 - frame.loc[frame[by] == label, f"{which}/test/{head}/top1"])


def beside_published(frame: pd.DataFrame, rows: Mapping[str, tuple[str, str, object]], by: str = "label") -> pd.DataFrame:
    """Our error next to a published one, at the epoch convention of the published source.

    `rows`: name -> (label, head, `published.Published`); ours is taken at the entry's
    `epoch` ("best" or "last") and both are shown with the source's label.
    """
    out = []
    for name, (label, head, entry) in rows.items():
        out.append({"": name, "ours: error %": error(frame, label, head, by, entry.epoch),
                    "ours: epoch": BEST_LABEL if entry.epoch == "best" else "last",
                    "published": entry.text, "published: source": entry.label})
    return pd.DataFrame(out).set_index("")


# ---------------------------------------------------------------- exact facts (nbval-checked)

def lr_drop_epochs(metrics: pd.DataFrame) -> dict[str, list[int]]:
    """Per run: the epochs (1-based) whose applied lr is lower than the previous epoch's."""
    out = {}
    for run, g in metrics.sort_values("epoch").groupby("run", sort=False):
        lr = g["lr"].to_numpy(float)
        out[run] = [int(e) for e, prev, cur in zip(g["epoch"].iloc[1:], lr[:-1], lr[1:]) if cur < prev]
    return out


def _lr_text(drops: list[int], epochs: int) -> str:
    return "every epoch" if drops and drops == list(range(2, epochs + 1)) else str(drops)


def run_facts(finals: pd.DataFrame, metrics: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """What is exact on any machine, per group: runs, seeds, epochs, parameters, FLOPs,
    and the learning-rate schedule the runs applied (drop epochs and last lr, read back
    from the run records). Training results are deliberately absent."""
    drops = lr_drop_epochs(metrics)
    last_lr = metrics.sort_values("epoch").groupby("run")["lr"].last()
    rows = []
    for key, g in finals.groupby(by, sort=False):
        epochs = sorted(set(int(e) for e in g["epochs_done"]))
        lr_drops = sorted({_lr_text(drops[r], int(e)) for r, e in zip(g["run"], g["epochs_done"])})
        rows.append({
            by if isinstance(by, str) else "group": key, "runs": g["run_dir"].nunique(),
            "seeds": ",".join(str(s) for s in sorted(g["seed"])), "epochs": ",".join(map(str, epochs)),
            "params": int(g["params"].iloc[0]), "TrCost FLOPs": f"{g['train_flops'].iloc[0]:.4e}",
            "TeCost FLOPs": f"{g['test_flops'].iloc[0]:.4e}",
            "lr drops at epochs": " | ".join(lr_drops),
            "last lr": ",".join(sorted({f"{last_lr[r]:.4g}" for r in g["run"]})),
        })
    return pd.DataFrame(rows)


def shared_runs(finals: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Labels whose runs are the same run directories (a run reused under several names)."""
    owners = finals.groupby("run_dir")[by].agg(lambda s: tuple(sorted(set(s))))
    groups = sorted({o for o in owners if len(o) > 1})
    return pd.DataFrame({"same runs": [" = ".join(o) for o in groups],
                         "runs": [int((owners == o).sum()) for o in groups]})


# ---------------------------------------------------------------- evidence records (pytest-checked)

EVIDENCE_MARK = "COOPLIB-EVIDENCE "


def print_evidence(values: Mapping[str, pd.Series]) -> None:
    """Print {name: {seed: value}} for the tolerance check of `tests/test_evidence_notebooks.py`.

    nbval cannot compare numbers with a tolerance, so the notebooks print their key
    training results in this form (in a cell hidden from the book) and the test compares a
    fresh execution with the stored output (`evidence_mismatches`).
    """
    record = {name: {str(int(s)): round(float(v), 4) for s, v in series.items()} for name, series in values.items()}
    print(EVIDENCE_MARK + json.dumps(record, sort_keys=True))


def read_evidence(notebook: Mapping) -> dict[str, dict[str, float]]:
    """The evidence record printed in a notebook's outputs (a dict as from `nbformat`/json)."""
    for cell in notebook["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if line.startswith(EVIDENCE_MARK):
                    return json.loads(line[len(EVIDENCE_MARK):])
    raise ValueError(f"no '{EVIDENCE_MARK.strip()}' line in the notebook's outputs")


def evidence_tolerance(reference: Mapping[str, Mapping[str, float]], z: float = 4.0, floor: float = 1.0) -> float:
    """Allowed |mean(fresh) - mean(reference)| per metric, from the measured seed spread.

    Another machine (CPU kernels, thread count, GPU) changes the floating-point sums, and
    training amplifies that like a change of seed, so a fresh mean differs from the
    stored one like two independent means of n seeds: sd * sqrt(2 / n). sd pools the
    seed variance of all the record's metrics (2-3 seeds per metric are too few alone);
    z = 4 keeps false alarms rare; `floor` (top-1 points) covers a record whose seeds
    happen to agree. Smallest n of the record is used.
    """
    variances = [np.var(list(v.values()), ddof=1) for v in reference.values() if len(v) >= 2]
    n = min((len(v) for v in reference.values()), default=1)
    sd = math.sqrt(float(np.mean(variances))) if variances else 0.0
    return max(z * sd * math.sqrt(2 / n), floor)


def evidence_mismatches(reference: Mapping[str, Mapping[str, float]], fresh: Mapping[str, Mapping[str, float]],
                        tolerance: float) -> list[str]:
    """Metrics whose fresh mean is more than `tolerance` from the stored one, or whose
    names/seeds differ (those must match exactly)."""
    problems = []
    if set(reference) != set(fresh):
        problems.append(f"metric names differ: stored {sorted(reference)}, fresh {sorted(fresh)}")
    for name in sorted(set(reference) & set(fresh)):
        ref, new = reference[name], fresh[name]
        if set(ref) != set(new):
            problems.append(f"{name}: seeds differ: stored {sorted(ref)}, fresh {sorted(new)}")
            continue
        delta = float(np.mean(list(new.values())) - np.mean(list(ref.values())))
        if abs(delta) > tolerance:
            problems.append(f"{name}: mean moved by {delta:+.2f} (tolerance {tolerance:.2f})")
    return problems


# ---------------------------------------------------------------- flatness (robustness chapter)

def width_text(widths: Sequence[float], d_max: float, rise: float) -> str:
    """Width over directions, honest about directions whose curve never rose by `rise`."""
    finite = [w for w in widths if math.isfinite(w)]
    if not finite:
        return f"beyond d_max = {d_max:g} (no direction rose by {rise:g} nat)"
    n, mean, low, high = t_interval(finite)
    text = f"{mean:.2f}" + (f" [{low:.2f}, {high:.2f}]" if n >= 2 else "")
    missing = len(widths) - len(finite)
    return text + (f"; {missing} of {len(widths)} directions beyond d_max = {d_max:g}" if missing else "")


# ---------------------------------------------------------------- offline KD zoo (cooplib.methods.kd)

#: the constant record of the teacher's test top-1 in a student's run (cooplib.methods.kd)
TEACHER_TOP1 = "last/train/test_top1/teacher"


def kd_table(finals: pd.DataFrame, pure: str = "student", head: str = "net", which: str = "last") -> pd.DataFrame:
    """Method x dataset: the student's test top-1 mean [95% t-interval] over seeds, its
    difference to the pure student paired by seed with the verdict, the teacher's top-1
    (mean over the teachers the seeds distilled from), and training seconds per run.
    One teacher per student seed is assumed (teacher assignment `same` or `matched`)."""
    column = f"{which}/test/{head}/top1"
    rows = []
    for (dataset, method), g in finals.groupby(["dataset", "method"], sort=False):
        n, mean, low, high = t_interval(g[column])
        row = {"dataset": dataset, "method": method, "seeds": n,
               "student top-1 % [95% CI]": f"{mean:.2f}" + (f" [{low:.2f}, {high:.2f}]" if n > 1 else "")}
        if method != pure:
            v = compare(finals[finals["dataset"] == dataset], pure, method, column, by="method",
                        claim=f"{method} better than the pure student ({dataset})")
            row.update({"vs pure student [95% CI]": v.interval, "verdict": v.status})
        else:
            row.update({"vs pure student [95% CI]": "", "verdict": ""})
        teacher = g[TEACHER_TOP1].mean() if TEACHER_TOP1 in g and g[TEACHER_TOP1].notna().any() else float("nan")
        row["teacher top-1 %"] = "" if math.isnan(teacher) else f"{teacher:.2f}"
        row["train s / run"] = f"{g['seconds'].mean():.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def kd_verdicts(finals: pd.DataFrame, pure: str = "student", head: str = "net", which: str = "last") -> list[Verdict]:
    """"<method> better than the pure student" per dataset, paired by seed."""
    column = f"{which}/test/{head}/top1"
    return [compare(finals[finals["dataset"] == d], pure, m, column, by="method", claim=f"{m} better than the pure student ({d})")
            for d in finals["dataset"].unique() for m in finals[finals["dataset"] == d]["method"].unique() if m != pure]


def teacher_confound(crossed: pd.DataFrame, head: str = "net", which: str = "last") -> tuple[pd.DataFrame, list[Verdict]]:
    """Students of every seed against teachers of every seed (`teacher_seed` column):
    the top-1 matrix (rows student seed, columns teacher seed, plus each teacher's own
    top-1) and, for each teacher seed after the first, the verdict on "teacher seed t
    gives better students than teacher seed t0", paired by student seed. A resolved
    teacher effect is what the `matched` design folds into its "seed variance"."""
    column = f"{which}/test/{head}/top1"
    matrix = crossed.pivot_table(index="seed", columns="teacher_seed", values=column)
    matrix.index.name, matrix.columns.name = "student seed", "teacher seed"
    teachers = crossed.groupby("teacher_seed")[TEACHER_TOP1].first()
    matrix.loc["teacher's own top-1"] = teachers
    t0 = matrix.columns[0]
    verdicts = [compare(crossed.rename(columns={"teacher_seed": "teacher"}), t0, t, column, by="teacher",
                        claim=f"teacher seed {t} gives better students than teacher seed {t0}")
                for t in matrix.columns[1:]]
    return matrix.round(2), verdicts
