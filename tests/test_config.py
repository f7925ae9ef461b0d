import pytest

from cooplib import methods
from cooplib.engine.config import RunConfig, differences
from cooplib.base.errors import ConfigError


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


def test_run_names_of_existing_configs_do_not_change():
    """Run directories are found by name: the precision defaults resolve at run time (and
    are recorded in config.json), "auto" itself is hashed, so these names stay."""
    assert RunConfig().run_name() == "baseline-resnet32-cifar100-s0-bd320634"
    assert RunConfig(precision="auto", channels_last=None).digest() == RunConfig().digest()
    assert RunConfig(precision="fp32").digest() != RunConfig().digest()


def test_unknown_method_and_method_argument():
    with pytest.raises(ValueError, match="did you mean 'baseline'"):
        methods.build("baselin", "resnet8", 10)
    with pytest.raises(ValueError, match="label_smoothing"):
        methods.build("baseline", "resnet8", 10, label_smothing=0.1)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"lr": "5e-4"}, r"lr must be a number, got '5e-4' \(str\) \(remove the quotes; YAML reads 5e-4"),
        ({"weight_decay": "5e-4"}, r"weight_decay must be a number, got '5e-4'"),
        ({"seed": "["}, r"seed must be an integer, got '\[' \(str\)$"),
        ({"epochs": True}, r"epochs must be an integer, got True"),
        ({"device": "cpuu"}, r"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'cpuu' \(did you mean 'cpu'\?\)"),
        ({"milestones": [0.5, "x"]}, r"milestones must be a list of numbers"),
        ({"method_args": ["branches", 3]}, r"method_args must be a mapping"),
        ({"nesterov": "yes"}, r"nesterov must be true or false, got 'yes'"),
    ],
)
def test_mistyped_values_get_one_clear_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**bad)


def test_device_that_is_not_here_is_a_clear_error():
    import torch

    from cooplib.engine.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here; use device='auto' or 'cpu'"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_constant_images_are_refused_before_training(tmp_path):
    import numpy as np

    from cooplib import data

    path = tmp_path / "zeros.npz"
    zeros = np.zeros((8, 3, 4, 4), np.uint8)
    np.savez(path, x_train=zeros, y_train=np.arange(8) % 2, x_test=zeros, y_test=np.arange(8) % 2)
    with pytest.raises(ValueError, match=r"constant in channel\(s\) \[0, 1, 2\] \(std 0\)"):
        data.load("npz", path=str(path))


def test_a_config_from_a_notebooks_parameters():
    namespace = {"dataset": "digits", "epochs": 3, "lr": 0.05, "seeds": [0, 1], "profile": "smoke", "out_dir": None}
    cfg = RunConfig.from_namespace(namespace, method="one", method_args={"branches": 2})
    assert (cfg.dataset, cfg.epochs, cfg.lr, cfg.method, cfg.method_args) == ("digits", 3, 0.05, "one", {"branches": 2})
    assert cfg.model == RunConfig().model  # not in the namespace: the default
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        RunConfig.from_namespace({"epochs": "3"})


@pytest.mark.parametrize("config, name", [
    (dict(method="one", model="resnet8", dataset="digits", epochs=20, method_args={"branches": 3}),
     "one-resnet8-digits-s0-7f5b3cc6"),
    (dict(method="dml", model="resnet8", dataset="digits", epochs=15, schedule="cosine",
          method_args={"peers": 3, "mutual": False}), "dml-resnet8-digits-s0-e220bdff"),
    (dict(method="dml", model="resnet32+resnet56", dataset="cifar100", epochs=200, schedule="cosine"),
     "dml-resnet32+resnet56-cifar100-s0-68e39ea4"),
    (dict(method="coop_depth", model="resnet20", dataset="fashion-mnist", epochs=6, schedule="cosine", weight_decay=5e-4,
          method_args={"factors": [0.3, 0.6], "term_reduction": "mean"}), "coop_depth-resnet20-fashion-mnist-s0-140a3e16"),
    (dict(method="sandwich", model="resnet14", dataset="digits", epochs=4, schedule="cosine", train_size=720,
          method_args={"n_random": 1}), "sandwich-resnet14-digits-s0-5f58c4c9"),
    (dict(method="kd", model="resnet8", dataset="digits", epochs=8, schedule="cosine", seed=2,
          method_args={"teacher": "/runs/x", "temperature": 4.0}), "kd-resnet8-digits-s2-979dd44b"),
    (dict(method="byot", model="resnet20", dataset="cifar10", epochs=30, milestones=[0.3, 0.6],
          method_args={"alpha": 0.3}), "byot-resnet20-cifar10-s0-ae8fff0e"),
    (dict(method="one", model="resnet8", dataset="digits", epochs=8, grad_ratio_lr=True, grad_ratio_ema=0.9,
          method_args={"branches": 4, "expand": "fresh", "expand_anneal": 2.0}, init_from="/runs/parent"),
     "one-resnet8-digits-s0-0805260a"),
])
def test_run_names_pinned_before_option_checks_and_name_normalisation(config, name):
    """Computed at b0e6291, before method options were checked and names normalised:
    valid configs keep their run directories."""
    assert RunConfig(**config).run_name() == name
