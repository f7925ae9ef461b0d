"""Profiles are validated against the notebooks before anything runs."""
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
    with pytest.raises(ConfigError, match="has no notebook 'kd_zoo'"):
        book.validate(book.load_profile("smoke"), only=["kd_zoo"])


def test_cli_reports_config_errors_without_traceback(capsys):
    assert book.main(["run", "--profile", "smoek"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err
