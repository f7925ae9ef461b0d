"""Tables, intervals and verdicts computed from run frames: the statistics by hand."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cooplib import report


def test_mean_std_uses_sample_std():
    assert report.mean_std(pd.Series([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert report.mean_std(pd.Series([5.0])) == "5.00"


def test_t_interval_matches_scipy():
    x = [0.3, -0.1, 0.9, 0.4]
    n, mean, low, high = report.t_interval(x, 0.9)
    ref = stats.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert n == 4 and mean == pytest.approx(np.mean(x)) and (low, high) == pytest.approx(ref)
    assert math.isnan(report.t_interval([1.0])[2]) and report.t_interval([])[0] == 0


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
    v = report.compare(frame, "a", "b", "acc")
    assert v.status == "not resolved" and (v.ci_low, v.ci_high) == pytest.approx((2 - half, 2 + half))  # 2 - 2.48 < 0


@pytest.mark.parametrize("diffs, status, words", [
    ([1.0, 1.2, 0.9], "supported", "supported at 3 seeds"),
    ([-1.0, -1.2, -0.9], "contradicted", "contradicted at 3 seeds"),
    ([1.0, -0.5, 0.2], "not resolved", "not resolved at 3 seeds"),
    ([0.0, 0.0], "not resolved", "not resolved at 2 seeds"),  # a zero-width interval at 0
    ([2.0], "undecidable", "cannot be decided at 1 seed"),
])
def test_verdict_wording_follows_the_interval(diffs, status, words):
    v = report.decide(diffs, "B better than A")
    assert v.status == status and words in v.sentence and v.sentence.startswith("B better than A: ")
    if len(diffs) >= 2:
        assert "95% CI [" in v.sentence and "[" in v.interval
    else:
        assert "no interval" in v.interval


def test_small_differences_keep_two_significant_digits():
    v = report.decide([-0.004, -0.001, 0.002], "x")
    assert v.interval == "-0.0010 [-0.0085, +0.0065]" and "CI [-0.0085, +0.0065]" in v.sentence
    assert report.decide([1.0, 3.0], "x").interval.startswith("+2.00 [")


def test_verdict_without_pairs_and_other_replicates():
    assert "cannot be decided" in report.decide([], "x").sentence
    v = report.decide([0.2, 0.3, 0.25, 0.1, 0.3], "ONE flatter than DML", unit="area", replicates="directions")
    assert "supported at 5 directions" in v.sentence and v.as_dict()["status"] == "supported"
    table = report.verdict_table([v])
    assert table.loc[0, "verdict"] == "supported" and table.loc[0, "n"] == "5 directions"


def _dml_row(k, mutual, seed, accs):
    row = {"method_args.peers": k, "method_args.mutual": mutual, "seed": seed,
           "last/test/average/top1": 96.0}
    for i, a in enumerate(accs):
        row |= {f"last/test/peer{i}/top1": a, f"best/test/peer{i}/top1": a + 1, f"last/test/peer{i}/top5": 99.0,
                f"last/train/peer{i}/top1": 99.0, f"last/train/ce/peer{i}": 0.1}
    return row


def test_dml_summary_gain_is_dml_minus_independent_paired_by_seed():
    rows = [_dml_row(2, False, 0, (90.0, 92.0)), _dml_row(2, True, 0, (93.0, 95.0)),
            _dml_row(2, False, 1, (90.0, 90.0)), _dml_row(2, True, 1, (92.0, 92.0))]
    out = report.dml_summary(pd.DataFrame(rows)).set_index("training")
    assert out.loc["independent", "peer top-1 % (last)"] == "90.50 ± 0.71"
    assert out.loc["DML", f"peer top-1 % ({report.BEST_LABEL})"] == "94.00 ± 1.41"
    half = stats.t.ppf(0.975, 1) * np.std([3.0, 2.0], ddof=1) / 2**0.5
    assert out.loc["DML", "gain over independent [95% CI]"] == f"+2.50 [{2.5 - half:+.2f}, {2.5 + half:+.2f}]"
    assert out.loc["DML", "verdict"] == "not resolved" and out.loc["independent", "verdict"] == ""
    one_seed = report.dml_verdicts(pd.DataFrame(rows[:2]))[2]
    assert one_seed.status == "undecidable" and one_seed.mean == pytest.approx(3.0)


def test_one_verdicts_compare_deployed_branch_and_ensemble():
    rows = []
    for seed, (base, b0, b1, ens) in enumerate([(90, 91, 93, 94), (91, 92, 92, 95), (90, 92, 90, 93)]):
        rows.append({"label": "baseline", "seed": seed, "last/test/net/top1": base})
        rows.append({"label": "ONE", "seed": seed, "last/test/branch0/top1": b0, "last/test/branch1/top1": b1,
                     "last/test/ensemble/top1": ens})
    deployed, mean_branch, ensemble = report.one_verdicts(pd.DataFrame(rows), "baseline", "ONE")
    assert deployed.differences == (1.0, 1.0, 2.0) and mean_branch.differences == (2.0, 1.0, 1.0)
    assert ensemble.differences == (4.0, 4.0, 3.0) and ensemble.status == "supported"


def test_lr_drops_and_run_facts_come_from_the_records():
    metrics = pd.DataFrame({"run": ["r0"] * 4 + ["r1"] * 4, "epoch": [1, 2, 3, 4] * 2,
                            "lr": [0.1, 0.1, 0.01, 0.001, 0.1, 0.01, 0.01, 0.001]})
    assert report.lr_drop_epochs(metrics) == {"r0": [3, 4], "r1": [2, 4]}
    finals = pd.DataFrame({"label": ["x", "x"], "run": ["r0", "r1"], "run_dir": ["/a/r0", "/a/r1"], "seed": [1, 0],
                           "epochs_done": [4, 4], "params": [10, 10], "train_flops": [2e6, 2e6], "test_flops": [1e6, 1e6]})
    facts = report.run_facts(finals, metrics).iloc[0]
    assert facts["runs"] == 2 and facts["seeds"] == "0,1" and facts["lr drops at epochs"] == "[2, 4] | [3, 4]"
    assert facts["last lr"] == "0.001"
    shared = report.shared_runs(pd.DataFrame({"label": ["a", "b", "c"], "run_dir": ["/r", "/r", "/s"]}))
    assert shared.to_dict("list") == {"same runs": ["a = b"], "runs": [1]}


def test_evidence_round_trip_and_tolerance(capsys):
    report.print_evidence({"acc": pd.Series([90.0, 92.0], index=[0, 1])})
    line = capsys.readouterr().out
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": ["noise\n", line]}]}]}
    ref = report.read_evidence(nb)
    assert ref == {"acc": {"0": 90.0, "1": 92.0}}
    # sd = sqrt(2), n = 2: z * sd * sqrt(2 / n) = 4 * sqrt(2)
    assert report.evidence_tolerance(ref) == pytest.approx(4 * 2**0.5)
    assert report.evidence_tolerance({"acc": {"0": 90.0, "1": 90.0}}, floor=0.5) == 0.5
    assert report.evidence_mismatches(ref, {"acc": {"0": 91.0, "1": 93.0}}, 1.5) == []
    assert "moved by +2.00" in report.evidence_mismatches(ref, {"acc": {"0": 92.0, "1": 94.0}}, 1.5)[0]
    assert "seeds differ" in report.evidence_mismatches(ref, {"acc": {"0": 90.0}}, 1.5)[0]
    with pytest.raises(ValueError):
        report.read_evidence({"cells": []})


def _curves():
    rows = []
    for s, k in (("vanilla", 1.0), ("DML", 0.8), ("ONE", 0.9)):
        for i in range(4):
            for d in (0.0, 1.0, 2.0):
                rows.append({"solution": s, "direction": i, "distance": d, "train_ce": 0.1 + k * d * (1 + 0.1 * i),
                             "train_error": 0.0, "test_ce": 0.0, "test_error": 5.0 + d})
    return pd.DataFrame(rows)

