"""Are the branches of a multi-branch network real members? Diagnostics and their tables.

Measured every epoch on the test split (``metrics.evaluate`` calls the Learner's
``diagnostics(heads)``; ONE's uses `cooplib.methods.one.branch_sums`) and stored in the run record
as ``test/<term>/<head>``:

- ``test/gate/branch{i}``: the mean gate weight of branch i (weights sum to 1);
- ``test/disagree/branch{i}-branch{j}``: percent of test images on which the top-1
  classes of branches i and j differ;
- ``test/kl/branch{i}-branch{j}``: the symmetrised KL divergence between their
  predictive distributions at temperature 1, ``(KL(p_i || p_j) + KL(p_j || p_i)) / 2``,
  mean over images (nats).

A duplicated branch that stays a clone of its source shows a disagreement and a KL near
0 with it; a branch the gate never lets in shows a gate weight near 0. The ensemble gain
(teacher top-1 minus the best single branch's) is read from the heads' top-1 columns.
``summary`` / ``per_epoch`` turn run records into tables (`cooplib.report.plots` draws them per arm).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

_PAIR = re.compile(r"^test/(disagree|kl)/branch(\d+)-branch(\d+)$")
_GATE = re.compile(r"^test/gate/branch(\d+)$")
_TOP1 = re.compile(r"^test/branch(\d+)/top1$")


# ---------------------------------------------------------------- from run records


def _branches(row: pd.Series | dict) -> list[int]:
    return sorted(int(m.group(1)) for k in row.keys() if (m := _TOP1.match(k)) and _notna(row[k]))


def _notna(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def describe(record: dict, old: int) -> dict[str, float]:
    """One epoch record (or ``evaluate`` output prefixed ``test/``) -> the chapter's
    quantities, with branches ``0..old-1`` the original members and the rest new:

    - ``gate old`` / ``gate new``: summed gate weight of the old / new branches; ``gate
      new min``: the smallest new branch's weight (NaN without a gate record);
    - ``disagree old-old`` / ``disagree new-any``: mean pairwise top-1 disagreement (%)
      over pairs of old branches / over pairs with at least one new branch; ``kl ...``
      the same for the symmetrised KL; ``disagree new-source``: over each new branch
      and the old branch ``j % old`` (a duplicate's source);
    - ``ensemble gain``: teacher top-1 minus the best branch's top-1 (points).
    """
    branches = _branches(record)
    m = len(branches)
    out: dict[str, float] = {"branches": float(m)}
    gates = {int(g.group(1)): record[k] for k in record if (g := _GATE.match(k)) and _notna(record[k])}
    new = [i for i in branches if i >= old]
    for i in sorted(gates):
        out[f"gate branch{i}"] = float(gates[i])
    if gates:
        out["gate old"] = float(sum(v for i, v in gates.items() if i < old))
        out["gate new"] = float(sum(v for i, v in gates.items() if i >= old)) if new else np.nan
        out["gate new min"] = float(min(gates[i] for i in new)) if new else np.nan
    for term in ("disagree", "kl"):
        pairs = {(int(p.group(2)), int(p.group(3))): record[k]
                 for k in record if (p := _PAIR.match(k)) and p.group(1) == term and _notna(record[k])}
        if not pairs:
            continue
        oo = [v for (i, j), v in pairs.items() if i < old and j < old]
        na = [v for (i, j), v in pairs.items() if i >= old or j >= old]
        ns = [pairs[(j % old, j)] for j in new if (j % old, j) in pairs]
        out[f"{term} old-old"] = float(np.mean(oo)) if oo else np.nan
        out[f"{term} new-any"] = float(np.mean(na)) if na else np.nan
        out[f"{term} new-source"] = float(np.mean(ns)) if ns else np.nan
    tops = [record[f"test/branch{i}/top1"] for i in branches]
    if tops and _notna(record.get("test/ensemble/top1")):
        out["ensemble gain"] = float(record["test/ensemble/top1"] - max(tops))
    return out


COLUMNS = ("gate old", "gate new", "gate new min", "disagree old-old", "disagree new-any", "disagree new-source",
           "kl old-old", "kl new-any", "kl new-source", "ensemble gain")


def per_epoch(metrics: pd.DataFrame, old: int, parent: str | None = None, continued: tuple[str, ...] = (),
              starts: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per (label, seed, epoch) with ``describe``'s quantities and a ``phase``.

    The arms in ``continued`` started from the run labelled ``parent``: their epochs are
    counted from the parent's start (phase "after"; the parent's own rows are "before"),
    so the expansion sits at the parent's last epoch. Other arms keep their own numbering
    (phase "own"). ``starts`` ({label: ``experiment.evaluate_initial`` output at the
    moment of expansion}) adds a row per label at the expansion epoch (phase "start").
    """
    rows = []
    parent_epochs = int(metrics.loc[metrics["label"] == parent, "epoch"].max()) if parent is not None else 0
    for (label, seed), g in metrics.groupby(["label", "seed"], sort=False):
        warm = label in continued
        phase = "after" if warm else ("before" if label == parent else "own")
        for rec in g.to_dict("records"):
            rows.append({"label": label, "seed": seed, "epoch": rec["epoch"] + (parent_epochs if warm else 0),
                         "phase": phase, **describe(rec, old)})
    for label, rec in (starts or {}).items():
        rows.append({"label": label, "seed": None, "epoch": parent_epochs, "phase": "start",
                     **describe(_prefixed(rec), old)})
    return pd.DataFrame(rows)


def _prefixed(rec: dict) -> dict:
    return {k if k.startswith("test/") else f"test/{k}": v for k, v in rec.items()}


def last_epoch(metrics: pd.DataFrame, old: int) -> pd.DataFrame:
    """``describe`` at each run's last epoch: one row per (label, seed)."""
    last = metrics.sort_values("epoch").groupby(["label", "seed"], sort=False).tail(1)
    return pd.DataFrame([{"label": r["label"], "seed": r["seed"], **describe(r, old)} for r in last.to_dict("records")])


def summary(metrics: pd.DataFrame, old: int, starts: dict[str, dict] | None = None) -> pd.DataFrame:
    """Per label: ``describe`` at the last epoch, mean over seeds (``seeds`` counts them),
    plus the same quantities at the moment of expansion where ``starts`` has the label."""
    last = metrics.sort_values("epoch").groupby(["label", "seed"], sort=False).tail(1)
    rows = []
    for label, g in last.groupby("label", sort=False):
        d = pd.DataFrame([describe(r, old) for r in g.to_dict("records")])
        row = {"label": label, "seeds": len(g), **d.mean(numeric_only=True).to_dict()}
        rows.append(row)
    out = pd.DataFrame(rows)
    cols = ["label", "branches", "seeds", *[c for c in COLUMNS if c in out.columns]]
    out = out[cols]
    if starts:
        start = pd.DataFrame([{"label": k, **describe(_prefixed(r), old)}
                              for k, r in starts.items()]).set_index("label")
        for c in ("gate new", "disagree new-source", "disagree new-any"):
            if c in start.columns:
                out[f"{c} (at expansion)"] = out["label"].map(start[c])
    return out


def arm_curve(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """The label's rows of ``per_epoch``'s output, preceded by the parent's ("before") rows
    when it continued from it, averaged over seeds per epoch."""
    g = frame[frame["label"] == label]
    if (g["phase"] == "after").any():
        g = pd.concat([frame[frame["phase"] == "before"], g])
    return g.groupby("epoch").mean(numeric_only=True).sort_index()


__all__ = ["describe", "per_epoch", "summary", "last_epoch", "arm_curve", "COLUMNS"]
