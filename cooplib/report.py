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


def _branch_heads(frame: pd.DataFrame) -> list[str]:
    heads = sorted({c.split("/")[2] for c in frame.columns if c.startswith("last/test/branch") and c.endswith("/top1")},
                   key=lambda h: int(h[len("branch"):]))
    return heads


def one_summary(frame: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """ONE-style results per variant: branches (mean ± std over branches and seeds),
    branch 0 (the deployed net), ONE-E (gate ensemble) and the plain average, top-1 and top-5.

    A baseline run appears with its single head `net` as its only "branch".
    """
    rows = []
    for label, g in frame.groupby(by, sort=False):
        heads = [h for h in _branch_heads(g) if g[f"last/test/{h}/top1"].notna().any()] or ["net"]
        row = {by: label, "branches": len(heads), "seeds": len(g)}
        for stat in ("top1", "top5"):
            values = pd.concat([g[f"last/test/{h}/top1" if stat == "top1" else f"last/test/{h}/top5"] for h in heads])
            row[f"branch {stat} %"] = mean_std(values)
            row[f"branch0 {stat} %"] = mean_std(g[f"last/test/{heads[0]}/{stat}"])
            for head, name in (("ensemble", "ONE-E"), ("average", "average")):
                col = f"last/test/{head}/{stat}"
                row[f"{name} {stat} %"] = mean_std(g[col]) if col in g and g[col].notna().any() else ""
        row["branch0 error %"] = mean_std(100 - g[f"last/test/{heads[0]}/top1"])
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(frame: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Error of the deployed net with training and test cost (ONE paper Tables 3/4)."""
    rows = []
    for label, g in frame.groupby(by, sort=False):
        head = (_branch_heads(g) or ["net"])[0]
        if f"last/test/{head}/top1" not in g or g[f"last/test/{head}/top1"].isna().all():
            head = "net"
        rows.append({
            by: label, "error % (deployed)": mean_std(100 - g[f"last/test/{head}/top1"]),
            "params train": int(g["params"].iloc[0]), "TrCost FLOPs": f"{g['train_flops'].iloc[0]:.3e}",
            "params test": int(g["test_params"].iloc[0]), "TeCost FLOPs": f"{g['test_flops'].iloc[0]:.3e}",
        })
    return pd.DataFrame(rows)


def paired_difference(frame: pd.DataFrame, a: str, b: str, column: str, by: str = "label", confidence: float = 0.95) -> dict:
    """b - a paired by seed: mean, a t confidence interval, and the per-seed values."""
    from scipy import stats

    left = frame[frame[by] == a].set_index("seed")[column]
    right = frame[frame[by] == b].set_index("seed")[column]
    seeds = sorted(set(left.index) & set(right.index))
    diff = (right.loc[seeds] - left.loc[seeds]).astype(float)
    n = len(diff)
    mean = float(diff.mean()) if n else float("nan")
    if n >= 2:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * diff.std(ddof=1) / n**0.5)
    else:
        half = float("nan")
    return {"a": a, "b": b, "metric": column, "n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half,
            "confidence": confidence, "per_seed": dict(zip(seeds, diff.tolist()))}


def error(frame: pd.DataFrame, label: str, head: str, by: str = "label") -> str:
    """Test top-1 error (%) of `head`, last epoch, mean ± std over the runs labelled `label`."""
    return mean_std(100 - frame.loc[frame[by] == label, f"last/test/{head}/top1"])
