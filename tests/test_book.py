"""Profiles are validated against the notebooks before anything runs."""
import re

import pytest
import yaml

from cooplib import book
from cooplib.errors import ConfigError


def test_every_profile_names_only_declared_parameters():
    for name in book.profile_names():
        plan = book.validate(book.load_profile(name))
        assert plan, name


def test_notebook_parameters_are_parsed_with_ast():
    params = book.notebook_parameters("baseline")
    # a comment containing '=' made papermill's own parser skip this line
    assert params["train_size"] == "None" and params["dataset"] == "'digits'"
    assert set(book.INJECTED) <= set(params)


def _profile(tmp_path, notebooks):
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump({"description": "test", "notebooks": notebooks}))
    return book.load_profile(str(path))


def test_mistyped_parameter_is_an_error_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'epoch'.*did you mean 'epochs'"):
        book.validate(_profile(tmp_path, {"baseline": {"epoch": 3}}))


def test_unknown_profile_notebook_and_reserved_parameter(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        book.load_profile("smoek")
    with pytest.raises(ConfigError, match="did you mean 'baseline'"):
        book.validate(_profile(tmp_path, {"baselin": {}}))
    with pytest.raises(ConfigError, match="set by cooplib.book"):
        book.validate(_profile(tmp_path, {"baseline": {"out_dir": "/x"}}))
    with pytest.raises(ConfigError, match="has no notebook 'nosuch'"):
        book.validate(book.load_profile("smoke"), only=["nosuch"])


def test_cli_reports_config_errors_without_traceback(capsys):
    assert book.main(["run", "--profile", "smoek"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err


def test_profile_values_must_have_the_type_of_the_notebook_default(tmp_path):
    with pytest.raises(ConfigError, match=r"notebook 'baseline': seeds must be a list like \[0, 1\], got 0"):
        book.validate(_profile(tmp_path, {"baseline": {"seeds": 0}}))
    with pytest.raises(ConfigError, match=r"epochs must be an integer like 30, got '3'"):
        book.validate(_profile(tmp_path, {"baseline": {"epochs": "3"}}))
    # YAML 1.1 reads 5e-4 (no dot) as text; profiles read it as the number people mean
    path = tmp_path / "wd.yml"
    path.write_text("notebooks:\n  baseline:\n    weight_decay: 5e-4\n    lr: 1E-1\n    dataset: digits\n")
    plan = book.validate(book.load_profile(str(path)))
    assert plan["baseline"] == {"weight_decay": 5e-4, "lr": 0.1, "dataset": "digits"}


def test_notebook_guard_catches_what_papermill_only_warns_about():
    declared = {k: eval(v) for k, v in book.notebook_parameters("baseline").items()}  # the defaults
    ok = {**declared, "In": ["", "# parameters\nepochs = 30", "# Parameters\nepochs = 3\n"]}
    book.check_notebook_parameters("baseline", {**ok, "epochs": 3})
    typo = {**declared, "epohcs": 3, "In": ["# Parameters\nepohcs = 3\n"]}
    with pytest.raises(ConfigError, match=r"notebook 'baseline': unknown parameter 'epohcs' \(did you mean 'epochs'\?\)"):
        book.check_notebook_parameters("baseline", typo)
    with pytest.raises(ConfigError, match=r"parameter seeds must be a list like \[0, 1\], got 0"):
        book.check_notebook_parameters("baseline", {**declared, "seeds": 0, "In": ["# Parameters\nseeds = 0\n"]})
    # opened by hand (no injected cell): variables of later cells are not parameters
    book.check_notebook_parameters("baseline", {**declared, "base": object(), "In": ["x = 1"]})


def test_a_failing_notebook_does_not_stop_the_batch(tmp_path, monkeypatch, capsys):
    import nbformat

    monkeypatch.setattr(book, "EXECUTED", tmp_path / "executed")
    (tmp_path / "executed").mkdir()
    stale = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"profile": "paper"}}})
    nbformat.write(stale, tmp_path / "executed" / "robustness.ipynb")
    path = tmp_path / "broken.yml"
    path.write_text("notebooks:\n  baseline:\n    dataset: nosuch\n  dml:\n    dataset: nosuch2\n")
    assert book.main(["run", "--profile", str(path), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert "0 of 2 notebook(s) executed, 2 FAILED" in out
    assert re.search(r"baseline\s+In \[\d+\]: SweepError: .*unknown dataset 'nosuch'", out)
    assert re.search(r"dml\s+In \[\d+\]: SweepError: .*unknown dataset 'nosuch2'", out)
    assert sorted(p.name for p in (tmp_path / "executed").glob("*.ipynb")) == ["baseline.ipynb", "dml.ipynb"]
