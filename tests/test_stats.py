"""cooplib.base.stats by hand: zero spread, floors, confounds, convergence, design checks."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cooplib.base import stats
from cooplib.base.errors import ConfigError


# ---------------------------------------------------------------- zero spread and floors

def test_identical_replicates_without_floor_are_undecidable():
    v = stats.decide([-0.56, -0.56], "B better than A")
    assert v.status == "undecidable" and v.n == 2 and v.mean == pytest.approx(-0.56)
    assert math.isnan(v.ci_low) and math.isnan(v.ci_high)
    assert "agree exactly" in v.sentence and "-0.56" in v.sentence and "no interval" in v.sentence
    assert "contradicted" not in v.sentence and "[" not in v.interval
    # a spread below 1e-12 is zero spread too (float noise of equal differences)
    assert stats.decide([0.1 + 0.2, 0.3, 0.3], "x").status == "undecidable"


def test_floor_replaces_a_smaller_sd_in_the_interval():
    floor = stats.test_resolution(2000)  # one image of 2000 = 0.05 points
    v = stats.decide([-0.56, -0.56, -0.56], "B better than A", floor=floor)
    half = sps.t.ppf(0.975, 2) * floor / math.sqrt(3)
    assert (v.ci_low, v.ci_high) == pytest.approx((-0.56 - half, -0.56 + half))
    assert v.status == "contradicted" and v.floor == pytest.approx(0.05)
    assert "floored at the stated resolution 0.05" in v.sentence
    # a floor below the sample sd changes nothing and is not mentioned
    x = [1.0, 3.0, 2.0]
    plain, floored = stats.decide(x, "x"), stats.decide(x, "x", floor=0.01)
    assert (floored.ci_low, floored.ci_high) == (plain.ci_low, plain.ci_high) and floored.floor is None
    assert "floored" not in floored.sentence


def test_resolution_and_binomial_sd():
    assert stats.test_resolution(10000) == pytest.approx(0.01)
    assert stats.binomial_sd(90.0, 10000) == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 10000))
    assert stats.binomial_sd(100.0, 50) == 0.0
    with pytest.raises(ConfigError):
        stats.test_resolution(0)
    with pytest.raises(ConfigError):
        stats.binomial_sd(120.0, 100)


def test_t_interval_with_floor_matches_scipy():
    x = [0.3, 0.3, 0.3, 0.3]
    n, mean, low, high = stats.t_interval(x, 0.9, floor=0.2)
    assert (low, high) == pytest.approx(sps.t.interval(0.9, 3, loc=0.3, scale=0.2 / 2))


# ---------------------------------------------------------------- confounds

def _cfg(**over):
    base = {"run": "r", "run_dir": "/runs/r", "status": "complete", "seed": 0, "method": "dml", "model": "resnet8",
            "dataset": "fashion-mnist", "dataset_args": "{}", "train_size": 3000, "test_size": 2000, "augment": "default",
            "epochs": 12, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
            "milestones": "[0.5, 0.75]", "gamma": 0.1, "init_from": None, "device": "auto", "compile": False,
            "method_args": '{"mutual": true, "peers": 2}', "method_args.mutual": True, "method_args.peers": 2,
            "last/test/peer0/top1": 90.0, "seconds": 12.0, "params": 1000, "label": "x", "device_name": "cpu"}
    return base | over


@pytest.mark.parametrize("field, a, b", [
    ("lr", 0.1, 0.05), ("epochs", 12, 24), ("milestones", "[0.5, 0.75]", [0.3, 0.6]), ("train_size", 3000, None),
    ("init_from", None, "/runs/baseline-s0"), ("weight_decay", 5e-4, 1e-4),
])
def test_confounds_name_each_config_difference(field, a, b):
    arm_a = [_cfg(seed=s, **{"method_args.mutual": False, field: a}) for s in (0, 1)]
    arm_b = [_cfg(seed=s, **{field: b}) for s in (0, 1)]
    assert stats.confounds(arm_a, arm_b, treatment="method_args.mutual") == (field,)


def test_treatment_seed_results_and_ids_are_not_confounds():
    arm_a = [_cfg(seed=s, run=f"a{s}", **{"method_args.mutual": False, "method_args": '{"mutual": false}',
                                          "last/test/peer0/top1": 80.0 + s, "seconds": 3.0 + s, "device": "cpu"})
             for s in (0, 1)]
    arm_b = [_cfg(seed=s + 5, run=f"b{s}", label="y") for s in (0, 1)]
    assert stats.confounds(arm_a, arm_b, treatment="method_args.mutual") == ()
    # without naming the treatment the method argument is the one difference
    assert stats.confounds(arm_a, arm_b) == ("method_args.mutual",)
    # a prefix covers every argument; values are compared as sets (a list equals its JSON)
    one = [_cfg(method="one", **{"method_args.branches": 3, "method_args.mutual": None, "method_args.peers": None})]
    base = [_cfg(method="baseline", milestones=[0.5, 0.75], **{"method_args.mutual": None, "method_args.peers": None})]
    assert stats.confounds(base, one, treatment=("method", "method_args")) == ()
    assert stats.confounds(base, one, treatment="method") == ("method_args.branches",)


def test_a_field_missing_from_an_older_record_counts_as_its_default():
    old = [_cfg()]  # recorded before grad_ratio_ema existed
    assert stats.confounds(old, [_cfg(grad_ratio_ema=0.0, grad_ratio_exclude="none")]) == ()
    assert stats.confounds(old, [_cfg(grad_ratio_ema=float("nan"))]) == ()
    assert stats.confounds(old, [_cfg(grad_ratio_ema=0.9)]) == ("grad_ratio_ema",)


def test_confound_labels_are_grouped_and_readable():
    assert stats.confound_labels(("epochs", "lr")) == ("lr", "epochs")
    assert stats.confound_labels(("milestones", "train_size", "init_from", "method_args.temperature")) == (
        "schedule (milestones)", "data (train_size)", "init (init_from)", "method_args.temperature")


def test_verdict_sentence_ends_with_confounds_after_caveats():
    v = stats.decide([1.0, 1.5, 2.0], "B better than A", confounds=("lr", "epochs"),
                     caveats=("underfit: train error 18.2 % vs test 21.0 % (A)",))
    assert v.sentence.endswith("; underfit: train error 18.2 % vs test 21.0 % (A); confounded by lr, epochs")
    assert v.interval == stats.decide([1.0, 1.5, 2.0], "x").interval
    d = v.as_dict()
    assert d["confounds"] == ("lr", "epochs") and d["caveats"] == ("underfit: train error 18.2 % vs test 21.0 % (A)",)
    assert stats.decide([1.0, 1.5, 2.0], "x").sentence.endswith("]).")


def test_run_config_fields_are_the_run_configs():
    from cooplib.engine.config import RunConfig

    from cooplib.engine.config import LATER_DEFAULTS

    assert set(stats.RUN_CONFIG_FIELDS) == {f.name for f in dataclasses.fields(RunConfig)}
    assert stats.LATER_DEFAULTS == LATER_DEFAULTS
    assert not stats.is_config_field("last/test/net/top1") and not stats.is_config_field("run_dir")
    assert stats.is_config_field("method_args.peers") and stats.is_config_field("lr")


# ---------------------------------------------------------------- design checks

def test_check_comparison_names_the_differing_fields():
    a = [_cfg(lr=0.1, epochs=12, **{"method_args.mutual": False})]
    b = [_cfg(lr=0.05, epochs=24)]
    with pytest.raises(stats.DesignError) as err:
        stats.check_comparison(a, b, treatment="method_args.mutual")
    msg = str(err.value)
    assert "epochs" in msg and "lr" in msg and "0.05" in msg and "allowed=" in msg
    assert isinstance(err.value, ConfigError)
    # acknowledged differences become confounds; the rest still raises
    assert stats.check_comparison(a, b, "method_args.mutual", allowed=("lr", "epochs")) == ("epochs", "lr")
    with pytest.raises(stats.DesignError, match="epochs") as err:
        stats.check_comparison(a, b, "method_args.mutual", allowed=("lr",))
    assert "lr:" not in str(err.value)
    assert stats.check_comparison(a, [_cfg()], "method_args.mutual") == ()


# ---------------------------------------------------------------- convergence

def _metrics(train_err, test_err, head="net"):
    return pd.DataFrame({"run": "r", "epoch": np.arange(1, len(train_err) + 1),
                         f"train/{head}/top1": 100 - np.asarray(train_err, float),
                         f"test/{head}/top1": 100 - np.asarray(test_err, float)})


def test_convergence_slope_is_polyfit_over_the_last_quarter():
    rng = np.random.default_rng(0)
    train = 40 * np.exp(-np.arange(12) / 4) + rng.normal(0, 0.3, 12)
    test = train + 5
    c = stats.convergence(_metrics(train, test, "branch0"), "branch0")
    assert c.last == 3 and c.epochs == 12
    assert c.slope == pytest.approx(np.polyfit(np.arange(10, 13), train[-3:], 1)[0])
    assert (c.train_error, c.test_error, c.gap) == pytest.approx((train[-1], test[-1], 5.0))
    c6 = stats.convergence(_metrics(train, test, "branch0"), "branch0", last=6)
    assert c6.slope == pytest.approx(np.polyfit(np.arange(7, 13), train[-6:], 1)[0])
    # at least 2 epochs even for a short run; rows out of order are sorted by epoch
    short = _metrics([10.0, 8.0, 7.0], [12.0, 11.0, 10.0]).iloc[::-1]
    assert stats.convergence(short, "net").slope == pytest.approx(np.polyfit([2, 3], [8.0, 7.0], 1)[0])
    with pytest.raises(ConfigError, match="net"):
        stats.convergence(_metrics(train, test, "net"), "peer0")


def test_convergence_slope_reads_every_epoch_when_the_test_set_is_evaluated_sparsely():
    train = np.array([30, 25, 21, 18, 16, 15, 14, 13.5])
    test = np.array([32, np.nan, np.nan, 20, np.nan, np.nan, np.nan, 17.0])  # eval_every=4: epochs 4 and 8 (+ 1)
    c = stats.convergence(_metrics(train, test), "net")
    assert c.epochs == 8 and c.last == 2
    assert c.slope == pytest.approx(np.polyfit([7, 8], train[-2:], 1)[0])  # not the slope between epochs 4 and 8
    assert (c.train_error, c.test_error) == pytest.approx((13.5, 17.0))


def test_underfit_fires_only_without_fit_and_without_plateau():
    high_falling = stats.convergence(_metrics([25, 24, 23, 22, 21, 20, 19, 18], [21.0] * 8), "net")  # -1 point/epoch
    caveat = stats.underfit(high_falling, name="arm A")
    assert caveat.startswith("underfit: train error 18.0 % vs test 21.0 %") and caveat.endswith("(arm A)")
    assert "still falling 1.00 points/epoch" in caveat
    # a plateau at a high training error has converged (the running, augmented error of a small net)
    assert stats.underfit(stats.convergence(_metrics([18.0] * 8, [21.0] * 8), "net")) is None
    # a training error well below the test error has fit, even while still falling
    assert stats.underfit(stats.convergence(_metrics([10, 9, 8, 7, 6, 5, 4, 3], [12.0] * 8), "net")) is None
    assert stats.underfit(high_falling, max_slope=2.0) is None and stats.underfit(high_falling, max_ratio=0.9) is None
    assert "above 1.5 %" in stats.underfit(stats.convergence(_metrics([2.0] * 8, [12.0] * 8), "net"), max_train_error=1.5)
