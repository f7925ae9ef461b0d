"""Widths that reach the loss rise: the crossing search, runs, tables, ordering verdicts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cooplib.engine import experiment, runs
from cooplib.analysis import flatness, perturb
from cooplib.engine.config import RunConfig
from cooplib.analysis.flatness import _search
from test_perturb import Scalar  # logits [w x, 0]: one parameter


# ---------------------------------------------------------------- the search on known curves

def counting(f):
    calls = []

    def c(d):
        calls.append(d)
        return f(d)

    return c, calls


def test_search_brackets_the_crossing_of_a_known_curve():
    c, calls = counting(lambda d: d * d)  # c(0) = 0, level 1: crossing at d = 1
    width, low, high, beyond = _search(c, 0.0, 1.0, d_start=0.1, d_max=100.0, growth=2.0, rtol=0.01)
    assert not beyond
    assert low ** 2 < 1.0 <= high ** 2 and high - low <= 0.01 * high
    assert low <= width <= high and abs(width - 1.0) <= high - low
    # 0.1, 0.2, 0.4, 0.8, 1.6 (above), then bisection of [0.8, 1.6] down to 1 % of high
    assert calls[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert all(0.8 < d < 1.6 for d in calls[5:]) and len(calls) == 5 + 7  # 0.8 / 2^7 <= 0.01 * high


def test_search_reports_beyond_d_max_and_evaluates_d_max_itself():
    c, calls = counting(lambda d: 0.5 * math.tanh(d))  # never rises by 1
    width, low, high, beyond = _search(c, 0.0, 1.0, d_start=0.5, d_max=5.0, growth=2.0, rtol=0.01)
    assert beyond and math.isinf(width) and low == 5.0 and math.isinf(high)
    assert calls == [0.5, 1.0, 2.0, 4.0, 5.0]
    # the same curve reaches a lower level: finite
    width, *_ , beyond = _search(lambda d: 0.5 * math.tanh(d), 0.0, 0.25, 0.5, 5.0, 2.0, 0.01)
    assert not beyond and width == pytest.approx(math.atanh(0.5), rel=0.01)


def test_search_handles_a_crossing_below_d_start_a_jump_and_overflow():
    c, calls = counting(lambda d: 10 * d)
    width, low, high, _ = _search(c, 0.0, 1.0, d_start=1.0, d_max=10.0, growth=2.0, rtol=0.01)
    assert low < 0.1 <= high and width == pytest.approx(0.1, rel=0.01)
    assert calls[:5] == [1.0, 0.5, 0.25, 0.125, 0.0625]  # down by `growth` until below the level
    # c jumps at every d > 0: the search ends (bounded bisection) with a tiny width
    width, low, high, beyond = _search(lambda d: 5.0 if d > 0 else 0.0, 0.0, 1.0, 1.0, 10.0, 2.0, 0.01)
    assert not beyond and 0 <= low < high < 1e-12 and low <= width <= high
    # a non-finite loss counts as above any level
    width, low, high, _ = _search(lambda d: math.inf if d >= 3 else 0.0, 0.0, 1.0, 1.0, 10.0, 2.0, 0.01)
    assert low < 3 <= high and high - low <= 0.01 * high
    # an absolute level the unperturbed point already reaches: width 0
    assert _search(lambda d: 9.0, 2.0, 1.0, 1.0, 10.0, 2.0, 0.01) == (0.0, 0.0, 0.0, False)


# ---------------------------------------------------------------- on networks



def test_closed_form_one_parameter_model_both_signs():
    # CE(w) = mean(softplus(-w), softplus(-2w), softplus(-w/2)): falls as w grows, rises as it shrinks
    x = torch.tensor([[1.0], [2.0], [-0.5]])
    y = torch.tensor([0, 0, 1])
    batches = [(x, y)]

    def ce(w):
        return float(np.mean([math.log1p(math.exp(-w)), math.log1p(math.exp(-2 * w)), math.log1p(math.exp(-0.5 * w))]))

    model = Scalar(0.7)
    out = flatness.crossing_widths(model, batches, batches, rise=1.0, directions=6, seed=0, normalize="unit",
                                   d_start=0.5, d_max=5.0, rtol=0.001, warm_start=False, progress=False)
    gen = torch.Generator().manual_seed(0)
    signs = [float(perturb.random_direction(model, gen)[0]) for _ in range(6)]
    assert {round(s) for s in signs} == {-1, 1}  # seed 0 draws both signs
    assert out.train_ce0.tolist() == pytest.approx([ce(0.7)] * 6, rel=1e-6)
    from scipy.optimize import brentq

    true = brentq(lambda d: ce(0.7 - d) - ce(0.7) - 1.0, 0.0, 5.0)
    for s, row in zip(signs, out.itertuples()):
        if s > 0:  # the loss only falls: beyond d_max, after exactly 0.5, 1, 2, 4, 5
            assert row.beyond and math.isinf(row.width) and row.evaluations == 5 and row.low == 5.0
        else:
            assert not row.beyond and row.low - 1e-6 < true <= row.high + 1e-6  # float32 model
            assert row.width == pytest.approx(true, abs=row.high - row.low)
    assert torch.equal(model.w.data, torch.tensor(0.7))
    # warm start: each direction starts at the last finite width; same crossings, fewer evaluations
    warm = flatness.crossing_widths(model, batches, batches, rise=1.0, directions=6, seed=0, normalize="unit",
                                    d_start=0.5, d_max=5.0, rtol=0.001, progress=False)
    assert warm.beyond.tolist() == out.beyond.tolist()
    for a, b in zip(warm[~warm.beyond].itertuples(), out[~out.beyond].itertuples()):
        assert a.low - 1e-6 < true <= a.high + 1e-6 and a.width == pytest.approx(b.width, abs=max(a.high - a.low, b.high - b.low))
    assert warm.evaluations.sum() < out.evaluations.sum()




def test_bracket_agrees_with_the_grid_curves_and_weights_are_restored(net, tiny_data, one_thread):
    train, test = perturb.eval_loaders(tiny_data, batch_size=48)
    net.train()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out = flatness.crossing_widths(net, train, test, rise=0.5, directions=2, seed=3, rtol=0.05, progress=False)
    assert list(out.columns) == list(flatness.COLUMNS) and len(out) == 2
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    assert (~out.beyond).all()  # filter-normalised d up to 10 moves a random net far enough
    for row in out.itertuples():
        # the same direction i from the same seed: the grid curve at the bracket ends
        grid = perturb.perturbation_curves(net, train, test, distances=(0.0, row.low, row.high), directions=row.direction + 1,
                                           seed=3, normalize="filter", progress=False)
        g = grid[grid.direction == row.direction].set_index("distance").train_ce
        assert g[0.0] == row.train_ce0
        assert g[row.low] < row.target <= g[row.high]
        assert row.target == pytest.approx(row.train_ce0 + 0.5)
        assert row.high - row.low <= 0.05 * row.high + 1e-12
    # an absolute target below the unperturbed loss: width 0 for every direction
    low = flatness.crossing_widths(net, train, test, directions=2, seed=3, target=0.0, progress=False)
    assert (low.width == 0).all() and (low.evaluations == 0).all()


def test_weights_restored_after_an_exception_midway(net, tiny_data):
    train, test = perturb.eval_loaders(tiny_data, batch_size=48)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    calls = {"n": 0}

    def boom(module, inputs):
        calls["n"] += 1
        if calls["n"] == 6:  # inside a perturbed evaluation (d = 0 takes 2 train + 1 test batches)
            raise RuntimeError("injected")

    handle = net.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            flatness.crossing_widths(net, train, test, directions=2, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 6
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_bad_arguments(net, tiny_data):
    train, test = perturb.eval_loaders(tiny_data, batch_size=48)
    for kw, match in (({"normalize": "layer"}, "normalize"), ({"d_start": 2.0, "d_max": 1.0}, "d_start"),
                      ({"d_max": math.inf}, "finite"), ({"growth": 1.0}, "growth"), ({"rtol": 0.0}, "rtol"),
                      ({"rise": 0.0}, "rise"), ({"directions": 0}, "directions")):
        with pytest.raises(ValueError, match=match):
            flatness.crossing_widths(net, train, test, progress=False, **kw)


# ---------------------------------------------------------------- run directories

@pytest.fixture
def two_seeds(tiny_data, tmp_path):
    path = tmp_path / "quadrants.npz"
    np.savez(path, x_train=tiny_data.x_train.numpy(), y_train=tiny_data.y_train.numpy(),
             x_test=tiny_data.x_test.numpy(), y_test=tiny_data.y_test.numpy())
    base = RunConfig(dataset="npz", dataset_args={"path": str(path)}, model="resnet8", epochs=1, batch_size=32,
                     lr=0.05, schedule="constant", deterministic=True, device="cpu", progress=False, tensorboard=False)
    configs = {(label, s): base.replace(method=m, seed=s, method_args=a)
               for label, m, a in (("vanilla", "baseline", {}), ("DML", "dml", {"peers": 2})) for s in (0, 1)}
    return dict(zip(configs, experiment.run_all(configs.values(), tmp_path / "runs")))


def test_widths_for_runs_pairs_by_seed_and_direction(two_seeds):
    kw = dict(directions=2, rtol=0.1, progress=False)
    w = flatness.widths_for_runs(two_seeds, device="cpu", seed=5, **kw)
    assert len(w) == 8 and list(w.columns[:3]) == ["solution", "seed", "weights"]
    assert set(w.solution) == {"vanilla", "DML"} and set(w.seed) == {0, 1} and (w.weights == "last").all()
    # the direction seed is shared by the solutions of a training seed and differs between seeds
    seeds = w.groupby("seed").direction_seed.unique()
    assert seeds[0].tolist() == [flatness.direction_seed(5, 0)] and seeds[1].tolist() == [flatness.direction_seed(5, 1)]
    # each row is the search on that run's deployed network (DML: peer 0)
    net = experiment.load_learner(two_seeds[("DML", 1)]).deployable()
    train, test = perturb.eval_loaders(experiment.load_data(runs.RunDir(two_seeds[("DML", 1)]).config()), "cpu")
    alone = flatness.crossing_widths(net, train, test, seed=flatness.direction_seed(5, 1), **kw)
    mine = w[(w.solution == "DML") & (w.seed == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine[list(flatness.COLUMNS)], alone)
    # best-epoch weights are an option; a common absolute level per training seed
    best = flatness.widths_for_runs(two_seeds, weights="best", target="common", device="cpu", seed=5, **kw)
    assert (best.weights == "best").all()
    for s, g in best.groupby("seed"):
        assert g.target.nunique() == 1
        assert g.target.iloc[0] == pytest.approx(g.train_ce0.max() + 1.0)
    with pytest.raises(ValueError, match="weights"):
        flatness.widths_for_runs(two_seeds, weights="middle")


# ---------------------------------------------------------------- tables and verdicts

def frame(widths: dict[str, list[list[float]]], d_max: float = 10.0) -> pd.DataFrame:
    """widths[solution][seed][direction] -> a widths frame (inf = beyond d_max)."""
    rows = []
    for sol, per_seed in widths.items():
        for s, ws in enumerate(per_seed):
            for i, wd in enumerate(ws):
                rows.append({"solution": sol, "seed": s, "weights": "last", "direction": i, "direction_seed": s,
                             "width": wd, "low": d_max if math.isinf(wd) else wd, "high": wd,
                             "beyond": math.isinf(wd), "d_max": d_max, "target": 1.5 + s, "evaluations": 3,
                             "train_ce0": 0.5 + s, "train_error0": 0.0, "test_ce0": 0.7, "test_error0": 2.0 + s})
    return pd.DataFrame(rows)


def test_ordering_verdicts_pair_by_seed_and_direction():
    w = frame({"a": [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], "b": [[2.0, 2.5, 3.0], [1.5, 2.0, 3.0]],
               "c": [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]})
    v_ab, v_bc = flatness.ordering_verdicts(w, ["a", "b", "c"], view="filter")
    assert v_ab.differences == pytest.approx((1.0, 0.5, 0.0, 0.5, 1.0, 2.0))
    assert v_ab.n == 6 and v_ab.replicates == "seed x direction pairs" and v_ab.status == "supported"
    assert v_ab.claim == "b flatter than a (filter)" and v_ab.unit == "width (d, +1 nat)"
    assert v_bc.status == "contradicted" and v_bc.mean == pytest.approx(-(1 + 1.5 + 2 + 1 + 1.5 + 2.5) / 6)
    by_seed = flatness.ordering_verdicts(w, ["a", "b"], pooled=False)[0]
    assert by_seed.n == 2 and by_seed.replicates == "seeds"
    assert by_seed.differences == pytest.approx((0.5, 3.5 / 3))
    # the order of the claim is what the sign follows
    assert flatness.ordering_verdicts(w, ["b", "a"])[0].mean == pytest.approx(-v_ab.mean)


def test_ordering_verdicts_cap_beyond_at_d_max_and_drop_uninformative_pairs():
    inf = math.inf
    w = frame({"a": [[1.0, inf, inf]], "b": [[inf, 4.0, inf]]}, d_max=10.0)
    v = flatness.ordering_verdicts(w, ["a", "b"])[0]
    # direction 0: b beyond -> at least 10, so >= 9; direction 1: a beyond -> 4 - 10; direction 2 dropped
    assert v.differences == pytest.approx((9.0, -6.0)) and v.n == 2


def test_width_summary_shows_values_at_zero_spread_and_beyond():
    inf = math.inf
    w = frame({"a": [[1.0, 2.0, 3.0], [1.0, 1.0, inf]], "b": [[inf, inf, inf]]}, d_max=7.0)
    t = flatness.width_summary(w)
    assert t.loc["a", "runs"] == 2 and t.loc["a", "directions"] == 6
    assert t.loc["a", "beyond d_max"] == "1 of 6 (d_max = 7)"
    assert t.loc["a", "width"].startswith("1.6 [") and "(range 1-3)" in t.loc["a", "width"]
    assert t.loc["a", "width"].endswith("1 of 6 directions beyond d_max = 7")
    assert t.loc["b", "width"] == "beyond d_max = 7 (all 3 directions)"
    assert t.loc["a", "train CE at d=0"] == "1.0000 (0.5000-1.5000)"  # mean over runs (range)
    assert t.loc["b", "test error % at d=0"] == "2.00"


def test_search_facts_and_curve_grid():
    inf = math.inf
    w = frame({"a": [[1.0, 2.0], [4.0, inf]], "b": [[inf, inf], [inf, inf]]}, d_max=7.0)
    facts = flatness.search_facts(w)
    assert facts.loc["a"].tolist() == [2, 2, "last", 7.0, "c(0) + 1 nat"]
    assert flatness.curve_grid(w, points=5) == [0.0, 1.5, 3.0, 4.5, 6.0]  # up to 1.5 x the largest finite width
    assert flatness.curve_grid(w[w.solution == "b"], points=3) == [0.0, 3.5, 7.0]  # none finite: up to d_max
    common = w.assign(target=2.0)  # one absolute level: the rise differs per seed
    assert flatness.search_facts(common).loc["a", "target"] == "a common train-CE level per seed"
