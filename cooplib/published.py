"""Numbers published in the papers, for side-by-side tables (never our results).

Sources: Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
NeurIPS 2018 (ONE); Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018
(DML). All CIFAR-100 unless stated; top-1 error / accuracy in percent. See
REFERENCES.md of the project for the recipes behind them.
"""
from __future__ import annotations

import pandas as pd

#: ONE paper, CIFAR-100 top-1 error (%), Tables 1-6.
ONE_CIFAR100_ERROR = {
    "resnet32": {"baseline": 31.18, "ONE": 26.61, "ONE-E": 24.63, "KD (ResNet-110 teacher)": 28.83, "DML": 29.03},
    "resnet110": {"baseline": 25.33, "ONE": 21.62, "ONE-E": 21.03, "DML": 24.10},
}
#: ONE paper Table 6: branch count 1..5, ResNet-32, CIFAR-100 top-1 error (%).
ONE_BRANCH_COUNT_ERROR = {1: 31.18, 2: 27.38, 3: 26.68, 4: 26.58, 5: 26.52}
#: ONE paper Table 5 ablation, ResNet-110, CIFAR-100 top-1 error (%).
ONE_ABLATION_ERROR = {
    "full": 21.62,
    "w/o online distillation": 24.73,
    "w/o sharing layers": 22.45,
    "w/o gating (average teacher)": 22.26,
}
#: ONE paper Tables 3/4: cost in FLOPs (2 x MACs) at 32x32.
ONE_COST_FLOPS = {"resnet32": {"TeCost": 1.38e8, "TrCost ONE-3": 2.28e8}, "resnet110_bottleneck": {"TrCost ONE-3": 8.29e8}}

#: DML paper (as summarised in REFERENCES.md): CIFAR-100 ResNet-32, 200 epochs, cosine;
#: mean top-1 accuracy (%) of the peers at the final epoch, by number of peers K.
DML_CIFAR100_TOP1 = {"independent": 71.19, 2: 72.12, 3: 72.64, 4: 73.21, 5: 72.61, 6: 73.12, 7: 72.93}


def dml_table() -> pd.DataFrame:
    rows = [{"peers": k, "published DML top-1 %": v, "published gain": round(v - DML_CIFAR100_TOP1["independent"], 2)}
            for k, v in DML_CIFAR100_TOP1.items() if k != "independent"]
    return pd.DataFrame(rows)
