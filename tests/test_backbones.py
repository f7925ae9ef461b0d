"""RepDistiller's CIFAR backbones: exact parameter and FLOP counts, taps, input sizes.

The parameter constants were measured by instantiating HobbitLong/RepDistiller's own
models (models/__init__.py ``model_dict``, commit b84f547c5db6a35318d4671d7d5c4de74c822403)
with ``num_classes=100``: resnet8x4, resnet32x4 (models/resnet.py), wrn_16_2, wrn_40_1,
wrn_40_2 (models/wrn.py), vgg8, vgg13 (models/vgg.py, ``vgg8_bn`` / ``vgg13_bn``),
MobileNetV2 (models/mobilenetv2.py, ``mobile_half``), ShuffleV1, ShuffleV2
(models/ShuffleNetv1.py, models/ShuffleNetv2.py). The same models under
`cooplib.models.flops.count_flops` gave the FLOP totals below, which the hand counts in
this file reproduce independently.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cooplib.base.errors import ConfigError
from cooplib.methods.base import TrainState
from cooplib.methods.kd import Distill
from cooplib import losses
from cooplib.models import build, names
from cooplib.models.flops import count_flops, count_params
from cooplib.models.taps import RESNET_STAGES, Taps

CIFAR = (3, 32, 32)

#: name -> (parameters at 100 classes / 3 channels, FLOPs per 32x32 image), both measured
#: on RepDistiller b84f547's own definitions
REPDISTILLER = {
    "resnet8x4": (1_233_540, 354_142_208),
    "resnet32x4": (7_433_860, 2_166_081_536),
    "wrn_16_2": (703_284, 202_236_928),
    "wrn_40_1": (569_780, 166_572_544),
    "wrn_40_2": (2_255_156, 655_221_760),
    "vgg8": (3_965_028, 192_385_024),
    "vgg13": (9_462_180, 569_872_384),
    "mobilenetv2": (812_836, 13_047_296),
    "shufflenetv1": (949_258, 77_382_912),
    "shufflenetv2": (1_355_528, 89_008_896),
}
NEW = tuple(REPDISTILLER)


@pytest.mark.parametrize("name", NEW)
def test_param_counts_equal_repdistiller(name: str):
    assert name in names()
    assert count_params(build(name, 100)) == REPDISTILLER[name][0]


def test_aliases_build_the_same_network():
    for a, b in (("mobile_half", "mobilenetv2"), ("ShuffleV1", "shufflenetv1"), ("shufflev2", "shufflenetv2"),
                 ("WRN_40_2", "wrn_40_2")):
        assert count_params(build(a, 100)) == count_params(build(b, 100))


# ------------------------------------------------------------------ FLOP hand counts
# 2 x multiply-accumulates of convs and linears only (cooplib.models.flops); a conv's
# MACs are cout * cin/groups * k*k * Hout*Wout, a linear's in * out.


def conv(cin: int, cout: int, k: int, hw: int, groups: int = 1) -> int:
    return 2 * cout * (cin // groups) * k * k * hw * hw


def fc(cin: int, classes: int = 100) -> int:
    return 2 * cin * classes


def hand_resnet(n: int, stem: int, widths: tuple[int, int, int]) -> int:
    """Post-activation CIFAR ResNet, projection where the shape changes."""
    total, cin = conv(3, stem, 3, 32), stem
    for w, hw, stride in zip(widths, (32, 16, 8), (1, 2, 2)):
        for i in range(n):
            total += conv(cin, w, 3, hw) + conv(w, w, 3, hw)
            if cin != w or (i == 0 and stride == 2):
                total += conv(cin, w, 1, hw)
            cin = w
    return total + fc(cin)


def hand_wrn(depth: int, k: int) -> int:
    """Stem conv 16; n pre-activation blocks per stage; 1x1 shortcut conv where channels change."""
    n = (depth - 4) // 6
    total, cin = conv(3, 16, 3, 32), 16
    for w, hw in zip((16 * k, 32 * k, 64 * k), (32, 16, 8)):
        for _ in range(n):
            total += conv(cin, w, 3, hw) + conv(w, w, 3, hw) + (conv(cin, w, 1, hw) if cin != w else 0)
            cin = w
    return total + fc(cin)


def test_flops_resnet8x4_by_hand():
    by_hand = (conv(3, 32, 3, 32)
               + conv(32, 64, 3, 32) + conv(64, 64, 3, 32) + conv(32, 64, 1, 32)  # layer1 (32 -> 64 projects)
               + conv(64, 128, 3, 16) + conv(128, 128, 3, 16) + conv(64, 128, 1, 16)
               + conv(128, 256, 3, 8) + conv(256, 256, 3, 8) + conv(128, 256, 1, 8)
               + fc(256))
    assert by_hand == hand_resnet(1, 32, (64, 128, 256)) == REPDISTILLER["resnet8x4"][1]
    assert count_flops(build("resnet8x4", 100), CIFAR) == by_hand


def test_flops_resnet32x4_by_hand():
    by_hand = hand_resnet(5, 32, (64, 128, 256))
    assert by_hand == REPDISTILLER["resnet32x4"][1]
    assert count_flops(build("resnet32x4", 100), CIFAR) == by_hand


def test_flops_wrn_16_2_by_hand():
    by_hand = (conv(3, 16, 3, 32)
               + conv(16, 32, 3, 32) + conv(32, 32, 3, 32) + conv(16, 32, 1, 32) + 2 * conv(32, 32, 3, 32)
               + conv(32, 64, 3, 16) + conv(64, 64, 3, 16) + conv(32, 64, 1, 16) + 2 * conv(64, 64, 3, 16)
               + conv(64, 128, 3, 8) + conv(128, 128, 3, 8) + conv(64, 128, 1, 8) + 2 * conv(128, 128, 3, 8)
               + fc(128))
    assert by_hand == hand_wrn(16, 2) == REPDISTILLER["wrn_16_2"][1]
    assert count_flops(build("wrn_16_2", 100), CIFAR) == by_hand


@pytest.mark.parametrize("name, depth, k", [("wrn_40_1", 40, 1), ("wrn_40_2", 40, 2)])
def test_flops_wrn_40_by_hand(name: str, depth: int, k: int):
    assert hand_wrn(depth, k) == REPDISTILLER[name][1]
    assert count_flops(build(name, 100), CIFAR) == hand_wrn(depth, k)


def test_flops_vgg8_by_hand():
    # one conv per block; max pools after blocks 0, 1, 2 (32 -> 16 -> 8 -> 4), none before block 4
    by_hand = (conv(3, 64, 3, 32) + conv(64, 128, 3, 16) + conv(128, 256, 3, 8) + conv(256, 512, 3, 4)
               + conv(512, 512, 3, 4) + fc(512))
    assert by_hand == REPDISTILLER["vgg8"][1]
    assert count_flops(build("vgg8", 100), CIFAR) == by_hand


def test_flops_vgg13_by_hand():
    by_hand = (conv(3, 64, 3, 32) + conv(64, 64, 3, 32) + conv(64, 128, 3, 16) + conv(128, 128, 3, 16)
               + conv(128, 256, 3, 8) + conv(256, 256, 3, 8) + conv(256, 512, 3, 4) + conv(512, 512, 3, 4)
               + 2 * conv(512, 512, 3, 4) + fc(512))
    assert by_hand == REPDISTILLER["vgg13"][1]
    assert count_flops(build("vgg13", 100), CIFAR) == by_hand


def test_vgg_pools_before_block4_on_64x64_only():
    """RepDistiller pools block 3's map for 64x64 inputs: block 4 then runs at 4x4, not 8x8."""
    m = build("vgg8", 100)
    no_pool4 = (conv(3, 64, 3, 64) + conv(64, 128, 3, 32) + conv(128, 256, 3, 16) + conv(256, 512, 3, 8)
                + conv(512, 512, 3, 8) + fc(512))
    assert count_flops(m, (3, 64, 64)) == no_pool4 - conv(512, 512, 3, 8) + conv(512, 512, 3, 4)


def test_flops_mobilenetv2_by_hand():
    """Stem stride 2 (32 -> 16); per block: 1x1 expand (at the input size), 3x3 depthwise and
    1x1 project (at the output size); 1x1 conv to 1280 at 2x2; fc."""
    total, cin, hw = conv(3, 16, 3, 16), 16, 16
    for t, c, n, s in ((1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1),
                       (6, 80, 3, 2), (6, 160, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            out_hw = (hw + 1) // stride if stride == 2 else hw
            h = cin * t
            total += conv(cin, h, 1, hw) + conv(h, h, 3, out_hw, groups=h) + conv(h, c, 1, out_hw)
            cin, hw = c, out_hw
    assert hw == 2
    total += conv(160, 1280, 1, 2) + fc(1280)
    assert total == REPDISTILLER["mobilenetv2"][1]
    assert count_flops(build("mobilenetv2", 100), CIFAR) == total


def test_flops_shufflenetv1_by_hand():
    """1x1 stem (24); per stage a stride-2 block whose convs make width - cin channels
    (its first 1x1 at the input size), then blocks of width; groups 3 except the very
    first 1x1 (on the stem's 24 channels)."""
    total, cin, hw = conv(3, 24, 1, 32), 24, 32
    for width, n in ((240, 4), (480, 8), (960, 4)):
        for i in range(n):
            out = width - cin if i == 0 else width
            mid = out // 4
            g1 = 1 if cin == 24 else 3
            out_hw = hw // 2 if i == 0 else hw
            total += conv(cin, mid, 1, hw, g1) + conv(mid, mid, 3, out_hw, mid) + conv(mid, out, 1, out_hw, 3)
            cin, hw = width, out_hw
    total += fc(960)
    assert total == REPDISTILLER["shufflenetv1"][1]
    assert count_flops(build("shufflenetv1", 100), CIFAR) == total


def test_flops_shufflenetv2_by_hand():
    total, cin, hw = conv(3, 24, 1, 32), 24, 32
    for width, n in ((116, 3), (232, 7), (464, 3)):
        mid, hw2 = width // 2, hw // 2
        # down-sampling block: left dw3x3/2 + 1x1; right 1x1 (input size) + dw3x3/2 + 1x1
        total += conv(cin, cin, 3, hw2, cin) + conv(cin, mid, 1, hw2)
        total += conv(cin, mid, 1, hw) + conv(mid, mid, 3, hw2, mid) + conv(mid, mid, 1, hw2)
        # basic blocks on half the channels: 1x1, dw3x3, 1x1
        total += n * (2 * conv(mid, mid, 1, hw2) + conv(mid, mid, 3, hw2, mid))
        cin, hw = width, hw2
    total += conv(464, 1024, 1, 4) + fc(1024)
    assert total == REPDISTILLER["shufflenetv2"][1]
    assert count_flops(build("shufflenetv2", 100), CIFAR) == total


# ------------------------------------------------------------------ taps

#: at a 32x32 input: channels and side of layer1..3 and the pool embedding's width
TAP_SHAPES = {
    "resnet8x4": ((64, 32), (128, 16), (256, 8), 256),
    "resnet32x4": ((64, 32), (128, 16), (256, 8), 256),
    "wrn_16_2": ((32, 32), (64, 16), (128, 8), 128),
    "wrn_40_1": ((16, 32), (32, 16), (64, 8), 64),
    "wrn_40_2": ((32, 32), (64, 16), (128, 8), 128),
    "vgg8": ((128, 16), (256, 8), (512, 4), 512),
    "vgg13": ((128, 16), (256, 8), (512, 4), 512),
    "mobilenetv2": ((12, 16), (16, 8), (160, 2), 1280),
    "shufflenetv1": ((240, 16), (480, 8), (960, 4), 960),
    "shufflenetv2": ((116, 16), (232, 8), (464, 4), 1024),
}
#: RepDistiller's feat[3] where layer3 spans two of its maps
INNER = {"vgg8": (512, 4), "vgg13": (512, 4), "mobilenetv2": (48, 4)}


@pytest.mark.parametrize("name", NEW)
def test_taps_shapes_and_forward_features(name: str):
    torch.manual_seed(0)
    m = build(name, 10).eval()
    x = torch.randn(2, *CIFAR)
    extra = ("layer3.0",) if name in INNER else ()
    with torch.no_grad(), Taps(m, RESNET_STAGES + extra) as taps:
        logits, feats = m.forward_features(x)
        got = taps.features()
    *maps, emb = TAP_SHAPES[name]
    assert [tuple(got[n].shape) for n in ("layer1", "layer2", "layer3")] == [(2, c, s, s) for c, s in maps]
    assert tuple(got["pool"].shape) == (2, emb) and m.fc.in_features == emb
    assert tuple(m.feature_dims) == tuple(c for c, _ in maps)
    for f, n in zip(feats, ("layer1", "layer2", "layer3")):
        assert torch.equal(f, got[n])
    assert torch.equal(m.fc(got["pool"]), logits)
    with torch.no_grad():
        assert torch.equal(m(x), logits)
    if extra:
        c, s = INNER[name]
        assert tuple(got["layer3.0"].shape) == (2, c, s, s)


@pytest.mark.parametrize("name", NEW)
def test_gray_28x28_and_8x8_inputs(name: str):
    """Fashion-MNIST (1x28x28) and digits (1x8x8) run; only the first conv sees the channels."""
    m = build(name, 7, in_channels=1)
    for side in (28, 8):
        out = m(torch.randn(2, 1, side, side))
        assert out.shape == (2, 7)
    out.sum().backward()
    rgb = build(name, 7)
    first = next(p for p in m.parameters() if p.dim() == 4)
    assert first.shape[1] == 1
    assert count_params(rgb) - count_params(m) == first[:, :1].numel() * 2


def test_vgg_refuses_inputs_under_8_pixels():
    m = build("vgg8", 10).eval()
    assert m(torch.randn(1, 3, 8, 9)).shape == (1, 10)
    with pytest.raises(ConfigError, match="at least 8x8 pixels, got \\(7, 9\\)"):
        m(torch.randn(1, 3, 7, 9))


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="depth 6n\\+4"):
        build("wrn_18_2", 10)
    assert count_params(build("wrn_22_1", 10)) > count_params(build("wrn_16_1", 10))  # the family
    with pytest.raises(ConfigError, match="option width must be a number > 0"):
        build("mobilenetv2", 10, width=0.0)
    with pytest.raises(ConfigError, match="width must be >= 0.0625"):
        build("mobilenetv2", 10, width=0.05)
    with pytest.raises(ConfigError, match="stem_width must be an integer >= 1"):
        build("resnet8x4", 10, stem_width=0)
    assert count_params(build("resnet8", 10, stem_width=16)) == count_params(build("resnet8", 10))


def test_wrn_block_is_pre_activation():
    """layer3 is the raw residual sum (RepDistiller's feat[3]): it has negative entries,
    while the post-activation ResNet's stage output is a ReLU output."""
    torch.manual_seed(0)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        _, (_, _, f3) = build("wrn_16_2", 10).eval().forward_features(x)
        _, (_, _, r3) = build("resnet8x4", 10).eval().forward_features(x)
    assert (f3 < 0).any() and (r3 >= 0).all()


# ------------------------------------------------------------------ as KD teacher / student


def test_at_between_vgg13_teacher_and_vgg8_student():
    """AT reads layer1..3 of both (same spatial sizes); the term equals the loss on the
    maps from forward_features."""
    torch.manual_seed(0)
    teacher, student = build("vgg13", 5), build("vgg8", 5)
    learner = Distill("at", student, teacher).train()
    x = torch.randn(4, *CIFAR)
    heads = learner(x)
    term = learner.distill_term(heads["net"], torch.zeros(4, dtype=torch.long), TrainState(0, 1, 0, 1))["at"]
    with torch.no_grad():
        _, ft = teacher.forward_features(x)
    _, fs = student.forward_features(x)  # train mode, as in the learner's forward
    expect = sum(losses.attention_transfer(s, t) for s, t in zip(fs, ft))
    torch.testing.assert_close(term, expect, rtol=1e-5, atol=0)


@pytest.mark.parametrize("teacher, student", [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4")])
def test_fitnet_regressor_maps_student_layer2_to_teacher(teacher: str, student: str):
    learner = Distill("fitnet", build(student, 5), build(teacher, 5))
    reg = learner.adapters["regressor"][0]
    assert isinstance(reg, nn.Conv2d)
    assert (reg.in_channels, reg.out_channels) == (build(student, 5).feature_dims[1], build(teacher, 5).feature_dims[1])
    heads = learner.train()(torch.randn(2, *CIFAR))
    loss = learner.distill_term(heads["net"], torch.zeros(2, dtype=torch.long), TrainState(0, 1, 0, 1))["fitnet"]
    assert loss.ndim == 0 and torch.isfinite(loss)


#: RepDistiller's benchmark pairs (README, CIFAR-100 tables 1 and 2), as in the paper profile
REPDISTILLER_PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                      ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"),
                      ("wrn_40_2", "shufflenetv1"), ("resnet32x4", "shufflenetv1"), ("resnet32x4", "shufflenetv2")]


@pytest.mark.parametrize("teacher, student", REPDISTILLER_PAIRS)
def test_fitnet_regresses_every_repdistiller_pair_onto_the_teachers_hint(teacher: str, student: str):
    s, t = build(student, 5), build(teacher, 5)
    learner = Distill("fitnet", s, t).train()
    x = torch.randn(2, *CIFAR)
    _, fs = s.forward_features(x)
    _, ft = t.forward_features(x)
    assert learner.adapters["regressor"](fs[1]).shape == ft[1].shape  # layer2: the hint of both


# ------------------------------------------------------------------ ONE-style multi-branch forms

BRANCHED = ("wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv2")  # the ResNets: tests/test_one.py


@pytest.mark.parametrize("name", BRANCHED)
def test_one_branches_share_low_layers(name: str):
    """ONE-3 (cooplib.models.multibranch): stem + layer1 + layer2 once, layer3 + pool + fc
    three times, and the gate (Linear(c2, 3) + BatchNorm1d(3)); each branch with the trunk
    is exactly a plain network of the same name."""
    from cooplib.models.multibranch import MultiBranchResNet, export_branch

    torch.manual_seed(0)
    net = build(name, 10)
    head = sum(count_params(getattr(net, p)) for p in ("layer3", "pool", "fc"))
    c2 = net.feature_dims[1]
    multi = MultiBranchResNet(name, 10, branches=3).eval()
    assert count_params(multi) == count_params(net) + 2 * head + (c2 * 3 + 3) + 2 * 3

    trunk = nn.Sequential(net.stem, net.layer1, net.layer2)
    gate = 2 * c2 * 3
    assert count_flops(multi, CIFAR) == count_flops(net, CIFAR) + 2 * (count_flops(net, CIFAR) - count_flops(trunk, CIFAR)) + gate

    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        heads = multi(x)
        for i in range(3):
            plain = export_branch(multi, i).eval()
            assert type(plain) is type(net)
            torch.testing.assert_close(plain(x), heads[f"branch{i}"], rtol=1e-6, atol=1e-6)


def test_one_method_trains_on_a_staged_backbone():
    from cooplib.methods import METHODS

    torch.manual_seed(0)
    learner = METHODS.build("one", "shufflenetv2", 5, 1, branches=2).train()
    heads = learner(torch.randn(4, 1, 28, 28))
    loss, parts = learner.loss(heads, torch.tensor([0, 1, 2, 3]), TrainState(0, 1, 0, 1))
    loss.backward()
    assert set(heads) >= {"branch0", "branch1", "ensemble"} and torch.isfinite(loss)
    assert type(learner.deployable()).__name__ in ("BranchNet", "ShuffleNetV2")


def test_the_paper_profile_runs_repdistillers_pairs():
    from cooplib.base.profiles import load_profile

    pairs = load_profile("paper")["notebooks"]["kd_zoo"]["teacher_student_pairs"]
    assert [tuple(p) for p in pairs] == REPDISTILLER_PAIRS
