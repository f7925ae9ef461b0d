"""The offline KD zoo against its references, each re-implemented here from the
reference formula on fixed tensors (values and gradients):

- FT: HobbitLong/RepDistiller@b84f547 distiller_zoo/FT.py (factor = normalised channel
  mean of F^2, larger map pooled) and yoshitomo-matsubara/torchdistill@3e4373c
  torchdistill/losses/mid_level.py ``FTLoss`` (normalised flattened factor);
- AT / NST pooling of unequal maps: RepDistiller distiller_zoo/AT.py, NST.py;
- FitNets' regressor: RepDistiller models/util.py ``ConvReg``;
- BYOT's hint exits: ArchipLab-LinfengZhang/pytorch-self-distillation-final@47ca93b train.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib import losses, methods, models
from cooplib.methods.base import TrainState
from cooplib.methods.kd import Distill, ft_warmup_epochs

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pool2(f):
    """Average of 2x2 blocks (adaptive average pooling to half the size, by hand)."""
    n, c, h, w = f.shape
    return f.reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))


def at_hand(f):
    a = (f ** 2).mean(1).reshape(len(f), -1)
    return a / a.norm(dim=1, keepdim=True)


def grads(fn, *xs):
    xs = [x.clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    return out, torch.autograd.grad(out, xs)


def check(ours, hand, *xs, rtol=1e-6):
    """Same value and the same gradient w.r.t. every input, in float64."""
    v1, g1 = grads(ours, *xs)
    v2, g2 = grads(hand, *xs)
    assert torch.allclose(v1.double(), v2, rtol=rtol, atol=0), (v1, v2)
    for a, b in zip(g1, g2):  # the losses run in float32: gradients to float32 precision
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_ft_repdistiller_pools_and_normalises_the_channel_mean_of_the_squared_factor():
    s, t = rand(3, 4, 8, 8), rand(3, 6, 4, 4, seed=1)  # student map larger: pooled to 4x4
    check(lambda a, b: losses.factor_transfer(a.double(), b.double(), "repdistiller"),
          lambda a, b: (at_hand(pool2(a)) - at_hand(b)).abs().mean(), s, t, rtol=1e-5)
    s2, t2 = rand(3, 4, 4, 4), rand(3, 6, 8, 8, seed=1)  # teacher map larger: pooled
    check(lambda a, b: losses.factor_transfer(a, b), lambda a, b: (at_hand(a) - at_hand(pool2(b))).abs().mean(),
          s2, t2, rtol=1e-5)


def test_ft_torchdistill_normalises_the_flattened_factor():
    s, t = rand(3, 2, 4, 4), rand(3, 2, 4, 4, seed=1)
    def hand(a, b):
        na = a.reshape(3, -1) / a.reshape(3, -1).norm(dim=1, keepdim=True)
        nb = b.reshape(3, -1) / b.reshape(3, -1).norm(dim=1, keepdim=True)
        return (na - nb).abs().sum() / na.numel()
    check(lambda a, b: losses.factor_transfer(a, b, "torchdistill"), hand, s, t, rtol=1e-5)
    # the two conventions are different losses
    assert not torch.allclose(losses.factor_transfer(s, t, "torchdistill"), losses.factor_transfer(s, t))


def test_at_pools_the_larger_map():
    s, t = rand(2, 3, 8, 8), rand(2, 5, 4, 4, seed=1)
    check(losses.attention_transfer, lambda a, b: ((at_hand(pool2(a)) - at_hand(b)) ** 2).mean(), s, t, rtol=1e-5)
    check(losses.attention_transfer, lambda a, b: ((at_hand(b) - at_hand(pool2(a))) ** 2).mean(), s, t, rtol=1e-5)


def test_nst_pools_the_larger_map():
    s, t = rand(2, 3, 4, 4), rand(2, 5, 8, 8, seed=1)  # teacher larger
    def hand(a, b):
        b = pool2(b)
        fa = a.reshape(2, 3, -1) / a.reshape(2, 3, -1).norm(dim=2, keepdim=True)
        fb = b.reshape(2, 5, -1) / b.reshape(2, 5, -1).norm(dim=2, keepdim=True)
        def k(x, y):  # RepDistiller poly_kernel: (x_i . y_j)^2, mean over batch and pairs
            return torch.stack([(x[n] @ y[n].T) ** 2 for n in range(2)]).mean()
        return k(fb, fb) - 2 * k(fa, fb) + k(fa, fa)
    check(losses.nst, hand, s, t, rtol=1e-5)


def test_fitnet_regressor_is_repdistillers_convreg():
    """1x1 conv with bias + BN + ReLU for equal sizes: resnet8 -> resnet14 at layer2, 32 -> 32 channels."""
    torch.manual_seed(0)
    learner = Distill("fitnet", models.build("resnet8", 10, 3), models.build("resnet14", 10, 3))
    conv, bn, relu = learner.adapters["regressor"]
    assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is not None
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert sum(p.numel() for p in learner.adapters.parameters()) == 32 * 32 + 32 + 2 * 32
    from cooplib.methods.kd import conv_reg
    down, up = conv_reg((16, 8, 8), (32, 4, 4)), conv_reg((16, 4, 4), (32, 8, 8))
    assert down[0].kernel_size == (3, 3) and down[0].stride == (2, 2)
    assert type(up[0]) is nn.ConvTranspose2d and up[0].kernel_size == (4, 4)
    assert down(torch.zeros(2, 16, 8, 8)).shape == (2, 32, 4, 4) and up(torch.zeros(2, 16, 4, 4)).shape == (2, 32, 8, 8)


def test_ft_adapters_are_repdistillers_paraphraser_and_translator():
    torch.manual_seed(0)
    learner = Distill("ft", models.build("resnet8", 10, 3), models.build("resnet14", 10, 3))
    a = learner.adapters
    c, m = 64, 32  # layer3 width, int(0.5 * 64)
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    conv = lambda i, o: i * o * 9 + o  # 3x3, bias
    assert count(a["paraphraser"]) == conv(c, c) + conv(c, m) + conv(m, m)  # no BN
    assert count(a["decoder"]) == conv(m, m) + conv(m, c) + conv(c, c)
    assert count(a["translator"]) == conv(c, c) + 2 * c + conv(c, m) + 2 * m + conv(m, m) + 2 * m  # with BN
    assert [type(l) for l in a["decoder"] if not isinstance(l, nn.LeakyReLU)] == [nn.ConvTranspose2d] * 3


def test_ft_warmup_trains_the_paraphraser_alone_then_the_student():
    torch.manual_seed(0)
    learner = Distill("ft", models.build("resnet8", 5, 3), models.build("resnet14", 5, 3), warmup_epochs=2).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    total, parts = learner.loss(learner(x), y, TrainState(1, 5, 0, 1))
    total.backward()
    assert torch.equal(total, parts["ft_reconstruction/net"])
    assert all(p.grad is None for p in learner.net.parameters()) and all(p.grad is None for p in learner.adapters["translator"].parameters())
    assert all(p.grad is not None for p in learner.adapters["paraphraser"].parameters())
    learner.zero_grad(set_to_none=True)
    total, parts = learner.loss(learner(x), y, TrainState(2, 5, 0, 1))
    total.backward()
    assert torch.allclose(total, parts["ce/net"] + 200.0 * parts["ft/net"])
    assert all(p.grad is None for p in learner.adapters["paraphraser"].parameters())
    assert learner.net.fc.weight.grad is not None
    # RepDistiller's 30 init epochs beside its 240: the same share of a run, at least one, never all
    assert [ft_warmup_epochs(None, e) for e in (1, 2, 9, 240, 270)] == [0, 1, 1, 27, 30]


def test_ft_torchdistill_weight():
    learner = Distill("ft", models.build("resnet8", 5, 3), models.build("resnet8", 5, 3), ft_convention="torchdistill")
    assert learner.weight == 1000.0 and Distill("ft", models.build("resnet8", 5, 3), models.build("resnet8", 5, 3)).weight == 200.0


@pytest.mark.parametrize("hint_exits, hinted", [("official", ["exit1"]), ("all", ["exit1", "exit2"])])
def test_byot_hint_exits_and_adaptation(hint_exits, hinted):
    torch.manual_seed(0)
    learner = methods.build("byot", "resnet8", 5, 3, hint_exits=hint_exits).train()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    heads = learner(x)
    feats = list(learner._feats)
    _, parts = learner.loss(heads, y, STATE, feats)
    assert list(learner.adaptation) == hinted
    # train.py: torch.dist(adaptation_layers[i](feature_i), teacher_feature) * 0.03, teacher feature detached
    def hand(*fs):
        out = 0.0
        for h in hinted:
            i = int(h[-1]) - 1
            a = learner.adaptation[h]
            out = out + 0.03 * ((fs[i] @ a.weight.T + a.bias - fs[2].detach()) ** 2).sum().sqrt()
        return out
    g_ours = torch.autograd.grad(parts["hint/shallow"], feats[:2] + [learner.adaptation["exit1"].weight], retain_graph=True,
                                 allow_unused=True)
    expected = hand(*feats)
    g_hand = torch.autograd.grad(expected, feats[:2] + [learner.adaptation["exit1"].weight], allow_unused=True)
    assert torch.allclose(parts["hint/shallow"], expected, rtol=1e-5)
    for a, b in zip(g_ours, g_hand):
        assert (a is None and b is None) or torch.allclose(a, b if b is not None else torch.zeros_like(a), rtol=1e-4, atol=1e-7)
    deployed = {id(p) for p in learner.deployable().parameters()}
    assert not deployed & {id(p) for p in learner.adaptation.parameters()}
