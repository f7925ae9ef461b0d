"""Branch expansion 3 -> 5: the expanded net starts from the old function; nothing is dropped."""
from __future__ import annotations

import pytest
import torch

from cooplib.models.expand import expand_branches, expand_optimizer_state, load_state_strict, set_gate_prior
from cooplib.methods.base import TrainState
from cooplib.methods.one import ONE
from cooplib.models.multibranch import MultiBranchResNet

SMALL = (3, 8, 8)


def trained_like(seed: int = 0, share: bool = True) -> MultiBranchResNet:
    """A resnet8 ONE-3 whose gate, BN statistics and weights are not at their init."""
    torch.manual_seed(seed)
    net = MultiBranchResNet("resnet8", 5, branches=3, share=share)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        net.gate_prior.copy_(torch.tensor([0.3, -0.2, 0.1]))
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(16, *SMALL))
    return net.eval()


def run(net: MultiBranchResNet, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    with torch.no_grad():
        return net.forward_with_gate(x)


@pytest.mark.parametrize("share", [True, False])
def test_duplicate_keeps_the_function_exactly(share: bool):
    old = trained_like(share=share)
    before = {k: v.clone() for k, v in old.state_dict().items()}
    x = torch.randn(6, *SMALL)
    h_old, g_old = run(old, x)
    new = expand_branches(old, 5, "duplicate")
    assert new.num_branches == 5 and new.branch_sources == [0, 1, 2, 0, 1]
    h_new, g_new = run(new, x)
    for i in range(3):
        assert torch.equal(h_new[f"branch{i}"], h_old[f"branch{i}"])
    assert torch.equal(h_new["branch3"], h_old["branch0"]) and torch.equal(h_new["branch4"], h_old["branch1"])
    torch.testing.assert_close(h_new["ensemble"], h_old["ensemble"], rtol=1e-5, atol=1e-5)
    # a group of k copies shares the source's old weight
    torch.testing.assert_close(g_new[:, 0] + g_new[:, 3], g_old[:, 0])
    torch.testing.assert_close(g_new[:, 0], g_new[:, 3])
    torch.testing.assert_close(g_new[:, 2], g_old[:, 2])
    # the old model is untouched
    assert all(torch.equal(before[k], v) for k, v in old.state_dict().items())


def test_duplicate_noise_breaks_symmetry_but_keeps_old_branches():
    old = trained_like()
    x = torch.randn(6, *SMALL)
    h_old, _ = run(old, x)
    new = expand_branches(old, 5, "duplicate", noise=0.01, seed=3)
    h_new, _ = run(new, x)
    for i in range(3):
        assert torch.equal(h_new[f"branch{i}"], h_old[f"branch{i}"])
    assert not torch.equal(h_new["branch3"], h_old["branch0"])
    torch.testing.assert_close(h_new["branch3"], h_old["branch0"], rtol=0.1, atol=0.1)
    again = expand_branches(old, 5, "duplicate", noise=0.01, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), again.state_dict().values()))


def test_fresh_changes_the_ensemble_negligibly():
    old = trained_like()
    x = torch.randn(6, *SMALL)
    h_old, _ = run(old, x)
    new = expand_branches(old, 5, "fresh", seed=1)
    assert new.branch_sources == [0, 1, 2, None, None]
    h_new, g_new = run(new, x)
    for i in range(3):
        assert torch.equal(h_new[f"branch{i}"], h_old[f"branch{i}"])
    assert not torch.equal(new.branches[3].fc.weight, old.branches[0].fc.weight)
    assert (g_new[:, 3:] < 1e-3).all()
    scale = h_old["ensemble"].abs().max()
    assert (h_new["ensemble"] - h_old["ensemble"]).abs().max() <= 1e-3 * scale
    # seeded: the same seed gives the same new branches
    again = expand_branches(old, 5, "fresh", seed=1)
    assert torch.equal(again.branches[4].fc.weight, new.branches[4].fc.weight)
    # a milder prior lets the new branches in, and changes the start more
    set_gate_prior(new, [0.3, -0.2, 0.1, 0.0, 0.0])
    assert (run(new, x)[1][:, 3:] > 1e-3).any()


def test_new_m_must_grow():
    old = trained_like()
    for bad in (3, 2):
        with pytest.raises(ValueError, match="new_m"):
            expand_branches(old, bad)
    with pytest.raises(ValueError, match="strategy"):
        expand_branches(old, 5, "clone")


def test_load_state_strict_names_what_does_not_fit():
    net = MultiBranchResNet("resnet8", 5, branches=3)
    sd = net.state_dict()
    renamed = dict(sd)
    renamed["gate.fc.weight"] = renamed.pop("gate_fc.weight")
    with pytest.raises(KeyError, match=r"gate_fc\.weight.*gate\.fc\.weight"):
        load_state_strict(net, renamed)
    wrong = dict(sd)
    wrong["gate_fc.weight"] = torch.zeros(5, wrong["gate_fc.weight"].shape[1])
    with pytest.raises(ValueError, match=r"gate_fc\.weight"):
        load_state_strict(net, wrong)
    other = MultiBranchResNet("resnet8", 5, branches=3)
    load_state_strict(other, sd)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))


def _step(lrn: ONE, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(8, *SMALL), torch.randint(0, 5, (8,))
    total, _ = lrn.loss(lrn(x), y, TrainState(0, 1, 0, 1))
    opt.zero_grad()
    total.backward()
    opt.step()


@pytest.mark.parametrize("strategy", ["duplicate", "fresh"])
def test_momentum_is_carried_over(strategy: str):
    torch.manual_seed(0)
    old = ONE(MultiBranchResNet("resnet8", 5, branches=3))
    opt = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9)
    _step(old, opt)
    _step(old, opt)
    new = ONE(expand_branches(old.net, 5, strategy))
    new_opt = torch.optim.SGD(new.parameters(), lr=0.01, momentum=0.9)
    expand_optimizer_state(opt.state_dict(), old, new, new_opt)

    def buf(o, p):
        return o.state[p]["momentum_buffer"]

    assert torch.equal(buf(new_opt, new.net.stem[0].weight), buf(opt, old.net.stem[0].weight))
    assert torch.equal(buf(new_opt, new.net.branches[2].fc.weight), buf(opt, old.net.branches[2].fc.weight))
    g_new, g_old = buf(new_opt, new.net.gate_fc.weight), buf(opt, old.net.gate_fc.weight)
    assert torch.equal(g_new[:3], g_old)
    if strategy == "duplicate":
        assert torch.equal(buf(new_opt, new.net.branches[4].layer3[0].conv1.weight),
                           buf(opt, old.net.branches[1].layer3[0].conv1.weight))
        assert torch.equal(g_new[3], g_old[0])
    else:
        assert new.net.branches[4].fc.weight not in new_opt.state
        assert not g_new[3:].any()
    assert new_opt.param_groups[0]["lr"] == 0.01  # hyper-parameters are the new optimizer's
    _step(new, new_opt)  # and it trains on


def test_optimizer_state_must_match_the_old_model():
    torch.manual_seed(0)
    old = ONE(MultiBranchResNet("resnet8", 5, branches=3))
    opt = torch.optim.SGD(list(old.parameters())[:-1], lr=0.1, momentum=0.9)
    new = ONE(expand_branches(old.net, 4))
    with pytest.raises(ValueError, match="trainable"):
        expand_optimizer_state(opt.state_dict(), old, new, torch.optim.SGD(new.parameters(), lr=0.1))


def test_one_init_from_expands_the_parent_and_its_momentum():
    from cooplib.engine.optim import carry_optimizer_state

    torch.manual_seed(0)
    parent = ONE(MultiBranchResNet("resnet8", 5, branches=3))
    opt = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9)
    _step(parent, opt)
    torch.manual_seed(5)
    child = ONE(MultiBranchResNet("resnet8", 5, branches=5), expand_noise=0.0)
    state = child.init_from(parent, opt.state_dict())
    x = torch.randn(6, *SMALL)
    parent.eval(), child.eval()
    with torch.no_grad():
        h_old, h_new = parent(x), child(x)
    for i in range(3):
        assert torch.equal(h_new[f"branch{i}"], h_old[f"branch{i}"])
    torch.testing.assert_close(h_new["ensemble"], h_old["ensemble"], rtol=1e-5, atol=1e-5)
    new_opt = torch.optim.SGD(child.parameters(), lr=0.01, momentum=0.9)
    carry_optimizer_state(new_opt, state)  # what train.fit does with it

    def buf(o, p):
        return o.state[p]["momentum_buffer"]

    assert torch.equal(buf(new_opt, child.net.layer2[0].conv1.weight), buf(opt, parent.net.layer2[0].conv1.weight))
    assert torch.equal(buf(new_opt, child.net.branches[3].fc.bias), buf(opt, parent.net.branches[0].fc.bias))
    assert new_opt.param_groups[0]["lr"] == 0.01

    noisy = ONE(MultiBranchResNet("resnet8", 5, branches=5))  # default expand_noise 0.01
    noisy.init_from(parent)
    assert not torch.equal(noisy.net.branches[3].fc.weight, parent.net.branches[0].fc.weight)
    assert torch.equal(noisy.net.branches[2].fc.weight, parent.net.branches[2].fc.weight)

    same = ONE(MultiBranchResNet("resnet8", 5, branches=3))
    assert same.init_from(parent, opt.state_dict()) is not None
    assert torch.equal(same.net.gate_fc.weight, parent.net.gate_fc.weight)
    with pytest.raises(ValueError, match="only expansion"):
        ONE(MultiBranchResNet("resnet8", 5, branches=2)).init_from(parent)
