"""Explore a chapter's runs: pick variants, heads and seeds; curves and a table follow.

In JupyterLab `explorer(metrics)` is a small ipywidgets panel. In the HTML book (and
wherever no kernel can answer a widget: papermill, nbval, `COOPLIB_STATIC=1`) the same
call draws its static view: the first selection (every variant and head unless the
notebook names some), all seeds, which is what the panel shows before anything is
picked. Curves are faceted so that no panel holds more than `MAX_LINES` lines: one panel
per variant (lines = heads), or per head (lines = variants) when a variant has more heads.

A saved notebook reopened without its widget state (an untrusted notebook, GitHub,
nbviewer, a frontend without ipywidgets) cannot draw the panel; the panel's output
therefore also carries the static view as HTML, shown there instead of the widget's
`VBox(children=...)` text.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from . import plots, present
from ..engine.runs import long_metrics

STATS = {"test top-1 %": ("test", "top1"), "test loss": ("test", "loss"), "train top-1 %": ("train", "top1")}
MAX_LINES = 6  # lines per panel of the curves


def _long(metrics: pd.DataFrame, by: str, split: str, stat: str) -> pd.DataFrame:
    df = long_metrics(metrics, split, stat).dropna(subset=[stat])
    return df[[by, "seed", "head", "epoch", stat]]


def facets(df: pd.DataFrame, by: str) -> tuple[str | None, str]:
    """(facet column, line column): one panel if it holds at most `MAX_LINES` lines, else a
    panel per variant (lines = heads), else per head (lines = variants) when only that keeps
    the panels at `MAX_LINES`."""
    n_variants, n_heads = df[by].nunique(), df["head"].nunique()
    if n_variants * n_heads <= MAX_LINES:
        return None, "line"
    return ("head", by) if n_heads > MAX_LINES >= n_variants else (by, "head")


def curves(metrics: pd.DataFrame, by: str = "label", variants=None, heads=None, seeds=None,
           stat: str = "test top-1 %"):
    """Mean over the chosen seeds per (variant, head), band = sd; faceted (see `facets`)."""
    split, key = STATS[stat]
    df = _long(metrics, by, split, key)
    for column, chosen in ((by, variants), ("head", heads), ("seed", seeds)):
        if chosen:
            df = df[df[column].isin(list(chosen))]
    if df.empty:
        raise ValueError("nothing to draw for this choice of variants, heads and seeds")
    df = df.assign(line=df[by].astype(str) + " · " + df["head"])
    facet, hue = facets(df, by)
    panels = list(dict.fromkeys(df[facet])) if facet else [None]
    cols = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // cols)
    legend_rows = -(-df[hue].nunique() // 3)
    plots._style()
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, (3.4 if rows == 1 else 2.6) * rows + 0.2 * legend_rows),
                             sharex=True, sharey=True, squeeze=False, constrained_layout=True)
    palette = dict(zip(dict.fromkeys(df[hue]), sns.color_palette(n_colors=df[hue].nunique())))
    for ax, panel in zip(axes.flat, panels):
        part = df if panel is None else df[df[facet] == panel]
        sns.lineplot(data=part, x="epoch", y=key, hue=hue, palette=palette, ax=ax, errorbar="sd", legend=False)
        ax.set(ylabel=stat, title=None if panel is None else f"{facet}: {panel}")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, label=str(name)) for name, c in palette.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small", frameon=False)
    seeds_drawn = ", ".join(str(int(s)) for s in sorted(df["seed"].unique()))
    fig.suptitle(f"{stat} per epoch (mean ± sd over seeds {seeds_drawn})", fontsize="medium")
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
    return Panel(w.VBox([w.HBox([pick_variants, pick_heads, pick_seeds]), pick_stat, out]),
                 lambda: static_html(metrics, by, variants, heads, stat))


def static_html(metrics: pd.DataFrame, by: str, variants, heads, stat: str) -> str:
    """The static view as one HTML fragment (the figure as an inline PNG, then the table)."""
    import base64
    import io

    fig = curves(metrics, by, variants, heads, stat=stat)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    return (f'<p>The explorer panel needs a live kernel with ipywidgets; this is its first view.</p>'
            f'<img alt="{stat} per epoch" src="data:image/png;base64,{png}"/>'
            + present.table(last_epoch_table(metrics, by, variants, heads, stat=stat))._repr_html_())


class Panel:
    """The widget, displayed with a static fallback for frontends that cannot draw it."""

    def __init__(self, widget, fallback_html):
        self.widget, self._fallback_html = widget, fallback_html

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle = dict(bundle)
        bundle["text/html"] = self._fallback_html()
        bundle["text/plain"] = "explorer panel (needs a live kernel with ipywidgets)"
        return bundle
