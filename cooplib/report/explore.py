"""Explore a chapter's runs: pick variants, heads and seeds; curves and a table follow.

In JupyterLab `explorer(finals, metrics)` is a small ipywidgets panel. In the HTML book
(and wherever no kernel can answer a widget: papermill, nbval, `COOPLIB_STATIC=1`) the
same call draws its static view: the first selection (every variant and head unless
the notebook names some), all seeds, which is what the panel shows before anything is
picked.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from . import plots, present
from ..engine.runs import long_metrics

STATS = {"test top-1 %": ("test", "top1"), "test loss": ("test", "loss"), "train top-1 %": ("train", "top1")}


def _long(metrics: pd.DataFrame, by: str, split: str, stat: str) -> pd.DataFrame:
    df = long_metrics(metrics, split, stat).dropna(subset=[stat])
    return df[[by, "seed", "head", "epoch", stat]]


def curves(metrics: pd.DataFrame, by: str = "label", variants=None, heads=None, seeds=None,
           stat: str = "test top-1 %"):
    """One line per (variant, head): mean over the chosen seeds, band = sd."""
    split, key = STATS[stat]
    df = _long(metrics, by, split, key)
    for column, chosen in ((by, variants), ("head", heads), ("seed", seeds)):
        if chosen:
            df = df[df[column].isin(list(chosen))]
    if df.empty:
        raise ValueError("nothing to draw for this choice of variants, heads and seeds")
    df = df.assign(line=df[by].astype(str) + " · " + df["head"])
    legend_rows = -(-df["line"].nunique() // 2)
    plots._style()
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 3.4 + 0.2 * legend_rows), constrained_layout=True)
    sns.lineplot(data=df, x="epoch", y=key, hue="line", ax=ax, errorbar="sd")
    ax.set(ylabel=stat, title=f"{stat} per epoch (mean ± sd over seeds {', '.join(str(int(s)) for s in sorted(df['seed'].unique()))})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small")
    return fig


def last_epoch_table(metrics: pd.DataFrame, by: str = "label", variants=None, heads=None, seeds=None,
                     stat: str = "test top-1 %") -> pd.DataFrame:
    """The chosen statistic at each run's last epoch: mean ± sd over the chosen seeds."""
    from .tables import mean_std

    split, key = STATS[stat]
    df = _long(metrics, by, split, key)
    df = df[df["epoch"] == df.groupby([by, "seed"])["epoch"].transform("max")]
    for column, chosen in ((by, variants), ("head", heads), ("seed", seeds)):
        if chosen:
            df = df[df[column].isin(list(chosen))]
    return (df.groupby([by, "head"], sort=False)
              .agg(**{f"{stat} (last epoch)": (key, mean_std), "seeds": ("seed", lambda s: ", ".join(str(int(x)) for x in sorted(set(s))))})
              .reset_index())


def static() -> bool:
    return os.environ.get("COOPLIB_STATIC") == "1"


def explorer(metrics: pd.DataFrame, by: str = "label", stat: str = "test top-1 %", variants=None, heads=None):
    """The panel in JupyterLab, the static view elsewhere (see the module doc).

    `variants` and `heads` are the first selection (default: all); the panel offers all."""
    from IPython.display import display

    all_variants = list(dict.fromkeys(metrics[by]))
    all_heads = sorted(set(long_metrics(metrics, "test", "top1").dropna(subset=["top1"])["head"]))
    seeds = sorted(set(metrics["seed"]))
    variants = [v for v in (variants or all_variants) if v in all_variants]
    heads = [h for h in (heads or all_heads) if h in all_heads]
    if static():
        fig = curves(metrics, by, variants, heads, stat=stat)
        display(fig)
        plt.close(fig)
        return present.table(last_epoch_table(metrics, by, variants, heads, stat=stat))

    import ipywidgets as w

    pick_variants = w.SelectMultiple(options=all_variants, value=tuple(variants), description="variants",
                                     rows=min(8, len(all_variants)))
    pick_heads = w.SelectMultiple(options=all_heads, value=tuple(heads), description="heads", rows=min(8, len(all_heads)))
    pick_seeds = w.SelectMultiple(options=seeds, value=tuple(seeds), description="seeds", rows=min(8, len(seeds)))
    pick_stat = w.Dropdown(options=list(STATS), value=stat, description="statistic")
    out = w.Output()

    def redraw(*_):
        out.clear_output(wait=True)
        with out:
            choice = dict(variants=pick_variants.value, heads=pick_heads.value, seeds=pick_seeds.value, stat=pick_stat.value)
            try:
                fig = curves(metrics, by, **choice)
            except ValueError as exc:
                print(exc)
                return
            display(fig)
            plt.close(fig)
            display(present.table(last_epoch_table(metrics, by, **choice)))

    for widget in (pick_variants, pick_heads, pick_seeds, pick_stat):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick_variants, pick_heads, pick_seeds]), pick_stat, out])
