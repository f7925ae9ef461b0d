"""Run directories written before cooplib was split into layers still load.

tests/fixtures/old_runs/ holds run directories written by the code of before the move
(commit 0cb5e8a), never rewritten since:

- ``trained/``: a baseline, a ONE and a KD run (1 epoch on 128 digits images) with their
  weights and commit.json (the ONE run's checkpoint, over 1 MB, was left out); the KD
  run's teacher is the baseline run at the path where it was trained, which no longer
  exists, so the student must load from its own record;
- ``published/``: the records (config, metrics, final; no weights) of a baseline, a ONE
  and a KD run of the published fashion book.

A run's directory name is its config's `run_name()`, so a config that no longer hashes
the same would train every existing run again.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cooplib.engine import experiment, runs
from cooplib.engine.config import RunConfig

OLD = Path(__file__).resolve().parent / "fixtures" / "old_runs"
TRAINED = sorted((OLD / "trained").iterdir())
PUBLISHED = sorted((OLD / "published").iterdir())


@pytest.fixture
def trained(tmp_path):
    """A copy of the trained runs (loading must not depend on writing next to them)."""
    for run in TRAINED:
        shutil.copytree(run, tmp_path / run.name)
    return {run.name.split("-")[0]: tmp_path / run.name for run in TRAINED}


def test_the_fixtures_are_the_runs_described():
    assert [r.name.split("-")[0] for r in TRAINED] == ["baseline", "kd", "one"]
    assert [r.name.split("-")[0] for r in PUBLISHED] == ["baseline", "kd", "one"]


#: publishing makes a teacher's absolute run path relative (`cooplib.book.make.publish`), so
#: a published student's name no longer recomputes from its record; the value is what the
#: code of before the move computes from the same record
PUBLISHED_PATH_RELATIVE = {"kd-resnet8-fashion-mnist-s0-5c614b78": "kd-resnet8-fashion-mnist-s0-5628f8f6"}


@pytest.mark.parametrize("run", TRAINED + PUBLISHED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_names_recompute_from_the_recorded_configs(run):
    config = RunConfig.from_dict(json.loads((run / "config.json").read_text())["config"])
    assert config.run_name() == PUBLISHED_PATH_RELATIVE.get(run.name, run.name)


def test_load_runs_reads_the_old_records(trained):
    finals = runs.load_runs(list(trained.values()))
    assert sorted(finals["run"]) == sorted(d.name for d in trained.values())
    assert (finals["status"] == "complete").all()
    assert all(row[f"last/test/{row['deployed']}/top1"] >= 0 for _, row in finals.iterrows())
    metrics = runs.load_metrics(list(trained.values()))
    assert set(metrics["run"]) == set(finals["run"]) and (metrics["epoch"] == 1).all()  # one epoch, counted from 1


def test_load_runs_reads_the_published_records():
    """Records without commit.json read as they did before the move: config columns, no
    committed epochs (the published book is rebuilt from its executed notebooks)."""
    finals = runs.load_runs(PUBLISHED).set_index("run")
    for run in PUBLISHED:
        config = json.loads((run / "config.json").read_text())["config"]
        row = finals.loc[run.name]
        assert (row["method"], row["model"], row["seed"], row["epochs"]) == \
            (config["method"], config["model"], config["seed"], config["epochs"])
        assert row["status"] == "running"


@pytest.mark.parametrize("method", ["baseline", "one", "kd"])
def test_a_learner_loads_its_old_weights(trained, method):
    run = trained[method]
    learner = experiment.load_learner(run, "last")
    (weights,) = run.glob("model-*.safetensors")
    stored = load_file(str(weights))
    state = learner.state_dict()
    assert set(state) == set(stored)
    assert all(torch.equal(state[k].cpu(), stored[k]) for k in stored)
    assert learner.deployable() is not None


def test_the_kd_student_loads_without_its_teacher_run(trained):
    config = runs.RunDir(trained["kd"]).config()
    assert not Path(config.method_args["teacher"]).exists()  # the teacher it was trained from is gone
    student = experiment.load_learner(trained["kd"])
    with torch.no_grad():
        logits = student.deployable().eval()(torch.zeros(2, 1, 8, 8))  # digits: 1 channel, 8x8
    assert logits.shape == (2, 10)
