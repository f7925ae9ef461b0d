"""ONE: the multi-branch network, its loss (against a hand computation), costs, export."""
from __future__ import annotations

import math

import pytest
import torch

from cooplib import losses
from cooplib.models.flops import cost, count_params
from cooplib.methods.base import TrainState
from cooplib.methods.one import ONE, build_one, sigmoid_ramp
from cooplib.models import CifarResNet, build
from cooplib.models.multibranch import MultiBranchResNet, export_branch

CIFAR = (3, 32, 32)
SMALL = (3, 8, 8)


def state(epoch: int = 0) -> TrainState:
    return TrainState(epoch=epoch, epochs=300, step=0, steps_per_epoch=10)


def hand_log_softmax(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    zmax = z.max(dim=1, keepdim=True).values
    return z - zmax - (z - zmax).exp().sum(1, keepdim=True).log()


def hand_ce(z: torch.Tensor, y: torch.Tensor) -> float:
    lp = hand_log_softmax(z)
    return float(-lp[torch.arange(len(y)), y].mean())


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """t^2 * mean_b sum_c p_t (log p_t - log p_s), with p = softmax(z / t)."""
    lt, ls = hand_log_softmax(teacher / t), hand_log_softmax(student / t)
    return float((lt.exp() * (lt - ls)).sum(1).mean() * t * t)


def random_heads(m: int = 3, b: int = 6, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(b, c, generator=g) * 3 for _ in range(m)]
    gate = torch.softmax(torch.randn(b, m, generator=g), 1)
    heads = {f"branch{i}": zi for i, zi in enumerate(z)}
    heads["ensemble"] = sum(gate[:, i : i + 1] * z[i] for i in range(m))
    heads["average"] = sum(z) / m
    y = torch.randint(0, c, (b,), generator=g)
    return heads, y


def tiny_one(m: int = 3, **kw) -> ONE:
    return build_one("resnet8", 5, 3, branches=m, **kw)


def test_loss_matches_hand_computation():
    heads, y = random_heads()
    lrn = tiny_one(temperature=3.0)
    total, parts = lrn.loss(heads, y, state())
    ce_b = sum(hand_ce(heads[f"branch{i}"], y) for i in range(3))
    ce_t = hand_ce(heads["ensemble"], y)
    kl = sum(hand_kl(heads[f"branch{i}"], heads["ensemble"], 3.0) for i in range(3))
    assert set(parts) == {"ce/branches", "ce/ensemble", "kl/branches"}
    assert float(parts["ce/branches"]) == pytest.approx(ce_b, rel=1e-5)
    assert float(parts["ce/ensemble"]) == pytest.approx(ce_t, rel=1e-5)
    assert float(parts["kl/branches"]) == pytest.approx(kl, rel=1e-5)
    assert kl > 0.1  # the KL term is not trivially zero for these logits
    assert float(total) == pytest.approx(ce_b + ce_t + kl, rel=1e-5)


def test_temperature_enters_as_T_squared_times_kl_of_softened():
    heads, y = random_heads(seed=1)
    for t in (1.0, 4.0):
        _, parts = tiny_one(temperature=t).loss(heads, y, state())
        want = sum(hand_kl(heads[f"branch{i}"], heads["ensemble"], t) for i in range(3))
        assert float(parts["kl/branches"]) == pytest.approx(want, rel=1e-5)


def test_ablations_change_exactly_their_terms():
    heads, y = random_heads(seed=2)
    _, full = tiny_one().loss(heads, y, state())

    total, nodist = tiny_one(distill=False).loss(heads, y, state())
    assert set(nodist) == {"ce/branches", "ce/ensemble"}
    assert torch.equal(nodist["ce/branches"], full["ce/branches"])
    assert torch.equal(nodist["ce/ensemble"], full["ce/ensemble"])
    assert float(total) == pytest.approx(float(full["ce/branches"] + full["ce/ensemble"]))

    total, avg = tiny_one(teacher="average").loss(heads, y, state())
    assert torch.equal(avg["ce/branches"], full["ce/branches"])
    assert float(avg["ce/average"]) == pytest.approx(hand_ce(heads["average"], y), rel=1e-5)
    assert float(avg["ce/average"]) != pytest.approx(float(full["ce/ensemble"]))
    kl_avg = sum(hand_kl(heads[f"branch{i}"], heads["average"], 3.0) for i in range(3))
    assert float(avg["kl/branches"]) == pytest.approx(kl_avg, rel=1e-5)


def test_kl_ramp():
    heads, y = random_heads(seed=3)
    _, plain = tiny_one().loss(heads, y, state(0))
    lrn = tiny_one(ramp_epochs=80)
    for epoch, w in [(0, math.exp(-5)), (40, math.exp(-5 * 0.25)), (79, math.exp(-5 / 80**2)), (80, 1.0), (200, 1.0)]:
        _, parts = lrn.loss(heads, y, state(epoch))
        assert float(parts["kl/branches"]) == pytest.approx(w * float(plain["kl/branches"]), rel=1e-6)
        assert torch.equal(parts["ce/branches"], plain["ce/branches"])
    assert sigmoid_ramp(5, 0) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="teacher"):
        tiny_one(teacher="mean")
    with pytest.raises(ValueError, match="temperature"):
        tiny_one(temperature=0)
    with pytest.raises(ValueError, match="branches"):
        MultiBranchResNet("resnet8", 5, branches=0)


def test_heads_gate_and_deployable():
    torch.manual_seed(0)
    lrn = tiny_one(m=4)
    x = torch.randn(6, *SMALL)
    heads = lrn(x)
    assert set(heads) == {"branch0", "branch1", "branch2", "branch3", "ensemble", "average"}
    assert all(v.shape == (6, 5) for v in heads.values())
    assert lrn.primary_head == "branch0" and lrn.method == "one"
    lrn.eval()
    with torch.no_grad():
        heads, g = lrn.net.forward_with_gate(x)
        g2 = lrn.net.gate_weights(x)
    torch.testing.assert_close(g, g2)
    assert g.shape == (6, 4) and (g >= 0).all()
    torch.testing.assert_close(g.sum(1), torch.ones(6))
    z = torch.stack([heads[f"branch{i}"] for i in range(4)], 1)
    torch.testing.assert_close(heads["ensemble"], (g[:, :, None] * z).sum(1))
    torch.testing.assert_close(heads["average"], z.mean(1))
    with torch.no_grad():
        torch.testing.assert_close(lrn.deployable()(x), heads["branch0"])
    # the deployed net shares the parameters, it does not copy them
    assert {id(p) for p in lrn.deployable().parameters()} <= {id(p) for p in lrn.parameters()}
    fc = {id(p) for p in lrn.last_layer_parameters()}
    assert fc == {id(p) for b in lrn.net.branches for p in b.fc.parameters()} and len(fc) == 8


def test_export_branch_matches_head():
    torch.manual_seed(1)
    lrn = tiny_one()
    x = torch.randn(4, *SMALL)
    lrn.train()
    lrn(torch.randn(8, *SMALL))  # move BN running stats away from their init
    lrn.eval()
    for i in (0, 2):
        net = export_branch(lrn.net, i)
        assert type(net) is CifarResNet and not net.training
        assert net.state_dict().keys() == build("resnet8", 5).state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(net(x), lrn(x)[f"branch{i}"], rtol=0, atol=0)
        assert all(p.data_ptr() != q.data_ptr() for p in net.parameters() for q in lrn.parameters())


def test_branch0_initialised_like_a_plain_network():
    torch.manual_seed(7)
    ref = build("resnet8", 5)
    torch.manual_seed(7)
    m = MultiBranchResNet("resnet8", 5, branches=3)
    sd = m.branch_net(0).state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    # other branches are independently initialised
    assert not torch.equal(m.branches[0].fc.weight, m.branches[1].fc.weight)


def meta_one(model: str, **kw) -> ONE:
    """FLOPs depend on shapes only: the meta device counts them without computing."""
    with torch.device("meta"):
        return build_one(model, 100, 3, **kw)


def test_cost_one3_resnet32_matches_paper():
    c = cost(meta_one("resnet32", branches=3), CIFAR)
    assert c["train_flops"] == 228_464_320 and f"{c['train_flops']:.3e}" == "2.285e+08"
    assert c["test_flops"] == 138_260_992 and f"{c['test_flops']:.3e}" == "1.383e+08"
    assert c["test_params"] == 472_756
    assert round(c["params"] / 1e6, 2) == 1.19


def test_cost_one3_bottleneck_resnet110():
    c = cost(meta_one("resnet110_bottleneck", branches=3), CIFAR)
    assert c["train_flops"] == 828_889_856 and f"{c['train_flops']:.3e}" == "8.289e+08"
    assert c["test_flops"] == 495_339_520


def test_one_branch_works():
    torch.manual_seed(0)
    lrn = tiny_one(m=1)
    x, y = torch.randn(4, *SMALL), torch.randint(0, 5, (4,))
    heads = lrn(x)
    torch.testing.assert_close(heads["ensemble"], heads["branch0"])
    total, parts = lrn.loss(heads, y, state())
    assert float(parts["kl/branches"].detach()) == pytest.approx(0.0, abs=1e-6)
    total.backward()


def test_unshared_is_m_full_networks_plus_gate():
    m = 3
    net = MultiBranchResNet("resnet8", 5, branches=m, share=False)
    full = count_params(build("resnet8", 5))
    c2 = build("resnet8", 5).feature_dims[1]
    assert count_params(net) == m * full + (c2 * m + m) + 2 * m  # Linear + BatchNorm1d
    x = torch.randn(3, *SMALL)
    net.eval()
    with torch.no_grad():
        heads = net(x)
        assert set(heads) >= {"branch0", "branch1", "branch2", "ensemble"}
        torch.testing.assert_close(export_branch(net, 1)(x), heads["branch1"], rtol=0, atol=0)
        torch.testing.assert_close(net.gate_weights(x).sum(1), torch.ones(3))
    # no layer is shared between the networks
    ptrs = [{p.data_ptr() for p in b.parameters()} for b in net.branches]
    assert not (ptrs[0] & ptrs[1])


def _gate_grads(lrn: ONE) -> list[torch.Tensor | None]:
    return [p.grad for p in (*lrn.net.gate_fc.parameters(), *lrn.net.gate_bn.parameters())]


def test_kl_does_not_train_the_teacher():
    torch.manual_seed(0)
    lrn = tiny_one()
    x, y = torch.randn(8, *SMALL), torch.randint(0, 5, (8,))
    _, parts = lrn.loss(lrn(x), y, state())
    parts["kl/branches"].backward()
    assert all(g is None or not g.any() for g in _gate_grads(lrn))
    assert lrn.net.branches[1].fc.weight.grad.abs().sum() > 0  # branches do learn from it
    # control: a KL without detaching the teacher would reach the gate
    lrn.zero_grad(set_to_none=True)
    heads = lrn(x)
    sum(losses.kd_kl(heads[f"branch{i}"], heads["ensemble"], 3.0) for i in range(3)).backward()
    assert any(g is not None and g.abs().sum() > 0 for g in _gate_grads(lrn))


def test_teacher_ce_trains_the_gate():
    torch.manual_seed(0)
    lrn = tiny_one()
    x, y = torch.randn(8, *SMALL), torch.randint(0, 5, (8,))
    _, parts = lrn.loss(lrn(x), y, state())
    parts["ce/ensemble"].backward()
    assert lrn.net.gate_fc.weight.grad.abs().sum() > 0
