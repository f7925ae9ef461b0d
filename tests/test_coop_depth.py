"""Cooperative depth: degenerate factor designs are refused, distinct budgets are counted
exactly, ``term_reduction="mean"`` divides each network's terms by their number, and run
names of configs that do not set the new option are unchanged."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cooplib import methods, models
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError
from cooplib.methods.base import TrainState
from cooplib.methods.coop_depth import CoopDepth
from cooplib.models import depth

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=4)


def _blocks(n, s):
    """Blocks a stage of n keeps at factor s, counted here without kept_blocks."""
    return max(1, math.ceil(round(s * n, 9)))


# --- degenerate designs --------------------------------------------------------------


def test_resnet8_factors_are_one_network_and_the_error_names_them():
    with pytest.raises(ConfigError) as err:
        methods.build("coop_depth", "resnet8", 10, 1, factors=(0.3, 0.6))
    msg = str(err.value)
    assert "\n" not in msg
    for needed in ("resnet8", "1 block per stage", "0.3, 0.6 and 1.0", "[0]", "resnet20 (3 blocks per stage)",
                   "[0.33, 0.66] with the full 1.0"):
        assert needed in msg, (needed, msg)


def test_distinct_factors_on_resnet20_build_and_the_near_miss_is_refused():
    assert [_blocks(3, s) for s in (0.33, 0.66, 1.0)] == [1, 2, 3]
    assert [len(depth.kept_blocks(3, s)) for s in (0.33, 0.66, 1.0)] == [1, 2, 3]
    learner = methods.build("coop_depth", "resnet20", 5, 3, factors=(0.33, 0.66))
    assert learner.factors == [0.33, 0.66]
    methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3, 0.6))  # the chapter's smoke design
    # 0.67 * 3 = 2.01 keeps all 3 blocks: the same network as 1.0
    assert _blocks(3, 0.67) == 3
    with pytest.raises(ConfigError, match=r"0\.67 and 1\.0 \(the full network\) keep the same blocks \[0, 1, 2\]"):
        methods.build("coop_depth", "resnet20", 5, 3, factors=(0.34, 0.67))


def test_default_factors_collide_on_resnet20_but_not_on_resnet32():
    with pytest.raises(ConfigError, match=r"0\.4 and 0\.6 keep the same blocks \[0, 1\].*0\.8 and 1\.0"):
        methods.build("coop_depth", "resnet20", 5, 3)
    assert methods.build("coop_depth", "resnet32", 5, 3).factors == [0.2, 0.4, 0.6, 0.8]


def test_deploy_factor_is_checked_with_the_evaluated_factors():
    with pytest.raises(ConfigError, match=r"0\.2 and 0\.3 keep the same blocks \[0\]"):
        methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3,), deploy_factor=0.2)
    with pytest.raises(ConfigError, match="same blocks"):  # direct construction is checked too
        CoopDepth([models.build("resnet14", 5) for _ in range(2)], None, factors=(0.6,))


def test_resampled_designs_are_checked_on_all_of_s():
    with pytest.raises(ConfigError, match=r"0\.4 and 0\.6"):
        methods.build("coop_depth", "resnet20", 5, 3, factors=(0.2, 0.4, 0.6), resample="step", sample_size=2)


# --- distinct budgets ----------------------------------------------------------------


def test_distinct_budgets_are_exact_for_resnet20_and_resnet56():
    b20 = depth.distinct_budgets("resnet20", [0.2, 0.4, 0.6, 0.8, 1.0])
    assert [(b["blocks per stage"], b["factors"]) for b in b20] == [(1, [0.2]), (2, [0.4, 0.6]), (3, [0.8, 1.0])]
    assert len(depth.distinct_budgets("resnet20", [0.3, 0.6, 1.0])) == 3
    assert len(depth.distinct_budgets("resnet20", [0.34, 0.67, 1.0])) == 2
    b56 = depth.distinct_budgets("resnet56", [0.2, 0.4, 0.6, 0.8, 1.0])
    assert [b["kept blocks"] for b in b56] == [list(range(k)) for k in (2, 4, 6, 8, 9)]
    assert len(depth.distinct_budgets(9, [0.1, 0.15, 0.2, 1.0])) == 3  # 1, 2, 2, 9 blocks
    assert len(depth.distinct_budgets(models.build("resnet56", 10), [i / 9 for i in range(1, 10)])) == 9
    assert len(depth.distinct_budgets("resnet8", [0.3, 0.6, 1.0])) == 1
    assert [b["kept blocks"] for b in depth.distinct_budgets(9, [0.4, 1.0], "even")] == [[0, 3, 5, 8], list(range(9))]


def test_budgets_are_distinct_flops():
    net = models.build("resnet20", 10, 1)
    rows = depth.factor_table(net, [0.2, 0.4, 0.6, 0.8, 1.0], (1, 28, 28))
    assert len({r["FLOPs"] for r in rows}) == len(depth.distinct_budgets(net, [0.2, 0.4, 0.6, 0.8, 1.0])) == 3


def test_require_budgets_says_how_many_and_how_to_get_more():
    with pytest.raises(ConfigError, match=r"give 1 distinct budget .*fewer than the 3 needed.*resnet20"):
        depth.require_budgets("resnet8", [0.3, 0.6, 1.0])
    with pytest.raises(ConfigError, match=r"give 2 distinct budgets .*resnet14 has only 2"):
        depth.require_budgets("resnet14", [0.5, 1.0])
    with pytest.raises(ConfigError, match=r"different blocks of resnet20, e\.g\. \[0\.33, 0\.66\]"):
        depth.require_budgets("resnet20", [0.9, 1.0])
    assert len(depth.require_budgets("resnet20", [0.3, 0.6, 1.0])) == 3
    assert len(depth.require_budgets("resnet32", [0.2, 0.4, 0.6, 0.8, 1.0], minimum=5)) == 5


def test_suggested_factors_keep_the_counts_they_promise():
    for n in range(1, 20):
        for count in range(1, n + 1):
            fs = depth.suggest_factors(n, count)
            ks = [_blocks(n, s) for s in fs]
            assert fs[-1] == 1.0 and len(set(ks)) == count == len(fs) and ks == sorted(ks), (n, count, fs)


# --- term_reduction ------------------------------------------------------------------


def _kd(student, teacher, t=3.0):
    p = F.softmax(teacher / t, 1)
    return (p * (F.log_softmax(teacher / t, 1) - F.log_softmax(student / t, 1))).sum(1).mean() * t * t


def _fixed_heads(names, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(6, 5, generator=g) * 2).requires_grad_() for k in names}


HEADS = ["t1@1", "t1@0.3", "t1@0.6", "t2@1", "t2@0.3", "t2@0.6", "leader"]


def test_mean_is_the_sum_over_each_networks_number_of_terms():
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    kw = dict(factors=(0.3, 0.6))
    learner_sum = methods.build("coop_depth", "resnet20", 5, 3, **kw).train()
    learner_mean = methods.build("coop_depth", "resnet20", 5, 3, term_reduction="mean", **kw).train()
    # independently: a Teammate's terms are its CE, KD from the Leader, mutual KD, and per
    # factor a CE and a KD (2 factors): 7; the Leader's is its CE: 1
    n_t = 1 + 1 + 1 + 2 * 2
    assert learner_mean.terms_per_network() == learner_sum.terms_per_network() == {"t1": n_t, "t2": n_t, "leader": 1}
    h = _fixed_heads(HEADS)
    ce = lambda z: F.cross_entropy(z, y)  # noqa: E731
    expect = ce(h["leader"])
    for j, o in (("t1", "t2"), ("t2", "t1")):
        z = h[f"{j}@1"]
        own = ce(z) + _kd(z, h["leader"].detach()) + _kd(z, h[f"{o}@1"].detach())
        own = own + sum((1 / s) * (ce(h[f"{j}@{s:g}"]) + _kd(h[f"{j}@{s:g}"], z.detach())) for s in (0.3, 0.6))
        expect = expect + own / n_t
    total_mean, parts_mean = learner_mean.loss(h, y, STATE)
    assert torch.allclose(total_mean, expect, atol=1e-5)
    assert torch.allclose(torch.stack(list(parts_mean.values())).sum(), total_mean, atol=1e-6)
    (g_mean,) = [torch.autograd.grad(total_mean, list(h.values()))]
    total_sum, parts_sum = learner_sum.loss(h, y, STATE)
    (g_sum,) = [torch.autograd.grad(total_sum, list(h.values()))]
    for k in parts_sum:
        assert torch.allclose(parts_mean[k], parts_sum[k] / (1 if k.endswith("leader") else n_t), atol=1e-6), k
    for name, gm, gs in zip(h, g_mean, g_sum):
        assert torch.allclose(gm, gs / (1 if name == "leader" else n_t), atol=1e-7), name


def test_mean_scales_each_networks_parameter_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    learner = methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3, 0.6)).train()
    grads = {}
    for reduction in ("sum", "mean"):
        learner.zero_grad()
        learner.term_reduction = reduction
        learner.loss(learner(x), y, STATE)[0].backward()
        grads[reduction] = {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}
    n = learner.terms_per_network()
    for k, g in grads["sum"].items():
        net = "leader" if k.startswith("leader") else f"t{int(k.split('.')[1]) + 1}"
        # float32 sums in another order: compare at the gradient's own scale
        assert torch.allclose(grads["mean"][k], g / n[net], rtol=1e-4, atol=1e-5 * float(g.abs().max()) / n[net]), k


def test_terms_follow_the_ablations_and_the_resampled_draws():
    def terms(**kw):
        return methods.build("coop_depth", "resnet32", 5, 3, factors=(0.2, 0.4, 0.6, 0.8), **kw).terms_per_network()

    assert terms() == {"t1": 11, "t2": 11, "leader": 1}
    assert terms(leader=False) == {"t1": 10, "t2": 10}
    assert terms(mutual=False)["t1"] == 10 and terms(teammates=1) == {"t1": 10, "leader": 1}
    assert terms(b=0.0)["t1"] == 7
    assert terms(resample="step", sample_size=2)["t1"] == 7
    learner = methods.build("coop_depth", "resnet32", 5, 3, factors=(0.2, 0.4, 0.6, 0.8), resample="step",
                            sample_size=2, term_reduction="mean").train()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    heads = {k: v.detach() for k, v in learner(x).items()}
    assert len([k for k in heads if k.startswith("t1@") and k != "t1@1"]) == 2
    learner.term_reduction = "sum"
    total_sum = learner.loss(heads, y, STATE)[0]
    learner.sampler.draw[2] = 0
    learner.term_reduction = "mean"
    _, parts = learner.loss(heads, y, STATE)
    ce_leader = F.cross_entropy(heads["leader"], y)
    team = total_sum - ce_leader
    assert torch.allclose(sum(parts.values()), ce_leader + team / 7, atol=1e-5)


def test_coefficient_sum_counts_the_sfsl_weights():
    learner = methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3, 0.6))
    c = learner.coefficient_sum()
    assert c["leader"] == 1.0
    assert c["t1"] == pytest.approx(3 + 2 * (1 / 0.3 + 1 / 0.6))


def test_unknown_term_reduction_is_named():
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3, 0.6), term_reduction="maen")


# --- run names -----------------------------------------------------------------------

#: computed at commit 906501d (before term_reduction and the budget checks existed)
_SMOKE = dict(method="coop_depth", dataset="digits", model="resnet20", epochs=4, batch_size=64, lr=0.02, momentum=0.9,
              nesterov=True, weight_decay=5e-4, schedule="cosine", train_size=360, test_size=None, deterministic=True)
_COOP_ARGS = dict(factors=[0.3, 0.6], leader_model="resnet20", shortcut="projection", temperature=3.0, a_lead=1.0,
                  a_mut=1.0, b=1.0, weighting="sfsl", resample="fixed")


def test_run_names_without_the_new_option_are_unchanged():
    assert RunConfig(**_SMOKE, method_args=_COOP_ARGS).run_name() == "coop_depth-resnet20-digits-s0-63b26e66"
    assert RunConfig(**_SMOKE).run_name() == "coop_depth-resnet20-digits-s0-bc140b35"
    assert RunConfig(method="coop_depth", model="resnet32", dataset="cifar100").run_name() == \
        "coop_depth-resnet32-cifar100-s0-c84d1ac3"
    # the chapter's design still builds, and the new option defaults to the paper's sum
    learner = methods.build("coop_depth", "resnet20", 10, 1, **_COOP_ARGS)
    assert learner.term_reduction == "sum"
    assert RunConfig(**_SMOKE, method_args={**_COOP_ARGS, "term_reduction": "mean"}).run_name() != \
        "coop_depth-resnet20-digits-s0-63b26e66"
