"""CIFAR ResNets: parameter counts against the papers, shapes, names, init."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib.base.errors import ConfigError
from cooplib.models.flops import count_params
from cooplib.models import BasicBlock, Bottleneck, CifarResNet, build, names


@pytest.mark.parametrize(
    "name, exact, paper, tol",
    [
        ("resnet32", 472_756, 0.47e6, 0.01),  # ONE paper: 0.47M
        ("resnet110", 1_736_564, 1.73e6, 0.015),  # basic blocks, 1.73M
        ("resnet110_bottleneck", 1_727_284, 1.73e6, 0.015),  # ONE code's "ResNet-110"
        ("resnet56", 861_620, None, None),
    ],
)
def test_param_counts_cifar100(name: str, exact: int, paper: float | None, tol: float | None):
    n = count_params(build(name, num_classes=100))
    assert n == exact
    if paper is not None:
        assert abs(n - paper) / paper < tol


def test_zeropad_shortcut_has_no_shortcut_params():
    proj = build("resnet32", 100)
    zpad = build("resnet32", 100, shortcut="zeropad")
    # the two projections: 1x1 convs 16->32, 32->64 and their BNs
    assert count_params(proj) - count_params(zpad) == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert count_params(zpad) == 470_004


def test_in_channels_changes_only_first_conv():
    rgb, gray = build("resnet20", 10), build("resnet20", 10, in_channels=1)
    assert count_params(rgb) - count_params(gray) == 16 * (3 - 1) * 3 * 3
    a, b = rgb.state_dict(), gray.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].shape != b[k].shape]
    assert differ == ["stem.0.weight"]
    assert b["stem.0.weight"].shape == (16, 1, 3, 3)


def test_named_submodules_and_attributes():
    m = build("resnet32", 100)
    assert isinstance(m, CifarResNet)
    for part in ("stem", "layer1", "layer2", "layer3", "pool", "fc"):
        assert isinstance(getattr(m, part), nn.Module)
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [5, 5, 5]
    assert all(isinstance(b, BasicBlock) for b in m.layer3)
    assert m.depth == 32 and m.feature_dims == (16, 32, 64)
    assert m.fc.in_features == 64 and m.fc.out_features == 100

    b = build("resnet110_bottleneck", 100)
    assert [len(s) for s in (b.layer1, b.layer2, b.layer3)] == [18, 18, 18]
    assert all(isinstance(x, Bottleneck) for x in b.layer1)
    assert b.feature_dims == (64, 128, 256) and b.fc.in_features == 256
    assert b.depth == 164  # 18 bottlenecks x 3 convs x 3 stages + 2: not 9n+2 = 110


@pytest.mark.parametrize("name", ["resnet20", "resnet110_bottleneck"])
def test_forward_features_shapes_and_logits(name: str):
    torch.manual_seed(0)
    m = build(name, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = m.forward_features(x)
        assert torch.equal(m(x), logits)
    assert logits.shape == (2, 10)
    c1, c2, c3 = m.feature_dims
    assert [tuple(f.shape) for f in feats] == [(2, c1, 32, 32), (2, c2, 16, 16), (2, c3, 8, 8)]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 64, 64), (3, 33, 17)])
def test_any_input_size(shape: tuple[int, int, int]):
    m = build("resnet8", 7, in_channels=shape[0], shortcut="zeropad")
    out = m(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    out.sum().backward()  # the zero-pad shortcut is differentiable


def test_names_and_generic_depths():
    ns = names()
    for n in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
              "resnet110", "resnet112", "resnet110_bottleneck"):
        assert n in ns
    for n in ns:
        if n.startswith("resnet"):  # the other backbones (WRN, VGG, ...): tests/test_backbones.py
            assert isinstance(build(n, 10), CifarResNet)
    m = build("resnet26", 10)
    assert m.depth == 26 and m.blocks_per_stage == 4


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet32'") as e:
        build("resnt32", 10)
    assert "resnet110_bottleneck" in str(e.value)  # lists what is available
    with pytest.raises(ConfigError, match="unknown model 'vgg16'"):
        build("vgg16", 10)
    with pytest.raises(ConfigError, match="no option.*did you mean 'widths'"):
        build("resnet8", 10, widht=(8, 8, 8))


@pytest.mark.parametrize("name", ["resnet30", "resnet2", "resnet0"])
def test_invalid_depth(name: str):
    with pytest.raises(ConfigError, match=r"6n\+2.*nearest valid: resnet"):
        build(name, 10)


def test_bad_shortcut():
    with pytest.raises(ValueError, match="shortcut"):
        build("resnet8", 10, shortcut="option_c")


def test_resnet112_is_resnet110():
    a, b = build("resnet110", 100), build("resnet112", 100)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert a.depth == b.depth == 110
    b.load_state_dict(a.state_dict())  # interchangeable checkpoints


def test_init():
    torch.manual_seed(0)
    m = build("resnet20", 10)
    conv = m.layer3[1].conv2  # 64 -> 64, 3x3: fan_out = 64 * 9
    std = conv.weight.std().item()
    assert abs(std - (2.0 / (64 * 9)) ** 0.5) / std < 0.05
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
