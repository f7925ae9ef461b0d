"""Seaborn figures shared by the notebooks; every figure is drawn from run files.

Figures are sized for the book's text column (`PAGE_WIDTH` inches at 100 dpi, so they
are shown at their own size, text readable); legends list only what is drawn, and
facet and legend titles use readable names, not column keys.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..analysis import diversity
from ..engine.runs import long_metrics

PAGE_WIDTH = 7.4  # inches: at 100 dpi the figure fits the book's ~760 px text column
DPI = 100


def _style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85,
                  rc={"figure.dpi": DPI, "savefig.dpi": DPI, "legend.frameon": False})


def readable(name: str) -> str:
    """A column key as a reader's label: `method_args.peers` -> `peers`."""
    return str(name).removeprefix("method_args.").removeprefix("dataset_args.").replace("_", " ")


def _drawn(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows with a value, so legends never list a head without data."""
    return df.dropna(subset=[value])


def training_curves(metrics: pd.DataFrame, heads: list[str] | None = None, hue: str = "head", title: str | None = None):
    """Training loss and test top-1 against epoch (mean and band: sd over seeds).

    `metrics` is `runs.load_metrics(...)`; `heads` selects heads (default: all);
    `hue` is the column that tells lines apart ("head", "label", ...).
    """
    if metrics.empty:
        raise ValueError("no epoch records to plot: did the runs train at least one epoch?")
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.3), constrained_layout=True)
    loss_hue = hue if hue != "head" and hue in metrics.columns else None
    sns.lineplot(data=metrics, x="epoch", y="train/loss", hue=loss_hue, ax=axes[0], errorbar="sd", legend=False)
    axes[0].set(title="training loss (all terms)", ylabel="loss", yscale="log")
    df = long_metrics(metrics, "test", "top1")
    if heads is not None:
        df = df[df["head"].isin(heads)]
    sns.lineplot(data=_drawn(df, "top1"), x="epoch", y="top1", hue=hue, ax=axes[1], errorbar="sd")
    axes[1].set(title="test top-1 accuracy", ylabel="%")
    axes[1].legend(title=readable(hue), fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def learning_rate(metrics: pd.DataFrame):
    """The learning rate the optimizer applied in each epoch (as logged from it)."""
    _style()
    hue = "label" if "label" in metrics.columns else "run"
    shown = metrics[hue].nunique() <= 12  # a legend only where it can be read
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH * (1.0 if shown else 0.6), 2.8), constrained_layout=True)
    sns.lineplot(data=metrics, x="epoch", y="lr", hue=hue, ax=ax, legend=shown, errorbar=None)
    ax.set(yscale="log", title="learning rate applied" + ("" if shown else " (one line per run)"), ylabel="lr")
    if shown:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="x-small", title=None)
    return fig


def head_curves(metrics: pd.DataFrame, heads: list[str] | None = None, col: str | None = None,
                style: str | None = None, stat: str = "top1", split: str = "test", title: str | None = None,
                style_order: list | None = None):
    """Per-head curves (e.g. every peer or branch) against epoch, faceted by `col`.

    `style` separates variants within a facet (e.g. `method_args.mutual`); bands are
    the standard deviation over seeds.
    """
    df = _drawn(long_metrics(metrics, split, stat), stat)
    if heads is not None:
        df = df[df["head"].isin(heads)]
    if df.empty:
        raise ValueError(f"no {split}/<head>/{stat} columns for heads {heads}")
    _style()
    renamed = {c: readable(c) for c in (col, style) if c}
    df = df.rename(columns=renamed)
    col, style = renamed.get(col, col), renamed.get(style, style)
    ncols = min(2, df[col].nunique()) if col else 1
    grid = sns.relplot(data=df, x="epoch", y=stat, hue="head", col=col, col_wrap=ncols if col else None, style=style,
                       style_order=style_order, kind="line", errorbar="sd", height=(PAGE_WIDTH - 1.4) / ncols / 1.3,
                       aspect=1.3, facet_kws={"sharey": True})
    grid.set_ylabels(f"{split} top-{stat[-1]} %" if stat.startswith("top") else stat)
    if col:
        grid.set_titles("{col_var} = {col_name}")
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid.figure


def perturbation(curves: pd.DataFrame, title: str | None = None, x_label: str = "distance d along a random unit direction",
                 rise: float | None = 1.0):
    """Train CE and test error against the perturbation distance (ONE paper, Figure 3).

    One thin line per random direction and a bold line for their mean, per solution. With
    `rise` (nats), the train-CE panel marks each solution's CE at d = 0 plus `rise` (the
    level whose crossing defines the width) and is scaled to show that crossing rather
    than the blow-up far beyond it.
    """
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.3), constrained_layout=True)
    palette = dict(zip(curves["solution"].unique(), sns.color_palette(n_colors=curves["solution"].nunique())))
    for ax, (col, label) in zip(axes, (("train_ce", "train cross-entropy"), ("test_error", "test error %"))):
        for solution, g in curves.groupby("solution", sort=False):
            for _, d in g.groupby("direction"):
                ax.plot(d["distance"], d[col], color=palette[solution], alpha=0.25, lw=0.8)
            mean = g.groupby("distance")[col].mean()
            ax.plot(mean.index, mean.values, color=palette[solution], lw=2.5, label=f"{solution} (mean)")
            if col == "train_ce" and rise is not None and len(mean):
                ax.axhline(float(mean.iloc[0]) + rise, color=palette[solution], ls="--", lw=1)
        ax.set(xlabel=x_label, ylabel=label, title=label)
    if rise is not None and len(curves):
        start = curves[curves["distance"] == curves["distance"].min()].groupby("solution")["train_ce"].mean()
        axes[0].set_ylim(0, float(start.max()) + 3 * rise)
        axes[0].set_title(f"train cross-entropy (dashed: d = 0 + {rise:g} nat)")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return fig


def cka_heatmaps(matrices: dict, title: str | None = None, vmin: float = 0.0, vmax: float = 1.0,
                 label: str = "debiased linear CKA"):
    """One CKA heatmap per entry {name: DataFrame(rows: teacher stages, cols: student stages)}."""
    import math

    n = len(matrices)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    _style()
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 2.5 * rows), constrained_layout=True, squeeze=False)
    for ax, (name, m) in zip(axes.flat, matrices.items()):
        sns.heatmap(m.astype(float), ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=True, fmt=".2f", cbar=False,
                    annot_kws={"size": 7})
        ax.set(title=name, xlabel="student stage", ylabel="teacher stage")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelrotation=0, labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    scale = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(vmin, vmax))
    fig.colorbar(scale, ax=axes, shrink=0.8, label=label)
    if title:
        fig.suptitle(title)
    return fig


def spectra(frame: pd.DataFrame, title: str | None = None, k: int = 20):
    """PCA explained-variance ratio (log scale) of the first `k` components per network,
    one panel per stage; `frame` has columns stage, network, component, ratio."""
    _style()
    g = sns.relplot(data=frame[frame["component"] <= k], x="component", y="ratio", hue="network", col="stage",
                    col_wrap=2, kind="line", height=2.4, aspect=1.25, facet_kws={"sharey": False})
    g.set(yscale="log")
    if title:
        g.figure.suptitle(title, y=1.04)
    return g.figure


# ---------------------------------------------------------------- branch expansion (cooplib.analysis.diversity)

def _expansion_line(frame: pd.DataFrame, ax) -> None:
    start = frame.loc[frame["phase"] == "start", "epoch"]
    if len(start):
        ax.axvline(float(start.iloc[0]), color="grey", lw=0.8)


def branch_diversity(frame: pd.DataFrame, labels: list[str] | None = None, title: str = ""):
    """Every arm, mean over seeds: summed gate weight of the new branches, pairwise
    disagreement (solid: pairs with a new branch, dashed: pairs of old branches) and the
    ensemble gain; an arm that started from the parent is drawn from the parent's first
    epoch, the vertical line marks the expansion. ``frame`` is `diversity.per_epoch`'s output."""
    labels = labels or [x for x in dict.fromkeys(frame["label"])]
    _style()
    fig, grid = plt.subplots(2, 2, figsize=(PAGE_WIDTH, 6.6))
    axes, legend_ax = [grid[0, 0], grid[0, 1], grid[1, 0]], grid[1, 1]
    cmap = plt.get_cmap("tab20")
    for k, label in enumerate(labels):
        g, c = diversity.arm_curve(frame, label), cmap(k % 20)
        if "gate new" in g and g["gate new"].notna().any():
            axes[0].plot(g.index, g["gate new"], color=c, marker=".", label=label)
        if "disagree new-any" in g and g["disagree new-any"].notna().any():
            axes[1].plot(g.index, g["disagree new-any"], color=c, marker=".")
        if "disagree old-old" in g:
            axes[1].plot(g.index, g["disagree old-old"], color=c, ls="--", alpha=0.7)
        if "ensemble gain" in g:
            axes[2].plot(g.index, g["ensemble gain"], color=c, marker=".", label=label)
    names = ("summed gate weight\nof the new branches", "top-1 disagreement (%), solid: pairs\nwith a new branch, "
             "dashed: old pairs", "ensemble top-1 minus\nthe best branch (points)")
    for ax, name in zip(axes, names):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch (from the parent's start)")
        _expansion_line(frame, ax)
    axes[2].axhline(0, color="black", lw=0.5)
    legend_ax.axis("off")
    legend_ax.legend(*axes[2].get_legend_handles_labels(), fontsize=7, loc="center", title="arm (grey line: expansion)",
                     title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gate_weights(frame: pd.DataFrame, labels: list[str] | None = None, old: int = 3, cols: int = 3, title: str = ""):
    """One panel per arm: the mean gate weight of every branch per epoch (old branches
    solid, new ones dashed), mean over seeds; the vertical line marks the expansion."""
    labels = labels or list(dict.fromkeys(frame["label"]))
    rows = -(-len(labels) // cols)
    _style()
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 2.3 * rows), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, label in zip(axes.flat, labels):
        g = diversity.arm_curve(frame, label)
        for c in [c for c in g.columns if c.startswith("gate branch")]:
            i = int(c[len("gate branch"):])
            ax.plot(g.index, g[c], color=cmap(i % 10), ls="-" if i < old else "--", marker=".", label=f"branch {i}")
        _expansion_line(frame, ax)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(0, 1)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean gate weight")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
