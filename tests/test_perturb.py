"""Perturbation (flat-minimum) analysis: directions, exact restore, closed-form curves."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cooplib.engine import metrics
from cooplib.analysis import perturb




@pytest.fixture
def loaders(tiny_data):
    return perturb.eval_loaders(tiny_data, batch_size=48)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(module: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in module.state_dict().items())


class AsHeads(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"net": self.net(x)}


def test_unit_direction_has_norm_one_over_all_trainable_params(net):
    v = perturb.random_direction(net, 3)
    params = perturb.trainable_parameters(net)
    assert [t.shape for t in v] == [p.shape for p in params]
    flat = torch.cat([t.flatten().double() for t in v])
    assert flat.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert all(t.abs().sum() > 0 for t in v)  # BN params are part of the unit direction


def test_filter_direction_matches_each_filter_norm(net):
    v = perturb.random_direction(net, 3, normalize="filter")
    for t, p in zip(v, perturb.trainable_parameters(net)):
        if p.dim() <= 1:
            assert torch.count_nonzero(t) == 0  # BN scale/shift and biases ignored
        else:
            assert torch.allclose(t.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)
    copied = perturb.random_direction(net, 3, normalize="filter", one_dim="copy")
    for t, p in zip(copied, perturb.trainable_parameters(net)):
        if p.dim() <= 1:
            assert torch.equal(t, p.detach())


def test_directions_reproducible_and_seed_dependent(net):
    a, b, c = (perturb.random_direction(net, s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))


def test_frozen_params_are_not_perturbed(net):
    net.fc.weight.requires_grad_(False)
    assert all(p is not net.fc.weight for p in perturb.trainable_parameters(net))
    assert len(perturb.random_direction(net, 0)) == len(list(net.parameters())) - 1


def test_zero_distance_is_the_unperturbed_model_and_curves_are_reproducible(net, loaders):
    train_loader, test_loader = loaders
    net.train()  # evaluated in eval mode all the same; the mode is given back
    before = snapshot(net)
    kw = dict(distances=(0.0, 2.0, 4.0), directions=2, progress=False)
    df = perturb.perturbation_curves(net, train_loader, test_loader, seed=0, **kw)
    assert list(df.columns) == ["direction", "distance", "train_ce", "train_error", "test_ce", "test_error"]
    assert len(df) == 6
    tr = metrics.evaluate(AsHeads(net), train_loader, None, torch.device("cpu"))
    te = metrics.evaluate(AsHeads(net), test_loader, None, torch.device("cpu"))
    zero = df[df.distance == 0]
    assert (zero.train_ce == tr["net/loss"]).all() and (zero.test_error == 100 - te["net/top1"]).all()
    far = df[df.distance == 4.0]
    assert (far.train_ce != tr["net/loss"]).all()
    assert same_state(net, before)  # weights restored bit-exactly, buffers untouched
    assert net.training and net.fc.training
    again = perturb.perturbation_curves(net, train_loader, test_loader, seed=0, **kw)
    pd.testing.assert_frame_equal(df, again)
    other = perturb.perturbation_curves(net, train_loader, test_loader, seed=1, **kw)
    assert not np.allclose(other[other.distance > 0].train_ce, df[df.distance > 0].train_ce)


def test_filter_mode_runs_and_restores(net, loaders):
    before = snapshot(net)
    df = perturb.perturbation_curves(net, *loaders, distances=(0, 1), directions=1,
                                     normalize="filter", max_batches=1, progress=False)
    assert len(df) == 2 and df.train_ce.notna().all()
    assert same_state(net, before)


def test_weights_restored_after_an_exception_midway(net, loaders):
    net.train()
    before = snapshot(net)
    calls = {"n": 0}

    def boom(module, inputs):
        calls["n"] += 1
        if calls["n"] == 5:  # inside a perturbed evaluation
            raise RuntimeError("injected")

    handle = net.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            perturb.perturbation_curves(net, *loaders, distances=(0, 1, 2), directions=2, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 5
    assert same_state(net, before)
    assert all(m.training for m in net.modules())


def test_augmenting_train_loader_is_refused(net, tiny_data):
    from cooplib.data import DeviceLoader

    aug = DeviceLoader(tiny_data.x_train, tiny_data.y_train, 32, device="cpu", mean=tiny_data.mean,
                       std=tiny_data.std, augment=tiny_data.augment)
    with pytest.raises(ValueError, match="augment"):
        perturb.perturbation_curves(net, aug, aug, progress=False)


class Scalar(nn.Module):
    """logits = [w * x, 0]: one parameter, so a unit direction is +1 or -1."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return torch.stack([self.w * x[:, 0], torch.zeros_like(x[:, 0])], dim=1)


def test_closed_form_one_parameter_model():
    x = torch.tensor([[1.0], [2.0], [-0.5]])
    y = torch.tensor([0, 0, 1])
    batches = [(x, y)]
    model = Scalar(0.7)
    dists = (0.0, 0.5, 1.5, 3.0)
    df = perturb.perturbation_curves(model, batches, batches, distances=dists, directions=3, progress=False)
    gen = torch.Generator().manual_seed(0)  # the function draws direction i after i-1 from seed 0
    signs = [float(perturb.random_direction(model, gen)[0]) for _ in range(3)]
    assert all(abs(s) == pytest.approx(1.0) for s in signs)
    for i, s in enumerate(signs):
        for d in dists:
            w = 0.7 + s * d
            # CE with logits [w x, 0]: softplus(-w x) for class 0, softplus(w x) for class 1
            z = w * x[:, 0]
            ce = np.mean([math.log1p(math.exp(-float(z[0]))), math.log1p(math.exp(-float(z[1]))),
                          math.log1p(math.exp(float(z[2])))])
            err = 100 * np.mean([float(z[0]) <= 0, float(z[1]) <= 0, float(z[2]) > 0])
            row = df[(df.direction == i) & (df.distance == d)].iloc[0]
            assert row.train_ce == pytest.approx(ce, rel=1e-5)
            assert row.test_error == pytest.approx(err)
    assert model.w.item() == pytest.approx(0.7) and torch.equal(model.w.data, torch.tensor(0.7))


def test_linear_model_matches_hand_computation_and_dict_heads():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)

    class Heads(nn.Module):
        primary_head = "b"

        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            z = self.lin(x)
            return {"a": -z, "b": z}

    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g)
    batches = [(xs[:8], ys[:8]), (xs[8:], ys[8:])]
    model = Heads()
    df = perturb.perturbation_curves(model, batches, batches[:1], distances=(0, 2.5), directions=2, seed=7, progress=False)
    gen = torch.Generator().manual_seed(7)
    for i in range(2):
        vw, vb = perturb.random_direction(model, gen)
        assert (vw.square().sum() + vb.square().sum()).item() == pytest.approx(1.0, abs=1e-6)
        w, b = lin.weight.detach() + 2.5 * vw, lin.bias.detach() + 2.5 * vb
        z = xs @ w.T + b
        ce = (torch.logsumexp(z, 1) - z.gather(1, ys[:, None])[:, 0]).mean().item()
        err = 100 * (z[:8].argmax(1) != ys[:8]).float().mean().item()
        row = df[(df.direction == i) & (df.distance == 2.5)].iloc[0]
        assert row.train_ce == pytest.approx(ce, rel=1e-5) and row.test_error == pytest.approx(err)
    # max_batches keeps the first batch only
    one = perturb.perturbation_curves(model, batches, batches, distances=(0,), directions=1, max_batches=1, progress=False)
    z0 = lin(xs[:8]).detach()
    assert one.train_ce[0] == pytest.approx(F.cross_entropy(z0, ys[:8]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="not among"):
        perturb.perturbation_curves(model, batches, batches, distances=(0,), directions=1, head="c", progress=False)


def test_default_grids_and_bad_arguments(net, loaders):
    assert perturb.DEFAULT_DISTANCES["unit"] == (0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
    assert perturb.DEFAULT_DISTANCES["filter"][3] == 0.3
    with pytest.raises(ValueError, match="normalize"):
        perturb.perturbation_curves(net, *loaders, normalize="layer", progress=False)
    with pytest.raises(ValueError, match="distances"):
        perturb.perturbation_curves(net, *loaders, distances=(0, math.inf), progress=False)

