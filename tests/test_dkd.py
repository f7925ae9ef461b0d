"""DKD against megvii-research/mdistiller@a08d46f mdistiller/distillers/DKD.py, re-implemented
here from the paper's decomposition (Zhao et al. 2022, eq. 1-5) on fixed logits: TCKD the
binary KL of (p_target, 1 - p_target), NCKD the KL of the renormalised non-target
probabilities (the target removed exactly, where mdistiller subtracts 1000)."""
from __future__ import annotations

import pytest
import torch

from cooplib import losses, models
from cooplib.methods.base import TrainState
from cooplib.methods.dkd import DKD, warmup_factor


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_dkd(zs, zt, y, alpha, beta, T):
    n, c = zs.shape
    tckd = nckd = 0.0
    for i in range(n):
        ps, pt = torch.softmax(zs[i] / T, 0), torch.softmax(zt[i] / T, 0)
        bs = torch.stack([ps[y[i]], 1 - ps[y[i]]])
        bt = torch.stack([pt[y[i]], 1 - pt[y[i]]])
        tckd = tckd + (bt * (bt / bs).log()).sum()
        keep = [j for j in range(c) if j != y[i]]
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd = nckd + (qt * (qt / qs).log()).sum()
    return T * T * (alpha * tckd + beta * nckd) / n


@pytest.mark.parametrize("alpha, beta, T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_equals_the_decomposition_with_its_gradient(alpha, beta, T):
    zs, zt, y = 3 * rand(5, 7), 3 * rand(5, 7, seed=1), torch.tensor([0, 3, 6, 2, 3])
    a = zs.clone().requires_grad_(True)
    b = zs.clone().requires_grad_(True)
    ours = losses.dkd(a, zt, y, alpha, beta, T)
    hand = hand_dkd(b, zt, y, alpha, beta, T)
    assert torch.allclose(ours.double(), hand, rtol=1e-5)
    (ga,), (gb,) = torch.autograd.grad(ours, [a]), torch.autograd.grad(hand, [b])
    assert torch.allclose(ga.double(), gb, rtol=1e-4, atol=1e-6 * float(gb.abs().max()))


def test_warmup_is_mdistillers_with_a_one_based_epoch():
    assert [warmup_factor(e, 240, 20) for e in (0, 9, 19, 30)] == [1 / 20, 10 / 20, 1.0, 1.0]
    # scaled with the schedule: 20 of 240 epochs -> 2 of 24
    assert [warmup_factor(e, 24, 20, scaled=True) for e in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert warmup_factor(0, 10, 0) == 1.0


def test_dkd_learner_total():
    torch.manual_seed(0)
    learner = DKD(models.build("resnet8", 5, 3), models.build("resnet8", 5, 3)).train()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 4])
    heads = learner(x)
    zs, zt = heads["net"].detach(), learner.teacher(x).detach()
    total, parts = learner.loss(heads, y, TrainState(epoch=4, epochs=240, step=0, steps_per_epoch=1))
    dkd = hand_dkd(zs.double(), zt.double(), y, 1.0, 8.0, 4.0)
    assert torch.allclose(parts["dkd/net"].double(), 5 / 20 * dkd, rtol=1e-5)
    assert torch.allclose(total, parts["ce/net"] + parts["dkd/net"], rtol=1e-6)
