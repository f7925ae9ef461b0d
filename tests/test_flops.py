"""FLOP / parameter accounting against hand counts and the papers' numbers."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cooplib.models.flops import cost, count_flops, count_params
from cooplib.methods.base import Learner
from cooplib.models import build

CIFAR = (3, 32, 32)


def test_resnet32_matches_one_paper():
    f = count_flops(build("resnet32", 100), CIFAR)
    assert f == 138_260_992
    assert f"{f:.3e}" == "1.383e+08"  # ONE paper: 1.38e8


def test_resnet56_projection_and_zeropad():
    assert count_flops(build("resnet56", 100), CIFAR) == 251_507_200  # 125.75M MACs
    f = count_flops(build("resnet56", 100, shortcut="zeropad"), CIFAR)
    assert f == 250_982_912
    assert round(f / 2e6, 1) == 125.5 and f"{f:.2e}" == "2.51e+08"


@pytest.mark.parametrize(
    "depth, macs_m", [(14, 26.4), (26, 54.7), (38, 83.0), (50, 111.3), (56, 125.5)]
)
def test_depth_paper_resnet56_subnet_macs(depth: int, macs_m: float):
    """arXiv 2312.08532's ResNet-56 MACs for s = 0.2..1.0 (ceil(s*9) blocks per stage)
    are reproduced by option-A shortcuts."""
    f = count_flops(build(f"resnet{depth}", 100, shortcut="zeropad"), CIFAR)
    assert round(f / 2e6, 1) == macs_m


def test_resnet110_variants():
    assert count_flops(build("resnet110_bottleneck", 100), CIFAR) == 495_339_520
    assert count_flops(build("resnet110", 100), CIFAR) == 506_311_168


def test_tiny_model_hand_count():
    conv, lin = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
    with_extras = nn.Sequential(
        conv, nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin,
    )
    bare = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)
    macs = 8 * 3 * 3 * 3 * 10 * 10 + 8 * 5  # conv (bias not counted) + linear
    assert count_flops(bare, (3, 10, 10)) == 2 * macs
    assert count_flops(with_extras, (3, 10, 10)) == 2 * macs  # BN/ReLU/pool: 0


def test_only_conv_and_linear_are_counted():
    """Elementwise and matmul-free ops cost nothing, whatever FlopCounterMode knows."""

    class Junk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(F.layer_norm(x * self.w, x.shape[1:]), -1).relu().mean((2, 3))

    assert count_flops(Junk(), (3, 16, 16)) == 0


def test_scales_with_input_size():
    m = build("resnet32", 100)
    fc = 2 * 64 * 100
    small, big = count_flops(m, (3, 8, 8)), count_flops(m, CIFAR)
    assert big - fc == 16 * (small - fc)  # every conv sees 16x the pixels; fc does not


def test_batch_gives_per_image_count_and_restores_modes():
    m = build("resnet8", 10).train()
    m.layer2.eval()  # mixed modes must survive
    assert count_flops(m, CIFAR, batch=3) == count_flops(m, CIFAR)
    assert m.training and m.layer1.training and not m.layer2.training
    assert not any(mod.training for mod in m.layer2.modules())


class TwoNets(Learner):
    """Learner-like: two networks trained together, the first one deployed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"net": self.a(x), "peer": self.b(x)}

    def deployable(self) -> nn.Module:
        return self.a


def test_cost_learner_train_vs_test():
    lrn = TwoNets()
    fa = 2 * (4 * 9 * 36 + 144 * 3)
    fb = 2 * (2 * 9 * 36 + 72 * 3)
    pa = 4 * 9 + 4 + 144 * 3 + 3
    pb = 2 * 9 + 2 + 72 * 3 + 3
    assert cost(lrn, (1, 8, 8)) == {
        "params": pa + pb, "train_flops": fa + fb, "test_params": pa, "test_flops": fa,
    }


def test_cost_plain_module_and_outputs():
    m = build("resnet8", 10)
    c = cost(m, (3, 16, 16))
    assert c["params"] == c["test_params"] == count_params(m)
    assert c["train_flops"] == c["test_flops"] == count_flops(m, (3, 16, 16))

    class Tup(nn.Module):  # tuple outputs work too
        def __init__(self) -> None:
            super().__init__()
            self.net = m

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            return self.net.forward_features(x)

    assert count_flops(Tup(), (3, 16, 16)) == c["train_flops"]


def test_count_params_trainable_only():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    m[0].requires_grad_(False)
    assert count_params(m) == 8
    assert count_params(m, trainable_only=False) == 8 + 15


class _AdHocONE(nn.Module):
    """ONE-3 as the reference code builds it (shared stem..layer2, 3 x (layer3 + fc),
    gate on pooled layer2). Only here to pin the accounting to the paper's TrCost."""

    def __init__(self, m: int = 3) -> None:
        super().__init__()
        base = build("resnet32", 100)
        self.trunk = nn.Sequential(base.stem, base.layer1, base.layer2)
        head = nn.Sequential(base.layer3, base.pool, base.fc)
        self.branches = nn.ModuleList(copy.deepcopy(head) for _ in range(m))
        self.gate = nn.Sequential(base.pool, nn.Linear(32, m), nn.BatchNorm1d(m), nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        g = self.gate(h).softmax(1)
        z = [b(h) for b in self.branches]
        heads = {f"branch{i}": zi for i, zi in enumerate(z)}
        heads["ensemble"] = sum(g[:, i : i + 1] * zi for i, zi in enumerate(z))
        return heads

    def deployable(self) -> nn.Module:
        return nn.Sequential(self.trunk, self.branches[0])


def test_one3_resnet32_cost_matches_paper():
    c = cost(_AdHocONE(), CIFAR)
    assert c["train_flops"] == 228_464_320 and f"{c['train_flops']:.3e}" == "2.285e+08"
    assert c["test_flops"] == 138_260_992
    assert c["params"] == 1_193_189 and round(c["params"] / 1e6, 2) == 1.19
    assert c["test_params"] == 472_756
