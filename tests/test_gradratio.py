"""Gradient-ratio scheduler: the per-tensor lrs it sets are the ones SGD applies."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib.engine.gradratio import GradientRatio, per_tensor_param_groups
from cooplib.methods.base import TrainState


def tiny() -> nn.Sequential:
    """float64, so that p_new - p_old recovers the tiny steps without rounding."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    return net.double()


def hand_lrs(model: nn.Sequential, base: float, factor: float, lo: float, hi: float) -> list[float]:
    last = [p.grad for p in model[-1].parameters()]
    last_mean = sum(float(g.abs().sum()) for g in last) / sum(g.numel() for g in last)
    out = []
    for p in model.parameters():
        ratio = last_mean / float(p.grad.abs().mean())
        out.append(base * factor * min(max(ratio, lo), hi))
    return out


def test_per_tensor_groups():
    model = tiny()
    model[0].bias.requires_grad_(False)
    groups = per_tensor_param_groups(model.parameters(), 0.05)
    assert len(groups) == 5 and all(len(g["params"]) == 1 and g["base_lr"] == 0.05 for g in groups)


@pytest.mark.parametrize("clip", [(0.1, 20.0), (0.9, 1.1)])
def test_applied_lrs_are_base_times_factor_times_clipped_ratio(clip):
    model = tiny()
    with torch.no_grad():
        model[0].weight.mul_(0.002)  # with inputs x50: large first-layer weight grads -> ratio < 0.1
        model[2].weight.mul_(30.0)  # saturates tanh: tiny middle-layer grads -> ratio > 20
    base, factor = 0.1, 0.5
    opt = torch.optim.SGD(per_tensor_param_groups(model.parameters(), base), lr=base, momentum=0.0)
    ratio = GradientRatio(opt, model[-1].parameters(), clip=clip)
    x, y = 50 * torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    want = hand_lrs(model, base, factor, *clip)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    ratio.update(factor)
    opt.step()
    for p, p0, g, lr, group in zip(model.parameters(), before, grads, want, opt.param_groups):
        assert group["lr"] == pytest.approx(lr, rel=1e-6)  # ratios are computed in float32
        torch.testing.assert_close(p.detach() - p0, -group["lr"] * g, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(p.detach() - p0, -lr * g, rtol=1e-6, atol=1e-15)
    lo, hi = base * factor * clip[0], base * factor * clip[1]
    got = [g["lr"] for g in opt.param_groups]
    assert any(v == pytest.approx(hi) for v in got)  # clipped at the top
    assert any(v == pytest.approx(lo) for v in got)  # and at the bottom
    stats = ratio.last_lrs()
    assert stats["lr_min"] == pytest.approx(min(want)) and stats["lr_max"] == pytest.approx(max(want))
    assert min(want) <= stats["lr_median"] <= max(want)


def test_unused_or_zero_gradient_gets_ratio_one():
    model = tiny()
    extra = nn.Parameter(torch.ones(3, dtype=torch.float64))  # never used: grad stays None
    params = list(model.parameters()) + [extra]
    opt = torch.optim.SGD(per_tensor_param_groups(params, 1.0), lr=1.0)
    ratio = GradientRatio(opt, model[-1].parameters())
    nn.functional.cross_entropy(model(torch.randn(8, 4, dtype=torch.float64)), torch.randint(0, 3, (8,))).backward()
    model[2].bias.grad.zero_()
    ratio.update(0.1)
    r = ratio.last_ratios()
    assert r[-1] == 1.0 and r[3] == 1.0  # None grad, all-zero grad
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.1)
    assert r[4] != 1.0 or r[5] != 1.0  # the last layer's own tensors get real ratios


def test_needs_one_tensor_per_group():
    model = tiny()
    with pytest.raises(ValueError, match="per_tensor_param_groups"):
        GradientRatio(torch.optim.SGD(model.parameters(), lr=0.1), model[-1].parameters())


# ---------------------------------------------------------------- stability options


def _one():
    from cooplib.methods.one import build_one

    torch.manual_seed(0)
    return build_one("resnet8", 5, 3, branches=3)


def test_the_gate_bias_before_batchnorm_has_no_gradient_and_is_excluded():
    from cooplib.engine.gradratio import exclusions

    learner = _one().train()
    heads = learner(torch.randn(16, 3, 8, 8))
    learner.loss(heads, torch.randint(0, 5, (16,)), TrainState(0, 1, 0, 1))[0].backward()
    bias, weight = learner.net.gate_fc.bias, learner.net.gate_fc.weight
    # the BN subtracts the batch mean: the bias gradient is rounding noise, the weight's is not
    assert float(bias.grad.abs().max()) < 1e-5 * float(weight.grad.abs().max())
    assert exclusions(learner, "none") == []
    pre = exclusions(learner, "pre_bn")
    assert len(pre) == 1 and pre[0] is bias
    bns = [m for m in learner.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    both = exclusions(learner, "pre_bn+bn")
    assert len(both) == 1 + 2 * len(bns) and both[0] is bias
    assert {id(p) for p in both[1:]} == {id(p) for m in bns for p in (m.weight, m.bias)}
    with pytest.raises(ValueError, match="exclude"):
        exclusions(learner, "bn")


def test_excluded_tensors_keep_the_schedule_lr_and_are_not_counted():
    learner = _one().train()
    opt = torch.optim.SGD(per_tensor_param_groups(learner.parameters(), 0.1), lr=0.1, momentum=0.9)
    plain = GradientRatio(opt, learner.last_layer_parameters())
    stable = GradientRatio.for_learner(opt, learner, exclude="pre_bn")

    heads = learner(torch.randn(16, 3, 8, 8))
    learner.loss(heads, torch.randint(0, 5, (16,)), TrainState(0, 1, 0, 1))[0].backward()
    index = [id(g["params"][0]) for g in opt.param_groups].index(id(learner.net.gate_fc.bias))
    plain.update(0.5)
    assert plain.last_ratios()[index] == 20.0  # what the issue measured: noise hits the cap
    stable.update(0.5)
    r = stable.last_ratios()
    assert r[index] == 1.0 and opt.param_groups[index]["lr"] == 0.1 * 0.5
    # every other tensor gets exactly what the plain scheduler gives it
    assert [x for i, x in enumerate(r) if i != index] == [x for i, x in enumerate(plain.last_ratios()) if i != index]
    assert stable.bound_counts()[index] == (0, 0, 0) and plain.bound_counts()[index] == (0, 1, 1)
    assert stable.epoch_stats()["gradratio/excluded"] == 1.0
    with pytest.raises(ValueError, match="not in the optimizer"):
        GradientRatio(opt, learner.last_layer_parameters(), exclude=[nn.Parameter(torch.ones(1))])


def _fixed_grads(model: nn.Sequential, scales: list[float]) -> None:
    """Gradient of every tensor = scale * ones (so mean |g| = scale)."""
    for p, s in zip(model.parameters(), scales):
        p.grad = torch.full_like(p, s)


def test_ema_smooths_the_log_ratio_and_clip_statistics_count_steps_at_a_bound():
    model = tiny()  # 6 tensors; the last two are the last layer
    opt = torch.optim.SGD(per_tensor_param_groups(model.parameters(), 1.0), lr=1.0)
    ratio = GradientRatio(opt, model[-1].parameters(), clip=(0.1, 20.0), ema=0.5)
    # step 1: last layer mean |g| = 1; tensor 0 ratio 4, tensor 1 ratio 100 (clipped), tensor 2 ratio 1/50
    _fixed_grads(model, [0.25, 0.01, 50.0, 1.0, 1.0, 1.0])
    ratio.update(1.0)
    r1 = ratio.last_ratios()
    assert r1[0] == pytest.approx(4.0) and r1[1] == 20.0 and r1[2] == 0.1  # the first step starts the average
    # step 2: tensor 0 ratio 1/4 -> geometric mean of 4 and 1/4 = 1; tensor 1 ratio 1 -> sqrt(100) = 10
    _fixed_grads(model, [4.0, 1.0, 50.0, 1.0, 1.0, 1.0])
    ratio.update(1.0)
    r2 = ratio.last_ratios()
    assert r2[0] == pytest.approx(1.0, rel=1e-5) and r2[1] == pytest.approx(10.0, rel=1e-5) and r2[2] == 0.1
    assert ratio.bound_counts()[:3] == [(0, 0, 2), (0, 1, 2), (2, 0, 2)]
    stats = ratio.last_lrs()  # what the loop records once per epoch
    assert stats["gradratio/at_hi"] == pytest.approx(100.0 * 1 / 12)
    assert stats["gradratio/at_lo"] == pytest.approx(100.0 * 2 / 12)
    assert stats["gradratio/worst_at_bound"] == 100.0 and stats["gradratio/excluded"] == 0.0
    assert ratio.bound_counts()[1] == (0, 0, 0)  # restarted for the next epoch
    # without ema the same steps give the raw ratio
    raw = GradientRatio(opt, model[-1].parameters())
    raw.update(1.0)
    assert raw.last_ratios()[0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="ema"):
        GradientRatio(opt, model[-1].parameters(), ema=1.0)


def test_ema_keeps_the_average_of_a_tensor_without_gradient():
    model = tiny()
    opt = torch.optim.SGD(per_tensor_param_groups(model.parameters(), 1.0), lr=1.0)
    ratio = GradientRatio(opt, model[-1].parameters(), ema=0.9)
    _fixed_grads(model, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    ratio.update(1.0)
    model[0].weight.grad = None  # unused this step
    ratio.update(1.0)
    assert ratio.last_ratios()[0] == pytest.approx(2.0)
    assert ratio.bound_counts()[0] == (0, 0, 1)


def test_the_run_config_reaches_the_scheduler_and_the_run_record(tmp_path):
    """grad_ratio_exclude / grad_ratio_ema pass from RunConfig to the scheduler; the run's
    records count the excluded tensor, and the defaults keep the old run names."""
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    base = RunConfig(method="one", model="resnet8", dataset="digits", train_size=100, test_size=50, epochs=1,
                     schedule="constant", batch_size=50, lr=0.05, grad_ratio_lr=True, device="cpu", progress=False, tensorboard=False,
                     method_args={"branches": 2})
    assert base.replace(grad_ratio_exclude="none", grad_ratio_ema=0.0).run_name() == base.run_name()
    stable = base.replace(grad_ratio_exclude="pre_bn", grad_ratio_ema=0.9)
    assert stable.run_name() != base.run_name()
    plain = experiment.run(base, tmp_path).metrics[-1]
    record = experiment.run(stable, tmp_path).metrics[-1]
    assert plain["gradratio/excluded"] == 0 and record["gradratio/excluded"] >= 1
