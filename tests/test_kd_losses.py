"""Distillation losses against hand computations on fixed tensors, and RKD's invariance."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cooplib import losses
from cooplib.methods.base import TrainState
from cooplib.methods.kd import Distill, torchdistill_kd, weight_strength
from torch import nn

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def smooth_l1(a, b):
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()


def test_hint_is_elementwise_mean_squared_error():
    s, t = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    assert torch.allclose(losses.hint_mse(s, t), ((s - t) ** 2).sum() / s.numel())


def test_attention_transfer_hand():
    s, t = rand(3, 4, 5, 5), rand(3, 6, 5, 5, seed=1)  # channel counts may differ
    def at(f):
        a = (f ** 2).mean(1).reshape(3, -1)
        return a / a.norm(dim=1, keepdim=True)
    assert torch.allclose(losses.attention_transfer(s, t), ((at(s) - at(t)) ** 2).mean(), rtol=1e-5)


def test_factor_transfer_hand():
    s, t = rand(3, 2, 4, 4), rand(3, 2, 4, 4, seed=1)
    ns = s.reshape(3, -1) / s.reshape(3, -1).norm(dim=1, keepdim=True)
    nt = t.reshape(3, -1) / t.reshape(3, -1).norm(dim=1, keepdim=True)
    assert torch.allclose(losses.factor_transfer(s, t, "torchdistill"), (ns - nt).abs().mean(), rtol=1e-5)


def hand_rkd(s, t):
    n = len(s)
    def dist(e):
        d = torch.tensor([[float((e[i] - e[j]).norm()) for j in range(n)] for i in range(n)], dtype=torch.float64)
        return d / d[~torch.eye(n, dtype=bool)].mean()
    def angles(e):
        out = torch.zeros(n, n, n, dtype=torch.float64)
        for i, j, k in itertools.product(range(n), repeat=3):
            u, v = e[i] - e[j], e[k] - e[j]
            if i != j and k != j:
                out[j, i, k] = float(u @ v / (u.norm() * v.norm()))
        return out.flatten()
    return 25 * smooth_l1(dist(s.double()), dist(t.double())) + 50 * smooth_l1(angles(s.double()), angles(t.double()))


def test_rkd_hand():
    s, t = rand(5, 3), 3 * rand(5, 3, seed=1)
    assert torch.allclose(losses.rkd(s, t).double(), hand_rkd(s, t), rtol=1e-4)


def test_rkd_distances_diagonal_exactly_zero_and_float32():
    e = rand(6, 4).bfloat16()
    d = losses.pairwise_distances(e)
    assert d.dtype == torch.float32 and torch.all(d.diagonal() == 0) and torch.all(d[~torch.eye(6, dtype=bool)] > 0)


def test_rkd_gradient_is_orthogonal_to_the_embedding():
    """RKD is invariant to the student embedding's scale, so d/d lambda L(lambda s) = <grad, s> = 0."""
    t = rand(16, 8, seed=1)
    s = rand(16, 8).requires_grad_(True)
    losses.rkd(s, t).backward()
    cos = (s.grad * s).sum() / (s.grad.norm() * s.norm())
    assert float(s.grad.norm()) > 0 and abs(float(cos.detach())) < 1e-4
    assert torch.allclose(losses.rkd(3.7 * s, t), losses.rkd(s, t), rtol=1e-5)
    # the collapse bug: a detached mean makes the loss scale-dependent, the gradient is not orthogonal
    s2 = s.detach().clone().requires_grad_(True)
    d = losses.pairwise_distances(s2)
    bad = F.smooth_l1_loss(d / d[d > 0].mean().detach(), losses._normalised_distances(t))
    bad.backward()
    assert abs(float((s2.grad * s2.detach()).sum() / (s2.grad.norm() * s2.detach().norm()))) > 1e-2


def test_rkd_under_bf16_autocast_is_finite_float32():
    t = rand(8, 4, seed=1)
    s = rand(8, 4).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.rkd(s @ torch.eye(4), t)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_nst_hand():
    s, t = rand(2, 3, 4, 4), rand(2, 5, 4, 4, seed=1)
    def norm(f):
        f = f.reshape(2, f.shape[1], -1)
        return f / f.norm(dim=2, keepdim=True)
    fs, ft = norm(s), norm(t)
    def k(a, b):  # mean over batch and channel pairs of (a_i . b_j)^2
        return torch.stack([(a[n] @ b[n].T) ** 2 for n in range(2)]).mean()
    assert torch.allclose(losses.nst(s, t), k(ft, ft) - 2 * k(fs, ft) + k(fs, fs), rtol=1e-5)


def test_pkt_hand():
    s, t = rand(6, 4), rand(6, 4, seed=1)
    def kern(e):
        e = e / e.norm(dim=1, keepdim=True)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdim=True)
    ks, kt = kern(s), kern(t)
    assert torch.allclose(losses.pkt(s, t), (kt * torch.log(kt / ks)).mean(), rtol=1e-4)


def hand_kd(s, t, temp):
    pt = torch.softmax(t / temp, 1)
    return temp ** 2 * (pt * (torch.log(pt) - torch.log_softmax(s / temp, 1))).sum(1).mean()


class Logits(nn.Module):
    """A 'network' with named stages whose logits are its input's flat first 5 values."""

    def __init__(self):
        super().__init__()
        self.layer1, self.layer2, self.layer3 = nn.Identity(), nn.Identity(), nn.Identity()
        self.pool = nn.Flatten()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))


def test_kd_learner_matches_hand_and_torchdistill():
    torch.manual_seed(0)
    x, y = rand(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    for convention, expected in (("repdistiller", lambda ce, kd: 0.1 * ce + 0.9 * kd),
                                 ("seed", lambda ce, kd: 0.5 * ce + 0.5 * kd)):
        learner = Distill("kd", Logits(), Logits(), in_channels=5, convention=convention, label_smoothing=0.0).train()
        heads = learner(x)
        zs, zt = heads["net"].detach(), learner.teacher(x).detach()
        total, parts = learner.loss(heads, y, STATE)
        ce = F.cross_entropy(zs, y)
        assert torch.allclose(parts["kd/net"], hand_kd(zs, zt, 4.0), rtol=1e-5)
        assert torch.allclose(total, expected(ce, hand_kd(zs, zt, 4.0)), rtol=1e-5)
    # torchdistill's alpha weights the hard loss: its alpha = 0.1 is RepDistiller's 0.1 CE + 0.9 KD
    assert torch.allclose(torchdistill_kd(zs, zt, y, alpha=0.1, temperature=4.0), 0.1 * ce + 0.9 * hand_kd(zs, zt, 4.0), rtol=1e-5)


def test_seed_convention_label_smoothing_and_weights():
    x, y = rand(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    learner = Distill("pkt", Logits(), Logits(), in_channels=5, convention="seed").train()
    heads = learner(x)
    total, parts = learner.loss(heads, y, STATE)
    ce_ls = F.cross_entropy(heads["net"].detach(), y, label_smoothing=0.1)
    assert torch.allclose(parts["ce/net"], ce_ls) and learner.weight == 30000.0
    assert torch.allclose(total, 0.5 * ce_ls + 0.5 * 30000.0 * parts["pkt/net"], rtol=1e-5)


@pytest.mark.parametrize("kind", ["rkd", "pkt"])
def test_published_weight_applied(kind):
    """RepDistiller's gamma 1 CE + beta L (the map-based methods are checked in test_kd_learner)."""
    x, y = rand(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    learner = Distill(kind, Logits(), Logits(), in_channels=5).train()
    total, parts = learner.loss(learner(x), y, STATE)
    w = {"at": 1000.0, "nst": 50.0, "rkd": 1.0, "pkt": 30000.0}[kind]
    assert math.isclose(float(total), float(parts["ce/net"] + w * parts[f"{kind}/net"]), rel_tol=1e-5)


def test_weight_strength_follows_the_terms_normalisation_over_positions():
    """AT's term on the same unit-norm maps at 4x fewer positions per side is 16x larger; FT's 4x."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g)
    # maps alike but for resolution: each position of the 8x8 map repeated 4x4 times
    small_s, small_t = s[:, :, ::4, ::4], t[:, :, ::4, ::4]
    big_s, big_t = (m.repeat_interleave(4, 2).repeat_interleave(4, 3) for m in (small_s, small_t))
    at_ratio = losses.attention_transfer(small_s, small_t) / losses.attention_transfer(big_s, big_t)
    ft_ratio = losses.factor_transfer(small_s, small_t) / losses.factor_transfer(big_s, big_t)
    assert at_ratio.item() == pytest.approx(weight_strength("at", (8, 8))) == pytest.approx(16.0)
    assert ft_ratio.item() == pytest.approx(weight_strength("ft", (8, 8))) == pytest.approx(4.0)
    assert weight_strength("kd", (8, 8)) == weight_strength("fitnet", (8, 8)) == 1.0
    assert weight_strength("at", (32, 32)) == 1.0
