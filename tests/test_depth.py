"""Depth-scalable ResNets, the cooperative-depth Learner, its baselines and adaptive inference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cooplib.analysis import adaptive
from cooplib import methods, models
from cooplib.methods.base import TrainState
from cooplib.methods.coop_depth import CoopDepth, sfsl_weights
from cooplib.methods.sandwich import sandwich_factors
from cooplib.models import depth

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=4)


def _x(n=4, c=3, s=8, seed=0):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_full_factor_is_the_full_network():
    torch.manual_seed(0)
    net = models.build("resnet20", 10).eval()
    x = _x()
    assert torch.equal(depth.forward_at(net, x, 1.0), net(x))
    assert depth.kept_blocks(3, 1.0) == [0, 1, 2]


def _resnet56_zeropad_macs(k: int, classes: int = 100) -> int:
    """Hand count: stem + k basic blocks per stage (3x3 convs only, option A) + fc, 32x32."""
    stem = 3 * 16 * 9 * 32 * 32
    s1 = k * 2 * (16 * 16 * 9 * 32 * 32)
    s2 = (16 * 32 * 9 + 32 * 32 * 9) * 16 * 16 + (k - 1) * 2 * (32 * 32 * 9 * 16 * 16)
    s3 = (32 * 64 * 9 + 64 * 64 * 9) * 8 * 8 + (k - 1) * 2 * (64 * 64 * 9 * 8 * 8)
    return stem + s1 + s2 + s3 + 64 * classes


def test_kept_blocks_and_flops_per_factor_match_a_hand_count():
    net = models.build("resnet56", 100, shortcut="zeropad")
    rows = depth.factor_table(net, [0.2, 0.4, 0.6, 0.8, 1.0], (3, 32, 32))
    assert [r["kept blocks"] for r in rows] == [list(range(k)) for k in (2, 4, 6, 8, 9)]
    assert [r["depth"] for r in rows] == [14, 26, 38, 50, 56]
    for r, k in zip(rows, (2, 4, 6, 8, 9)):
        assert r["MACs"] == _resnet56_zeropad_macs(k)
        assert r["FLOPs"] == 2 * r["MACs"]
    assert [round(r["MACs"] / 1e6, 2) for r in rows] == [26.40, 54.71, 83.02, 111.34, 125.49]
    assert depth.kept_blocks(9, 0.4, "even") == [0, 3, 5, 8]
    assert depth.kept_blocks(5, 0.6) == [0, 1, 2]  # 0.6 * 5 is 3 despite floating point


def _small_coop(**kw):
    torch.manual_seed(0)
    t = [models.build("resnet14", 5, 3) for _ in range(2)]
    return CoopDepth(t, models.build("resnet8", 5, 3), factors=(0.5,), **kw)


def _kd(student, teacher, t):
    p = F.softmax(teacher / t, 1)
    return (p * (F.log_softmax(teacher / t, 1) - F.log_softmax(student / t, 1))).sum(1).mean() * t * t


def test_coop_loss_equals_hand_computation():
    learner = _small_coop(a_lead=0.7, a_mut=0.4, b=0.5, temperature=2.0).train()
    x, y = _x(6), torch.tensor([0, 1, 2, 3, 4, 0])
    heads = learner(x)
    assert set(heads) == {"t1@1", "t1@0.5", "t2@1", "t2@0.5", "leader"}
    total, parts = learner.loss(heads, y, STATE)
    h = {k: v.detach() for k, v in heads.items()}
    ce = lambda z: F.cross_entropy(z, y)  # noqa: E731
    w = 1 / 0.5  # SFSL
    expect = ce(h["leader"])
    for j, o in (("t1", "t2"), ("t2", "t1")):
        zj = h[f"{j}@1"]
        terms = {f"ce/{j}": ce(zj), f"kd_lead/{j}": 0.7 * _kd(zj, h["leader"], 2.0),
                 f"kd_mut/{j}": 0.4 * _kd(zj, h[f"{o}@1"], 2.0),
                 f"sub_ce/{j}": w * 0.5 * ce(h[f"{j}@0.5"]), f"sub_kd/{j}": w * _kd(h[f"{j}@0.5"], zj, 2.0)}
        for k, v in terms.items():
            assert torch.allclose(parts[k], v, atol=1e-5), k
        expect = expect + sum(terms.values())
    assert torch.allclose(total, expect, atol=1e-5)


def test_sfsl_weights():
    assert sfsl_weights([0.25, 0.5]) == {0.25: 4.0, 0.5: 2.0}
    assert sfsl_weights([0.25, 0.5], "normalised") == pytest.approx({0.25: 2 / 3, 0.5: 1 / 3})
    assert sfsl_weights([0.25, 0.5], "uniform") == {0.25: 1.0, 0.5: 1.0}


def test_teachers_get_no_gradient_from_kd_terms():
    learner = _small_coop().train()
    x, y = _x(6), torch.tensor([0, 1, 2, 3, 4, 0])
    heads = {k: v.detach().requires_grad_() for k, v in learner(x).items()}
    total, _ = learner.loss(heads, y, STATE)
    total.backward()
    lead = heads["leader"].detach().requires_grad_()
    F.cross_entropy(lead, y).backward()
    assert torch.allclose(heads["leader"].grad, lead.grad, atol=1e-6)  # only its own CE
    # a Teammate's full logits: its CE and its own KD as a student, never as a teacher
    z1 = heads["t1@1"].detach().requires_grad_()
    (F.cross_entropy(z1, y) + _kd(z1, heads["leader"].detach(), 3.0) + _kd(z1, heads["t2@1"].detach(), 3.0)).backward()
    assert torch.allclose(heads["t1@1"].grad, z1.grad, atol=1e-6)


def _parts(**kw) -> set[str]:
    learner = methods.build("coop_depth", "resnet14", 5, 3, factors=(0.5,), **kw).train()
    return set(learner.loss(learner(_x()), torch.zeros(4, dtype=torch.long), STATE)[1])


def test_ablations_drop_their_terms():
    assert not any(k.startswith("kd_lead") or k == "ce/leader" for k in _parts(leader=False))
    assert not any(k.startswith("kd_mut") for k in _parts(mutual=False))
    assert _parts(teammates=1) == {"ce/leader", "ce/t1", "kd_lead/t1", "sub_ce/t1", "sub_kd/t1"}


def test_resampled_factors_always_include_the_smallest_and_are_reproducible():
    learner = _small_coop()
    learner.factors = [0.2, 0.4, 0.6, 0.8]
    learner.weights = sfsl_weights(learner.factors)
    learner.resample, learner.sample_size = "step", 2
    seen = []
    for step in range(12):
        learner.sampler.draw[2] = step
        fs = learner.train_factors()
        assert fs[0] == 0.2 and len(fs) == 2
        assert fs == learner.train_factors()
        seen.append(fs[1])
    assert len(set(seen)) > 1


def test_exported_subnetwork_matches_its_head():
    learner = methods.build("coop_depth", "resnet20", 5, 3, factors=(0.3, 0.6), deploy_factor=0.6).eval()
    x = _x()
    heads = learner(x)
    assert torch.allclose(learner.deployable()(x), heads[learner.primary_head], atol=1e-6)
    sub = depth.export(learner.teammates[0], 0.3)
    assert sub.blocks_per_stage == 1 and sub.depth == 8
    assert torch.allclose(sub(x), heads["t1@0.3"], atol=1e-6)


def test_bn_recalibration_changes_running_statistics_only():
    torch.manual_seed(0)
    net = depth.export(models.build("resnet20", 5), 0.3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    depth.recalibrate_bn(net, [_x(8, seed=i) * 3 + 1 for i in range(3)])
    after = net.state_dict()
    params = {k for k, _ in net.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])
    assert not net.training and net.stem[1].momentum == 0.1


def test_byot_exit_flops_include_the_heads():
    torch.manual_seed(0)
    learner = methods.build("byot", "resnet8", 10, 3)
    rows = depth.exit_flops(learner.multi, (3, 32, 32))
    head0 = 2 * (16 * 32 * 9 * 16 * 16 + 32 * 64 * 9 * 8 * 8 + 64 * 10)
    head1 = 2 * (32 * 64 * 9 * 8 * 8 + 64 * 10)
    assert rows[0]["head FLOPs"] == head0 and rows[1]["head FLOPs"] == head1
    assert rows[0]["FLOPs"] == rows[0]["trunk FLOPs"] + head0
    assert rows[2]["FLOPs with earlier heads"] == rows[2]["FLOPs"] + head0 + head1


def test_byot_loss_terms():
    learner = methods.build("byot", "resnet8", 5, 3).train()
    x, y = _x(6), torch.tensor([0, 1, 2, 3, 4, 0])
    heads = learner(x)
    feats = [f.detach() for f in learner._feats]
    _, parts = learner.loss({k: v.detach() for k, v in heads.items()}, y, STATE, feats)
    z = {k: v.detach() for k, v in heads.items()}
    p = F.softmax(z["exit3"] / 3, 1)
    soft = sum(-(p * F.log_softmax(z[h] / 3, 1)).sum(1).mean() for h in ("exit1", "exit2"))
    assert torch.allclose(parts["kd/shallow"], 0.3 * soft, atol=1e-5)
    # the official rule (train.py `index != 1`): exit2, right below the deepest, has no hint
    a = learner.adaptation["exit1"]
    hint = ((a(feats[0]) - feats[2]) ** 2).sum().sqrt()
    assert list(learner.adaptation) == ["exit1"]
    assert torch.allclose(parts["hint/shallow"], 0.03 * hint, atol=1e-5)


def test_early_exit_average_cost_equals_a_direct_count():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(7, 4, generator=g) * 3 for _ in range(3)]
    y = torch.randint(0, 4, (7,), generator=g)
    costs = [10.0, 25.0, 60.0]
    out = adaptive.dynamic_exit(logits, y, costs, threshold=0.6, criterion="max_softmax")
    total = correct = 0.0
    for n in range(7):
        for i, z in enumerate(logits):
            if i == 2 or F.softmax(z[n], 0).max() >= 0.6:
                total += costs[i]
                correct += float(z[n].argmax() == y[n])
                break
    assert out["flops"] == pytest.approx(total / 7)
    assert out["top1"] == pytest.approx(100 * correct / 7)
    assert sum(out["fractions"]) == pytest.approx(1.0)


def test_sandwich_sampler_always_includes_largest_and_smallest():
    for seed in range(20):
        fs = sandwich_factors(torch.Generator().manual_seed(seed), 0.25, 2)
        assert fs[:2] == [1.0, 0.25] and all(0.25 <= f <= 1.0 for f in fs) and len(fs) == 4
    learner = methods.build("sandwich", "resnet14", 5, 3, factors=(0.5,)).train()
    assert set(learner(_x())) == {"net@1", "net@min", "net@rand0", "net@rand1"}


def test_pareto_front_and_budget():
    import pandas as pd

    pts = pd.DataFrame({"flops": [1, 2, 3, 4], "top1": [50, 40, 70, 65]})
    assert adaptive.pareto_front(pts)["flops"].tolist() == [1, 3]
    assert adaptive.pick_for_budget(pts, 2.5)["top1"] == 50
    assert adaptive.pick_for_budget(pts, 0.5) is None


def test_budget_choice_names_the_head_or_the_threshold():
    import pandas as pd

    pts = pd.DataFrame({"label": ["a", "a", "b"], "seed": [0, 0, 0], "head": ["x@0.5", "x@1", None],
                        "threshold": [None, None, 0.7], "flops": [1.0, 2.0, 1.5], "top1": [60.0, 70.0, 65.0]})
    got = adaptive.at_budgets(pts, [1.0, 1.8, 2.0]).set_index(["label", "budget"])["choice"]
    assert got[("a", 1.0)] == "x@0.5" and got[("a", 2.0)] == "x@1"
    assert got[("b", 1.8)] == "threshold 0.7" and got[("b", 1.0)] is None
