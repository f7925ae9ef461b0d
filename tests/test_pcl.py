"""PCL (Wu & Gong, AAAI 2021; no official code, the paper's method section): loss and
gradient against the formula restated here, exact EMA update, views per peer, exact
parameter count, deployment, bit-identical resume and a tiny digits run."""
from __future__ import annotations

import math

import pytest
import torch

from cooplib.base.errors import ConfigError
from cooplib.base.registry import METHODS
from cooplib.engine import runs, train
from cooplib.engine.config import RunConfig
from cooplib.methods.base import TrainState
from cooplib.methods.pcl import PCL, PCLNet, sigmoid_ramp
from cooplib.models import build
from cooplib.models.flops import count_params


def pcl(branches=2, seed=0, **kw) -> PCL:
    torch.manual_seed(seed)
    return PCL(PCLNet("resnet8", 4, 3, branches), **kw)


def fixed_heads(m=3, b=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = [f"branch{i}" for i in range(m)] + ["ensemble"] + [f"mean{i}" for i in range(m)]
    heads = {n: (torch.randn(b, c, generator=g) * 2).requires_grad_(True) for n in names}
    return heads, torch.randint(0, c, (b,), generator=g)


def kl_hand(teacher, student, t):
    """T^2 * batch mean of sum_c p_t (log p_t - log p_s), p = softmax(z / T), by hand."""
    p_t = torch.softmax(teacher.detach().double() / t, 1)
    return t * t * (p_t * (p_t.log() - torch.log_softmax(student.double() / t, 1))).sum(1).mean()


def ce_hand(z, y):
    return -torch.log_softmax(z.double(), 1)[torch.arange(len(y)), y].mean()


@pytest.mark.parametrize("epoch, ramp", [(0, 0), (1, 4), (5, 4)])
def test_loss_and_gradient_match_the_formula(epoch, ramp):
    m, t, pe_w, pm_w = 3, 3.0, 0.8, 1.5
    learner = PCL(PCLNet("resnet8", 4, 3, m), temperature=t, pe_weight=pe_w, pm_weight=pm_w, ramp_epochs=ramp)
    heads, y = fixed_heads(m)
    total, parts = learner.loss(heads, y, TrainState(epoch, 10, 0, 1))
    total.backward()

    ref = {k: v.detach().double().requires_grad_(True) for k, v in heads.items()}
    w = math.exp(-5 * (1 - epoch / ramp) ** 2) if ramp and epoch < ramp else 1.0
    br = [ref[f"branch{i}"] for i in range(m)]
    want = sum(ce_hand(z, y) for z in br) + ce_hand(ref["ensemble"], y)
    want = want + pe_w * sum(kl_hand(ref["ensemble"], z, t) for z in br)
    want = want + pm_w * w / (m - 1) * sum(kl_hand(ref[f"mean{j}"], br[i], t)
                                             for i in range(m) for j in range(m) if j != i)
    want.backward()
    assert float(total.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert float(sum(parts.values()).detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    for name in [f"branch{i}" for i in range(m)] + ["ensemble"]:
        torch.testing.assert_close(heads[name].grad.double(), ref[name].grad, rtol=1e-5, atol=1e-7)
    # the teachers are targets: the ensemble's gradient is its CE's alone, the means get none
    ens = heads["ensemble"].detach().double()
    torch.testing.assert_close(heads["ensemble"].grad.double(),
                               (torch.softmax(ens, 1) - torch.nn.functional.one_hot(y, 4)) / len(y), rtol=1e-5, atol=1e-7)
    assert all(heads[f"mean{i}"].grad is None for i in range(m))


def test_sigmoid_ramp():
    assert sigmoid_ramp(0, 0) == 1.0 and sigmoid_ramp(4, 4) == 1.0
    assert sigmoid_ramp(1, 4) == pytest.approx(math.exp(-5 * 0.75 ** 2))


def test_ema_warmup_is_mean_teachers_true_average_then_the_decay():
    learner = pcl(ema_decay=0.9)
    steps = 10
    factors = [learner.decay(TrainState(e, 3, s, steps)) for e in range(3) for s in range(steps)]
    assert factors[:3] == [0.5, 1 - 1 / 3, 0.75]  # t = 1, 2, 3: 1 - 1/(t+1)
    assert all(f == 0.9 for f in factors[9:])  # from t = 9 on the decay itself
    assert pcl(ema_decay=0.9, ema_warmup=False).decay(TrainState(0, 3, 0, steps)) == 0.9


def test_ema_update_is_exact_and_only_touches_the_mean_parameters():
    learner = pcl(ema_decay=0.9, ema_warmup=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for p in learner.mean_net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    before = {k: v.clone() for k, v in learner.mean_net.state_dict().items()}
    live = {k: v.clone() for k, v in learner.net.state_dict().items()}
    learner.after_step(TrainState(0, 1, 0, 1))
    params = dict(learner.mean_net.named_parameters())
    for k, v in learner.mean_net.state_dict().items():
        if k in params:
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * live[k], rtol=1e-6, atol=1e-6)
        else:  # BatchNorm statistics come from the mean network's own passes
            assert torch.equal(v, before[k])
    assert all(torch.equal(v, learner.net.state_dict()[k]) for k, v in live.items())


def test_mean_network_starts_as_the_network_and_is_not_trained():
    learner = pcl()
    for (k, a), (_, b) in zip(learner.net.state_dict().items(), learner.mean_net.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in learner.mean_net.parameters())


def test_exact_parameter_count():
    m, c = 3, 4
    learner = pcl(branches=m)
    net = build("resnet8", c, 3)
    layer3 = sum(p.numel() for p in net.layer3.parameters())
    fc = sum(p.numel() for p in net.fc.parameters())
    # one resnet8, m - 1 more layer3 + fc, and the ensemble classifier over m * 64 features
    want = count_params(net) + (m - 1) * (layer3 + fc) + (m * 64 + 1) * c
    assert count_params(learner) == want
    assert count_params(learner.deployable(), trainable_only=False) == count_params(net)


def test_each_peer_sees_its_own_view():
    learner = pcl(branches=2).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 8, 8, generator=g)
    with torch.no_grad():
        heads = learner(x)
        for i in range(2):
            torch.testing.assert_close(heads[f"branch{i}"], learner.net.branch_net(i)(x[i]), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(heads[f"mean{i}"], learner.mean_net.branch_net(i)(x[i]), rtol=1e-5, atol=1e-5)
        net = learner.net
        feats = [net.branches[i].pool(net.branches[i].layer3(net.layer2(net.layer1(net.stem(x[i]))))) for i in range(2)]
        torch.testing.assert_close(heads["ensemble"], net.ensemble_fc(torch.cat(feats, 1)), rtol=1e-5, atol=1e-5)
        single = learner(x[0])
        torch.testing.assert_close(single["branch1"], learner.net.branch_net(1)(x[0]), rtol=1e-5, atol=1e-5)
    assert learner.views == 2 and pcl(separate_views=False).views == 1


def test_deployed_model_is_the_temporal_mean_of_peer_0():
    learner = pcl().eval()
    with torch.no_grad():
        for p in learner.mean_net.parameters():
            p.mul_(0.5)
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(learner.deployable()(x), learner(x)["mean0"])
    assert learner.primary_head == "mean0"


def test_registry_options_and_clear_errors():
    learner = METHODS.build("pcl", "resnet8", 10, 1, branches=4, ema_decay=0.99)
    assert isinstance(learner, PCL) and learner.num_branches == 4 and learner.views == 4
    with pytest.raises(ConfigError):
        METHODS.build("pcl", "resnet8", 10, 1, branches=1)
    with pytest.raises(ConfigError):
        METHODS.build("pcl", "resnet8", 10, 1, ema_decay=1.0)


class Interrupting(PCL):
    def loss(self, heads, y, state):
        if (state.epoch, state.step) == (1, 1):
            raise KeyboardInterrupt
        return super().loss(heads, y, state)


def test_interrupted_run_resumes_bit_identically(tiny_data, tmp_path, one_thread):
    """Views and the temporal mean come back from the checkpoint: resumed == uninterrupted."""
    cfg = RunConfig(model="resnet8", dataset="quadrants", epochs=3, batch_size=32, lr=0.05, milestones=[],
                    deterministic=True, progress=False, tensorboard=False, device="cpu")
    ref = train.fit(pcl(ema_decay=0.9), tiny_data, cfg, tmp_path / "ref")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(Interrupting(PCLNet("resnet8", 4, 3, 2), ema_decay=0.9), tiny_data, cfg, tmp_path / "cut")
    resumed = train.fit(pcl(ema_decay=0.9, seed=5), tiny_data, cfg, tmp_path / "cut")
    same = runs.RunDir(tmp_path / "ref").file_path("last").read_bytes() == runs.RunDir(tmp_path / "cut").file_path("last").read_bytes()
    assert same
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in ref.metrics]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in resumed.metrics]


def test_tiny_digits_run_records_every_head(tmp_path):
    from cooplib.engine import experiment

    cfg = RunConfig(method="pcl", model="resnet8", dataset="digits", train_size=100, test_size=100, epochs=1,
                    milestones=[], batch_size=50, lr=0.05, device="cpu", progress=False, tensorboard=False,
                    method_args={"branches": 2})
    res = experiment.run(cfg, tmp_path)
    last = res.final["last"]
    for head in ("branch0", "branch1", "ensemble", "mean0", "mean1"):
        assert f"test/{head}/top1" in last and f"test/{head}/top5" in last
    assert {"train/ce/ensemble", "train/kl/ensemble", "train/kl/mean"} <= set(last)
    assert res.final["primary_head"] == "mean0"


@pytest.mark.parametrize("base", ["wrn_16_1", "vgg8"])
def test_staged_backbones_get_peers(base):
    """Any backbone of the shared layout: one network plus m - 1 more layer3 + pool + fc and
    the ensemble classifier; each peer computes as its path alone."""
    m, c = 2, 4
    net = build(base, c, 3)
    learner = METHODS.build("pcl", base, c, 3, branches=m).eval()
    branch = sum(count_params(getattr(net, part)) for part in ("layer3", "pool", "fc"))
    assert count_params(learner) == count_params(net) + (m - 1) * branch + (m * net.fc.in_features + 1) * c
    x = torch.randn(m, 2, 3, 16, 16)
    with torch.no_grad():
        heads = learner(x)
        for i in range(m):
            torch.testing.assert_close(heads[f"branch{i}"], learner.net.branch_net(i)(x[i]), rtol=1e-5, atol=1e-5)
