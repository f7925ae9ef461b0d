"""OKDDip: the attention, targets and loss against a re-implementation of the reference
(DefangChen/OKDDip train_GL.py + models/model_cifar/resnet_GL.py, commit
c6a05de892fc7d2b6767668548786688a388c2d6), written here with its bmm layout
(B x classes x peers), on fixed tensors and through the real network, with gradients;
what is detached; exact parameter count; a tiny run through `experiment.run`.
"""
from __future__ import annotations

import math

import pytest
import torch

import cooplib.methods.okddip  # noqa: F401  (registers "okddip")
from cooplib import methods
from cooplib.base.errors import ConfigError
from cooplib.methods.base import TrainState
from cooplib.methods.okddip import OKDDip, attention_weights, build_okddip, okddip_terms, peer_targets
from cooplib.models import build
from cooplib.models.flops import cost, count_flops, count_params

SMALL = (3, 8, 8)


def state(epoch: int = 0) -> TrainState:
    return TrainState(epoch=epoch, epochs=300, step=0, steps_per_epoch=10)


def ref_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """OKDDip utils.KL_Loss without its 1e-7: T^2 * KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T))."""
    p_t = torch.softmax(teacher / t, dim=1)
    return t * t * (p_t * (torch.log(p_t) - torch.log_softmax(student / t, dim=1))).sum() / student.shape[0]


def ref_ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(z, dim=1)[torch.arange(len(y)), y].mean()


def ref_attention_targets(pro: torch.Tensor, proj_q: torch.Tensor, proj_k: torch.Tensor):
    """resnet_GL.py: pro (B, C, P), proj_q / proj_k (B, P, d) ->
    energy = bmm(q, k^T); attention = softmax(energy, -1); x_m = bmm(pro, attention^T)."""
    energy = torch.bmm(proj_q, proj_k.permute(0, 2, 1))
    attention = torch.softmax(energy, dim=-1)
    return attention, torch.bmm(pro, attention.permute(0, 2, 1))


def ref_total(pro: torch.Tensor, x_m: torch.Tensor, x_stu: torch.Tensor, y: torch.Tensor, t: float,
              alpha: float = 1.0, w: float = 1.0) -> torch.Tensor:
    """train_GL.py: loss_true + CE(x_stu) + alpha * w * (loss_group + KL(x_stu, mean(pro, 2)))."""
    p = pro.shape[2]
    loss_true = sum(ref_ce(pro[:, :, i], y) for i in range(p))
    loss_group = sum(ref_kl(pro[:, :, i], x_m[:, :, i], t) for i in range(p))
    return loss_true + ref_ce(x_stu, y) + alpha * w * (loss_group + ref_kl(x_stu, pro.mean(2), t))


def fixed(p: int = 3, b: int = 5, c: int = 6, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    leader = (torch.randn(b, c, generator=g) * 2).requires_grad_(True)
    peers = (torch.randn(p, b, c, generator=g) * 2).requires_grad_(True)
    q = torch.randn(p, b, d, generator=g).requires_grad_(True)
    k = torch.randn(p, b, d, generator=g).requires_grad_(True)
    return leader, peers, q, k, torch.randint(0, c, (b,), generator=g)


def test_attention_and_targets_match_the_reference_layout():
    _, peers, q, k, _ = fixed()
    att = attention_weights(q, k)
    ref_att, x_m = ref_attention_targets(peers.permute(1, 2, 0), q.transpose(0, 1), k.transpose(0, 1))
    torch.testing.assert_close(att, ref_att, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(att.sum(-1), torch.ones(5, 3), rtol=0, atol=1e-6)  # over the peers
    assert (att > 0).all() and not torch.allclose(att, torch.full_like(att, 1 / 3), atol=1e-2)
    torch.testing.assert_close(peer_targets(peers, att), x_m.permute(2, 0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t,alpha", [(3.0, 1.0), (2.0, 0.5)])
def test_loss_and_gradients_match_the_reference_on_fixed_tensors(t, alpha):
    leader, peers, q, k, y = fixed()
    parts = okddip_terms(leader, peers, attention_weights(q, k), y, t, kl_scale=alpha)
    total = sum(parts.values())
    leaves = [x.detach().clone().requires_grad_(True) for x in (leader, peers, q, k)]
    rl, rp, rq, rk = leaves
    _, x_m = ref_attention_targets(rp.permute(1, 2, 0), rq.transpose(0, 1), rk.transpose(0, 1))
    expected = ref_total(rp.permute(1, 2, 0), x_m, rl, y, t, alpha)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    for g, g_ref in zip(torch.autograd.grad(total, (leader, peers, q, k)), torch.autograd.grad(expected, leaves)):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    assert set(parts) == {"ce/peers", "ce/branch0", "kl/peers", "kl/branch0"}


def grad(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """d out / d x (None: x does not reach out); the graph is kept for the next term."""
    return torch.autograd.grad(out, x, retain_graph=True, allow_unused=True)[0]


def test_what_is_detached():
    leader, peers, q, k, y = fixed()
    att = attention_weights(q, k)
    # reference (nothing detached): the leader's KL reaches the peers, the peers' KL the attention
    open_ = okddip_terms(leader, peers, att, y, 3.0)
    g_peers = grad(open_["kl/branch0"], peers)
    assert g_peers.abs().sum() > 0
    assert grad(open_["kl/peers"], q).abs().sum() > 0
    # detach_targets: the targets' logits get no gradient, the attention still learns
    shut = okddip_terms(leader, peers, att, y, 3.0, detach_targets=True)
    assert grad(shut["kl/branch0"], peers) is None
    assert grad(shut["kl/peers"], q).abs().sum() > 0
    g_own = grad(shut["kl/peers"], peers)
    targets = peer_targets(peers.detach(), att.detach())
    for a in range(3):  # peer a: the gradient of its own KL towards a constant target only
        za = peers[a].detach().clone().requires_grad_(True)
        ga = grad(ref_kl(za, targets[a], 3.0), za)
        torch.testing.assert_close(g_own[a], ga, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grad(open_["kl/peers"], peers), g_own, rtol=1e-3)


def test_learner_matches_the_reference_network_computation():
    """Through the real network: the reference's forward (leader = its last branch) and loss."""
    torch.manual_seed(0)
    lrn = build_okddip("resnet8", 5, 3, branches=4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, *SMALL, generator=g), torch.randint(0, 5, (6,), generator=g)
    total, parts = lrn.loss(lrn(x), y, state())
    grads = torch.autograd.grad(total, list(lrn.parameters()), allow_unused=True)
    # resnet_GL.py forward, re-done on the same modules (BN in train mode sees the same batch)
    net = lrn.net
    f2 = net.layer2(net.layer1(net.stem(x)))
    feats = [net.heads[i].pool(net.heads[i].layer3(f2)) for i in range(4)]
    peers = [1, 2, 3]
    pro = torch.stack([net.heads[i].fc(feats[i]) for i in peers], -1)  # B x C x P
    proj_q = torch.stack([lrn.query(feats[i]) for i in peers], 1)  # B x P x d
    proj_k = torch.stack([lrn.key(feats[i]) for i in peers], 1)
    _, x_m = ref_attention_targets(pro, proj_q, proj_k)
    expected = ref_total(pro, x_m, net.heads[0].fc(feats[0]), y, 3.0)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    ref_grads = torch.autograd.grad(expected, list(lrn.parameters()), allow_unused=True)
    for (name, _), a, b in zip(lrn.named_parameters(), grads, ref_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert grads[[n for n, _ in lrn.named_parameters()].index("query.weight")].abs().sum() > 0


def test_ramp_scales_both_kl_terms():
    torch.manual_seed(0)
    lrn = build_okddip("resnet8", 5, 3, ramp_epochs=80, alpha=0.5)
    x, y = torch.randn(4, *SMALL), torch.randint(0, 5, (4,))
    lrn.eval()  # the same logits in every call
    with torch.no_grad():
        at_end = lrn.loss(lrn(x), y, state(80))[1]
        early = lrn.loss(lrn(x), y, state(20))[1]
        full = build_okddip("resnet8", 5, 3).eval()
        full.load_state_dict(lrn.state_dict())
        plain = full.loss(full(x), y, state(0))[1]
    w = math.exp(-5 * 0.75 ** 2)
    for term in ("kl/peers", "kl/branch0"):
        torch.testing.assert_close(at_end[term], 0.5 * plain[term], rtol=1e-6, atol=0)
        torch.testing.assert_close(early[term], 0.5 * w * plain[term], rtol=1e-6, atol=0)
    torch.testing.assert_close(early["ce/peers"], plain["ce/peers"])


def test_heads_deployable_and_parameter_count():
    torch.manual_seed(3)
    ref = build("resnet8", 5)
    torch.manual_seed(3)
    lrn = build_okddip("resnet8", 5, 3)
    sd = lrn.deployable().state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items()) and sd.keys() == ref.state_dict().keys()
    # 4 heads over one trunk (as test_cl_ilr's hand count) + W_q, W_k: 2 * 64 * (64 // 8), no bias
    assert count_params(lrn) == 464 + 4672 + 14528 + 4 * (57728 + 325) + 2 * 64 * 8 == 252_900
    lrn.eval()
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        heads = lrn(x)
        assert set(heads) == {"branch0", "branch1", "branch2", "branch3", "ensemble", "average"}
        torch.testing.assert_close(heads["ensemble"], (heads["branch1"] + heads["branch2"] + heads["branch3"]) / 3)
        torch.testing.assert_close(heads["average"], sum(heads[f"branch{i}"] for i in range(4)) / 4)
        torch.testing.assert_close(lrn.deployable()(x), heads["branch0"], rtol=0, atol=0)
    assert lrn.primary_head == "branch0" and len(lrn.last_layer_parameters()) == 8


def test_bad_use_is_refused():
    lrn = build_okddip("resnet8", 5, 3)
    with pytest.raises(RuntimeError, match="forward"):
        lrn.loss({f"branch{i}": torch.zeros(2, 5) for i in range(4)}, torch.zeros(2, dtype=torch.long), state())
    with pytest.raises(ConfigError, match="branches"):
        methods.METHODS.build("okddip", "resnet8", 5, branches=2)
    with pytest.raises(ValueError, match="factor"):
        build_okddip("resnet8", 5, 3, factor=65)


def test_trains_through_experiment_run(tmp_path):
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    cfg = RunConfig(method="okddip", model="resnet8", dataset="digits", train_size=100, test_size=100, epochs=1,
                    milestones=[], batch_size=50, device="cpu", progress=False, tensorboard=False)
    record = experiment.run(cfg, run_dir=tmp_path / "run").metrics[-1]
    for head in ("branch0", "branch1", "branch2", "branch3", "ensemble", "average"):
        assert f"test/{head}/top1" in record and 0 <= record[f"test/{head}/top1"] <= 100
    parts = ("ce/peers", "ce/branch0", "kl/peers", "kl/branch0")
    assert record["train/loss"] == pytest.approx(sum(record[f"train/{p}"] for p in parts), rel=1e-5)


def test_exact_flop_count():
    # 4 heads as test_cl_ilr's hand count (trunk 1,103,872 + 4 heads of 459,392 FLOPs), plus
    # W_q and W_k on 3 peers (3 * 2 * 2*64*8 = 6,144) and the energies q_a . k_c (3*3 * 2*8 = 144)
    c = cost(build_okddip("resnet8", 5, 3), SMALL)
    assert c["train_flops"] == 1_103_872 + 4 * 459_392 + 6_144 + 144 == 2_947_728
    assert c["test_flops"] == count_flops(build("resnet8", 5), SMALL) == 1_563_264
