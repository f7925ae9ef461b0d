"""MCL-OKD: the loss, its gradient and the memory update against a re-implementation of
the reference (winycg/MCL-OKD at c15a0fdb22940d19e47a526545bdebd57b232aa8:
main_cifar_mcl_okd.py's train loop, mcl/criterion.py ``MCL_Loss`` / ``ContrastLoss`` /
``Embed``, mcl/memory.py ``ContrastMemory``), written here with its per-pair loops, on
fixed tensors; the network's layout (stem + layer1 shared, as models/mcl_okd_resnet.py),
exact parameter count, negatives of other classes, and a tiny run through the loop.
"""
from __future__ import annotations

import math

import pytest
import torch

import cooplib.methods.mcl_okd  # noqa: F401  (registers "mcl_okd")
from cooplib import methods
from cooplib.base.errors import ConfigError
from cooplib.methods.base import TrainState
from cooplib.methods.crd import contrast_sample
from cooplib.methods.mcl_okd import MCLOKD, build_mcl_okd, pair_contrast
from cooplib.models import build
from cooplib.models.flops import count_params

SMALL = (3, 8, 8)
EPS = 1e-7


def ref_contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """criterion.py ContrastLoss.forward."""
    bsz, m = x.shape[0], x.size(1) - 1
    pn = 1 / float(n_data)
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + EPS)).log()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + EPS)).log()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


def ref_memory_forward(emb: list[torch.Tensor], memory: list[torch.Tensor], y: torch.Tensor, idx: torch.Tensor,
                       t: float, momentum: float) -> list[torch.Tensor]:
    """memory.py ContrastMemory.forward: scores per pair i < j both ways, Z from this batch, update."""
    b, k1 = idx.shape
    d = memory[0].shape[1]
    n = memory[0].shape[0]
    out = []
    for i in range(len(emb)):
        for j in range(i + 1, len(emb)):
            w1 = torch.index_select(memory[i], 0, idx.view(-1)).detach().view(b, k1, d)
            out.append(torch.exp(torch.div(torch.bmm(w1, emb[j].view(b, d, 1)), t)))
            w2 = torch.index_select(memory[j], 0, idx.view(-1)).detach().view(b, k1, d)
            out.append(torch.exp(torch.div(torch.bmm(w2, emb[i].view(b, d, 1)), t)))
    out = [o / (o.mean().detach().item() * n) for o in out]
    with torch.no_grad():
        for i, e in enumerate(emb):
            pos = torch.index_select(memory[i], 0, y.view(-1)).mul(momentum).add(e * (1 - momentum))
            memory[i].index_copy_(0, y, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))
    return out


def ref_total(logits: list[torch.Tensor], emb: list[torch.Tensor], memory: list[torch.Tensor], y: torch.Tensor,
              index: torch.Tensor, idx: torch.Tensor, t: float = 3.0, gamma: float = 1.0, alpha: float = 1.0,
              beta: float = 0.025, nce_t: float = 0.1, nce_m: float = 0.5) -> torch.Tensor:
    """main_cifar_mcl_okd.py train(): the last logits distil from the detached mean."""
    loss_cls = sum(-torch.log_softmax(z, 1)[torch.arange(len(y)), y].mean() for z in logits)
    ens = (sum(logits) / len(logits)).detach()
    p_t = torch.softmax(ens / t, 1)
    loss_div = t * t * (p_t * (torch.log(p_t) - torch.log_softmax(logits[-1] / t, 1))).sum() / len(y)
    n = memory[0].shape[0]
    loss_kd = sum(ref_contrast_loss(o, n) for o in ref_memory_forward(emb, memory, index, idx, nce_t, nce_m))
    return gamma * loss_cls + alpha * loss_div + beta * loss_kd.squeeze()


def test_pair_contrast_and_its_gradient_equal_the_reference():
    g = torch.Generator().manual_seed(0)
    m, b, d, n, k = 3, 5, 8, 40, 6
    memory = torch.nn.functional.normalize(torch.randn(m, n, d, generator=g, dtype=torch.float64), dim=2).float()
    v = torch.nn.functional.normalize(torch.randn(m, b, d, generator=g), dim=2).requires_grad_(True)
    idx = torch.randint(0, n, (b, k + 1), generator=g)
    ours = pair_contrast(v, memory, idx, 0.1, n)
    v_ref = v.detach().clone().requires_grad_(True)
    ref = sum(ref_contrast_loss(o, n) for o in ref_memory_forward(list(v_ref.unbind(0)), list(memory.clone().unbind(0)),
                                                                   torch.arange(b), idx, 0.1, 0.5)).squeeze()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=1e-4, atol=1e-6)


def batch(lrn: MCLOKD, n: int = 30, b: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 5
    lrn.bind_data(labels)
    index = torch.randperm(n, generator=g)[:b]
    return torch.randn(b, *SMALL, generator=g), labels[index], index


@pytest.mark.parametrize("kw", [{}, {"temperature": 2.0, "alpha": 0.5, "beta": 0.1, "gamma": 0.7}])
def test_learner_loss_gradient_and_memory_update_equal_the_reference(kw):
    torch.manual_seed(0)
    lrn = build_mcl_okd("resnet8", 5, 3, branches=3, nce_k=7, **kw)
    x, y, index = batch(lrn)
    memory_before = lrn.memory.clone()
    state = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1, index=index)
    # the reference's inputs: the same draws of negatives, its branch order (ours first = its last)
    torch.manual_seed(5)
    idx = contrast_sample(lrn.labels, index, 7, {})
    heads = lrn(x)
    feats = lrn._features
    torch.manual_seed(5)
    total, parts = lrn.loss(heads, y, state)
    logits = [heads[f"branch{i}"] for i in (1, 2, 0)]
    emb = [lrn.embeddings(feats)[i] for i in (1, 2, 0)]
    ref_mem = [memory_before[i].clone() for i in (1, 2, 0)]
    ref = ref_total(logits, emb, ref_mem, y, index, idx, **{"t" if a == "temperature" else a: v for a, v in kw.items()})
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    for ours, theirs in zip((1, 2, 0), ref_mem):
        torch.testing.assert_close(lrn.memory[ours], theirs, rtol=1e-6, atol=1e-6)
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(lrn.memory[:, untouched], memory_before[:, untouched])
    params = [p for p in lrn.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_only_branch0_distils_and_the_ensemble_is_detached():
    torch.manual_seed(0)
    lrn = build_mcl_okd("resnet8", 5, 3, branches=3, beta=0.0, gamma=0.0)
    x, y, index = batch(lrn)
    heads = lrn(x)
    total, _ = lrn.loss(heads, y, TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1, index=index))
    total.backward()
    assert lrn.net.heads[0].fc.weight.grad.abs().sum() > 0
    for head in lrn.net.heads[1:]:  # the KL term alone reaches no other peer
        assert head.fc.weight.grad is None or head.fc.weight.grad.abs().sum() == 0


def test_layout_parameters_and_deployed_network():
    torch.manual_seed(3)
    ref = build("resnet8", 5)
    torch.manual_seed(3)
    lrn = build_mcl_okd("resnet8", 5, 3)
    sd = lrn.deployable().state_dict()
    assert sd.keys() == ref.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    # resnet8 by hand (test_cl_ilr): stem 464 + layer1 4672 shared; per peer layer2 14528 + layer3 57728
    # + fc 325; per peer embedding 64 * 128 + 128
    assert count_params(lrn) == 464 + 4672 + 4 * (14528 + 57728 + 325) + 4 * (64 * 128 + 128) == 328_740
    assert len(lrn.net.layer2s) == 4 and [lrn.net.group_of(i) for i in range(4)] == [0, 1, 2, 3]
    lrn.eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        heads = lrn(x)
    assert set(heads) == {"branch0", "branch1", "branch2", "branch3", "ensemble"}
    torch.testing.assert_close(heads["ensemble"], sum(heads[f"branch{i}"] for i in range(4)) / 4)
    torch.testing.assert_close(lrn.deployable()(x), heads["branch0"], rtol=0, atol=0)


def test_banks_are_buffers_that_load_without_data():
    lrn = build_mcl_okd("resnet8", 5, 3, branches=2)
    batch(lrn, n=30)
    stdv = 1 / math.sqrt(128 / 3)
    assert lrn.memory.shape == (2, 30, 128) and lrn.memory.abs().max() <= stdv
    fresh = build_mcl_okd("resnet8", 5, 3, branches=2)
    fresh.load_state_dict(lrn.state_dict())
    assert torch.equal(fresh.memory, lrn.memory) and torch.equal(fresh.labels, lrn.labels)
    assert "memory" not in lrn.deployable().state_dict()


def test_bad_use_is_refused():
    lrn = build_mcl_okd("resnet8", 5, 3, branches=2)
    heads = {"branch0": torch.zeros(2, 5), "branch1": torch.zeros(2, 5), "ensemble": torch.zeros(2, 5)}
    with pytest.raises(RuntimeError, match="forward"):
        lrn.loss(heads, torch.zeros(2, dtype=torch.long), TrainState(0, 1, 0, 1))
    lrn(torch.randn(2, *SMALL))
    with pytest.raises(ConfigError, match="bind_data"):
        lrn.loss(heads, torch.zeros(2, dtype=torch.long), TrainState(0, 1, 0, 1))
    with pytest.raises(ConfigError, match="branches"):
        methods.METHODS.build("mcl_okd", "resnet8", 5, branches=1)
    with pytest.raises(ConfigError, match="nce_m"):
        methods.METHODS.build("mcl_okd", "resnet8", 5, nce_m=1.5)


def test_trains_through_experiment_run(tmp_path):
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    cfg = RunConfig(method="mcl_okd", method_args={"branches": 2, "nce_k": 16}, model="resnet8", dataset="digits",
                    train_size=100, test_size=100, epochs=1, milestones=[], batch_size=50, device="cpu",
                    progress=False, tensorboard=False)
    record = experiment.run(cfg, run_dir=tmp_path / "run").metrics[-1]
    for head in ("branch0", "branch1", "ensemble"):
        assert f"test/{head}/top1" in record and 0 <= record[f"test/{head}/top1"] <= 100
    parts = ("ce/branches", "kl/branch0", "contrast")
    assert record["train/loss"] == pytest.approx(sum(record[f"train/{p}"] for p in parts), rel=1e-5)
