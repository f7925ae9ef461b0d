"""Tables and sentences computed from run frames (`runs.load_runs`), for the notebooks.

Nothing here is typed by hand: every number comes from a run directory.
"""
from __future__ import annotations

import pandas as pd


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
        f"best/test/{head}/top1": "top-1 (best)",
        "best_epoch": "best epoch",
        "params": "params",
        "test_flops": "FLOPs (test)",
        "seconds": "train s",
    }
    present = {k: v for k, v in cols.items() if k in frame.columns}
    out = frame[list(present)].rename(columns=present)
    return out.sort_values(["method", "model", "seed"]).reset_index(drop=True)


def summary_table(frame: pd.DataFrame, head: str = "net", by: tuple[str, ...] = ("method", "model", "dataset")) -> pd.DataFrame:
    """Mean ± std over seeds of last/best test top-1 and top-5, one row per group."""
    rows = []
    for key, g in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["seeds"] = len(g)
        row["top-1 % (last)"] = mean_std(g[f"last/test/{head}/top1"])
        row["top-5 % (last)"] = mean_std(g[f"last/test/{head}/top5"])
        row["top-1 % (best epoch)"] = mean_std(g[f"best/test/{head}/top1"])
        row["error % (last)"] = mean_std(100 - g[f"last/test/{head}/top1"])
        if "params" in g:
            row["params (M)"] = f"{g['params'].iloc[0] / 1e6:.3f}"
            row["TeCost FLOPs"] = f"{g['test_flops'].iloc[0]:.3e}"
        rows.append(row)
    return pd.DataFrame(rows)


def head_values(frame: pd.DataFrame, which: str = "last", split: str = "test", stat: str = "top1") -> pd.DataFrame:
    """Long form of every head's metric: one row per (run, head) with the run's columns."""
    prefix, suffix = f"{which}/{split}/", f"/{stat}"
    cols = [c for c in frame.columns if c.startswith(prefix) and c.endswith(suffix)]
    id_cols = [c for c in frame.columns if not c.startswith(("last/", "best/"))]
    out = frame.melt(id_vars=id_cols, value_vars=cols, var_name="head", value_name=stat).dropna(subset=[stat])
    out["head"] = out["head"].str[len(prefix) : -len(suffix)]
    return out


def dml_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """DML vs independent peers, per number of peers K (mean ± std over seeds).

    Peer accuracy is the mean over the K peers of each run, then over seeds; the
    ensemble is the `average` head; the gain is DML minus independent at the same K.
    """
    rows = []
    for (k, mutual), g in frame.groupby(["method_args.peers", "method_args.mutual"]):
        peers = [f"peer{i}" for i in range(int(k))]

        def per_run(stat, which="last", split="test"):
            return g[[f"{which}/{split}/{p}/{stat}" for p in peers]].mean(axis=1)

        rows.append({
            "peers": int(k), "training": "DML" if mutual else "independent", "seeds": len(g),
            "_top1": per_run("top1").mean(),
            "peer top-1 %": mean_std(per_run("top1")),
            "peer top-5 %": mean_std(per_run("top5")),
            "peer train top-1 %": mean_std(g[[f"last/train/{p}/top1" for p in peers]].mean(axis=1)),
            "peer train CE": mean_std(g[[f"last/train/ce/{p}" for p in peers]].mean(axis=1), 4),
            "ensemble top-1 %": mean_std(g["last/test/average/top1"]),
        })
    out = pd.DataFrame(rows).sort_values(["peers", "training"], ascending=[True, False])
    indep = out[out["training"] == "independent"].set_index("peers")["_top1"]
    out["gain over independent"] = [
        f"{r['_top1'] - indep[r['peers']]:+.2f}" if r["training"] == "DML" and r["peers"] in indep else ""
        for _, r in out.iterrows()
    ]
    return out.drop(columns="_top1").reset_index(drop=True)
