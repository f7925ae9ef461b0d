"""KDCL (Guo et al., CVPR 2020; no official code, the paper's Sec. 3): each teacher rule and
the loss against formulas restated here on fixed tensors, views per student, a tiny run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cooplib.base.errors import ConfigError
from cooplib.base.registry import METHODS
from cooplib.methods import kdcl
from cooplib.methods.base import TrainState
from cooplib.methods.kdcl import KDCL

STATE = TrainState(0, 1, 0, 1)


def fixed(k=3, b=6, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, b, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return z, y


def ce_of(logits, label):
    """-log softmax(logits)[label] for one image, by hand."""
    m = max(logits)
    return -(logits[label] - m - math.log(sum(math.exp(v - m) for v in logits)))


def test_naive_picks_per_image_the_student_with_the_lowest_ce():
    z, y = fixed()
    got = kdcl.naive_teacher(z, y)
    for b in range(z.shape[1]):
        ces = [ce_of(z[i, b].tolist(), int(y[b])) for i in range(z.shape[0])]
        best = ces.index(min(ces))
        assert torch.equal(got[b], z[best, b].float())
    # each student wins somewhere on these tensors: a rule that picked one student per batch fails
    winners = {min(range(3), key=lambda i: ce_of(z[i, b].tolist(), int(y[b]))) for b in range(6)}
    assert len(winners) >= 2


def test_minlogit_is_the_classwise_min_of_target_subtracted_logits():
    z, y = fixed()
    got = kdcl.minlogit_teacher(z, y)
    for b in range(z.shape[1]):
        for c in range(z.shape[2]):
            want = min(float(z[i, b, c] - z[i, b, y[b]]) for i in range(z.shape[0]))
            assert float(got[b, c]) == pytest.approx(want, rel=1e-6, abs=1e-6)
        assert float(got[b, y[b]]) == 0.0
    # its CE is never above any student's, image by image
    for b in range(z.shape[1]):
        t = ce_of(got[b].double().tolist(), int(y[b]))
        assert all(t <= ce_of(z[i, b].tolist(), int(y[b])) + 1e-6 for i in range(z.shape[0]))


def test_mean_rule_is_the_mean_of_the_logits():
    z, y = fixed()
    torch.testing.assert_close(kdcl.mean_teacher(z, y), z.float().mean(0))


def test_simplex_projection_matches_a_bisection():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        v = torch.randn(4, generator=g, dtype=torch.float64) * 3
        lo, hi = float(v.min()) - 1, float(v.max())
        for _ in range(200):  # theta with sum(max(v - theta, 0)) = 1
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float((v - mid).clamp(min=0).sum()) > 1 else (lo, mid)
        torch.testing.assert_close(kdcl.project_simplex(v), (v - lo).clamp(min=0), rtol=0, atol=1e-9)


def _scipy_linear(z, y):
    from scipy.optimize import minimize

    zn, yn = z.numpy(), y.numpy()
    k = zn.shape[0]

    def f(w):
        comb = np.einsum("kbc,k->bc", zn, w)
        comb = comb - comb.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(comb).sum(1)) - comb[np.arange(len(yn)), yn]))

    res = minimize(f, np.full(k, 1.0 / k), method="SLSQP", bounds=[(0, 1)] * k,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"ftol": 1e-14, "maxiter": 500})
    return res.x, f(res.x), f


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_weights_minimise_the_batch_ce_over_the_simplex(seed):
    z, y = fixed(k=3, b=16, c=5, seed=seed)
    w = kdcl.linear_weights(z, y, steps=300)
    assert float(w.min()) >= 0 and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    w_ref, best, f = _scipy_linear(z, y)
    assert f(w.double().numpy()) <= best + 1e-5
    np.testing.assert_allclose(w.double().numpy(), w_ref, atol=5e-3)
    torch.testing.assert_close(kdcl.linear_teacher(z, y, 300), torch.einsum("kbc,k->bc", z.float(), w))


def test_linear_weights_go_to_a_dominant_student():
    z, y = fixed(k=3, b=16, c=5)
    z[1] = z[1] * 0.1
    z[1, torch.arange(16), y] += 8.0  # student 1 is confidently right everywhere
    w = kdcl.linear_weights(z, y, steps=300)
    w_ref, best, f = _scipy_linear(z, y)
    assert f(w.double().numpy()) <= best + 1e-5
    assert int(w.argmax()) == 1


def oracle_loss(z, y, teacher, temperature, weight):
    """sum_i CE(z_i, y) + weight * T^2 * KL(softmax(t/T) || softmax(z_i/T)), batch means, t constant."""
    t = teacher.detach().double()
    p_t = torch.softmax(t / temperature, 1)
    total = 0
    for zi in z:
        zi = zi.double()
        ce = -(torch.log_softmax(zi, 1)[torch.arange(len(y)), y]).mean()
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(zi / temperature, 1))).sum(1).mean()
        total = total + ce + weight * temperature ** 2 * kl
    return total


def hand_minlogit(z, y):
    k, b, c = z.shape
    return torch.tensor([[min(float(z[i, n, j] - z[i, n, y[n]]) for i in range(k)) for j in range(c)]
                         for n in range(b)])


@pytest.mark.parametrize("rule", ["minlogit", "naive", "linear", "mean"])
def test_loss_and_gradient_match_the_formula(rule):
    z0, y = fixed(k=3, b=6, c=5)
    z0 = z0.float()
    learner = KDCL([nn.Identity() for _ in range(3)], rule=rule, temperature=3.0, kd_weight=0.7)
    z = z0.clone().requires_grad_(True)
    heads = {f"peer{k}": z[k] for k in range(3)}
    total, parts = learner.loss(heads, y, STATE)
    total.backward()

    if rule == "minlogit":
        teacher = hand_minlogit(z0, y)
    elif rule == "naive":
        teacher = torch.stack([z0[min(range(3), key=lambda i: ce_of(z0[i, b].tolist(), int(y[b]))), b] for b in range(6)])
    elif rule == "mean":
        teacher = z0.mean(0)
    else:
        teacher = torch.einsum("kbc,k->bc", z0.double(), torch.as_tensor(_scipy_linear(z0.double(), y)[0]))
    zr = z0.double().clone().requires_grad_(True)
    want = oracle_loss(zr, y, teacher, 3.0, 0.7)
    want.backward()
    tol = 1e-3 if rule == "linear" else 1e-5  # linear: the solver's weights vs scipy's, to its tolerance
    assert float(total.detach()) == pytest.approx(float(want.detach()), rel=tol)
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=tol, atol=tol)
    assert set(parts) == {f"{t}/peer{k}" for t in ("ce", "kl") for k in range(3)}
    assert float(sum(parts.values()).detach()) == pytest.approx(float(total.detach()), rel=1e-6)


def test_kd_weight_zero_is_independent_training():
    z, y = fixed()
    learner = KDCL([nn.Identity(), nn.Identity(), nn.Identity()], kd_weight=0.0)
    total, parts = learner.loss({f"peer{k}": z[k].float() for k in range(3)}, y, STATE)
    want = sum(torch.nn.functional.cross_entropy(z[k], y) for k in range(3))
    assert float(total) == pytest.approx(float(want), rel=1e-6) and set(parts) == {"ce/peer0", "ce/peer1", "ce/peer2"}


def test_each_student_sees_its_own_view():
    torch.manual_seed(0)
    peers = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4)) for _ in range(3)]
    learner = KDCL(peers)
    assert learner.views == 3 and KDCL(peers, separate_views=False).views == 1
    x = torch.randn(3, 2, 3, 2, 2)
    heads = learner(x)
    for k in range(3):
        torch.testing.assert_close(heads[f"peer{k}"], peers[k](x[k]))
    torch.testing.assert_close(heads["average"], torch.stack([peers[k](x[k]) for k in range(3)]).mean(0))
    single = learner(x[0])  # evaluation: one batch for all
    for k in range(3):
        torch.testing.assert_close(single[f"peer{k}"], peers[k](x[0]))


def test_registry_options_and_clear_errors():
    learner = METHODS.build("kdcl", "resnet8", 10, 1, students=3, rule="naive")
    assert isinstance(learner, KDCL) and learner.num_peers == 3 and learner.views == 3 and learner.rule == "naive"
    hetero = METHODS.build("kdcl", "resnet8+resnet14", 10, 1)
    assert hetero.num_peers == 2
    with pytest.raises(ConfigError, match="minlogit"):
        METHODS.build("kdcl", "resnet8", 10, 1, rule="minlogt")
    with pytest.raises(ConfigError, match="students"):
        METHODS.build("kdcl", "resnet8+resnet14", 10, 1, students=3)
    with pytest.raises(ConfigError):
        METHODS.build("kdcl", "resnet8", 10, 1, students=1)


def test_tiny_digits_run_records_every_head(tmp_path):
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    cfg = RunConfig(method="kdcl", model="resnet8", dataset="digits", train_size=100, test_size=100, epochs=1,
                    milestones=[], batch_size=50, lr=0.05, device="cpu", progress=False, tensorboard=False,
                    method_args={"students": 2, "rule": "minlogit"})
    res = experiment.run(cfg, tmp_path)
    last = res.final["last"]
    for head in ("peer0", "peer1", "average"):
        assert f"test/{head}/top1" in last and f"test/{head}/top5" in last
    assert {"train/ce/peer0", "train/kl/peer1"} <= set(last)
    assert res.final["primary_head"] == "peer0"
