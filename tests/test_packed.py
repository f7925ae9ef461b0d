"""Packed execution equals the plain per-branch / per-peer loop: logits, gradients, BN
statistics, training, costs and state-dict layout, from the same weights."""
from __future__ import annotations

import copy

import pytest
import torch

from cooplib.models import flops
from cooplib import methods
from cooplib.engine import train
from cooplib.engine.config import RunConfig
from cooplib.methods.base import Learner, TrainState
from cooplib.methods.dml import DML, build_dml
from cooplib.methods.one import ONE, build_one
from cooplib.models import Bottleneck, CifarResNet, build, packed
from cooplib.models.multibranch import MultiBranchResNet

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1)
TOL = dict(rtol=1e-5, atol=1e-6)


def pair(make) -> tuple[Learner, Learner]:
    """A plain learner and a packed deep copy of it (the same weights)."""
    torch.manual_seed(0)
    plain = make()
    twin = copy.deepcopy(plain)
    twin.packed = True
    assert twin.packed and not plain.packed
    return plain, twin


LEARNERS = {
    "one3": lambda: build_one("resnet8", 5, 3, branches=3),
    "one3_noshare": lambda: build_one("resnet8", 5, 3, branches=3, share=False),
    "one2_zeropad": lambda: ONE(MultiBranchResNet("resnet14", 5, 3, branches=2, shortcut="zeropad")),
    "dml2": lambda: build_dml("resnet8", 5, 3, peers=2),
    "dml2_zeropad": lambda: DML([build("resnet8", 5, 3, shortcut="zeropad") for _ in range(2)]),
    "dml2_bottleneck": lambda: DML([CifarResNet(Bottleneck, 1, 5, widths=(4, 8, 8)) for _ in range(2)]),
}


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def assert_close_dicts(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_same_logits_gradients_and_bn_statistics(name):
    plain, twin = pair(LEARNERS[name])
    x, y = batch()
    heads = []
    for lrn in (plain, twin):
        lrn.train()
        heads.append(lrn(x))
        total, _ = lrn.loss(heads[-1], y, STATE)
        total.backward()
    assert_close_dicts(*heads)
    grads = {n: p.grad for n, p in plain.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert_close_dicts(grads, {n: p.grad for n, p in twin.named_parameters()})
    # running statistics (and num_batches_tracked) of every copy were updated as its own BN would
    assert_close_dicts(dict(plain.named_buffers()), dict(twin.named_buffers()))
    plain.eval(), twin.eval()
    with torch.no_grad():
        assert_close_dicts(plain(x), twin(x))


def test_uses_grouped_convolutions(monkeypatch):
    """The packed path really packs: layer3 of a 3-branch ONE runs as groups=3 convs."""
    _, twin = pair(LEARNERS["one3"])
    seen = []
    conv2d = torch.nn.functional.conv2d

    def spy(x, w, *args):
        seen.append(args[-1])
        return conv2d(x, w, *args)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    twin(batch()[0])
    assert 3 in seen and len(seen) == 6 + 3  # trunk convs + packed layer3 (conv1, conv2, shortcut)


def test_state_dict_layout_is_the_plain_one():
    plain, twin = pair(LEARNERS["one3"])
    assert list(plain.state_dict()) == list(twin.state_dict())
    torch.manual_seed(5)
    other = build_one("resnet8", 5, 3, branches=3, packed=True)
    plain.load_state_dict(other.state_dict(), strict=True)
    x, _ = batch()
    plain.eval(), other.eval()
    with torch.no_grad():
        assert_close_dicts(plain(x), other(x))


def test_costs_unchanged_by_packing():
    for name in ("one3", "dml2"):
        plain, twin = pair(LEARNERS[name])
        assert flops.cost(plain, (3, 32, 32)) == flops.cost(twin, (3, 32, 32))


def test_registry_and_expansion_accept_packed():
    one = methods.build("one", "resnet8", 5, 3, branches=3, packed=True)
    dml = methods.build("dml", "resnet8", 5, 3, peers=2, packed=True)
    assert one.net.packed and dml.packed
    parent = build_one("resnet8", 5, 3, branches=2)
    one.init_from(parent)  # branch expansion loads into the packed network
    assert one.net.packed
    one.eval(), parent.eval()
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(one(x)["branch0"], parent(x)["branch0"], rtol=1e-4, atol=1e-3)


def test_heterogeneous_peers_cannot_be_packed():
    with pytest.raises(ValueError, match="DML peers.*packed=False"):
        build_dml("resnet8+resnet14", 5, 3, packed=True)
    with pytest.raises(ValueError, match="attributes of 'the top level'"):  # num_classes
        packed.check_packable([build("resnet8", 5), build("resnet8", 7)])
    no_bias = build("resnet8", 5)
    no_bias.fc.bias = None
    with pytest.raises(ValueError, match="tensor shapes of 'fc'"):
        packed.check_packable([build("resnet8", 5), no_bias])
    assert packed.packable([build("resnet8", 5), build("resnet8", 5)]) is None


def test_linear_peers_cannot_be_packed_but_run_plain():
    peers = [torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(1)) for _ in range(2)]
    with pytest.raises(ValueError, match="Softmax"):
        DML(peers, packed=True)
    assert not DML(peers).packed


def test_sequential_dml_refuses_packing():
    """Algorithm 1 leaves the other peers without a gradient; a packed pass would give them
    zero gradients, which SGD's weight decay and momentum would still apply."""
    with pytest.raises(ValueError, match="joint"):
        build_dml("resnet8", 5, 3, update="sequential", packed=True)


@pytest.mark.parametrize("method,args", [("one", {"branches": 3}), ("dml", {"peers": 2})])
def test_fit_packed_equals_plain(tiny_data, tmp_path, method, args):
    # lr 0.005 constant: what the default step schedule trained one epoch at before milestones were checked (0.05 x 0.1)
    cfg = dict(model="resnet8", dataset="quadrants", method=method, epochs=1, schedule="constant", batch_size=32, lr=0.005,
               weight_decay=5e-4, deterministic=True, progress=False, tensorboard=False, device="cpu")
    done = []
    for p in (False, True):
        torch.manual_seed(0)
        lrn = methods.build(method, "resnet8", tiny_data.num_classes, tiny_data.in_channels, **args, packed=p)
        config = RunConfig(**cfg, method_args={**args, "packed": p})
        res = train.fit(lrn, tiny_data, config, tmp_path / f"packed{p}")
        done.append((lrn, res))
    (a, ra), (b, rb) = done
    assert_close_dicts(a.state_dict(), b.state_dict())
    last_a, last_b = ra.metrics[-1], rb.metrics[-1]
    assert last_a["train/loss"] == pytest.approx(last_b["train/loss"], rel=1e-4)
