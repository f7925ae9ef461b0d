"""The Distill Learner end to end: a frozen teacher run, hooks, adapters, RKD that trains."""
from __future__ import annotations

import pytest
import torch

from cooplib.engine import experiment, runs
from cooplib import models
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError
from cooplib.methods import build
from cooplib.methods.base import TrainState
from cooplib.engine.zoo import assign_teachers
from cooplib.methods.kd import PUBLISHED_WEIGHT, Distill
from cooplib.models.taps import Taps, collect

STATE = TrainState(epoch=0, epochs=1, step=0, steps_per_epoch=1)
BASE = RunConfig(method="baseline", dataset="digits", model="resnet8", epochs=3, batch_size=64, lr=0.1,
                 weight_decay=5e-4, schedule="cosine", train_size=360, device="cpu", deterministic=True,
                 progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return experiment.run(BASE, tmp_path_factory.mktemp("kdruns"))


def test_hooks_return_the_named_stage_shapes():
    net = models.build("resnet8", 10, 3)
    with Taps(net, ["layer1", "layer2", "layer3", "pool"]) as taps:
        net(torch.zeros(2, 3, 32, 32))
        shapes = {k: tuple(v.shape) for k, v in taps.features().items()}
    assert shapes == {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8), "pool": (2, 64)}
    feats = collect(net, torch.zeros(5, 3, 8, 8), ["layer2", "pool"], batch_size=2)
    assert feats["layer2"].shape == (5, 32 * 4 * 4) and feats["pool"].shape == (5, 64)
    with pytest.raises(KeyError):
        Taps(net, ["layer9"])


@pytest.mark.parametrize("kind", ["fitnet", "ft"])
def test_adapters_are_not_deployed(kind, teacher_run):
    learner = build(kind, "resnet8", 10, 1, teacher=str(teacher_run.run_dir))
    adapters = {id(p) for p in learner.adapters.parameters()}
    deployed = learner.deployable()
    assert adapters and not adapters & {id(p) for p in deployed.parameters()}
    assert type(deployed) is type(models.build("resnet8", 10, 1)) and deployed is learner.net
    assert sum(p.numel() for p in deployed.parameters()) == sum(p.numel() for p in models.build("resnet8", 10, 1).parameters())


def test_teacher_frozen_eval_and_accuracy_recorded(teacher_run):
    learner = build("at", "resnet8", 10, 1, teacher=str(teacher_run.run_dir)).train()
    assert not learner.teacher.training and all(not p.requires_grad for p in learner.teacher.parameters())
    assert learner.teacher_top1 == teacher_run.final["last"]["test/net/top1"]
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    total, parts = learner.loss(learner(x), y, STATE)
    assert torch.allclose(total, parts["ce/net"] + PUBLISHED_WEIGHT["at"] * parts["at/net"])
    assert float(parts["test_top1/teacher"]) == pytest.approx(learner.teacher_top1, rel=1e-6)
    total.backward()
    assert all(p.grad is None for p in learner.teacher.parameters())


def test_method_options_are_checked(teacher_run):
    with pytest.raises(ConfigError):
        build("kd", "resnet8", 10, 1)  # no teacher
    with pytest.raises(ConfigError):
        Distill("student", models.build("resnet8", 10, 1), models.build("resnet8", 10, 1))
    with pytest.raises(ConfigError):
        build("kd", "resnet8", 10, 1, teacher=str(teacher_run.run_dir), convention="torchdistill")


def test_rkd_trains_and_leaves_the_teacher_unchanged(teacher_run, tmp_path):
    """A few epochs of RKD on digits move the student and reach well above chance (10 %)."""
    config = BASE.replace(method="rkd", epochs=4, method_args={"teacher": str(teacher_run.run_dir)})
    init = experiment.build_learner(config, experiment.load_data(config))[0]
    before = {k: v.clone() for k, v in init.net.state_dict().items()}
    result = experiment.run(config, tmp_path)
    trained = experiment.load_learner(result.run_dir)
    moved = sum(float((trained.net.state_dict()[k].float() - v.float()).abs().sum()) for k, v in before.items())
    assert moved > 1.0
    assert result.final["last"]["test/net/top1"] > 40.0
    assert result.final["last"]["train/rkd/net"] > 0
    teacher_weights = runs.RunDir(teacher_run.run_dir).weights("last")
    stored = {k.removeprefix("teacher."): v for k, v in trained.state_dict().items() if k.startswith("teacher.")}
    assert stored and all(torch.equal(stored[k], teacher_weights[f"net.{k}"]) for k in stored)
    assert result.final["last"]["train/test_top1/teacher"] == pytest.approx(teacher_run.final["last"]["test/net/top1"], rel=1e-5)


def test_map_weights_as_tuned_divide_at_and_ft_by_their_strength_only():
    from cooplib.engine.zoo import map_weight_options
    from cooplib.methods.kd import effective_strength

    kinds = ["student", "kd", "fitnet", "at", "ft", "crd"]
    assert map_weight_options(kinds, (8, 8), "published") == {}
    scaled = map_weight_options(kinds, (8, 8), "as_tuned")
    assert scaled == {"at": {"weight": PUBLISHED_WEIGHT["at"] / 16}, "ft": {"weight": PUBLISHED_WEIGHT["ft"] / 4}}
    assert map_weight_options(kinds, (32, 32), "as_tuned") == {}  # as printed where they were tuned
    assert map_weight_options(["at"], (64, 64), "as_tuned") == {"at": {"weight": PUBLISHED_WEIGHT["at"] * 4}}
    for kind, opts in scaled.items():  # the scaled weight acts on 8x8 as the published one on 32x32
        assert effective_strength(kind, (8, 8), opts["weight"]) == pytest.approx(1.0)
    assert effective_strength("at", (8, 8), None) == effective_strength("at", (8, 8), float("nan")) == 16.0
    with pytest.raises(ConfigError, match="map_weights"):
        map_weight_options(kinds, (8, 8), "scaled")


def test_teacher_assignment():
    assert assign_teachers([0, 1, 2], [0, 1, 2], "same") == [(0, 0), (1, 0), (2, 0)]
    assert assign_teachers([0, 1], [0, 1], "matched") == [(0, 0), (1, 1)]
    assert assign_teachers([0, 1], [0, 1], "all") == [(0, 0), (1, 0), (0, 1), (1, 1)]
    with pytest.raises(ConfigError):
        assign_teachers([0, 3], [0, 1], "matched")


@pytest.mark.parametrize("kind, option, value, allowed", [
    ("kd", "weight", -1, "a number >= 0 (None: the published 0.9)"),
    ("kd", "alpha", 5, "a number in [0, 1] (the distillation share; 1 - alpha weights the cross-entropy)"),
    ("kd", "alpha", -0.5, "a number in [0, 1] (the distillation share; 1 - alpha weights the cross-entropy)"),
    ("kd", "temperature", 0, "a number > 0"),
    ("kd", "temperature", -4.0, "a number > 0"),
    ("kd", "label_smoothing", 1.0, "a number in [0, 1) or None"),
    ("ft", "warmup_epochs", 1.7, "an integer >= 0 or None"),
    ("ft", "warmup_epochs", -1, "an integer >= 0 or None"),
    ("kd", "teacher", 123, "the path of a complete run directory (a string)"),
    ("kd", "convention", "torchdistill", "one of repdistiller, seed"),
])
def test_out_of_range_options_are_one_clear_error_before_training(kind, option, value, allowed, teacher_run, tmp_path):
    import re

    args = {"teacher": str(teacher_run.run_dir), option: value}
    with pytest.raises(ConfigError) as info:  # from the RunConfig, or when the Learner is built
        experiment.run(BASE.replace(method=kind, method_args=args), tmp_path)
    msg = str(info.value)
    # one line naming the option, what it accepts and the value (kd's own check, or the registry's by type)
    assert len(msg.splitlines()) == 1 and f"got {value!r}" in msg, msg
    assert re.match(rf"(method '{kind}' |{kind} )option {option} must be ", msg), msg
    if msg.startswith(f"{kind} option"):
        assert msg == f"{kind} option {option} must be {allowed}, got {value!r} ({type(value).__name__})"
    assert not any(tmp_path.iterdir())  # nothing was started
    with pytest.raises(ConfigError, match=rf"option {option} must be"):
        build(kind, "resnet8", 10, 1, **args)
