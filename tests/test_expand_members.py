"""Expansion strategies whose new branches become real members, and the branch diagnostics.

- ``new_head`` and an annealed gate prior keep the parent's function at the moment of
  expansion (exact for old branches, ~e^-10 for the ensemble);
- after a few epochs on a fixed tiny task the annealed new branches carry gate weight
  above a stated floor, while with the fixed prior they stay at ~0 (the defect measured
  in issue #13);
- the diagnostics recorded each epoch (gate weight per branch, pairwise disagreement and
  KL) equal a direct computation.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from cooplib.analysis import diversity
from cooplib.engine import metrics, train
from cooplib.engine.config import RunConfig
from cooplib.data import DeviceLoader
from cooplib.models.expand import annealed_prior, expand_branches
from cooplib.methods.base import TrainState
from cooplib.methods.one import ONE, branch_sums, build_one
from cooplib.models.multibranch import MultiBranchResNet
from test_expand import SMALL, trained_like  # the same "trained-looking" ONE-3

#: the floor the annealed new branches' gate weight must pass (uniform over 5 is 0.2)
GATE_FLOOR = 0.05




def test_new_head_copies_features_with_a_fresh_classifier_and_keeps_the_function():
    old = trained_like()
    x = torch.randn(6, *SMALL)
    with torch.no_grad():
        h_old, g_old = old.forward_with_gate(x)
    new = expand_branches(old, 5, "new_head", noise=0.0, seed=1)
    assert new.branch_sources == [0, 1, 2, 0, 1] and new.fresh_fc == [False, False, False, True, True]
    for j, src in ((3, 0), (4, 1)):
        a, b = new.branches[j], old.branches[src]
        assert all(torch.equal(p, q) for p, q in zip(a.layer3.state_dict().values(), b.layer3.state_dict().values()))
        assert not torch.equal(a.fc.weight, b.fc.weight)  # a new classifier
    assert torch.equal(new.gate_prior[:3], old.gate_prior) and new.gate_prior[3:].tolist() == [-10.0, -10.0]
    with torch.no_grad():
        h_new, g_new = new.forward_with_gate(x)
    for i in range(3):
        assert torch.equal(h_new[f"branch{i}"], h_old[f"branch{i}"])
    assert not torch.allclose(h_new["branch3"], h_old["branch0"])  # predicts differently from its source
    assert float(g_new[:, 3:].max()) < 1e-3  # parked: the old branches keep their weight
    torch.testing.assert_close(g_new[:, :3], g_old, rtol=0, atol=1e-3)
    torch.testing.assert_close(h_new["ensemble"], h_old["ensemble"], rtol=0, atol=1e-3)
    # noise perturbs the copied features only, never the fresh classifier
    noisy = expand_branches(old, 5, "new_head", noise=0.1, seed=1)
    assert torch.equal(noisy.branches[3].fc.weight, new.branches[3].fc.weight)
    assert not torch.equal(noisy.branches[3].layer3[0].conv1.weight, new.branches[3].layer3[0].conv1.weight)


def test_new_head_momentum_copies_features_only():
    torch.manual_seed(0)
    parent = ONE(MultiBranchResNet("resnet8", 5, branches=3))
    opt = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9)
    parent(torch.randn(8, *SMALL))["ensemble"].sum().backward()
    opt.step()
    child = build_one("resnet8", 5, 3, branches=5, expand="new_head")
    state = child.init_from(parent, opt.state_dict())["state"]
    names = [n for n, _ in child.named_parameters()]
    idx = {n: i for i, n in enumerate(names)}
    old = dict(zip([n for n, _ in parent.named_parameters()], [opt.state[p] for p in parent.parameters()]))
    conv = "net.branches.{}.layer3.0.conv1.weight"
    assert torch.equal(state[idx[conv.format(3)]]["momentum_buffer"], old[conv.format(0)]["momentum_buffer"])
    assert idx["net.branches.3.fc.weight"] not in state and idx["net.branches.4.fc.bias"] not in state
    gate = state[idx["net.gate_fc.weight"]]["momentum_buffer"]
    assert torch.equal(gate[3:], torch.zeros_like(gate[3:]))
    assert torch.equal(gate[:3], old["net.gate_fc.weight"]["momentum_buffer"])


def test_annealed_prior_is_linear_to_zero():
    start = torch.tensor([0.0, -10.0, -math.log(2)])
    assert torch.equal(annealed_prior(start, 0.0, 4.0), start)
    torch.testing.assert_close(annealed_prior(start, 1.0, 4.0), start * 0.75)
    assert torch.equal(annealed_prior(start, 4.0, 4.0), torch.zeros(3))
    assert torch.equal(annealed_prior(start, 9.0, 4.0), torch.zeros(3))
    assert annealed_prior(start, 3.0, 0.0) is start  # no anneal: the fixed prior


@pytest.mark.parametrize("strategy", ["fresh", "new_head", "duplicate"])
def test_anneal_keeps_the_function_at_expansion_and_follows_the_schedule(strategy):
    torch.manual_seed(0)
    parent = build_one("resnet8", 5, 3, branches=3)
    parent.net.load_state_dict(trained_like().state_dict())
    parent.eval()
    child = build_one("resnet8", 5, 3, branches=5, expand=strategy, expand_anneal=2.0, expand_noise=0.0)
    child.init_from(parent)
    start = child.net.gate_prior.clone()
    assert torch.equal(child.prior_at_expansion, start) and bool((start < 0).any())
    x = torch.randn(6, *SMALL)
    child.eval()
    with torch.no_grad():
        torch.testing.assert_close(child(x)["ensemble"], parent(x)["ensemble"], rtol=0, atol=1e-3)
    child.train()
    y = torch.randint(0, 5, (8,))
    for epoch, step, steps in ((0, 0, 4), (0, 3, 4), (1, 1, 4), (2, 0, 4), (5, 2, 4)):
        child.loss(child(torch.randn(8, *SMALL)), y, TrainState(epoch, 8, step, steps))
        done = epoch + (step + 1) / steps
        torch.testing.assert_close(child.net.gate_prior, start * max(0.0, 1 - done / 2.0))
    # evaluation never moves the prior; a fixed prior (the default) never moves either
    child.eval()
    before = child.net.gate_prior.clone()
    child.loss(child(x), torch.zeros(6, dtype=torch.long), TrainState(1, 8, 0, 4))
    assert torch.equal(child.net.gate_prior, before)
    fixed = build_one("resnet8", 5, 3, branches=5, expand=strategy)
    fixed.init_from(parent)
    fixed.train()
    p0 = fixed.net.gate_prior.clone()
    fixed.loss(fixed(torch.randn(8, *SMALL)), y, TrainState(3, 8, 0, 4))
    assert torch.equal(fixed.net.gate_prior, p0)


def _fit(learner, data, run_dir, epochs, lr, seed=0):
    config = RunConfig(method="one", model="resnet8", dataset="quadrants", epochs=epochs, batch_size=32, lr=lr,
                       weight_decay=5e-4, device="cpu", seed=seed, progress=False, tensorboard=False)
    return train.fit(learner, data, config, run_dir)


@pytest.fixture(scope="module")
def trained_parent(tmp_path_factory):
    """A ONE-3 trained 4 epochs on the quadrants task (shared by the strategies)."""
    from conftest import quadrants

    from cooplib.data import Augment, ImageData

    xtr, ytr, xte, yte = quadrants()
    data = ImageData(name="quadrants", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
                     classes=["tl", "tr", "bl", "br"], mean=(0.3,) * 3, std=(0.3,) * 3, augment=Augment(crop_pad=1, flip=False))
    torch.manual_seed(0)
    parent = build_one("resnet8", data.num_classes, 3, branches=3)
    _fit(parent, data, tmp_path_factory.mktemp("parent") / "run", epochs=4, lr=0.1)
    return parent, data


@pytest.mark.parametrize("strategy", ["fresh", "new_head"])
def test_annealed_new_branches_carry_gate_weight_after_a_few_epochs(strategy, trained_parent, tmp_path):
    parent, tiny_data = trained_parent
    gates = {}
    for anneal in (0.0, 2.0):
        torch.manual_seed(1)
        child = build_one("resnet8", tiny_data.num_classes, 3, branches=5, expand=strategy, expand_anneal=anneal)
        child.init_from(parent)
        result = _fit(child, tiny_data, tmp_path / f"child-{anneal}", epochs=4, lr=0.01, seed=1)
        last = result.metrics[-1]
        gates[anneal] = [last[f"test/gate/branch{j}"] for j in (3, 4)]
        assert sum(last[f"test/gate/branch{j}"] for j in range(5)) == pytest.approx(1.0, abs=1e-5)
    assert min(gates[2.0]) > GATE_FLOOR, gates
    assert max(gates[0.0]) < 1e-3, gates  # the fixed prior of -10: the new branches never get in


def test_branch_sums_match_a_direct_computation():
    torch.manual_seed(0)
    z = torch.randn(4, 7, 5) * 3
    g = torch.softmax(torch.randn(7, 4), 1)
    d = branch_sums(z, g)
    assert len(d) == 4 + 2 * 6
    for i in range(4):
        torch.testing.assert_close(d[f"gate/branch{i}"], g[:, i].sum())
    for i, j in itertools.combinations(range(4), 2):
        pi, pj = torch.softmax(z[i], -1), torch.softmax(z[j], -1)
        kl_ij = (pi * (pi.log() - pj.log())).sum()
        kl_ji = (pj * (pj.log() - pi.log())).sum()
        torch.testing.assert_close(d[f"kl/branch{i}-branch{j}"], 0.5 * (kl_ij + kl_ji), rtol=1e-5, atol=1e-5)
        assert float(d[f"disagree/branch{i}-branch{j}"]) == 100.0 * int((z[i].argmax(-1) != z[j].argmax(-1)).sum())
    same = branch_sums(torch.stack([z[0], z[0]]))
    assert float(same["disagree/branch0-branch1"]) == 0.0 and abs(float(same["kl/branch0-branch1"])) < 1e-5


def test_evaluate_records_the_learner_diagnostics_as_means(tiny_data):
    torch.manual_seed(0)
    learner = build_one("resnet8", tiny_data.num_classes, 3, branches=3)
    learner.train()
    learner(torch.randn(16, *SMALL))  # move the BN statistics
    loader = DeviceLoader(tiny_data.x_test, tiny_data.y_test, 16, device=torch.device("cpu"),
                          mean=tiny_data.mean, std=tiny_data.std)
    out = metrics.evaluate(learner, loader, None, torch.device("cpu"))
    learner.eval()
    xs = torch.cat([x for x, _ in loader])
    with torch.no_grad():
        heads, gate = learner.net.forward_with_gate(xs)
    n = xs.shape[0]
    for i in range(3):
        assert out[f"gate/branch{i}"] == pytest.approx(float(gate[:, i].mean()), abs=1e-5)
    want = branch_sums(torch.stack([heads[f"branch{i}"] for i in range(3)]))
    for k, v in want.items():
        assert out[k] == pytest.approx(float(v) / n, abs=1e-4)
    described = diversity.describe({f"test/{k}": v for k, v in out.items()}, old=3)
    assert described["gate old"] == pytest.approx(1.0, abs=1e-5)
    assert described["ensemble gain"] == pytest.approx(
        out["ensemble/top1"] - max(out[f"branch{i}/top1"] for i in range(3)))


def test_annealed_expansion_interrupted_mid_anneal_resumes_to_the_same_run(quadrants_npz, tmp_path, one_thread, monkeypatch):
    """The anneal's start is rebuilt by init_from on resume, so an expanded run stopped in
    the middle of its anneal and resumed equals the uninterrupted run, bit for bit."""
    from cooplib.engine import experiment, runs
    from cooplib.engine.config import RunConfig
    from cooplib.methods.one import ONE

    common = dict(model="resnet8", dataset="npz", dataset_args={"path": str(quadrants_npz)}, batch_size=32, lr=0.05,
                  deterministic=True, device="cpu", progress=False, tensorboard=False)
    parent = experiment.run(RunConfig(method="one", epochs=1, schedule="constant", method_args={"branches": 2}, **common), tmp_path).run_dir
    child = RunConfig(method="one", epochs=3, init_from=str(parent),
                      method_args={"branches": 3, "expand": "fresh", "expand_anneal": 2.0}, **common)
    ref = experiment.run(child, run_dir=tmp_path / "ref")

    original, fired = ONE.loss, []

    def interrupting(self, heads, y, state):
        if not fired and (state.epoch, state.step) == (1, 1):
            fired.append(True)
            raise KeyboardInterrupt
        return original(self, heads, y, state)

    monkeypatch.setattr(ONE, "loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(child, run_dir=tmp_path / "cut")
    monkeypatch.setattr(ONE, "loss", original)
    resumed = experiment.run(child, run_dir=tmp_path / "cut")
    strip = lambda records: [{k: v for k, v in r.items() if "seconds" not in k} for r in records]
    assert strip(resumed.metrics) == strip(ref.metrics)
    assert runs.RunDir(tmp_path / "cut").file_path("last").read_bytes() == runs.RunDir(ref.run_dir).file_path("last").read_bytes()
    assert ref.metrics[-1]["test/gate/branch2"] > ref.metrics[0]["test/gate/branch2"]  # the anneal let the branch in
