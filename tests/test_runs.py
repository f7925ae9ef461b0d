"""Run directories survive SIGKILL at every write, detect damage, and admit one trainer.

The kill tests run training in a subprocess that SIGKILLs itself right after a chosen
file of a chosen epoch's commit is written (or half-way through writing it), resume the
run here, and require bit-identical weights and identical records to an uninterrupted
run: nothing lost, nothing stale, no gap.
"""
from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cooplib.engine import experiment, runs, train
from cooplib.engine.config import RunConfig
from cooplib.base.errors import DivergedError, RunDirError, RunLockedError
from cooplib.methods import Baseline
from cooplib.models import build

EPOCHS = 3
METHODS = {"baseline": {}, "one": {"branches": 2}, "dml": {"peers": 2}}


def config(quadrants_npz, method="baseline", **kw) -> RunConfig:
    base = dict(method=method, method_args=METHODS[method], dataset="npz", dataset_args={"path": str(quadrants_npz)},
                model="resnet8", epochs=EPOCHS, batch_size=32, lr=0.05, deterministic=True, device="cpu",
                progress=False, tensorboard=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def references(quadrants_npz, tmp_path_factory):
    """Uninterrupted runs of every method, trained once."""
    root = tmp_path_factory.mktemp("ref")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical comparisons: one thread here and in the killed processes
    try:
        return {m: experiment.run(config(quadrants_npz, m), run_dir=root / m).run_dir for m in METHODS}
    finally:
        torch.set_num_threads(threads)


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = runs.RunDir(a), runs.RunDir(b)
    assert rb.state == "complete" and not rb.verify()
    assert ra.file_path("last").read_bytes() == rb.file_path("last").read_bytes()
    assert ra.file_path("best").read_bytes() == rb.file_path("best").read_bytes()
    assert _untimed(ra.records()) == _untimed(rb.records())
    fa, fb = ra.final(), rb.final()
    assert _untimed([fa["last"], fa["best"]]) == _untimed([fb["last"], fb["best"]])
    # nothing left over: exactly the committed files (the lock file aside)
    names = sorted(p.name for p in b.iterdir() if p.name != runs.LOCK)
    assert names == sorted(p.name for p in a.iterdir() if p.name != runs.LOCK)


KILLER = r"""
import json, os, signal, sys, tempfile
from pathlib import Path
import torch
torch.set_num_threads(1)
from fnmatch import fnmatch
from cooplib.engine import experiment, runs
from cooplib.engine.config import RunConfig

cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
run_dir, pattern, target, partial = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
committing = {"epoch": 0}
commit_epoch = runs.RunDir.commit_epoch
def tracking(self, **kw):
    committing["epoch"] = kw["epoch"]
    return commit_epoch(self, **kw)
runs.RunDir.commit_epoch = tracking
write = runs.atomic_write_bytes
def killing(path, data):
    path = Path(path)
    if committing["epoch"] == target and fnmatch(path.name, pattern):
        if partial:  # die half-way through the write: a partial temporary file stays
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 2])
        else:
            write(path, data)
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
runs.atomic_write_bytes = killing
experiment.run(cfg, run_dir=run_dir)
"""

#: (pattern, epoch of the commit, half-written): every file of an epoch's commit, in the
#: first epoch (always a best epoch) and the last (it also writes final.json)
KILL_POINTS = [
    ("config.json", 0, False),
    *[(p, 1, False) for p in ("checkpoint-*", "model-*", "best-*", "metrics.jsonl", "commit.json")],
    ("checkpoint-*", 1, True),
    *[(p, EPOCHS, False) for p in ("checkpoint-*", "model-*", "metrics.jsonl", "final.json", "commit.json")],
    ("model-*", EPOCHS, True),
]
CASES = [("baseline", *k) for k in KILL_POINTS] + [
    (m, p, e, h) for m in ("one", "dml") for (p, e, h) in KILL_POINTS if e == EPOCHS or p == "best-*"
]


@pytest.mark.slow
@pytest.mark.parametrize("method,pattern,epoch,partial", CASES)
def test_sigkill_at_any_write_of_a_commit_loses_nothing(quadrants_npz, references, tmp_path, one_thread, method, pattern,
                                                        epoch, partial):
    cfg = config(quadrants_npz, method)
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(cfg.to_dict()), str(cut), pattern, str(epoch),
                           "1" if partial else "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the run must die at {pattern} of epoch {epoch}: {proc.stderr[-2000:]}"
    assert runs.status(cut) in ("new", "running", "complete")  # complete: killed before superseded files went
    if partial:
        assert list(cut.glob(".*.tmp")), "a half-written temporary file must be left for recovery to remove"
    resumed = experiment.run(cfg, run_dir=cut)
    assert resumed.final["epochs_done"] == EPOCHS
    assert_same_run(references[method], cut)


def _cut_after(quadrants_npz, tmp_path, epoch: int) -> tuple[RunConfig, Path]:
    """Run the baseline in a subprocess killed right after epoch `epoch` is committed."""
    cfg = config(quadrants_npz)
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(cfg.to_dict()), str(cut), "commit.json",
                           str(epoch), "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return cfg, cut


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_checkpoint_metrics_and_weights_are_detected_and_named(quadrants_npz, references, tmp_path, one_thread):
    cfg, cut = _cut_after(quadrants_npz, tmp_path, 2)
    run = runs.RunDir(cut)
    # one flipped byte in the tensor data of the checkpoint (near its end, past the header)
    ckpt = run.file_path("checkpoint")
    pristine = ckpt.read_bytes()
    _flip_byte(ckpt, len(pristine) - 2000)
    with pytest.raises(RunDirError, match=rf"{ckpt.name} does not match the checksum.*cooplib.engine.runs reset"):
        experiment.run(cfg, run_dir=cut)
    ckpt.write_bytes(pristine)
    # the last line of metrics.jsonl removed, then a half line: named, with the repair command
    metrics = cut / runs.METRICS
    lines = metrics.read_bytes().splitlines(keepends=True)
    for damaged in (b"".join(lines[:-1]), b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]):
        metrics.write_bytes(damaged)
        with pytest.raises(RunDirError, match=r"metrics.jsonl is damaged: 2 epoch\(s\) were committed.*cooplib.engine.runs repair"):
            experiment.run(cfg, run_dir=cut)
        with pytest.raises(RunDirError, match="metrics.jsonl is damaged"):
            runs.load_runs([cut])
    assert runs.main(["repair", str(cut)]) == 0 and not run.verify()
    experiment.run(cfg, run_dir=cut)
    assert_same_run(references["baseline"], cut)
    # a flipped byte in the final weights of a complete run: loading them is refused
    weights = run.file_path("last")
    _flip_byte(weights, weights.stat().st_size - 100)
    with pytest.raises(RunDirError, match=rf"{weights.name} does not match the checksum"):
        experiment.load_learner(cut)
    assert runs.main(["verify", str(cut)]) == 1


def test_damaged_commit_file_names_itself(quadrants_npz, tmp_path):
    run_dir = tmp_path / "run"
    experiment.run(config(quadrants_npz, epochs=1, schedule="constant"), run_dir=run_dir)
    (run_dir / runs.COMMIT).write_text('{"state": "comp')
    with pytest.raises(RunDirError, match=r"commit.json is not valid JSON"):
        runs.load_runs([run_dir])


def test_reset_moves_a_run_aside_so_that_it_retrains(quadrants_npz, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(quadrants_npz, epochs=1, schedule="constant")
    experiment.run(cfg, run_dir=run_dir)
    assert runs.main(["reset", str(run_dir)]) == 0
    assert not run_dir.exists() and len(list(tmp_path.glob("run.damaged-*"))) == 1
    assert runs.find_runs(tmp_path) == []  # moved-aside runs are not loaded as results
    assert experiment.run(cfg, run_dir=run_dir).final["epochs_done"] == 1


HOLDER = r"""
import sys, time
from cooplib.engine import runs
with runs.RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_directory_has_one_trainer_at_a_time(quadrants_npz, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        no_wait = {"wait": False} if "wait" in inspect.signature(experiment.run).parameters else {}
        with pytest.raises(RunLockedError, match=rf"is being trained by pid {holder.pid} on "):
            experiment.run(config(quadrants_npz, epochs=1, schedule="constant"), run_dir=run_dir, **no_wait)
        assert not (run_dir / runs.CONFIG).exists()
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock with the process
        holder.wait()
    assert experiment.run(config(quadrants_npz, epochs=1, schedule="constant"), run_dir=run_dir).final["epochs_done"] == 1


def test_a_second_config_in_the_same_directory_is_refused(quadrants_npz, tmp_path):
    run_dir = tmp_path / "run"
    experiment.run(config(quadrants_npz, epochs=1, schedule="constant"), run_dir=run_dir)
    with pytest.raises(RunDirError, match=rf"{run_dir} holds a run with a different config \(lr: 0.05 -> 0.1\)"):
        experiment.run(config(quadrants_npz, epochs=1, schedule="constant", lr=0.1), run_dir=run_dir)
    with pytest.raises(RunDirError, match=rf"{run_dir / runs.CONFIG}: unknown run parameter 'lrr'"):
        meta = runs.read_json(run_dir / runs.CONFIG)
        meta["config"]["lrr"] = 1
        runs.write_json(run_dir / runs.CONFIG, meta)
        runs.RunDir(run_dir).config()


class PoisonAt(Baseline):
    """At the last step of epoch `epoch`: a non-finite loss, or (bn=True) a BatchNorm
    running variance set to inf while the loss stays finite."""

    def __init__(self, net, epoch: int, bn: bool):
        super().__init__(net)
        self.bad_epoch, self.bn = epoch, bn

    def loss(self, heads, y, state):
        total, parts = super().loss(heads, y, state)
        if state.epoch == self.bad_epoch and state.step == state.steps_per_epoch - 1:
            if self.bn:
                next(m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.data.fill_(float("inf"))
            else:
                total = total * float("nan")
        return total, parts


def test_divergence_is_stopped_before_the_commit_and_the_message_is_true(tiny_data, tmp_path):
    cfg = RunConfig(model="resnet8", dataset="quadrants", epochs=3, batch_size=32, lr=0.05, deterministic=True,
                    progress=False, tensorboard=False, device="cpu")
    torch.manual_seed(0)
    with pytest.raises(DivergedError, match="non-finite in epoch 1.*no epoch had been committed, so no weights are kept"):
        train.fit(PoisonAt(build("resnet8", 4, 3), epoch=0, bn=False), tiny_data, cfg, tmp_path / "first")
    assert runs.status(tmp_path / "first") == "diverged" and runs.RunDir(tmp_path / "first").checkpoint() is None

    torch.manual_seed(0)
    run_dir = tmp_path / "bn"
    with pytest.raises(DivergedError, match=r"1 weight/buffer tensor\(s\) became non-finite in epoch 2 \(e\.g\. .*running_var\)"
                                            r".*epoch 1 is kept .*checkpoint-0001.pt"):
        train.fit(PoisonAt(build("resnet8", 4, 3), epoch=1, bn=True), tiny_data, cfg, run_dir)
    kept = runs.RunDir(run_dir)
    assert kept.state == "diverged" and kept.epochs_done == 1 and not kept.verify()
    state = kept.checkpoint()["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_orphans_and_uncommitted_files_are_removed_on_resume(quadrants_npz, tmp_path):
    cfg = config(quadrants_npz)
    run_dir = tmp_path / "run"
    experiment.run(cfg.replace(epochs=1, schedule="constant"), run_dir=run_dir)  # a different config: copy its epoch into a new dir
    cut = tmp_path / "cut"
    cut.mkdir()
    for p in run_dir.iterdir():
        if p.is_file() and p.name not in (runs.FINAL, runs.LOCK):
            (cut / p.name).write_bytes(p.read_bytes())
    meta = runs.read_json(cut / runs.CONFIG)
    meta["config"] = cfg.to_dict()
    runs.write_json(cut / runs.CONFIG, meta)
    manifest = runs.read_json(cut / runs.COMMIT)
    del manifest["files"]["final"]
    manifest["state"] = "running"
    manifest["config_sha256"] = runs.sha256((cut / runs.CONFIG).read_bytes())  # the config this record holds
    runs.write_json(cut / runs.COMMIT, manifest)
    (cut / ".model-0002.safetensors.abc.tmp").write_bytes(b"partial")
    (cut / "checkpoint-0002.pt").write_bytes(b"uncommitted")
    with runs.RunDir(cut).lock():
        ckpt = runs.RunDir(cut).recover()
    assert ckpt["epoch"] == 1
    assert not list(cut.glob(".*.tmp")) and not (cut / "checkpoint-0002.pt").exists()


def test_a_run_directory_of_the_older_layout_is_left_alone(quadrants_npz, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(quadrants_npz, epochs=1, schedule="constant")
    run_dir.mkdir()
    runs.write_json(run_dir / runs.CONFIG, {"config": cfg.to_dict()})
    (run_dir / "status.json").write_text('{"state": "complete"}')
    (run_dir / runs.FINAL).write_text("{}")
    with pytest.raises(RunDirError, match="older cooplib .*cooplib.engine.runs reset"):
        experiment.run(cfg, run_dir=run_dir)
    assert (run_dir / runs.FINAL).exists()
