"""One registry pattern: a method is a Learner plus one decorated factory, and the three
registries (methods, models, datasets) refuse unknown names and options alike."""
from __future__ import annotations

import inspect
import typing

import pytest
import torch
from torch import nn

from cooplib import data, losses, methods, models
from cooplib.base import errors, registry
from cooplib.engine import train
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError
from cooplib.methods.base import Learner


class Sharpened(Learner):
    """A toy method: one network whose logits are multiplied by `sharpness` before CE."""

    method = "toy"

    def __init__(self, net: nn.Module, sharpness: float = 1.0):
        super().__init__()
        self.net, self.sharpness = net, float(sharpness)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"net": self.net(x) * self.sharpness}

    def loss(self, heads, y, state):
        ce = losses.cross_entropy(heads["net"], y)
        return ce, {"ce/net": ce}


@pytest.fixture
def toy():
    """Register "toy" for one test only, so that other tests see the usual methods."""

    @methods.register("toy")
    def build_toy(model: str, num_classes: int, in_channels: int = 3, *, sharpness: float = 1.0) -> Sharpened:
        return Sharpened(models.build(model, num_classes, in_channels), sharpness)

    yield build_toy
    methods.METHODS.unregister("toy")
    assert "toy" not in methods.names()


def test_a_registered_toy_method_builds_checks_options_and_trains(toy, tiny_data, tmp_path):
    assert "toy" in methods.names() and methods.METHODS.options("toy") == ["sharpness"]
    learner = methods.build("toy", "resnet8", 10, sharpness=2.0)
    assert isinstance(learner, Sharpened) and learner.sharpness == 2.0
    assert learner(torch.zeros(2, 3, 8, 8))["net"].shape == (2, 10)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['sharpnes'\].*did you mean 'sharpness'"):
        methods.build("toy", "resnet8", 10, sharpnes=2.0)

    torch.manual_seed(0)
    learner = methods.build("toy", "resnet8", tiny_data.num_classes, tiny_data.in_channels, sharpness=2.0)
    config = RunConfig(method="toy", method_args={"sharpness": 2.0}, model="resnet8", dataset="quadrants",
                       epochs=1, schedule="constant", batch_size=32, progress=False, tensorboard=False, device="cpu")
    result = train.fit(learner, tiny_data, config, tmp_path / "toy")
    assert result.final["epochs_done"] == 1 and result.final["primary_head"] == "net"
    assert {"train/ce/net", "test/net/top1"} <= set(result.metrics[0])


def test_a_factory_must_name_its_options():
    with pytest.raises(TypeError, match="keyword-only"):
        @methods.register("toy_kwargs")
        def build_toy(model, num_classes, in_channels=3, **args):  # pragma: no cover
            raise AssertionError
    assert "toy_kwargs" not in methods.names()
    with pytest.raises(ValueError, match="already registered"):
        methods.register("baseline")(lambda model, num_classes, in_channels=3: None)


@pytest.mark.parametrize("kind, call, typo, suggestion", [
    ("method", lambda name: methods.build(name, "resnet8", 10), "basline", "baseline"),
    ("model", lambda name: models.build(name, 10), "resnt-32", "resnet32"),
    ("dataset", lambda name: data.load(name), "cifar-100", "cifar100"),
])
def test_three_registries_one_error_and_one_suggestion(kind, call, typo, suggestion, monkeypatch):
    calls = []

    def spy(name, choices):
        calls.append(name)
        return errors.suggest(name, choices)

    monkeypatch.setattr(registry, "suggest", spy)
    with pytest.raises(ConfigError, match=rf"unknown {kind} '{typo}'; available: .*did you mean '{suggestion}'"):
        call(typo)
    assert calls  # the message came from the one helper, errors.suggest


@pytest.mark.parametrize("registered, build", [
    (registry.METHODS, lambda **o: methods.build("baseline", "resnet8", 10, **o)),
    (registry.MODELS, lambda **o: models.build("resnet8", 10, **o)),
    (registry.DATASETS, lambda **o: data.load("digits", **o)),
])
def test_unknown_options_are_config_errors_everywhere(registered, build):
    assert registered.names()
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['colour'\]; it accepts"):
        build(colour=1)


def test_method_factories_default_as_their_learners():
    """A factory lists its options explicitly; where its Learner takes the same argument,
    the defaults must agree, or RunConfig's method_args would mean two different things."""
    for name in methods.names():
        factory = registry.METHODS.get(name)
        learner = typing.get_type_hints(factory)["return"]
        own = {p.name: p.default for p in _params(learner.__init__) if p.default not in (None, p.empty)}
        for p in _params(factory):
            if p.kind is p.KEYWORD_ONLY and p.name in own:
                assert p.default == own[p.name], (name, p.name)


def _params(fn):
    return inspect.signature(fn).parameters.values()


def test_a_name_is_registered_as_lookups_spell_it():
    @models.MODELS.register("Tiny-Net")
    def build_tiny(num_classes: int, in_channels: int = 3) -> nn.Module:
        return nn.Linear(in_channels, num_classes)

    try:
        assert isinstance(models.build("tiny-net", 10), nn.Linear) and isinstance(models.build("TinyNet", 10), nn.Linear)
    finally:
        models.MODELS.unregister("Tiny-Net")
