"""CRD against HobbitLong/RepDistiller@b84f547 crd/criterion.py (ContrastLoss, CRDLoss) and
crd/memory.py (ContrastMemory), re-implemented here from their formulas on fixed tensors;
and the loader's dataset indices that CRD needs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cooplib import losses, models
from cooplib.base.errors import ConfigError
from cooplib.data import DeviceLoader
from cooplib.methods.base import TrainState
from cooplib.methods.crd import CRD


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hand_nce(x, n_data, eps=1e-7):
    """Eq. 18: -(sum_b log P_pos/(P_pos + m/n) + sum_b,k log (m/n)/(P_neg + m/n)) / B."""
    b, m = x.shape[0], x.shape[1] - 1
    total = 0.0
    for i in range(b):
        total = total + math.log(x[i, 0] / (x[i, 0] + m / n_data + eps))
        for k in range(1, m + 1):
            total = total + math.log((m / n_data) / (x[i, k] + m / n_data + eps))
    return -total / b


def test_nce_loss_and_gradient():
    x = rand(4, 6).exp().double().requires_grad_(True)
    ours = losses.crd_nce(x, 50)
    assert ours.item() == pytest.approx(hand_nce(x.detach(), 50), rel=1e-6)
    (g,) = torch.autograd.grad(ours, [x])
    m, noise = 5, 5 / 50
    hand_g = torch.zeros(4, 6, dtype=torch.float64)  # d/dx of the negated logs, divided by B
    hand_g[:, 0] = -(1 / x[:, 0] - 1 / (x[:, 0] + noise + 1e-7)).detach() / 4
    hand_g[:, 1:] = (1 / (x[:, 1:] + noise + 1e-7)).detach() / 4
    assert torch.allclose(g.double(), hand_g, rtol=1e-5)


def learner_with_data(n=12, classes=3, k=4):
    torch.manual_seed(0)
    learner = CRD(models.build("resnet8", classes, 3), models.build("resnet8", classes, 3), nce_k=k, feat_dim=8)
    y = torch.arange(n) % classes
    learner.bind_data(y)
    return learner, y


def test_crd_term_memory_and_update_equal_the_reference():
    learner, y = learner_with_data()
    f_s, f_t = rand(3, 64), rand(3, 64, seed=1)
    index = torch.tensor([0, 4, 8])
    sample = torch.tensor([[0, 1, 2, 5, 7], [4, 2, 3, 5, 6], [8, 1, 3, 9, 10]])
    mem_s, mem_t = learner.memory.memory_s.clone(), learner.memory.memory_t.clone()
    es, et = learner.adapters["embed_s"], learner.adapters["embed_t"]
    fs = f_s.clone().requires_grad_(True)
    loss = learner.crd_term(fs, f_t, index, sample)
    # the reference by hand: v = normalise(W f + b); student anchors against the teacher memory
    v_s = F.normalize(f_s @ es.weight.T + es.bias, dim=1)
    v_t = F.normalize(f_t @ et.weight.T + et.bias, dim=1)
    fs2 = f_s.clone().requires_grad_(True)
    v_s2 = F.normalize(fs2 @ es.weight.T + es.bias, dim=1)
    out_s = torch.stack([torch.exp(mem_t[sample[b]] @ v_s2[b] / 0.07) for b in range(3)])
    out_t = torch.stack([torch.exp(mem_s[sample[b]] @ v_t[b] / 0.07) for b in range(3)])
    z_s, z_t = out_s.detach().mean() * 12, out_t.mean() * 12  # Z set on the first batch
    hand = -sum(torch.log(o[b, 0] / (o[b, 0] + 4 / 12 + 1e-7)) + torch.log((4 / 12) / (o[b, 1:] + 4 / 12 + 1e-7)).sum()
                for o in (out_s / z_s, out_t / z_t) for b in range(3)) / 3
    assert torch.allclose(loss, hand, rtol=1e-5)
    (g1,), (g2,) = torch.autograd.grad(loss, [fs]), torch.autograd.grad(hand, [fs2])
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-6 * float(g2.abs().max()))
    assert torch.allclose(learner.memory.z, torch.stack([z_s, z_t]), rtol=1e-6)
    # memory.py: rows of the batch to normalise(0.5 m + 0.5 v); the others untouched
    new_s, new_t = learner.memory.memory_s, learner.memory.memory_t
    assert torch.allclose(new_s[index], F.normalize(0.5 * mem_s[index] + 0.5 * v_s.detach(), dim=1), atol=1e-6)
    assert torch.allclose(new_t[index], F.normalize(0.5 * mem_t[index] + 0.5 * v_t.detach(), dim=1), atol=1e-6)
    rest = torch.tensor([i for i in range(12) if i not in (0, 4, 8)])
    assert torch.equal(new_s[rest], mem_s[rest]) and torch.equal(new_t[rest], mem_t[rest])
    # a second batch keeps the first Z
    learner.crd_term(f_s, f_t, torch.tensor([1, 2, 3]), sample)
    assert torch.allclose(learner.memory.z, torch.stack([z_s, z_t]), rtol=1e-6)


def test_negatives_come_from_other_classes():
    learner, y = learner_with_data(n=30, classes=3, k=5)
    index = torch.tensor([0, 1, 2, 3])
    s = learner.memory.sample(index, 5)
    assert s.shape == (4, 6) and torch.equal(s[:, 0], index)
    assert all(y[j] != y[i] for i, row in zip(index, s) for j in row[1:])
    assert all(len(set(row[1:].tolist())) == 5 for row in s)  # 20 others >= 5: no replacement
    s = learner.memory.sample(index, 25)  # more than the 20 others: with replacement
    assert all(y[j] != y[i] for i, row in zip(index, s) for j in row[1:])


def test_crd_learner_total_and_weights_load_without_data():
    learner, y = learner_with_data()
    learner.train()
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(ConfigError, match="index"):
        learner.loss(learner(x), y[:3], TrainState(0, 1, 0, 1))
    total, parts = learner.loss(learner(x), y[:3], TrainState(0, 1, 0, 1, index=torch.tensor([0, 1, 2])))
    assert torch.allclose(total, parts["ce/net"] + 0.8 * parts["crd/net"])
    torch.manual_seed(1)
    fresh = CRD(models.build("resnet8", 3, 3), models.build("resnet8", 3, 3), nce_k=4, feat_dim=8)
    fresh.load_state_dict(learner.state_dict(), strict=True)
    assert torch.equal(fresh.memory.memory_s, learner.memory.memory_s) and fresh.memory.n_data == 12
    deployed = {id(p) for p in learner.deployable().parameters()}
    assert not deployed & {id(p) for p in learner.adapters.parameters()}


def test_loader_yields_each_examples_dataset_index():
    x = torch.randint(0, 255, (10, 1, 2, 2), dtype=torch.uint8)
    y = torch.arange(10)
    loader = DeviceLoader(x, y, 4, device="cpu", mean=[0.0], std=[1.0], shuffle=True, with_index=True)
    seen = []
    for xb, yb, idx in loader:
        assert torch.equal(yb, y[idx]) and torch.allclose(xb, x[idx].float() / 255)
        seen += idx.tolist()
    assert sorted(seen) == list(range(10))


def test_crd_trains_through_the_loop(tmp_path):
    """The loop binds the labels and passes the indices: the banks move, the teacher does not."""
    import cooplib.methods.crd  # noqa: F401  (registers "crd")
    from cooplib.engine import experiment
    from cooplib.engine.config import RunConfig

    base = RunConfig(method="baseline", dataset="digits", model="resnet8", epochs=1, batch_size=64, lr=0.1,
                     train_size=120, test_size=60, schedule="cosine", device="cpu", deterministic=True, progress=False, tensorboard=False)
    teacher = experiment.run(base, tmp_path)
    result = experiment.run(base.replace(method="crd", method_args={"teacher": str(teacher.run_dir), "nce_k": 16,
                                                                    "feat_dim": 8}), tmp_path)
    assert result.final["last"]["train/crd/net"] > 0
    learner = experiment.load_learner(result.run_dir)
    assert learner.memory.n_data == 120 and bool((learner.memory.z > 0).all())


def test_negatives_when_some_classes_have_too_few_others_and_the_rule_is_decided_once():
    """Class 0 holds 24 of 30 images: its rows have 6 others (k = 10: with replacement), the
    other classes' rows 24 (without); the none/all/mixed decision is cached per k."""
    learner, _ = learner_with_data(n=30, classes=3, k=10)
    y = torch.tensor([0] * 24 + [1] * 3 + [2] * 3)
    learner.bind_data(y)
    index = torch.tensor([0, 1, 25, 28])
    s = learner.memory.sample(index, 10)
    assert all(y[j] != y[i] for i, row in zip(index, s) for j in row[1:])
    assert len(set(s[2, 1:].tolist())) == 10 and len(set(s[3, 1:].tolist())) == 10  # 27 others: distinct
    assert set(s[0, 1:].tolist()) <= set(range(24, 30))  # only 6 others: repeats
    assert learner.memory._short_mode == {10: "mixed"}
    learner.memory.sample(index, 5)
    assert learner.memory._short_mode == {10: "mixed", 5: "none"}
    learner.bind_data(y)
    assert learner.memory._short_mode == {}  # new labels: decided again
