"""Numbers published elsewhere, for side-by-side tables (never our results).

Every entry is a `Published`: the value, its spread when the source gives one, how many
runs it summarises, which epoch it reports (best or last), and its exact source, so a
table can say what it is comparing with. All CIFAR-100 unless stated; percent.

Sources:

- ONE paper: Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
  NeurIPS 2018 (arXiv:1806.04606). Its reference code (Lan1991Xu/ONE_NeurIPS2018)
  keeps the epoch with the best test accuracy, so its numbers are best-epoch numbers.
  It prints "± std" for some entries without saying over how many runs; entries
  without a spread are as printed. Page numbers were not recorded.
- DML reference package: yukiharada1228/deep-mutual-learning, file
  examples/CIFAR100/README.md: single runs (seed 42), final epoch, that package's own
  recipe (ResNet-32, 200 epochs, batch 64, SGD Nesterov lr 0.1, weight decay 5e-4,
  cosine). These are *not* the DML paper's numbers.
- RepDistiller README (HobbitLong/RepDistiller), "Benchmark Results on CIFAR-100", table 1
  (teacher and student of the same architectural type), column resnet56 -> resnet20: the
  benchmark of Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020
  (Table 1), which introduced CRD. Last epoch of that repository's recipe, no spread given.
- MCL-OKD README (winycg/MCL-OKD, README.md, commit 0661c436): CIFAR-100 top-1 error of
  the baseline and five online methods it implements on one recipe (DML, CL-ILR, ONE,
  OKDDip and its own MCL-OKD), one peer and, in parentheses there, the ensemble of all
  peers. Neither the number of runs nor the epoch (best or last) is stated.
- The DML paper (Zhang, Xiang, Hospedales, Lu, CVPR 2018) itself: its CIFAR-100 table
  is not among the sources available to this project, so no number here comes from
  it. The published DML numbers we use are the ONE paper's (Table 2), which reran DML.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

ONE_PAPER = "ONE paper (Lan et al., NeurIPS 2018)"
DML_PACKAGE = "deep-mutual-learning package, examples/CIFAR100/README.md"


@dataclass(frozen=True)
class Published:
    """One published number and where exactly it comes from."""

    value: float
    metric: str  # "top-1 error %", "top-1 %", "FLOPs"
    source: str  # paper or repository file, with the table
    runs: str  # "single run (seed 42)", "mean ± std, runs not stated", "as printed"
    epoch: str  # "best" (selected on test) or "last" (final epoch); "" for costs
    std: float | None = None

    @property
    def text(self) -> str:
        return f"{self.value:g}" if self.std is None else f"{self.value:g} ± {self.std:g}"

    @property
    def label(self) -> str:
        epoch = {"best": "best epoch", "last": "final epoch", "": ""}[self.epoch]
        return "; ".join(p for p in (self.source, self.runs, epoch) if p)


def _one(table: str, value: float, std: float | None = None, metric: str = "top-1 error %") -> Published:
    runs = "mean ± std, number of runs not stated" if std is not None else "as printed, no spread given"
    return Published(value, metric, f"{ONE_PAPER}, {table}", runs, "best" if metric != "FLOPs" else "", std)


#: ONE paper, CIFAR-100 top-1 error (%): baseline and ONE (Table 1), KD and DML rerun by
#: the ONE authors (Table 2), ONE-E (Table 3).
ONE_CIFAR100_ERROR = {
    "resnet32": {
        "baseline": _one("Table 1", 31.18), "ONE": _one("Table 1", 26.61, 0.06), "ONE-E": _one("Table 3", 24.63),
        "KD (ResNet-110 teacher)": _one("Table 2", 28.83), "DML": _one("Table 2", 29.03, 0.22),
    },
    "resnet110": {
        "baseline": _one("Table 1", 25.33), "ONE": _one("Table 1", 21.62, 0.26), "ONE-E": _one("Table 3", 21.03),
        "DML": _one("Table 2", 24.10, 0.72),
    },
}
#: ONE paper Table 6: branch count 1..5, ResNet-32, CIFAR-100 top-1 error (%).
ONE_BRANCH_COUNT_ERROR = {m: _one("Table 6 (ResNet-32)", v)
                          for m, v in {1: 31.18, 2: 27.38, 3: 26.68, 4: 26.58, 5: 26.52}.items()}
#: ONE paper Table 5 ablation, ResNet-110, CIFAR-100 top-1 error (%).
ONE_ABLATION_ERROR = {k: _one("Table 5 (ResNet-110)", v) for k, v in {
    "full": 21.62,
    "w/o online distillation": 24.73,
    "w/o sharing layers": 22.45,
    "w/o gating (average teacher)": 22.26,
}.items()}
#: ONE paper Tables 3/4: cost in FLOPs (2 x MACs) at 32x32.
ONE_COST_FLOPS = {
    "resnet32": {"TeCost": _one("Tables 3/4", 1.38e8, metric="FLOPs"), "TrCost ONE-3": _one("Tables 3/4", 2.28e8, metric="FLOPs")},
    "resnet110_bottleneck": {"TrCost ONE-3": _one("Tables 3/4", 8.29e8, metric="FLOPs")},
}

#: DML reference package README (not the DML paper): CIFAR-100 ResNet-32, mean top-1 (%)
#: of the peers at the final epoch, one run (seed 42) per K; "independent" = one net alone.
DML_PACKAGE_CIFAR100_TOP1 = {
    k: Published(v, "top-1 %", DML_PACKAGE, "single run (seed 42)", "last")
    for k, v in {"independent": 71.19, 2: 72.12, 3: 72.64, 4: 73.21, 5: 72.61, 6: 73.12, 7: 72.93}.items()
}


MCL_OKD = "MCL-OKD README (winycg/MCL-OKD, README.md), CIFAR-100 table"


def _mcl(value: float) -> Published:
    return Published(value, "top-1 error %", MCL_OKD, "runs not stated", "")


#: MCL-OKD README: CIFAR-100 top-1 error (%) per backbone and method, (one peer, ensemble
#: of all peers); the baseline is one network alone.
MCL_OKD_CIFAR100_ERROR = {
    backbone: {method: (_mcl(one), _mcl(ens) if ens is not None else None) for method, (one, ens) in rows.items()}
    for backbone, rows in {
        "resnet32": {"baseline": (28.91, None), "DML": (24.92, 22.97), "CL-ILR": (25.40, 24.03), "ONE": (25.74, 24.03),
                     "OKDDip": (25.76, 23.73), "MCL-OKD": (24.52, 22.00)},
        "resnet110": {"baseline": (23.62, None), "DML": (21.51, 19.12), "CL-ILR": (21.16, 18.66), "ONE": (22.19, 20.23),
                      "OKDDip": (21.05, 19.40), "MCL-OKD": (20.39, 18.29)},
    }.items()
}


def mcl_okd_table(backbone: str = "resnet32") -> pd.DataFrame:
    """The MCL-OKD README's row for `backbone`: one peer and the ensemble, per method."""
    if backbone not in MCL_OKD_CIFAR100_ERROR:
        raise KeyError(f"the MCL-OKD README table has no {backbone!r} row here; rows: {sorted(MCL_OKD_CIFAR100_ERROR)}")
    rows = [{"method": m, "published: error % (one peer)": f"{one.value:.2f}",
             "published: error % (ensemble)": f"{ens.value:.2f}" if ens is not None else "—", "source": one.label}
            for m, (one, ens) in MCL_OKD_CIFAR100_ERROR[backbone].items()]
    return pd.DataFrame(rows)


def table(entries: dict) -> pd.DataFrame:
    """Entries {name: Published} as rows: the name (first column "result", not an index, as
    `present.table` shows no index), value (± std), metric, and the source label."""
    return pd.DataFrame([{"result": name, "published": e.text, "metric": e.metric, "source": e.label}
                         for name, e in entries.items()], columns=["result", "published", "metric", "source"])


def dml_table() -> pd.DataFrame:
    """The DML package README's peer top-1 per K and its gain over one net alone (single runs)."""
    alone = DML_PACKAGE_CIFAR100_TOP1["independent"]
    rows = [{"peers": k, "package top-1 % (DML)": e.value,
             "package gain over one net": f"{e.value - alone.value:+.2f} (single runs, no interval)", "source": e.label}
            for k, e in DML_PACKAGE_CIFAR100_TOP1.items() if k != "independent"]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- offline KD zoo (cooplib.methods.kd)

REPDISTILLER = ("RepDistiller README (HobbitLong/RepDistiller), CIFAR-100 table 1 (same architectural type), "
                "resnet56 -> resnet20 = Tian et al., \"Contrastive Representation Distillation\", ICLR 2020, Table 1")
SEED_EXPERIMENT = "the public seed experiment of cooplib issue #11 (teacher ResNet-112 -> student ResNet-56)"

#: RepDistiller README, CIFAR-100 top-1 (%), teacher resnet56 -> student resnet20 (the pure
#: student "baseline" 69.06); its standard recipe: SGD 0.05, 240 epochs, lr x0.1 at 150/180/210,
#: batch 64, wd 5e-4; last epoch (book/methods.md). Not the ResNet-112 -> ResNet-56 pair.
REPDISTILLER_CIFAR100_TOP1 = {
    k: Published(v, "top-1 %", REPDISTILLER, "as printed, no spread given", "last")
    for k, v in {"student": 69.06, "kd": 70.66, "fitnet": 69.21, "at": 70.55, "rkd": 69.61, "pkt": 70.34,
                 "ft": 69.84, "nst": 69.60, "crd": 71.16}.items()
}
#: The seed experiment's RKD runs, which collapsed (a distance term normalised by a detached
#: mean and an fp16 loss scaler that underflowed, so the student never updated): the
#: failures this chapter's RKD must not reproduce, not numbers to match.
SEED_EXPERIMENT_RKD_TOP1 = {
    d: Published(v, "top-1 %", SEED_EXPERIMENT, "collapsed runs (failure, not a reference)", "last")
    for d, v in {"cifar10": 18.13, "cifar100": 1.00}.items()
}


def kd_published_table() -> pd.DataFrame:
    """RepDistiller's CIFAR-100 rows and the seed experiment's collapsed RKD, each labelled."""
    rows = {f"RepDistiller {k} (CIFAR-100)": e for k, e in REPDISTILLER_CIFAR100_TOP1.items()}
    rows.update({f"seed experiment rkd ({d}, collapsed)": e for d, e in SEED_EXPERIMENT_RKD_TOP1.items()})
    return table(rows)
