"""Every bad input an adversarial user tried is one clear line that says what to do,
raised as cooplib's ConfigError before anything trains: never a raw KeyError,
TypeError, OverflowError or YAML traceback, never silently accepted."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cooplib.base import profiles
from cooplib import methods
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The message, asserting it is cooplib's error and a single line."""
    assert isinstance(exc.value, ConfigError), type(exc.value)
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def refused(match: str, **config) -> str:
    with pytest.raises(ConfigError, match=match) as exc:
        RunConfig(**config)
    return one_line(exc)


# ----------------------------------------------------------------- RunConfig fields


def test_seed_too_large_for_the_generators():
    refused(r"seed must be an integer in \[0, 4294967295\], got 1180591620717411303424", seed=2**70)
    refused(r"seed must be an integer in \[0, 4294967295\], got -1", seed=-1)


@pytest.mark.parametrize("field", ["lr", "weight_decay"])
def test_infinite_lr_and_weight_decay(field):
    refused(rf"{field} must be a finite number", **{field: math.inf})
    refused(rf"{field} must be a finite number", **{field: math.nan})


def test_repeated_milestones_are_not_strictly_increasing():
    refused(r"milestones must be strictly increasing fractions in \(0, 1\), got \(0.5, 0.5\)", milestones=[0.5, 0.5])


@pytest.mark.parametrize("epochs, milestones, bad", [(1, (0.5, 0.75), 0.5), (2, (0.5, 0.75), 0.75),
                                                     (10, (0.01, 0.5), 0.01), (10, (0.5, 0.97), 0.97)])
def test_a_milestone_that_rounds_to_epoch_0_or_past_the_last_epoch(epochs, milestones, bad):
    message = refused(rf"milestone {bad} of epochs={epochs} falls on epoch", epochs=epochs, milestones=milestones)
    assert "schedule='constant' or 'cosine'" in message
    if epochs == 1:
        assert "milestones=[]" in message
    else:
        assert f"1..{epochs - 1}" in message
    # the same budgets are fine without the step schedule or with the milestones dropped
    RunConfig(epochs=epochs, milestones=milestones, schedule="cosine")
    RunConfig(epochs=epochs, milestones=(), schedule="step")


def test_the_notebooks_and_profiles_step_schedules_stay_valid():
    """Every epochs/milestones a notebook's defaults or a profile gives still builds."""
    import ast

    for nb in ("baseline", "one", "robustness", "branch_expansion"):
        defaults = {k: ast.literal_eval(v) for k, v in profiles.notebook_parameters(nb).items()
                    if k in ("epochs", "epochs_first", "epochs_second", "milestones", "schedule")}
        for name in profiles.profile_names():
            params = {**defaults, **(profiles.load_profile(name)["notebooks"].get(nb) or {})}
            for key in ("epochs", "epochs_first", "epochs_second"):
                if key in params:
                    RunConfig(epochs=params[key], schedule=params.get("schedule", "step"),
                              milestones=params.get("milestones", (0.5, 0.75)))


# ----------------------------------------------------------------- names


@pytest.mark.parametrize("spelt, canonical", [
    ({"dataset": "Digits"}, {"dataset": "digits"}),
    ({"model": "resnet-8"}, {"model": "resnet8"}),
    ({"model": "ResNet-32", "dataset": "CIFAR100"}, {}),
    ({"dataset": "fashion_mnist"}, {"dataset": "fashion-mnist"}),
    ({"method": "dml", "model": "ResNet-32+resnet-56"}, {"method": "dml", "model": "resnet32+resnet56"}),
])
def test_names_are_normalised_before_the_run_is_named(spelt, canonical):
    a, b = RunConfig(**spelt), RunConfig(**canonical)
    assert (a.model, a.dataset) == (b.model, b.dataset)
    assert a.run_name() == b.run_name()


def test_an_unknown_name_stays_a_clear_error():
    from cooplib import data, models

    cfg = RunConfig(dataset="Digts", model="resnt-8")
    with pytest.raises(ConfigError, match=r"unknown dataset 'Digts'.*did you mean 'digits'") as exc:
        data.load(cfg.dataset)
    one_line(exc)
    with pytest.raises(ConfigError, match=r"unknown model 'resnt-8'.*did you mean 'resnet8'"):
        models.build(cfg.model, 10)
    refused(r"unknown method 'basline'.*did you mean 'baseline'", method="basline")


# ----------------------------------------------------------------- method options


@pytest.mark.parametrize("method, args, message", [
    ("one", {"expand_anneal": "2"},
     r"method 'one' option expand_anneal must be a number, got '2' \(str\) \(remove the quotes"),
    ("one", {"expand_noise": "x"}, r"method 'one' option expand_noise must be a number, got 'x' \(str\)$"),
    ("kd", {"teacher": 123}, r"method 'kd' option teacher must be a string or null, got 123 \(int\)"),
    ("ft", {"teacher": "/runs/t", "warmup_epochs": 1.7},
     r"method 'ft' option warmup_epochs must be an integer \(or null\), got 1.7 \(float\)"),
    ("coop_depth", {"factors": 0.5},
     r"method 'coop_depth' option factors must be a list like \[0.2, 0.4, 0.6, 0.8\], got 0.5 \(float\)"),
    ("coop_depth", {"factors": [0.3, 1.5]},
     r"method 'coop_depth' option factors must hold numbers in \(0, 1\), got 1.5"),
    ("coop_depth", {"a_lead": -1}, r"method 'coop_depth' option a_lead must be a number >= 0, got -1"),
    ("coop_depth", {"deploy_factor": 0.3},
     r"method 'coop_depth' option deploy_factor must be 1.0 or one of factors \[0.2, 0.4, 0.6, 0.8\], got 0.3"),
    ("sandwich", {"n_random": -1}, r"method 'sandwich' option n_random must be an integer >= 0, got -1"),
    ("sandwich", {"n_random": 1.5}, r"method 'sandwich' option n_random must be an integer, got 1.5 \(float\)"),
    ("byot", {"alpha": 2}, r"method 'byot' option alpha must be a number in \[0, 1\], got 2"),
    ("byot", {"beta": -1}, r"method 'byot' option beta must be a number in \[0, 1\], got -1"),
    ("one", {"temperature": math.inf}, r"method 'one' option temperature must be a finite number"),
    ("one", {"distill": "no"}, r"method 'one' option distill must be true or false, got 'no' \(str\)"),
    ("one", {"teacher": "gated"}, r"method 'one' option teacher must be one of \('gate', 'average'\), got 'gated' "
                                  r"\(did you mean 'gate'\?\)"),
    ("dml", {"peers": 1}, r"method 'dml' option peers must be an integer >= 2 \(or null\), got 1"),
])
def test_method_options_are_checked_when_the_config_is_built(method, args, message):
    refused(message, method=method, method_args=args)


def test_method_options_are_checked_by_build_too():
    """Direct `methods.build` callers get the same line: types and ranges before anything
    is built; coop_depth's deploy_factor rule from the Learner, after the depth checks."""
    with pytest.raises(ConfigError, match=r"option n_random must be an integer >= 0, got -1") as exc:
        methods.build("sandwich", "resnet8", 10, n_random=-1)
    one_line(exc)
    with pytest.raises(ConfigError, match=r"deploy_factor must be 1.0 or one of factors \[0.2, 0.4, 0.6, 0.8\], got 0.3"):
        methods.build("coop_depth", "resnet56", 10, deploy_factor=0.3)


def test_valid_options_still_pass_and_keep_their_values():
    cfg = RunConfig(method="coop_depth", method_args={"factors": [0.3, 0.6], "deploy_factor": 0.6, "a_lead": 0})
    assert cfg.method_args == {"factors": [0.3, 0.6], "deploy_factor": 0.6, "a_lead": 0}  # not rewritten
    RunConfig(method="byot", method_args={"alpha": 1, "beta": 0.0})
    RunConfig(method="dml", method_args={"peers": None, "temperature": 2})
    RunConfig(method="sandwich", method_args={"factors": (0.25, 0.5), "smallest": None, "n_random": 0})


def test_a_new_method_gets_type_checks_for_free_and_ranges_in_one_place():
    from cooplib.base.registry import Registry

    reg = Registry("method")

    @reg.register("toy", ranges={"n": (0, None), "w": "(0, 1]"}, choices={"mode": ("a", "b")})
    def build_toy(model, num_classes, in_channels=3, *, n: int = 2, w: float = 0.5, mode: str = "a",
                  grid: tuple = (0.3, 0.6), flag: bool = False, name: str | None = None):
        return (n, w, mode, grid, flag, name)

    assert reg.build("toy", "m", 10, n=0, w=1, grid=[0.5]) == (0, 1, "a", [0.5], False, None)
    for options, message in [({"n": 1.7}, r"n must be an integer, got 1.7"), ({"n": True}, r"n must be an integer"),
                             ({"n": -1}, r"n must be an integer >= 0, got -1"),
                             ({"w": 0}, r"w must be a number in \(0, 1\], got 0"),
                             ({"w": math.inf}, r"w must be a finite number"),
                             ({"mode": "c"}, r"mode must be one of \('a', 'b'\), got 'c'"),
                             ({"grid": 0.3}, r"grid must be a list like \[0.3, 0.6\], got 0.3"),
                             ({"grid": [0.3, "x"]}, r"grid must hold numbers, got 'x'"),
                             ({"flag": 1}, r"flag must be true or false, got 1"),
                             ({"name": 5}, r"name must be a string or null, got 5")]:
        with pytest.raises(ConfigError, match=r"method 'toy' option " + message) as exc:
            reg.build("toy", "m", 10, **options)
        one_line(exc)
    with pytest.raises(ValueError, match="declares a range for 'm', which is not one of its options"):
        reg.register("bad", ranges={"m": (0, 1)})(build_toy)


# ----------------------------------------------------------------- data


def test_a_stratified_train_subset_smaller_than_the_class_count():
    from cooplib.data.core import Augment, from_arrays

    x = np.zeros((40, 1, 4, 4), np.uint8)
    x[:, 0, 0, 0] = np.arange(40)  # not constant
    y = np.arange(40) % 10
    data = from_arrays("ten", x, y, x, y, classes=[str(c) for c in range(10)], augment=Augment.none())
    with pytest.raises(ConfigError, match=r"train_size=5 is below the 10 classes of ten: a class-stratified subset "
                                          r"needs at least one image per class; use train_size >= 10") as exc:
        data.subset(5, None)
    one_line(exc)
    assert len(data.subset(10, None).y_train) == 10


# ----------------------------------------------------------------- profiles


def _profile(tmp_path, text: str) -> str:
    path = tmp_path / "mine.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("- baseline\n- one\n", r"mine.yml must be a mapping with a 'notebooks:' mapping .*, got a list"),
    ("notebooks:\n  baseline: [1, 2]\n",
     r"mine.yml: notebooks: baseline must be a mapping of parameter: value \(e.g. baseline: \{epochs: 3\}\) or empty, got \[1, 2\]"),
    ("notebooks:\n  baseline: epochs=3\n",
     r"mine.yml: notebooks: baseline must be a mapping .*got 'epochs=3' \(write baseline: \{epochs: 3\}\)"),
    ("runs_dir: 123\nnotebooks:\n  baseline: {}\n", r"mine.yml: runs_dir must be a path \(a string\) like runs/mine, got 123"),
    ("notebooks:\n  baseline: {epochs: 3\n  one: {}\n", r"mine.yml: YAML syntax error at line 3, column 6: expected .,. or .}., but got .:."),
    ("notebooks:\n  baseline:\n\tepochs: 3\n", r"mine.yml: YAML syntax error at line 3, column 1: "),
])
def test_malformed_profiles_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        profiles.load_profile(_profile(tmp_path, text))
    one_line(exc)


def test_well_formed_profiles_still_load(tmp_path):
    prof = profiles.load_profile(_profile(tmp_path, "runs_dir: runs/x\nnotebooks:\n  baseline:\n  one: {epochs: 3}\n"))
    assert prof["notebooks"] == {"baseline": None, "one": {"epochs": 3}} and prof["name"] == "mine"
    for name in profiles.profile_names():
        profiles.load_profile(name)


def test_an_empty_teacher_seed_list_is_one_clear_line():
    from cooplib.engine import zoo

    with pytest.raises(ConfigError, match=r"teacher_seeds is empty: give at least one teacher seed"):
        zoo.assign_teachers([0, 1], [], "same")
    with pytest.raises(ConfigError, match=r"seeds \(the student seeds\) is empty"):
        zoo.assign_teachers([], [0], "all")
