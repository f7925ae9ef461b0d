"""What a run was trained from: its data (fingerprint) and the runs it depends on (a KD
teacher, an init_from parent) are recorded when it starts and checked when it resumes or
is reused; a complete student or child is its own record and loads without them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cooplib import data as datasets
from cooplib.engine import experiment, runs, train
from cooplib import methods
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError, RunDirError

from conftest import quadrants


def _save(path: Path, xtr, ytr, xte, yte) -> Path:
    np.savez(path, x_train=np.asarray(xtr), y_train=np.asarray(ytr), x_test=np.asarray(xte), y_test=np.asarray(yte))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """npz datasets: the quadrants (4 classes, 3 channels), the same arrays under another
    name, a 1-channel version, and a 6-class one."""
    root = tmp_path_factory.mktemp("provdata")
    xtr, ytr, xte, yte = (t.numpy() for t in quadrants())
    return {
        "quadrants": _save(root / "quadrants.npz", xtr, ytr, xte, yte),
        "other": _save(root / "other.npz", xtr, ytr, xte, yte),
        "gray": _save(root / "gray.npz", xtr[:, :1], ytr, xte[:, :1], yte),
        "six": _save(root / "six.npz", xtr, np.arange(len(ytr)) % 6, xte, np.arange(len(yte)) % 6),
    }


def config(path: Path, **kw) -> RunConfig:
    base = dict(dataset="npz", dataset_args={"path": str(path)}, model="resnet8", epochs=2, batch_size=32, lr=0.05, schedule="cosine",
                deterministic=True, device="cpu", progress=False, tensorboard=False)
    base.update(kw)
    return RunConfig(**base)


def interrupted(monkeypatch, cfg: RunConfig, run_dir: Path, after: int = 1) -> None:
    """Run `cfg` in `run_dir` and stop it (Ctrl-C) once `after` epochs are committed."""
    real = train._stop_if_diverged

    def stop(run, learner, epoch, m):
        if epoch == after:
            raise KeyboardInterrupt
        return real(run, learner, epoch, m)

    with monkeypatch.context() as m:
        m.setattr(train, "_stop_if_diverged", stop)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(cfg, run_dir=run_dir)
    assert runs.RunDir(run_dir).epochs_done == after


def teacher_and_student(files, tmp_path, kind="kd", **kw):
    teacher_dir = tmp_path / "teacher"
    experiment.run(config(files["quadrants"]), run_dir=teacher_dir)
    student = config(files["quadrants"], method=kind, epochs=3, method_args={"teacher": str(teacher_dir)}, **kw)
    return teacher_dir, student


# ---------------------------------------------------------------- teacher


def test_teacher_retrained_after_the_student_started_is_refused(files, tmp_path, monkeypatch, one_thread):
    teacher_dir, student = teacher_and_student(files, tmp_path)
    interrupted(monkeypatch, student, tmp_path / "student")
    meta = runs.read_json(tmp_path / "student" / runs.CONFIG)
    ident = meta["provenance"]["teacher"]
    committed = runs.read_json(teacher_dir / runs.COMMIT)["files"]["last"]["sha256"]
    assert ident["run"] == "teacher" and ident["weights_sha256"] == committed
    assert (ident["dataset"], ident["num_classes"], ident["in_channels"]) == ("quadrants", 4, 3)
    assert meta["config"] == student.to_dict()  # the run name (config hash) is untouched
    # the teacher is retrained (another seed) under the same path
    shutil.rmtree(teacher_dir)
    experiment.run(config(files["quadrants"], seed=5), run_dir=teacher_dir)
    new = runs.read_json(teacher_dir / runs.COMMIT)["files"]["last"]["sha256"]
    with pytest.raises(RunDirError, match=rf"teacher teacher changed since this student started \(weights sha256 "
                                          rf"{committed[:16]} -> {new[:16]}\): retrain the student .*or restore the teacher"):
        experiment.run(student, run_dir=tmp_path / "student")
    assert runs.RunDir(tmp_path / "student").epochs_done == 1  # nothing was trained


def test_complete_student_with_a_retrained_teacher_is_not_reused(files, tmp_path):
    teacher_dir, student = teacher_and_student(files, tmp_path)
    experiment.run(student, run_dir=tmp_path / "student")
    shutil.rmtree(teacher_dir)
    experiment.run(config(files["quadrants"], seed=5), run_dir=teacher_dir)
    with pytest.raises(RunDirError, match="teacher teacher changed since this student started"):
        experiment.run(student, run_dir=tmp_path / "student")


@pytest.mark.parametrize("kind", ["kd", "fitnet"])
@pytest.mark.parametrize("gone", ["moved", "deleted"])
def test_complete_student_loads_and_is_reused_without_its_teacher(files, tmp_path, kind, gone):
    teacher_dir, student = teacher_and_student(files, tmp_path, kind)
    done = experiment.run(student, run_dir=tmp_path / "student")
    before = experiment.load_learner(tmp_path / "student").state_dict()
    if gone == "moved":
        teacher_dir.rename(tmp_path / "elsewhere")
    else:
        shutil.rmtree(teacher_dir)
    learner = experiment.load_learner(tmp_path / "student")
    after = learner.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert learner.teacher_top1 == runs.read_json(tmp_path / "student" / runs.CONFIG)["provenance"]["teacher"]["top1"]
    again = experiment.run(student, run_dir=tmp_path / "student")  # reused, not retrained
    assert again.final == done.final


def test_record_without_teacher_identity_needs_its_teacher(files, tmp_path):
    """A student recorded before teacher identities were kept still loads with its
    teacher, and without it says why."""
    teacher_dir, student = teacher_and_student(files, tmp_path)
    data = experiment.load_data(student)
    learner, _ = experiment.build_learner(student, data)
    run = runs.RunDir(tmp_path / "old")
    run.path.mkdir()
    run.create(train._run_metadata(student, data, torch.device("cpu")))  # no provenance
    train.fit(learner, data, student, run.path)
    experiment.load_learner(run.path)
    shutil.rmtree(teacher_dir)
    with pytest.raises(ConfigError, match="recorded before cooplib kept a student's teacher identity.*Restore the teacher"):
        experiment.load_learner(run.path)


@pytest.mark.parametrize("data, kind, differ", [
    ("other", "kd", "dataset differ"),
    ("six", "kd", "classes differ"),
    ("six", "at", "classes differ"),
    ("six", "rkd", "classes differ"),
    ("gray", "kd", "input channels differ"),
])
def test_teacher_of_other_data_is_refused_before_training(files, tmp_path, data, kind, differ):
    teacher_dir = tmp_path / "teacher"
    experiment.run(config(files["quadrants"]), run_dir=teacher_dir)
    student = config(files[data], method=kind, method_args={"teacher": str(teacher_dir)})
    nc, ic = {"other": (4, 3), "six": (6, 3), "gray": (4, 1)}[data]
    with pytest.raises(ConfigError, match=rf"teacher teacher does not fit the student's data \(.*{differ}\): the teacher "
                                          rf"was trained on 'quadrants', 4 classes, 3 channels; the student trains on "
                                          rf"'{data}', {nc} classes, {ic} channels"):
        experiment.run(student, run_dir=tmp_path / "student")
    assert not (tmp_path / "student").exists()
    if data != "other":  # building the Learner by hand checks classes and channels too
        with pytest.raises(ConfigError, match=differ):
            methods.build(kind, "resnet8", nc, ic, teacher=str(teacher_dir))


# ---------------------------------------------------------------- parent (init_from)


def test_complete_child_loads_and_is_reused_without_its_parent(files, tmp_path):
    parent_dir = tmp_path / "parent"
    experiment.run(config(files["quadrants"]), run_dir=parent_dir)
    child = config(files["quadrants"], init_from=str(parent_dir), lr=0.01, epochs=1, seed=3)
    done = experiment.run(child, run_dir=tmp_path / "child")
    ident = runs.read_json(tmp_path / "child" / runs.CONFIG)["provenance"]["init_from"]
    assert ident["weights_sha256"] == runs.read_json(parent_dir / runs.COMMIT)["files"]["last"]["sha256"]
    before = experiment.load_learner(tmp_path / "child").state_dict()
    shutil.rmtree(parent_dir)
    after = experiment.load_learner(tmp_path / "child").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert experiment.run(child, run_dir=tmp_path / "child").final == done.final


def test_parent_retrained_after_the_child_started_is_refused(files, tmp_path, monkeypatch, one_thread):
    parent_dir = tmp_path / "parent"
    experiment.run(config(files["quadrants"]), run_dir=parent_dir)
    child = config(files["quadrants"], init_from=str(parent_dir), lr=0.01, epochs=3, seed=3)
    interrupted(monkeypatch, child, tmp_path / "child")
    shutil.rmtree(parent_dir)
    experiment.run(config(files["quadrants"], seed=9), run_dir=parent_dir)
    with pytest.raises(RunDirError, match=r"parent \(init_from\) parent changed since this run started \(weights sha256 "
                                          r"\w+ -> \w+\): retrain the run .*or restore the parent"):
        experiment.run(child, run_dir=tmp_path / "child")


def test_parent_of_other_classes_is_refused_before_training(files, tmp_path):
    parent_dir = tmp_path / "parent"
    experiment.run(config(files["quadrants"]), run_dir=parent_dir)
    child = config(files["six"], init_from=str(parent_dir))
    with pytest.raises(ConfigError, match=r"init_from=parent does not fit this run's data: it was trained on 'quadrants' "
                                          r"\(4 classes, 3 channels\), this run trains on 'six' \(6 classes, 3 channels\)"):
        experiment.run(child, run_dir=tmp_path / "child")


# ---------------------------------------------------------------- data fingerprints


def test_dataset_fingerprint_is_recorded(files, tmp_path):
    cfg = config(files["quadrants"], epochs=1)
    res = experiment.run(cfg, run_dir=tmp_path / "run")
    recorded = runs.read_json(res.run_dir / runs.CONFIG)["data"]["fingerprint"]
    assert recorded == datasets.fingerprint(experiment.load_data(cfg))
    # it is of the content (the same arrays under another file name have it), not of the name
    assert datasets.fingerprint(experiment.load_data(config(files["other"]))) == recorded
    assert datasets.fingerprint(experiment.load_data(config(files["gray"]))) != recorded
    assert datasets.fingerprint(experiment.load_data(cfg.replace(test_size=20))) != recorded


@pytest.mark.parametrize("state", ["complete", "interrupted"])
def test_dataset_replaced_under_the_same_path_is_refused(files, tmp_path, monkeypatch, state, one_thread):
    path = shutil.copy(files["quadrants"], tmp_path / "mine.npz")
    cfg = config(Path(path), epochs=2)
    if state == "complete":
        experiment.run(cfg, run_dir=tmp_path / "run")
    else:
        interrupted(monkeypatch, cfg, tmp_path / "run")
    recorded = runs.read_json(tmp_path / "run" / runs.CONFIG)["data"]["fingerprint"]
    xtr, ytr, xte, yte = (t.numpy() for t in quadrants())
    _save(Path(path), xtr, ytr, xte[:20], yte[:20])  # replaced: 20 test images instead of 40
    now = datasets.fingerprint(experiment.load_data(cfg))
    with pytest.raises(RunDirError, match=rf"dataset 'mine' is not the data .*run was trained on \(fingerprint "
                                          rf"{recorded[:16]} recorded, {now[:16]} now; 96 train / 40 test images then, "
                                          rf"96 / 20 now\).*Restore the original data.*reset"):
        experiment.run(cfg, run_dir=tmp_path / "run")
    assert runs.RunDir(tmp_path / "run").epochs_done == (2 if state == "complete" else 1)


def test_records_without_a_fingerprint_stay_usable(files, tmp_path, tiny_data):
    cfg = config(files["quadrants"], epochs=1)
    data = experiment.load_data(cfg)
    meta = train._run_metadata(cfg, data, torch.device("cpu"))
    del meta["data"]["fingerprint"]  # as cooplib wrote it before fingerprints
    run = runs.RunDir(tmp_path / cfg.run_name())
    run.path.mkdir()
    run.create(meta)
    res = experiment.run(cfg, tmp_path)  # trained in the old record
    assert res.run_dir == run.path and runs.RunDir(run.path).state == "complete"
    assert experiment.run(cfg, tmp_path).final == res.final  # and reused
    experiment.load_learner(run.path)
