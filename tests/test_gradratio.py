"""Gradient-ratio scheduler: the per-tensor lrs it sets are the ones SGD applies."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib.gradratio import GradientRatio, per_tensor_param_groups


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
