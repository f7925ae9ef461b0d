"""A run that stops early (Ctrl-C, SIGTERM, a full disk) says so in one line naming its run
directory and how to resume; resuming stays bit-identical to an uninterrupted run."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cooplib.engine import experiment, runs, train
from cooplib.engine.config import RunConfig
from cooplib.base.errors import CooplibError, RunDirError
from cooplib.methods import Baseline
from cooplib.models import build


def small_config(**kw) -> RunConfig:
    base = dict(model="resnet8", dataset="quadrants", epochs=4, batch_size=32, lr=0.05, weight_decay=5e-4, schedule="cosine",
                deterministic=True, progress=False, tensorboard=False, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def baseline(data, seed=0) -> Baseline:
    torch.manual_seed(seed)
    return Baseline(build("resnet8", data.num_classes, data.in_channels))


def same_run(a: Path, b: Path) -> bool:
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rs]
    ra, rb = runs.RunDir(a), runs.RunDir(b)
    return ra.file_path("last").read_bytes() == rb.file_path("last").read_bytes() and strip(ra.records()) == strip(rb.records())


def test_ctrl_c_prints_one_line_naming_the_run_and_resumes_identical(tiny_data, tmp_path, one_thread, capsys, monkeypatch):
    cfg = small_config()
    train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")
    real = train._stop_if_diverged

    def ctrl_c(run, learner, epoch, m):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run, learner, epoch, m)

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(train, "_stop_if_diverged", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "cut")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted (Ctrl-C) after epoch 2 of 4 of {tmp_path / 'cut'}: re-run the same call to resume "
                   f"from the end of epoch 2"]
    train.fit(baseline(tiny_data, seed=7), tiny_data, cfg, tmp_path / "cut")
    assert same_run(tmp_path / "ref", tmp_path / "cut")


@pytest.mark.parametrize("with_file", [False, True])
def test_disk_full_names_the_file_the_run_and_how_to_resume(tiny_data, tmp_path, one_thread, monkeypatch, with_file):
    cfg = small_config()
    train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")
    real = runs.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "checkpoint-0002.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if with_file else []))
        return real(path, data)

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(runs, "atomic_write_bytes", full)
        with pytest.raises(train.StorageError) as info:
            train.fit(baseline(tiny_data), tiny_data, cfg, cut)
    exc = info.value
    assert isinstance(exc, CooplibError) and isinstance(exc, RunDirError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and len(str(exc).splitlines()) == 1
    where = f" writing {cut / 'checkpoint-0002.pt'}" if with_file else ""
    assert str(exc) == (f"No space left on device ([Errno 28]){where} after epoch 1 of 4 of {cut}: re-run the same call "
                        f"to resume from the end of epoch 1 (free disk space first; the last commit is intact)")
    assert runs.RunDir(cut).epochs_done == 1 and not runs.RunDir(cut).verify()
    train.fit(baseline(tiny_data, seed=7), tiny_data, cfg, cut)
    assert same_run(tmp_path / "ref", cut)


TERMINATED_RUN = """
import sys, json, time, torch
torch.set_num_threads(1)
from cooplib.engine import experiment, train
from cooplib.engine.config import RunConfig
real = train._stop_if_diverged
def slow(*a):  # a slower epoch, so that the signal lands mid-run
    time.sleep(0.3)
    return real(*a)
train._stop_if_diverged = slow
experiment.run(RunConfig.from_dict(json.loads(sys.argv[1])), run_dir=sys.argv[2])
"""


def test_sigterm_ends_with_one_line_and_resumes_identical(quadrants_npz, tmp_path, one_thread):
    cfg = RunConfig(dataset="npz", dataset_args={"path": str(quadrants_npz)}, model="resnet8", epochs=8, batch_size=32, schedule="cosine",
                    lr=0.05, deterministic=True, progress=False, tensorboard=False, device="cpu")
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", TERMINATED_RUN, json.dumps(cfg.to_dict()), str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120  # importing torch takes seconds (more on a loaded machine); epochs 0.3 s each
    while time.time() < deadline and proc.poll() is None and runs.RunDir(cut).epochs_done < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    done = runs.RunDir(cut).epochs_done
    assert 2 <= done < cfg.epochs, f"the run must be stopped mid-way for this test to mean anything ({err[-500:]})"
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last == (f"cooplib.engine.train.RunInterrupted: interrupted (SIGTERM) after epoch {done} of 8 of {cut}: "
                    f"re-run the same call to resume from the end of epoch {done}")
    assert runs.RunDir(cut).state == "running" and not runs.RunDir(cut).verify()
    experiment.run(cfg, run_dir=tmp_path / "ref")
    experiment.run(cfg, run_dir=cut)
    assert runs.RunDir(cut).state == "complete" and same_run(tmp_path / "ref", cut)


def test_sigterm_handler_is_only_installed_while_training_and_never_over_another(tiny_data, tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1), tmp_path / "a")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    mine = lambda *a: None
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        seen = []
        real = train._stop_if_diverged
        train._stop_if_diverged = lambda *a: (seen.append(signal.getsignal(signal.SIGTERM)), real(*a))[1]
        try:
            train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1), tmp_path / "b")
        finally:
            train._stop_if_diverged = real
        assert seen == [mine] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
