"""Deep Mutual Learning: the loss against plain-torch hand formulas, and its gradients."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cooplib.methods.base import TrainState
from cooplib.methods.dml import DML, build_dml, peer_names

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def linear_peers(k: int, d: int = 6, c: int = 5, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Linear(d, c) for _ in range(k)]


def batch(n: int = 7, d: int = 6, c: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def hand_kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    """t^2 * sum_c p_t (log p_t - log p_s), averaged over the batch: written out."""
    lt = torch.log_softmax(teacher / t, dim=1)
    ls = torch.log_softmax(student / t, dim=1)
    return t * t * (lt.exp() * (lt - ls)).sum(1).mean()


def hand_ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(torch.log_softmax(z, dim=1).gather(1, y[:, None])).mean()


def hand_peer_loss(zs: list[torch.Tensor], k: int, y: torch.Tensor, t: float) -> torch.Tensor:
    k_others = len(zs) - 1
    return hand_ce(zs[k], y) + sum(hand_kl(zs[j], zs[k], t) for j in range(len(zs)) if j != k) / k_others


@pytest.mark.parametrize("k", [2, 3])
def test_loss_matches_hand_formula(k):
    t = 2.5
    dml = DML(linear_peers(k), temperature=t)
    x, y = batch()
    heads = dml(x)
    total, parts = dml.loss(heads, y, STATE)
    zs = [heads[f"peer{i}"].detach() for i in range(k)]
    expected = [hand_peer_loss(zs, i, y, t) for i in range(k)]
    assert torch.allclose(total, sum(expected), rtol=1e-5, atol=1e-6)
    for i in range(k):
        assert torch.allclose(parts[f"ce/peer{i}"] + parts[f"kl/peer{i}"], expected[i], rtol=1e-5, atol=1e-6)
        assert torch.allclose(parts[f"ce/peer{i}"], hand_ce(zs[i], y), rtol=1e-5)
    assert set(parts) == {f"{n}/peer{i}" for i in range(k) for n in ("ce", "kl")}
    # the factors matter: with 1/(K-1) or T^2 dropped the value would differ
    wrong = sum(hand_ce(zs[i], y) + sum(hand_kl(zs[j], zs[i], t) / t**2 for j in range(k) if j != i) / (k - 1) for i in range(k))
    assert not torch.allclose(total, wrong, rtol=1e-3)


def test_independent_control_is_sum_of_ces():
    dml = DML(linear_peers(3), temperature=3.0, mutual=False)
    x, y = batch()
    heads = dml(x)
    total, parts = dml.loss(heads, y, STATE)
    assert set(parts) == {"ce/peer0", "ce/peer1", "ce/peer2"}
    assert torch.allclose(total, sum(hand_ce(heads[f"peer{i}"], y) for i in range(3)), rtol=1e-6)


def test_average_head_is_mean_of_logits():
    dml = DML(linear_peers(3))
    x, _ = batch()
    heads = dml(x)
    assert set(heads) == {"peer0", "peer1", "peer2", "average"}
    mean = (heads["peer0"] + heads["peer1"] + heads["peer2"]) / 3
    assert torch.allclose(heads["average"], mean, atol=1e-6)
    assert dml.primary_head == "peer0" and dml.deployable() is dml.peers[0]


def _grads(module: nn.Module, loss: torch.Tensor) -> list[torch.Tensor | None]:
    params = list(module.parameters())
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def test_joint_step_gives_each_peer_the_gradient_of_its_own_loss():
    t = 2.0
    dml = DML(linear_peers(3), temperature=t)
    x, y = batch()
    heads = dml(x)
    total, _ = dml.loss(heads, y, STATE)
    zs = [heads[f"peer{i}"] for i in range(3)]
    for k in range(3):
        own = hand_peer_loss([z if j == k else z.detach() for j, z in enumerate(zs)], k, y, t)
        g_total = _grads(dml.peers[k], total)
        g_own = _grads(dml.peers[k], own)
        for a, b in zip(g_total, g_own):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        # an undetached target would add the other peers' KL gradients: make sure that differs
        leaky = sum(hand_peer_loss(zs, i, y, t) for i in range(3))
        assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(g_total, _grads(dml.peers[k], leaky)))


def test_no_gradient_flows_into_a_detached_target_through_kl():
    dml = DML(linear_peers(2), temperature=4.0)
    x, y = batch()
    heads = dml(x)
    _, parts = dml.loss(heads, y, STATE)
    # peer0's KL uses peer1 only as a target: peer1 must get nothing from it
    assert all(g is None for g in _grads(dml.peers[1], parts["kl/peer0"]))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(dml.peers[0], parts["kl/peer0"]))


@pytest.mark.parametrize("s", [0, 1, 2])
def test_sequential_substep_trains_only_that_peer(s):
    t = 1.5
    dml = DML(linear_peers(3), temperature=t, update="sequential")
    assert dml.substeps == 3
    x, y = batch()
    heads = dml(x)
    state = SimpleNamespace(epoch=0, epochs=1, step=0, steps_per_epoch=1, substep=s)
    total, parts = dml.loss(heads, y, state)
    assert set(parts) == {f"ce/peer{s}", f"kl/peer{s}"}  # the joint mode's per-peer names
    zs = [heads[f"peer{i}"].detach() for i in range(3)]
    assert torch.allclose(total, hand_peer_loss(zs, s, y, t), rtol=1e-5, atol=1e-6)
    dml.zero_grad(set_to_none=True)
    total.backward()
    for k, peer in enumerate(dml.peers):
        for p in peer.parameters():
            assert (p.grad is not None) == (k == s)


def test_sequential_substeps_with_sgd_follow_algorithm_1():
    """Two rounds on one batch: peer1's loss uses peer0's prediction after peer0's step."""
    dml = DML(linear_peers(2), update="sequential")
    opt = torch.optim.SGD(dml.parameters(), lr=0.5, weight_decay=0.1, momentum=0.9)
    x, y = batch()
    before = [p.detach().clone() for p in dml.peers[1].parameters()]
    heads = dml(x)
    total, _ = dml.loss(heads, y, SimpleNamespace(substep=0))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, dml.peers[1].parameters()))  # untouched, decay too
    z0_after = dml.peers[0](x).detach()
    heads = dml(x)
    total, _ = dml.loss(heads, y, SimpleNamespace(substep=1))
    assert torch.allclose(total, hand_peer_loss([z0_after, heads["peer1"].detach()], 1, y, 1.0), rtol=1e-5)


def test_fit_sequential_logs_the_joint_modes_terms(tiny_data, tmp_path):
    """Through the real loop: K substeps per batch, per-peer parts, loss = sum over peers."""
    from cooplib.engine import train
    from cooplib.engine.config import RunConfig

    update = "sequential"

    torch.manual_seed(0)
    dml = build_dml("resnet8", tiny_data.num_classes, tiny_data.in_channels, update=update)
    config = RunConfig(model="resnet8", dataset="quadrants", epochs=1, schedule="constant", batch_size=48, lr=0.05,
                       progress=False, tensorboard=False, device="cpu", method="dml",
                       method_args={"update": update})
    record = train.fit(dml, tiny_data, config, tmp_path / update).metrics[-1]
    parts = [f"train/{n}/peer{k}" for k in range(2) for n in ("ce", "kl")]
    assert all(p in record for p in parts)
    assert record["train/loss"] == pytest.approx(sum(record[p] for p in parts), rel=1e-5)
    assert {"test/peer0/top1", "test/peer1/top1", "test/average/top1"} <= set(record)


def test_dml_default_mode_is_joint_one_substep():
    dml = DML(linear_peers(2))
    assert dml.update == "joint" and dml.substeps == 1


def test_heterogeneous_peers_build_and_forward():
    torch.manual_seed(0)
    dml = build_dml(["resnet8", "resnet14"], num_classes=4, in_channels=3)
    assert [p.depth for p in dml.peers] == [8, 14]
    dml.eval()
    with torch.no_grad():
        heads = dml(torch.randn(2, 3, 8, 8))
    assert {k: tuple(v.shape) for k, v in heads.items()} == {"peer0": (2, 4), "peer1": (2, 4), "average": (2, 4)}
    assert build_dml("resnet8+resnet14", 4).peers[1].depth == 14
    fcs = dml.last_layer_parameters()  # every peer's classifier, for the gradient-ratio lr
    assert len(fcs) == 4 and all(any(p is q for q in peer.fc.parameters()) for p, peer in zip(fcs[::2], dml.peers))


def test_build_independent_init_and_peer_count():
    torch.manual_seed(0)
    dml = build_dml("resnet8", 10, 3, peers=3, temperature=2.0, update="sequential")
    assert dml.num_peers == 3 and dml.substeps == 3 and dml.temperature == 2.0
    w = [p.stem[0].weight for p in dml.peers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert peer_names("resnet8") == ["resnet8", "resnet8"]
    with pytest.raises(ValueError, match="peers=3"):
        peer_names(["resnet8", "resnet14"], peers=3)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="at least 2"):
        DML(linear_peers(1))
    with pytest.raises(ValueError, match="update"):
        DML(linear_peers(2), update="alternate")
    with pytest.raises(ValueError, match="temperature"):
        DML(linear_peers(2), temperature=0)
