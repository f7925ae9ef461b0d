"""Chapter tables, intervals and verdicts computed from run frames: the statistics by hand."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cooplib.base import stats as st
from cooplib.report import tables


def test_mean_std_uses_sample_std():
    assert tables.mean_std(pd.Series([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert tables.mean_std(pd.Series([5.0])) == "5.00"


def test_t_interval_matches_scipy():
    x = [0.3, -0.1, 0.9, 0.4]
    n, mean, low, high = st.t_interval(x, 0.9)
    ref = stats.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert n == 4 and mean == pytest.approx(np.mean(x)) and (low, high) == pytest.approx(ref)
    assert math.isnan(st.t_interval([1.0])[2]) and st.t_interval([])[0] == 0


def test_paired_difference_pairs_by_seed_with_t_interval():
    frame = pd.DataFrame({
        "label": ["a"] * 3 + ["b"] * 4,
        "seed": [0, 1, 2, 2, 1, 0, 9],  # seed 9 has no partner and is ignored
        "acc": [90.0, 91.0, 92.0, 95.0, 93.0, 91.0, 0.0],
    })
    d = tables.paired_difference(frame, "a", "b", "acc")
    assert d["n"] == 3 and d["per_seed"] == {0: 1.0, 1: 2.0, 2: 3.0}
    half = 4.302652729911275 * 1.0 / 3**0.5  # t(0.975, 2) * sd / sqrt(n)
    assert d["mean"] == pytest.approx(2.0) and d["ci_low"] == pytest.approx(2 - half) and d["ci_high"] == pytest.approx(2 + half)
    v = tables.compare(frame, "a", "b", "acc")
    assert v.status == "not resolved" and (v.ci_low, v.ci_high) == pytest.approx((2 - half, 2 + half))  # 2 - 2.48 < 0


@pytest.mark.parametrize("diffs, status, words", [
    ([1.0, 1.2, 0.9], "supported", "supported at 3 seeds"),
    ([-1.0, -1.2, -0.9], "contradicted", "contradicted at 3 seeds"),
    ([1.0, -0.5, 0.2], "not resolved", "not resolved at 3 seeds"),
    ([0.0, 0.0], "undecidable", "cannot be decided at 2 seeds: the replicates agree exactly"),  # zero spread
    ([-0.56, -0.56], "undecidable", "every difference is -0.56"),  # not "contradicted" on a zero-width interval
    ([2.0], "undecidable", "cannot be decided at 1 seed"),
])
def test_verdict_wording_follows_the_interval(diffs, status, words):
    v = st.decide(diffs, "B better than A")
    assert v.status == status and words in v.sentence and v.sentence.startswith("B better than A: ")
    if len(set(diffs)) >= 2:
        assert "95% CI [" in v.sentence and "[" in v.interval
    else:
        assert "no interval" in v.interval


def test_small_differences_keep_two_significant_digits():
    v = st.decide([-0.004, -0.001, 0.002], "x")
    assert v.interval == "-0.0010 [-0.0085, +0.0065]" and "CI [-0.0085, +0.0065]" in v.sentence
    assert st.decide([1.0, 3.0], "x").interval.startswith("+2.00 [")


def test_verdict_without_pairs_and_other_replicates():
    assert "cannot be decided" in st.decide([], "x").sentence
    v = st.decide([0.2, 0.3, 0.25, 0.1, 0.3], "ONE flatter than DML", unit="area", replicates="directions")
    assert "supported at 5 directions" in v.sentence and v.as_dict()["status"] == "supported"
    table = tables.verdict_table([v])
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
    out = tables.dml_summary(pd.DataFrame(rows)).set_index("training")
    assert out.loc["independent", "peer top-1 % (last)"] == "90.50 ± 0.71"
    assert out.loc["DML", f"peer top-1 % ({tables.BEST_LABEL})"] == "94.00 ± 1.41"
    half = stats.t.ppf(0.975, 1) * np.std([3.0, 2.0], ddof=1) / 2**0.5
    assert out.loc["DML", "gain over independent [95% CI]"] == f"+2.50 [{2.5 - half:+.2f}, {2.5 + half:+.2f}]"
    assert out.loc["DML", "verdict"] == "not resolved" and out.loc["independent", "verdict"] == ""
    one_seed = tables.dml_verdicts(pd.DataFrame(rows[:2]))[2]
    assert one_seed.status == "undecidable" and one_seed.mean == pytest.approx(3.0)


def test_one_verdicts_compare_deployed_branch_and_ensemble():
    rows = []
    for seed, (base, b0, b1, ens) in enumerate([(90, 91, 93, 94), (91, 92, 92, 95), (90, 92, 90, 93)]):
        rows.append({"label": "baseline", "seed": seed, "last/test/net/top1": base})
        rows.append({"label": "ONE", "seed": seed, "last/test/branch0/top1": b0, "last/test/branch1/top1": b1,
                     "last/test/ensemble/top1": ens})
    deployed, mean_branch, ensemble = tables.one_verdicts(pd.DataFrame(rows), "baseline", "ONE")
    assert deployed.differences == (1.0, 1.0, 2.0) and mean_branch.differences == (2.0, 1.0, 1.0)
    assert ensemble.differences == (4.0, 4.0, 3.0) and ensemble.status == "supported"


def test_lr_drops_and_run_facts_come_from_the_records():
    metrics = pd.DataFrame({"run": ["r0"] * 4 + ["r1"] * 4, "epoch": [1, 2, 3, 4] * 2,
                            "lr": [0.1, 0.1, 0.01, 0.001, 0.1, 0.01, 0.01, 0.001]})
    assert tables.lr_drop_epochs(metrics) == {"r0": [3, 4], "r1": [2, 4]}
    finals = pd.DataFrame({"label": ["x", "x"], "run": ["r0", "r1"], "run_dir": ["/a/r0", "/a/r1"], "seed": [1, 0],
                           "epochs_done": [4, 4], "params": [10, 10], "train_flops": [2e6, 2e6], "test_flops": [1e6, 1e6]})
    facts = tables.run_facts(finals, metrics).iloc[0]
    assert facts["runs"] == 2 and facts["seeds"] == "0,1" and facts["lr drops at epochs"] == "[2, 4] | [3, 4]"
    assert facts["last lr"] == "0.001"
    shared = tables.shared_runs(pd.DataFrame({"label": ["a", "b", "c"], "run_dir": ["/r", "/r", "/s"]}))
    assert shared.to_dict("list") == {"same runs": ["a = b"], "runs": [1]}


def test_evidence_round_trip_and_tolerance(capsys):
    tables.print_evidence({"acc": pd.Series([90.0, 92.0], index=[0, 1])})
    line = capsys.readouterr().out
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": ["noise\n", line]}]}]}
    ref = tables.read_evidence(nb)
    assert ref == {"acc": {"0": 90.0, "1": 92.0}}
    # sd = sqrt(2), n = 2: z * sd * sqrt(2 / n) = 4 * sqrt(2)
    assert tables.evidence_tolerance(ref) == pytest.approx(4 * 2**0.5)
    assert tables.evidence_tolerance({"acc": {"0": 90.0, "1": 90.0}}, floor=0.5) == 0.5
    assert tables.evidence_mismatches(ref, {"acc": {"0": 91.0, "1": 93.0}}, 1.5) == []
    assert "moved by +2.00" in tables.evidence_mismatches(ref, {"acc": {"0": 92.0, "1": 94.0}}, 1.5)[0]
    assert "seeds differ" in tables.evidence_mismatches(ref, {"acc": {"0": 90.0}}, 1.5)[0]
    with pytest.raises(ValueError):
        tables.read_evidence({"cells": []})


def _curves():
    rows = []
    for s, k in (("vanilla", 1.0), ("DML", 0.8), ("ONE", 0.9)):
        for i in range(4):
            for d in (0.0, 1.0, 2.0):
                rows.append({"solution": s, "direction": i, "distance": d, "train_ce": 0.1 + k * d * (1 + 0.1 * i),
                             "train_error": 0.0, "test_ce": 0.0, "test_error": 5.0 + d})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- confounds from the run configs

def _run(label, seed, acc, **config):
    base = {"label": label, "seed": seed, "run": f"{label}-s{seed}", "run_dir": f"/runs/{label}-s{seed}",
            "method": "baseline", "method_args": "{}", "model": "resnet8", "dataset": "fashion-mnist", "lr": 0.1,
            "epochs": 12, "milestones": "[0.5, 0.75]", "train_size": 3000, "init_from": None, "weight_decay": 5e-4,
            "last/test/net/top1": acc, "seconds": 10.0 + seed}
    return base | config


def test_compare_labels_config_differences_beyond_the_treatment():
    rows = [_run("A", s, 90.0 + s) for s in range(3)]
    rows += [_run("B", s, 91.0 + s * 1.1, lr=0.05, epochs=24, method="one",
                  method_args='{"branches": 3}', **{"method_args.branches": 3}) for s in range(3)]
    v = tables.compare(pd.DataFrame(rows), "A", "B", "last/test/net/top1")
    assert v.confounds == ("epochs", "lr") and v.sentence.endswith("; confounded by lr, epochs")
    assert v.as_dict()["confounds"] == ("epochs", "lr")
    # the same arms without the lr/epochs change are only the treatment (method and its arguments)
    rows = [_run("A", s, 90.0 + s) for s in range(3)]
    rows += [_run("B", s, 91.0 + s, method="one", **{"method_args.branches": 3}, seconds=99.0) for s in range(3)]
    v = tables.compare(pd.DataFrame(rows), "A", "B", "last/test/net/top1")
    assert v.confounds == () and "confounded" not in v.sentence
    assert tables.compare(pd.DataFrame(rows), "A", "B", "last/test/net/top1", treatment="method").confounds == (
        "method_args.branches",)
    table = tables.verdict_table([v, tables.compare(pd.DataFrame(rows), "A", "B", "last/test/net/top1", treatment="method")])
    assert list(table["confounded by"]) == ["", "method_args.branches"]


@pytest.mark.parametrize("field, value", [("milestones", "[0.3, 0.6]"), ("train_size", 1000), ("init_from", "/runs/x")])
def test_compare_labels_schedule_data_and_init(field, value):
    rows = [_run("A", s, 90.0 + s) for s in range(2)] + [_run("B", s, 91.0 + s * 2, **{field: value}) for s in range(2)]
    v = tables.compare(pd.DataFrame(rows), "A", "B", "last/test/net/top1")
    assert v.confounds == (field,) and f"({field})" in v.sentence


def test_dml_and_kd_verdicts_differ_only_in_the_method():
    rows = []
    for mutual in (False, True):
        for s in (0, 1):
            r = _dml_row(2, mutual, s, (90.0 + mutual + s, 91.0 + 2 * mutual))
            rows.append(r | {"method": "dml", "method_args": f'{{"mutual": {str(mutual).lower()}, "peers": 2}}',
                             "lr": 0.1, "epochs": 12, "run_dir": f"/r/{mutual}{s}"})
    assert tables.dml_verdicts(pd.DataFrame(rows))[2].confounds == ()
    rows[-1]["epochs"] = 24
    assert tables.dml_verdicts(pd.DataFrame(rows))[2].confounds == ("epochs",)
    assert tables.dml_summary(pd.DataFrame(rows)).set_index("training").loc["DML", "verdict"].endswith("(confounded by epochs)")
    kd = [_run("s", s, 90.0 + s, method="student", dataset="cifar10") for s in range(2)]
    kd += [_run("k", s, 91.0 + s * 0.5, method="kd", dataset="cifar10",
                **{"method_args.teacher": f"/runs/t{s}", "method_args.alpha": 0.5}) for s in range(2)]
    (v,) = tables.kd_verdicts(pd.DataFrame(kd))
    assert v.confounds == () and v.claim == "kd better than the pure student (cifar10)"
    kd[-1]["lr"] = 0.05
    assert tables.kd_verdicts(pd.DataFrame(kd))[0].confounds == ("lr",)


# ---------------------------------------------------------------- convergence

def _finals_and_metrics():
    finals, metrics = [], []
    for label, train_end, test_end, fall in (("fit", 2.0, 12.0, 0.2), ("under", 18.0, 21.0, 0.8)):
        for s in range(2):
            run = f"{label}-s{s}"
            finals.append({"label": label, "run": run, "seed": s, "deployed": "net"})
            for e in range(1, 9):
                train = train_end + (8 - e) * fall + 0.2 * s
                metrics.append({"run": run, "epoch": e, "train/net/top1": 100 - train, "test/net/top1": 100 - test_end - 0.2 * s})
    return pd.DataFrame(finals), pd.DataFrame(metrics)


def test_convergence_table_and_underfit_caveats():
    finals, metrics = _finals_and_metrics()
    t = tables.convergence_table(finals, metrics).set_index("label")
    assert t.loc["fit", "train error % (last)"] == "2.10 ± 0.14" and t.loc["under", "test error % (last)"] == "21.10 ± 0.14"
    assert t.loc["fit", "train error slope (points/epoch)"] == "-0.20 ± 0.00" and t.loc["fit", "slope over"] == "last 2 of 8 epochs"
    assert t.loc["fit", "caveat"] == "" and t.loc["under", "caveat"].startswith("underfit: train error 18.1 % vs test 21.1 %")
    assert "still falling 0.80 points/epoch" in t.loc["under", "caveat"]
    caveats = tables.underfit_caveats(finals, metrics, ["fit", "under"], head="net")
    assert len(caveats) == 1 and caveats[0].endswith("(under)")
    finals["seed"] = [0, 1, 0, 1]
    finals["last/test/net/top1"] = [88.0, 88.2, 79.0, 78.5]
    v = tables.compare(finals, "under", "fit", "last/test/net/top1", caveats=caveats)
    assert caveats[0] in v.sentence and v.caveats == tuple(caveats)


# ---------------------------------------------------------------- beside the published numbers

def test_beside_published_keeps_its_row_names_as_a_column():
    from cooplib.report import published, present

    entry = published.ONE_CIFAR100_ERROR["resnet32"]["baseline"]
    frame = pd.DataFrame({"label": ["baseline"] * 2, "best/test/net/top1": [70.0, 71.0]})
    out = tables.beside_published(frame, {"ResNet-32 baseline": ("baseline", "net", entry)})
    assert list(out.columns)[0] == "result" and out.loc[0, "result"] == "ResNet-32 baseline"
    assert out.loc[0, "ours: error %"] == "29.50 ± 0.71" and out.loc[0, "published"] == "31.18"
    assert "ResNet-32 baseline" in repr(present.table(out))  # the shown table keeps the name
    shown = repr(present.table(published.kd_published_table()))
    assert "RepDistiller pkt (CIFAR-100)" in shown and "RepDistiller crd (CIFAR-100)" in shown


def test_repdistiller_rows_hold_pkt_and_crd_with_their_source():
    from cooplib.report import published

    rows = published.REPDISTILLER_CIFAR100_TOP1
    assert {k: e.value for k, e in rows.items()} == {
        "student": 69.06, "kd": 70.66, "fitnet": 69.21, "at": 70.55, "rkd": 69.61, "pkt": 70.34, "ft": 69.84,
        "nst": 69.60, "crd": 71.16}
    for e in rows.values():
        assert "RepDistiller" in e.label and "Contrastive Representation Distillation" in e.label
        assert "Table 1" in e.label and "resnet56 -> resnet20" in e.label and e.epoch == "last"


def test_teacher_confound_treats_the_teacher_as_the_treatment():
    rows = [_run("kd", s, 90.0 + s + 0.5 * t + 0.1 * s * t, method="kd", teacher_seed=t,
                 **{"method_args.teacher": f"/runs/teacher-s{t}", tables.TEACHER_TOP1: 80.0 + t})
            for s in range(3) for t in range(2)]
    matrix, (v,) = tables.teacher_confound(pd.DataFrame(rows))
    assert v.confounds == () and v.differences == pytest.approx((0.5, 0.6, 0.7))
    assert list(matrix.loc["teacher's own top-1"]) == [80.0, 81.0]
    rows[1]["weight_decay"] = 1e-4  # seed 0's student of teacher 1 trained otherwise
    assert tables.teacher_confound(pd.DataFrame(rows))[1][0].confounds == ("weight_decay",)


def test_online_columns_read_each_methods_own_heads():
    import numpy as np

    finals = pd.DataFrame([
        {"label": "baseline", "seed": 0, "deployed": "net", "last/test/net/top1": 70.0},
        {"label": "ONE", "seed": 0, "deployed": "branch0", "last/test/branch0/top1": 72.0, "last/test/branch1/top1": 74.0,
         "last/test/ensemble/top1": 76.0, "last/test/average/top1": 75.0},
        {"label": "DML", "seed": 0, "deployed": "peer0", "last/test/peer0/top1": 71.0, "last/test/peer1/top1": 73.0,
         "last/test/average/top1": 77.0},
        {"label": "PCL", "seed": 0, "deployed": "mean0", "last/test/mean0/top1": 78.0, "last/test/branch0/top1": 72.0,
         "last/test/ensemble/top1": 79.0},
    ])
    f = tables.with_online_columns(finals).set_index("label")
    assert f["deployed top-1"].to_dict() == {"baseline": 70.0, "ONE": 72.0, "DML": 71.0, "PCL": 78.0}
    assert f["students top-1"].to_dict() == {"baseline": 70.0, "ONE": 73.0, "DML": 72.0, "PCL": 72.0}
    assert f.loc["PCL", "ensemble top-1"] == 79.0  # no average head: the method's own ensemble
    assert f.loc["ONE", "ensemble top-1"] == 75.0  # the plain average, as for every method (ONE-E: its chapter)
    assert f.loc["DML", "ensemble top-1"] == 77.0 and np.isnan(f.loc["baseline", "ensemble top-1"])
