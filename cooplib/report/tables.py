"""Chapter tables and verdicts computed from run frames (`runs.load_runs`), for the notebooks.

Nothing here is typed by hand: every number comes from a run directory. Every comparison
goes through `stats.decide` (`cooplib.base.stats`, with `t_interval`, `Verdict` and
`CONFIDENCE`), which turns a set of paired differences into a `Verdict`: a t confidence
interval and a wording chosen from it, so no chapter states a direction that its
interval does not carry. `compare` also labels the verdict with the run-configuration
fields in which the two arms differ beyond the treatment (`stats.confounds`), and
`underfit_caveats` / `convergence_table` say when an arm had not fitted its training
data. The rules (wording, zero spread, confounds, underfitting) are in `cooplib.base.stats`.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..base import stats
from ..base.stats import CONFIDENCE, Verdict, decide, t_interval

#: the `best/...` columns: the epoch with the highest test top-1 of the run's primary head,
#: i.e. selected on the test set (as the ONE reference code does) — an optimistic number
BEST_LABEL = "best epoch, selected on test"


# ---------------------------------------------------------------- paired comparisons

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


def arm_configs(frame: pd.DataFrame, label, by: str = "label") -> list[dict]:
    """The run-configuration columns (`stats.is_config_field`) of the rows of one arm, as dicts."""
    cols = [c for c in frame.columns if stats.is_config_field(c)]
    return frame.loc[frame[by] == label, cols].to_dict("records")


def default_treatment(by: str) -> tuple[str, ...]:
    """What defines the arms when the caller does not say: the `by` column when it is a
    config field (a method with its arguments), else the method and its arguments."""
    if stats.is_config_field(by):
        return (by, "method_args") if by == "method" else (by,)
    return ("method", "method_args")


def compare(frame: pd.DataFrame, a: str, b: str, column: str, by: str = "label", claim: str | None = None,
            unit: str = "top-1 points", confidence: float = CONFIDENCE, *,
            treatment: str | Iterable[str] | None = None, floor: float | None = None,
            caveats: Iterable[str] = ()) -> Verdict:
    """Verdict on "b better than a" in `column` (higher is better), paired by seed.

    The verdict is labelled with the config columns of `frame` in which the rows of the
    two arms differ, other than `treatment` (fields or prefixes; default
    `default_treatment`). `floor` and `caveats` go to `stats.decide`.
    """
    d = paired_difference(frame, a, b, column, by, confidence)
    treatment = default_treatment(by) if treatment is None else treatment
    confounds = stats.confounds(arm_configs(frame, a, by), arm_configs(frame, b, by), treatment)
    return decide(d["per_seed"].values(), claim or f"{b} better than {a}", unit, "seeds", confidence,
                  floor=floor, confounds=confounds, caveats=caveats)


def status_text(v: Verdict) -> str:
    """The verdict's status for a table cell, with its confounds when it has any."""
    return v.status + (f" (confounded by {', '.join(stats.confound_labels(v.confounds))})" if v.confounds else "")


def verdict_table(verdicts: Iterable[Verdict]) -> pd.DataFrame:
    """One row per verdict: the claim, n, unit, mean difference [interval], verdict, and
    (when any verdict has them) its confounds and caveats."""
    verdicts = list(verdicts)
    out = pd.DataFrame([{"claim": v.claim, "n": f"{v.n} {v.replicates}", "unit": v.unit,
                         f"difference [{v.confidence:.0%} CI]": v.interval, "verdict": v.status} for v in verdicts])
    if any(v.confounds for v in verdicts):
        out["confounded by"] = [", ".join(stats.confound_labels(v.confounds)) for v in verdicts]
    if any(v.caveats for v in verdicts):
        out["caveats"] = ["; ".join(v.caveats) for v in verdicts]
    return out


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
        out[int(k)] = compare(acc, "independent", "DML", "_acc", by="_arm", treatment=("method_args.mutual",),
                              claim=f"K = {int(k)}: DML peers better than independent peers ({which} epoch)")
    return out


STUDENT_HEAD = re.compile(r"(branch|peer)\d+|net")


def with_online_columns(finals: pd.DataFrame) -> pd.DataFrame:
    """`finals` plus, per run, "deployed top-1" (its `deployed` head), "students top-1" (the
    mean over its student heads: branches, peers or the one net) and "ensemble top-1"
    (the plain `average` of the students' logits where the method records it, else its
    own `ensemble` head, e.g. PCL's; NaN without either): one column per quantity
    whatever each method calls its heads, so they compare."""
    out = finals.copy()
    heads = {c[len("last/test/"):-len("/top1")] for c in finals.columns
             if c.startswith("last/test/") and c.endswith("/top1")}
    students = sorted(h for h in heads if STUDENT_HEAD.fullmatch(h))
    out["deployed top-1"] = [row.get(f"last/test/{row['deployed']}/top1", np.nan) for _, row in finals.iterrows()]
    out["students top-1"] = finals[[f"last/test/{h}/top1" for h in students]].mean(axis=1, skipna=True)
    ens = pd.Series(np.nan, index=finals.index)
    for head in ("average", "ensemble"):
        if f"last/test/{head}/top1" in finals:
            ens = ens.fillna(finals[f"last/test/{head}/top1"])
    out["ensemble top-1"] = ens
    return out


def online_summary(finals: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """One row per method: deployed network, mean student and ensemble test top-1 (last
    epoch, mean ± sd over seeds), parameters and FLOPs of training and of the deployed
    network, and the training time per run (seconds, this machine)."""
    f = with_online_columns(finals)
    rows = []
    for label, g in f.groupby(by, sort=False):
        rows.append({by: label, "deployed head": g["deployed"].iloc[0], "deployed top-1 %": mean_std(g["deployed top-1"]),
                     "students top-1 %": mean_std(g["students top-1"]), "ensemble top-1 %": mean_std(g["ensemble top-1"]),
                     "params train": int(g["params"].iloc[0]), "TrCost FLOPs": f"{g['train_flops'].iloc[0]:.3e}",
                     "TeCost FLOPs": f"{g['test_flops'].iloc[0]:.3e}", "train s / run": f"{g['seconds'].mean():.0f}"})
    return pd.DataFrame(rows)


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
            "verdict": status_text(gain) if gain else "",
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


def one_verdicts(frame: pd.DataFrame, baseline: str, one: str, which: str = "last", by: str = "label",
                 treatment: str | Iterable[str] = ("method", "method_args"), caveats: Iterable[str] = ()) -> list[Verdict]:
    """ONE against the baseline, paired by seed: branch 0 (deployed), mean branch, ONE-E.
    The arms differ by `treatment` (the method and its arguments, e.g. the branch count);
    any other config difference labels the verdicts."""
    heads = _branch_heads(frame[frame[by] == one].dropna(axis=1, how="all"))
    base = deployed_top1(frame, which)
    acc = frame.assign(
        _deployed=deployed_top1(frame, which),
        _mean_branch=frame[[f"{which}/test/{h}/top1" for h in heads]].mean(axis=1).fillna(base),
        _ensemble=frame[f"{which}/test/ensemble/top1"].fillna(base),
    )
    names = {"_deployed": "branch 0 (deployed, same test cost)", "_mean_branch": "mean branch",
             "_ensemble": "ONE-E (gate ensemble)"}
    return [compare(acc, baseline, one, col, by, claim=f"{one} {name} better than {baseline} ({which} epoch)",
                    treatment=treatment, caveats=caveats)
            for col, name in names.items()]


def pairwise_verdicts(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]], columns: Mapping[str, str],
                      by: str = "label", treatment: str | Iterable[str] | None = None) -> list[Verdict]:
    """"b better than a" for every (a, b) pair and column {column: name}, paired by seed;
    `treatment` as in `compare` (default: the method and its arguments)."""
    return [compare(frame, a, b, col, by, claim=f"{b} better than {a} ({name})", treatment=treatment)
            for a, b in pairs for col, name in columns.items()]


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
    `epoch` ("best" or "last") and both are shown with the source's label. The name is
    the first column, "result" (not an index: `present.table` shows no index).
    """
    out = []
    for name, (label, head, entry) in rows.items():
        out.append({"result": name, "ours: error %": error(frame, label, head, by, entry.epoch),
                    "ours: epoch": BEST_LABEL if entry.epoch == "best" else "last",
                    "published": entry.text, "published: source": entry.label})
    return pd.DataFrame(out, columns=["result", "ours: error %", "ours: epoch", "published", "published: source"])


# ---------------------------------------------------------------- convergence (underfitting)

def _run_head(row: Mapping, head: str | Mapping[str, str] | None, by: str) -> str:
    """The head whose convergence is read: `head`, or {label: head}, else the run's deployed head."""
    if isinstance(head, str):
        return head
    if isinstance(head, Mapping) and row.get(by) in head:
        return head[row[by]]
    deployed = row.get("deployed")
    return deployed if isinstance(deployed, str) and deployed else "net"


def arm_convergence(finals: pd.DataFrame, metrics: pd.DataFrame, label, by: str = "label",
                    head: str | Mapping[str, str] | None = None, last: int | None = None) -> list[stats.Convergence]:
    """`stats.convergence` of every run of one arm (runs matched by the `run` column)."""
    out = []
    for row in finals[finals[by] == label].to_dict("records"):
        m = metrics[metrics["run"] == row["run"]].drop_duplicates("epoch")  # a run shared by several labels
        if len(m):
            out.append(stats.convergence(m, _run_head(row, head, by), last=last))
    return out


def _mean_convergence(convs: Sequence[stats.Convergence]) -> dict:
    return {"train_error": float(np.mean([c.train_error for c in convs])),
            "test_error": float(np.mean([c.test_error for c in convs])),
            "slope": float(np.nanmean([c.slope for c in convs])) if any(math.isfinite(c.slope) for c in convs) else math.nan,
            "last": max(c.last for c in convs)}


def convergence_table(finals: pd.DataFrame, metrics: pd.DataFrame, by: str = "label",
                      head: str | Mapping[str, str] | None = None, last: int | None = None, **thresholds) -> pd.DataFrame:
    """One row per arm: final train and test error % (mean ± std over seeds), their gap, the
    slope of the training error over the last epochs (points/epoch, negative = still
    falling), and the underfitting caveat (`stats.underfit`, `thresholds` passed on).

    `finals`: `runs.load_runs` rows (`run`, `by`, `deployed`); `metrics`: `runs.load_metrics`
    rows (`run`, `epoch`, `train/<head>/top1`, `test/<head>/top1`). `head`: a head, a
    {label: head} mapping, or None for each run's deployed head."""
    rows = []
    for label in finals[by].drop_duplicates():
        convs = arm_convergence(finals, metrics, label, by, head, last)
        if not convs:
            rows.append({by: label, "runs": 0})
            continue
        mean = _mean_convergence(convs)
        rows.append({
            by: label, "runs": len(convs), "head": ",".join(sorted({c.head for c in convs})),
            "train error % (last)": mean_std(pd.Series([c.train_error for c in convs])),
            "test error % (last)": mean_std(pd.Series([c.test_error for c in convs])),
            "gap (test - train)": mean_std(pd.Series([c.gap for c in convs])),
            "train error slope (points/epoch)": mean_std(pd.Series([c.slope for c in convs])),
            "slope over": f"last {mean['last']} of {max(c.epochs for c in convs)} epochs",
            "caveat": stats.underfit(mean, **thresholds) or "",
        })
    return pd.DataFrame(rows)


def underfit_caveats(finals: pd.DataFrame, metrics: pd.DataFrame, labels: Iterable, head: str | Mapping[str, str] | None = None,
                     by: str = "label", last: int | None = None, **thresholds) -> list[str]:
    """The `stats.underfit` caveat of each arm in `labels` (on its mean over seeds), named
    by the arm, for `compare(..., caveats=...)`; arms that fitted give none."""
    out = []
    for label in labels:
        convs = arm_convergence(finals, metrics, label, by, head, last)
        caveat = stats.underfit(_mean_convergence(convs), name=str(label), **thresholds) if convs else None
        if caveat:
            out.append(caveat)
    return out


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
#: a KD method against the pure student: the method and its arguments (teacher, alpha, T...)
KD_TREATMENT = ("method", "method_args")


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
                        claim=f"{method} better than the pure student ({dataset})", treatment=KD_TREATMENT)
            row.update({"vs pure student [95% CI]": v.interval, "verdict": status_text(v)})
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
    return [compare(finals[finals["dataset"] == d], pure, m, column, by="method", treatment=KD_TREATMENT,
                    claim=f"{m} better than the pure student ({d})")
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
                        treatment=("method_args.teacher",), claim=f"teacher seed {t} gives better students than teacher seed {t0}")
                for t in matrix.columns[1:]]
    return matrix.round(2), verdicts
