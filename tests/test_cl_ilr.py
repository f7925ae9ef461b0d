"""CL-ILR: the loss against a re-implementation of the references' formula on fixed
logits (and its gradient), backpropagation rescaling (exactly 1/K into the shared
layers), exact parameter counts, and a tiny run through `experiment.run`.

References: DefangChen/OKDDip train_one.py (--avg --bpscale) + models/model_cifar/resnet_one.py
at c6a05de892fc7d2b6767668548786688a388c2d6; winycg/MCL-OKD main_cifar_cl_ilr.py +
models/cl_ilr_resnet.py at 5de042a5fbd4829f82caa68facc7586f59ea3732.
"""
from __future__ import annotations

import math

import pytest
import torch

import cooplib.methods.cl_ilr  # noqa: F401  (registers "cl_ilr")
from cooplib import methods
from cooplib.base.errors import ConfigError
from cooplib.methods.base import TrainState
from cooplib.methods.cl_ilr import CLILR, build_cl_ilr
from cooplib.models import build
from cooplib.models.flops import cost, count_flops, count_params
from cooplib.models.shared_trunk import SharedTrunkNet, scale_grad

SMALL = (3, 8, 8)


def state(epoch: int = 0) -> TrainState:
    return TrainState(epoch=epoch, epochs=300, step=0, steps_per_epoch=10)


def fixed_logits(k: int = 4, b: int = 6, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(k, b, c, generator=g, dtype=torch.float64) * 3).float()
    return z.requires_grad_(True), torch.randint(0, c, (b,), generator=g)


def ref_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """DistillKL of main_cifar_cl_ilr.py / KL_Loss of OKDDip utils.py (without its 1e-7):
    T^2 * sum_c p_t (log p_t - log softmax(z_s / T)_c) / batch."""
    p_t = torch.softmax(teacher / t, dim=1)
    return t * t * (p_t * (torch.log(p_t) - torch.log_softmax(student / t, dim=1))).sum() / student.shape[0]


def ref_loss(z: torch.Tensor, y: torch.Tensor, t: float, w_ce: float, w_kl: float, detach: bool) -> torch.Tensor:
    """The references' loop: target of head i = sum over j != i of z_j / (K - 1)."""
    k = z.shape[0]
    total = 0.0
    for i in range(k):
        target = 0.0
        for j in range(k):
            if j != i:
                target = target + z[j] / (k - 1)
        target = target.detach() if detach else target
        ce = -torch.log_softmax(z[i], dim=1)[torch.arange(len(y)), y].mean()
        total = total + w_ce * ce + w_kl * ref_kl(z[i], target, t)
    return total


def learner(**kw) -> CLILR:
    return build_cl_ilr("resnet8", 5, 3, **kw)


@pytest.mark.parametrize("kw,w_ce,w_kl,t", [
    ({}, 1.0, 1.0, 3.0),  # OKDDip's constants
    ({"temperature": 2.0, "ce_weight": 0.5, "kl_weight": 0.5}, 0.5, 0.5, 2.0),  # MCL-OKD's
])
def test_loss_and_gradient_match_the_reference_formula(kw, w_ce, w_kl, t):
    z, y = fixed_logits()
    lrn = learner(**kw)
    heads = {f"branch{i}": z[i] for i in range(4)}
    total, parts = lrn.loss(heads, y, state())
    z_ref = z.detach().clone().requires_grad_(True)
    expected = ref_loss(z_ref, y, t, w_ce, w_kl, detach=True)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    assert set(parts) == {"ce/branches", "kl/branches"}
    torch.testing.assert_close(parts["ce/branches"] + parts["kl/branches"], total)
    (g,) = torch.autograd.grad(total, z)
    (g_ref,) = torch.autograd.grad(expected, z_ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    # a mean over ALL heads (the head itself included) would give another value
    mean_all = sum(w_ce * -torch.log_softmax(z_ref[i], 1)[torch.arange(6), y].mean()
                   + w_kl * ref_kl(z_ref[i], z_ref.mean(0).detach(), t) for i in range(4))
    assert not torch.allclose(total, mean_all, rtol=1e-3)


def test_detached_target_gives_each_head_only_its_own_gradient():
    z, y = fixed_logits()
    lrn = learner()
    _, parts = lrn.loss({f"branch{i}": z[i] for i in range(4)}, y, state())
    (g,) = torch.autograd.grad(parts["kl/branches"], z)
    # head i's gradient is that of its own KL with a constant target
    for i in range(4):
        zi = z[i].detach().clone().requires_grad_(True)
        target = (z.detach().sum(0) - z.detach()[i]) / 3
        (gi,) = torch.autograd.grad(ref_kl(zi, target, 3.0), zi)
        torch.testing.assert_close(g[i], gi, rtol=1e-5, atol=1e-7)
    # OKDDip's code does not detach: the KL then also reaches the heads through the targets
    lrn_open = learner(detach_target=False)
    total, _ = lrn_open.loss({f"branch{i}": z[i] for i in range(4)}, y, state())
    z_ref = z.detach().clone().requires_grad_(True)
    expected = ref_loss(z_ref, y, 3.0, 1.0, 1.0, detach=False)
    (g_open,) = torch.autograd.grad(total, z)
    (g_ref,) = torch.autograd.grad(expected, z_ref)
    torch.testing.assert_close(g_open, g_ref, rtol=1e-5, atol=1e-7)
    (g_closed,) = torch.autograd.grad(lrn.loss({f"branch{i}": z[i] for i in range(4)}, y, state())[0], z)
    assert not torch.allclose(g_open, g_closed, rtol=1e-3)


def test_ramp_is_okddips_consistency_weight():
    z, y = fixed_logits()
    heads = {f"branch{i}": z[i] for i in range(4)}
    plain = learner().loss(heads, y, state())[1]["kl/branches"]
    for epoch, w in ((0, math.exp(-5)), (40, math.exp(-5 * 0.25)), (80, 1.0), (200, 1.0)):
        kl = learner(ramp_epochs=80).loss(heads, y, state(epoch))[1]["kl/branches"]
        torch.testing.assert_close(kl, plain * w, rtol=1e-6, atol=0)


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    out = scale_grad(x, 0.25)
    assert torch.equal(out, x)
    (g,) = torch.autograd.grad((out * torch.arange(4.0)).sum(), x)
    assert torch.equal(g, 0.25 * torch.arange(4.0).expand(3, 4))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the tensor's largest entry (1/3 is not
    exact in binary, and sums that cancel amplify the relative error of small entries)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def _grads(net: SharedTrunkNet, x: torch.Tensor, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed linear function of the heads' logits (so only the rescaling differs)."""
    net.zero_grad(set_to_none=True)
    z, _ = net.forward_features(x)
    (z * probe).sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("sharing,k", [("layer2", 3), ("layer2", 4), ("tree", 4)])
def test_bp_rescaling_divides_the_shared_gradient_by_k(sharing, k):
    torch.manual_seed(0)
    scaled = SharedTrunkNet("resnet8", 5, branches=k, sharing=sharing, bpscale=True)
    torch.manual_seed(0)
    plain = SharedTrunkNet("resnet8", 5, branches=k, sharing=sharing, bpscale=False)
    g = torch.Generator().manual_seed(1)
    x, probe = torch.randn(6, *SMALL, generator=g), torch.randn(k, 6, 5, generator=g)
    with_ilr, without = _grads(scaled, x, probe), _grads(plain, x, probe)
    assert with_ilr.keys() == without.keys()
    shared = ("stem.", "layer1.") + (("layer2s.",) if sharing == "layer2" else ())
    n_shared = 0
    for name, grad in with_ilr.items():
        if name.startswith(shared):  # every head reads it: the mean, not the sum
            close(grad, without[name] / k)
            n_shared += 1
        elif name.startswith("layer2s."):  # tree: each copy serves two heads
            close(grad, without[name] / 2)
        else:  # the heads' own layers are untouched
            assert name.startswith("heads.") and torch.equal(grad, without[name])
    assert n_shared > 0
    assert not torch.allclose(with_ilr["stem.0.weight"], without["stem.0.weight"], rtol=0.1)


def test_tree_layout_follows_mcl_okd():
    net = SharedTrunkNet("resnet8", 5, branches=4, sharing="tree")
    assert len(net.layer2s) == 2 and [net.group_of(i) for i in range(4)] == [0, 0, 1, 1]
    assert net.consumers() == (2, [2, 2])
    odd = SharedTrunkNet("resnet8", 5, branches=3, sharing="tree")
    assert odd.consumers() == (2, [2, 1])  # MCL-OKD: the last copy serves one head, no ILR on it


def test_exact_parameter_counts():
    # resnet8, 5 classes, by hand: stem 3*16*9 + 32 = 464; layer1 2*(16*16*9 + 32) = 4672;
    # layer2 16*32*9 + 64 + 32*32*9 + 64 + 16*32 + 64 = 14528;
    # head = layer3 (32*64*9 + 128 + 64*64*9 + 128 + 32*64 + 128 = 57728) + fc (64*5 + 5 = 325)
    head = 57728 + 325
    assert count_params(build("resnet8", 5)) == 464 + 4672 + 14528 + head
    assert count_params(learner()) == 464 + 4672 + 14528 + 4 * head == 251_876
    assert count_params(learner(sharing="tree")) == 464 + 4672 + 2 * 14528 + 4 * head == 266_404
    assert count_params(learner().deployable()) == count_params(build("resnet8", 5))


def test_heads_deployable_and_init():
    torch.manual_seed(3)
    ref = build("resnet8", 5)
    torch.manual_seed(3)
    lrn = learner()
    sd = lrn.deployable().state_dict()
    assert sd.keys() == ref.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    lrn.eval()
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        heads = lrn(x)
        assert set(heads) == {"branch0", "branch1", "branch2", "branch3", "average"}
        torch.testing.assert_close(heads["average"], sum(heads[f"branch{i}"] for i in range(4)) / 4)
        torch.testing.assert_close(lrn.deployable()(x), heads["branch0"], rtol=0, atol=0)
        torch.testing.assert_close(lrn.net.branch_net(2)(x), heads["branch2"], rtol=0, atol=0)
    assert lrn.primary_head == "branch0" and len(lrn.last_layer_parameters()) == 8
    assert not torch.equal(lrn.net.heads[0].fc.weight, lrn.net.heads[1].fc.weight)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="branches"):
        methods.METHODS.build("cl_ilr", "resnet8", 5, branches=1)
    with pytest.raises(ConfigError, match="sharing"):
        methods.METHODS.build("cl_ilr", "resnet8", 5, sharing="layer3")
    with pytest.raises(ConfigError, match="temperature"):
        methods.METHODS.build("cl_ilr", "resnet8", 5, temperature=0)


def test_trains_through_experiment_run(tmp_path):
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    cfg = RunConfig(method="cl_ilr", method_args={"branches": 3}, model="resnet8", dataset="digits",
                    train_size=100, test_size=100, epochs=1, milestones=[], batch_size=50, device="cpu",
                    progress=False, tensorboard=False)
    record = experiment.run(cfg, run_dir=tmp_path / "run").metrics[-1]
    for head in ("branch0", "branch1", "branch2", "average"):
        assert f"test/{head}/top1" in record and 0 <= record[f"test/{head}/top1"] <= 100
    assert record["train/loss"] == pytest.approx(record["train/ce/branches"] + record["train/kl/branches"], rel=1e-5)
    assert "test/disagree/branch0-branch1" in record


def test_exact_flop_counts():
    # resnet8, 5 classes, 8x8 input, FLOPs = 2 x MACs, by hand:
    # stem 3*16*9*64 = 27,648; layer1 2 * 16*16*9*64 = 294,912 (8x8);
    # layer2 (4x4) 16*32*9*16 + 32*32*9*16 + 16*32*16 = 229,376; trunk = 551,936 MACs;
    # head: layer3 (2x2) 32*64*9*4 + 64*64*9*4 + 32*64*4 = 229,376, fc 64*5 = 320 -> 229,696 MACs
    trunk, layer2, head = 2 * 551_936, 2 * 229_376, 2 * 229_696
    c = cost(learner(), SMALL)
    assert c["test_flops"] == count_flops(build("resnet8", 5), SMALL) == trunk + head == 1_563_264
    assert c["train_flops"] == trunk + 4 * head == 2_941_440
    assert cost(learner(sharing="tree"), SMALL)["train_flops"] == trunk + layer2 + 4 * head == 3_400_192


@pytest.mark.parametrize("base", ["wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2"])
def test_staged_backbones_share_their_low_stages(base):
    """Any backbone of the shared layout gets heads: parameters = trunk + m heads exactly,
    head 0's path initialised and computing as ``models.build(base)`` under the same seed."""
    torch.manual_seed(5)
    ref = build(base, 5)
    torch.manual_seed(5)
    net = SharedTrunkNet(base, 5, branches=3, bpscale=True)
    trunk = sum(count_params(getattr(ref, part)) for part in ("stem", "layer1", "layer2"))
    head = sum(count_params(getattr(ref, part)) for part in ("layer3", "pool", "fc"))
    assert count_params(net) == trunk + 3 * head
    path = net.branch_net(0)
    assert all(torch.equal(path.state_dict()[k], v) for k, v in ref.state_dict().items())
    net.eval(), ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = net(x)
        torch.testing.assert_close(z["branch0"], ref(x), rtol=0, atol=0)
    assert not torch.equal(net.heads[0].fc.weight, net.heads[2].fc.weight)


def test_staged_backbone_input_size_is_checked():
    with pytest.raises(ConfigError, match="8x8"):
        SharedTrunkNet("vgg8", 5, branches=2)(torch.randn(1, 3, 4, 4))
