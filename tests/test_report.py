"""Tables computed from run frames: the statistics by hand."""
import pandas as pd
import pytest

from cooplib import report


def test_mean_std_uses_sample_std():
    assert report.mean_std(pd.Series([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert report.mean_std(pd.Series([5.0])) == "5.00"


def test_paired_difference_pairs_by_seed_with_t_interval():
    frame = pd.DataFrame({
        "label": ["a"] * 3 + ["b"] * 4,
        "seed": [0, 1, 2, 2, 1, 0, 9],  # seed 9 has no partner and is ignored
        "acc": [90.0, 91.0, 92.0, 95.0, 93.0, 91.0, 0.0],
    })
    d = report.paired_difference(frame, "a", "b", "acc")
    assert d["n"] == 3 and d["per_seed"] == {0: 1.0, 1: 2.0, 2: 3.0}
    half = 4.302652729911275 * 1.0 / 3**0.5  # t(0.975, 2) * sd / sqrt(n)
    assert d["mean"] == pytest.approx(2.0) and d["ci_low"] == pytest.approx(2 - half) and d["ci_high"] == pytest.approx(2 + half)


def test_dml_summary_gain_is_dml_minus_independent_at_same_k():
    rows = []
    for mutual, accs in ((False, (90.0, 92.0)), (True, (93.0, 95.0))):
        rows.append({"method_args.peers": 2, "method_args.mutual": mutual, "seed": 0,
                     "last/test/peer0/top1": accs[0], "last/test/peer1/top1": accs[1],
                     "last/test/peer0/top5": 99.0, "last/test/peer1/top5": 99.0,
                     "last/train/peer0/top1": 99.0, "last/train/peer1/top1": 99.0,
                     "last/train/ce/peer0": 0.1, "last/train/ce/peer1": 0.1, "last/test/average/top1": 96.0})
    out = report.dml_summary(pd.DataFrame(rows)).set_index("training")
    assert out.loc["independent", "peer top-1 %"] == "91.00" and out.loc["DML", "peer top-1 %"] == "94.00"
    assert out.loc["DML", "gain over independent"] == "+3.00"
