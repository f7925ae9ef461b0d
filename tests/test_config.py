import pytest

from cooplib import methods
from cooplib.config import RunConfig, differences
from cooplib.errors import ConfigError


def test_unknown_parameter_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        RunConfig.from_dict({"wieght_decay": 1e-4})
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        RunConfig().replace(epoch=3)


@pytest.mark.parametrize(
    "bad",
    [{"epochs": 0}, {"lr": -1.0}, {"schedule": "cosin"}, {"milestones": (0.75, 0.5)}, {"milestones": (1.5,)},
     {"precision": "fp16"}, {"augment": "flip+crop"}, {"train_size": 0}, {"momentum": 0.0}],
)
def test_bad_values_are_rejected(bad):
    with pytest.raises(ConfigError):
        RunConfig(**bad)


def test_run_name_changes_with_semantic_fields_only():
    a = RunConfig(epochs=3)
    assert a.run_name() == RunConfig(epochs=3, progress=False, tensorboard=False).run_name()
    assert a.run_name() != RunConfig(epochs=4).run_name()
    assert differences(a.semantic(), RunConfig(epochs=3, lr=0.2).semantic()) == ["lr: 0.1 -> 0.2"]


def test_unknown_method_and_method_argument():
    with pytest.raises(ValueError, match="did you mean 'baseline'"):
        methods.build("baselin", "resnet8", 10)
    with pytest.raises(ValueError, match="label_smoothing"):
        methods.build("baseline", "resnet8", 10, label_smothing=0.1)
