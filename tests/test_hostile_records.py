"""Hostile run records: whatever a run directory's files say, nothing outside it is read,
written or deleted, every malformed record is one error naming its file, and a lost
commit never turns a finished run into a fresh start.

Each test builds its record from one small real run (copied into tmp_path) and keeps a
victim file OUTSIDE the run directory whose bytes and mtime must survive every
operation: verify, load_runs, resume (experiment.run), repair and reset.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cooplib.engine import experiment, runs, train
from cooplib.engine.config import RunConfig
from cooplib.base.errors import RunDirError, RunLockedError

EPOCHS = 2
VICTIM = b'{"precious": "bytes outside the run directory"}\n'
FIT_WAITS = "wait" in inspect.signature(train.fit).parameters and "wait" in inspect.signature(experiment.run).parameters
needs_fit_call_site = pytest.mark.skipif(
    not FIT_WAITS, reason="needs the train.fit/experiment.run call-site change (RunDir.reuse before the lock, lock(wait=...))")


def config(quadrants_npz, **kw) -> RunConfig:
    base = dict(dataset="npz", dataset_args={"path": str(quadrants_npz)}, model="resnet8", epochs=EPOCHS, batch_size=32,
                lr=0.05, schedule="constant", deterministic=True, device="cpu", progress=False, tensorboard=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def trained(quadrants_npz, tmp_path_factory) -> Path:
    """One complete 2-epoch run, trained once; tests work on copies."""
    return experiment.run(config(quadrants_npz), run_dir=tmp_path_factory.mktemp("trained") / "run").run_dir


class Victim:
    """A file outside the run directory that no operation may change."""

    def __init__(self, path: Path, data: bytes = VICTIM):
        self.path = path
        path.write_bytes(data)
        os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
        self.data, self.mtime = data, path.stat().st_mtime_ns

    def check(self, after: str = "") -> None:
        assert self.path.exists() and not self.path.is_symlink(), f"the victim was deleted or replaced ({after})"
        assert self.path.read_bytes() == self.data, f"the victim's bytes changed ({after})"
        assert self.path.stat().st_mtime_ns == self.mtime, f"the victim was written ({after})"


@pytest.fixture
def victim(tmp_path) -> Victim:
    return Victim(tmp_path / "victim.txt")


def copy_run(trained: Path, dst: Path) -> Path:
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns(runs.LOCK))
    return dst


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / runs.COMMIT).read_text())


def write_manifest(run_dir: Path, m: dict) -> None:
    (run_dir / runs.COMMIT).write_text(json.dumps(m))


def as_running(run_dir: Path, epochs: int) -> None:
    """Make the copied complete run an interrupted one of `epochs` epochs (config checksum kept true)."""
    meta = json.loads((run_dir / runs.CONFIG).read_text())
    meta["config"]["epochs"] = epochs
    (run_dir / runs.CONFIG).write_bytes(runs.json_bytes(meta))
    m = manifest(run_dir)
    del m["files"]["final"]
    (run_dir / runs.FINAL).unlink()
    m.update(state="running", config_sha256=runs.sha256((run_dir / runs.CONFIG).read_bytes()))
    write_manifest(run_dir, m)


def every_operation(run_dir: Path, cfg: RunConfig, victim: Victim, *, reset: bool = True) -> dict:
    """verify, load_runs, resume, repair (and reset): each either works or is a RunDirError
    (a raw error fails the test); the victim is checked after each."""
    outcomes = {}
    ops = [("verify", lambda: runs.main(["verify", str(run_dir)])),
           ("load_runs", lambda: runs.load_runs([run_dir])),
           ("resume", lambda: experiment.run(cfg, run_dir=run_dir)),
           ("repair", lambda: runs.main(["repair", str(run_dir)]))]
    if reset:
        ops.append(("reset", lambda: runs.main(["reset", str(run_dir)])))
    for name, op in ops:
        try:
            outcomes[name] = op()
        except RunDirError as exc:
            outcomes[name] = exc
        victim.check(name)
    return outcomes


# ---------------------------------------------------------------- outside the run directory


@pytest.mark.parametrize("role,how", [("final", "../"), ("checkpoint", "absolute"), ("last", "../"), ("best", "absolute")])
def test_a_commit_entry_naming_a_file_outside_the_run_is_refused(quadrants_npz, trained, tmp_path, capsys, role, how):
    run_dir = copy_run(trained, tmp_path / "root" / "run")
    victim = Victim(tmp_path / "root" / "victim.txt")  # ../victim.txt from the run
    m = manifest(run_dir)
    name = "../victim.txt" if how == "../" else str(victim.path)
    m["files"][role].update(name=name, sha256=runs.sha256(VICTIM), bytes=len(VICTIM))  # its real checksum
    write_manifest(run_dir, m)
    with pytest.raises(RunDirError, match=rf"commit.json: field 'files.{role}.name' must be a plain file name"):
        runs.RunDir(run_dir).final()
    out = every_operation(run_dir, config(quadrants_npz), victim)
    assert out["verify"] == 1 and "DAMAGED" in capsys.readouterr().out
    assert all(isinstance(out[k], RunDirError) for k in ("load_runs", "resume"))
    assert out["repair"] == 2 and out["reset"] == 0  # moved aside, inside its own parent folder


def test_resuming_never_deletes_a_file_outside_the_run(quadrants_npz, trained, tmp_path):
    """The superseded `last` weights of a resumed run are deleted at the next commit: an
    entry naming an outside file must be refused before anything trains."""
    run_dir = copy_run(trained, tmp_path / "root" / "run")
    as_running(run_dir, EPOCHS + 1)
    victim = Victim(tmp_path / "root" / "victim.txt")
    m = manifest(run_dir)
    m["files"]["last"].update(name="../victim.txt", sha256=runs.sha256(VICTIM), bytes=len(VICTIM))
    write_manifest(run_dir, m)
    with pytest.raises(RunDirError, match="must be a plain file name"):
        experiment.run(config(quadrants_npz, epochs=EPOCHS + 1), run_dir=run_dir)
    victim.check("resume")
    assert runs.main(["verify", str(run_dir)]) == 1
    victim.check("verify")


def test_committed_files_that_are_symbolic_links_are_not_followed(quadrants_npz, trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    name = manifest(run_dir)["files"]["last"]["name"]
    victim = Victim(tmp_path / "outside.safetensors", (run_dir / name).read_bytes())  # same bytes: the checksum passes
    (run_dir / name).unlink()
    (run_dir / name).symlink_to(victim.path)
    with pytest.raises(RunDirError, match=rf"{name} is a symbolic link"):
        runs.RunDir(run_dir).weights()
    with pytest.raises(RunDirError, match="is a symbolic link"):
        experiment.load_learner(run_dir)
    every_operation(run_dir, config(quadrants_npz), victim, reset=False)
    # and config.json / commit.json themselves
    for record in (runs.CONFIG, runs.COMMIT):
        other = copy_run(trained, tmp_path / f"run-{record}")
        outside = Victim(tmp_path / f"outside-{record}", (other / record).read_bytes())
        (other / record).unlink()
        (other / record).symlink_to(outside.path)
        with pytest.raises(RunDirError, match=rf"{record} is a symbolic link"):
            runs.load_runs([other])
        every_operation(other, config(quadrants_npz), outside)


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink", "folder"])
def test_a_lock_that_is_not_a_plain_file_is_one_clear_error(quadrants_npz, trained, tmp_path, kind):
    run_dir = copy_run(trained, tmp_path / "run")
    victim = Victim(tmp_path / "victim.txt")
    lock = run_dir / runs.LOCK
    if kind == "symlink":
        lock.symlink_to(victim.path)
    elif kind == "dangling":
        lock.symlink_to(tmp_path / "created-outside")
    elif kind == "hardlink":
        os.link(victim.path, lock)
    else:
        lock.mkdir()
    what = {"symlink": "is a symbolic link", "dangling": "is a symbolic link", "hardlink": "hard link",
            "folder": "is a folder"}[kind]
    with pytest.raises(RunDirError, match=rf"lock file {lock} {what}" if kind != "hardlink" else what):
        with runs.RunDir(run_dir).lock():
            pass
    # a complete run is still read and verified (no lock needed); writers refuse
    assert runs.main(["verify", str(run_dir)]) == 0
    assert runs.main(["repair", str(run_dir)]) == 2 and runs.main(["reset", str(run_dir)]) == 2
    victim.check(kind)
    assert not (tmp_path / "created-outside").exists()


# ---------------------------------------------------------------- a lost commit.json


def test_a_lost_commit_is_never_a_fresh_start_and_repair_rebuilds_it(quadrants_npz, trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    (run_dir / runs.COMMIT).unlink()
    assert runs.main(["verify", str(run_dir)]) == 1
    assert f"cooplib.engine.runs repair {run_dir}" in capsys.readouterr().out
    for op in (lambda: runs.load_runs([run_dir]), lambda: experiment.run(config(quadrants_npz), run_dir=run_dir)):
        with pytest.raises(RunDirError, match=r"commit.json is missing although the run holds committed files.*"
                                              r"nothing was changed or deleted.*cooplib.engine.runs repair"):
            op()
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != runs.LOCK}
    assert after == {k: v for k, v in before.items() if k != runs.COMMIT}  # nothing deleted, nothing retrained
    assert runs.main(["repair", str(run_dir)]) == 0
    assert "commit.json rebuilt from checkpoint-0002.pt (epoch 2 of 2, complete)" in capsys.readouterr().out
    assert not (run_dir / runs.LOCK).exists()
    rebuilt = runs.RunDir(run_dir)
    assert rebuilt.state == "complete" and not rebuilt.verify()
    original = runs.RunDir(trained)
    assert rebuilt.file_path("last").read_bytes() == original.file_path("last").read_bytes()
    assert rebuilt.records() == original.records() and rebuilt.final() == original.final()
    assert experiment.run(config(quadrants_npz), run_dir=run_dir).final == original.final()


class Interrupt(Exception):
    pass


def test_a_lost_commit_of_an_interrupted_run_is_rebuilt_and_the_run_resumes(quadrants_npz, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    commit_epoch = runs.RunDir.commit_epoch

    def interrupted(self, **kw):
        commit_epoch(self, **kw)
        if kw["epoch"] == EPOCHS:
            raise Interrupt

    monkeypatch.setattr(runs.RunDir, "commit_epoch", interrupted)
    with pytest.raises(Interrupt):
        experiment.run(config(quadrants_npz, epochs=EPOCHS + 1), run_dir=run_dir)
    monkeypatch.setattr(runs.RunDir, "commit_epoch", commit_epoch)
    (run_dir / runs.COMMIT).unlink()
    with pytest.raises(RunDirError, match="cooplib.engine.runs repair"):
        experiment.run(config(quadrants_npz, epochs=EPOCHS + 1), run_dir=run_dir)
    (run_dir / f"model-{EPOCHS:04d}.safetensors").unlink()  # rebuilt from the checkpoint's weights
    assert runs.main(["repair", str(run_dir)]) == 0
    assert runs.RunDir(run_dir).state == "running" and runs.RunDir(run_dir).epochs_done == EPOCHS
    assert experiment.run(config(quadrants_npz, epochs=EPOCHS + 1), run_dir=run_dir).final["epochs_done"] == EPOCHS + 1


def test_a_lost_commit_with_an_unverifiable_checkpoint_is_refused(quadrants_npz, trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path / "run")
    (run_dir / runs.COMMIT).unlink()
    ckpt = run_dir / f"checkpoint-{EPOCHS:04d}.pt"
    data = bytearray(ckpt.read_bytes())
    import zipfile, io  # noqa: E401 - flip a byte inside the largest tensor's data: only the zip CRC shows it
    info = max(zipfile.ZipFile(io.BytesIO(bytes(data))).infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", bytes(data[info.header_offset + 26: info.header_offset + 30]))
    data[info.header_offset + 30 + name_len + extra_len + 10] ^= 1
    ckpt.write_bytes(bytes(data))
    before = sorted(p.name for p in run_dir.iterdir())
    assert runs.main(["repair", str(run_dir)]) == 2
    assert "CRC" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before and not (run_dir / runs.COMMIT).exists()


# ---------------------------------------------------------------- what the checksum covers, schemas


@pytest.mark.parametrize("edit", ["lr", "epochs", "seed", "truncated", "huge-int", "huge-float", "nan"])
def test_config_edits_are_detected(quadrants_npz, trained, tmp_path, capsys, edit):
    run_dir = copy_run(trained, tmp_path / "run")
    path = run_dir / runs.CONFIG
    text = path.read_text()
    meta = json.loads(text)
    if edit in ("lr", "epochs", "seed"):
        meta["config"][edit] = {"lr": 0.5, "epochs": 7, "seed": 3}[edit]
        path.write_bytes(runs.json_bytes(meta))
        expected = "config.json does not match the checksum recorded in commit.json"
    elif edit == "truncated":
        path.write_text(text[: len(text) // 2])
        expected = "config.json is not valid JSON"
    else:
        value = {"huge-int": "1" + "0" * 30, "huge-float": "1e999", "nan": "NaN"}[edit]
        path.write_text(text.replace('"seed": 0', f'"seed": {value}'))
        expected = "config.json is not valid JSON .*(out of range|not a number)"
    assert runs.main(["verify", str(run_dir)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    with pytest.raises(RunDirError, match=expected):
        runs.load_runs([run_dir])


def test_a_commit_from_before_config_checksums_is_loaded_and_said_unchecked(quadrants_npz, trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path / "run")
    m = manifest(run_dir)
    del m["config_sha256"]
    write_manifest(run_dir, m)
    assert runs.main(["verify", str(run_dir)]) == 0
    assert "config.json unchecked" in capsys.readouterr().out
    assert runs.load_runs([run_dir])["status"].tolist() == ["complete"]
    # the published records (config, metrics, final; no commit, no weights) stay loadable
    published = Path(__file__).resolve().parents[1] / "book" / "published"
    records = sorted(published.glob("*/records"))
    if records:
        assert len(runs.load_runs(records[0])) == len(list(records[0].iterdir()))


def test_a_commit_edited_to_complete_is_refused(quadrants_npz, trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    final = manifest(run_dir)["files"]["final"]
    as_running(run_dir, 5)  # 2 of 5 epochs
    m = manifest(run_dir)
    write_manifest(run_dir, {**m, "state": "complete"})
    with pytest.raises(RunDirError, match=r"commit.json: field 'state' is 'complete' but the commit names no final.json"):
        runs.load_runs([run_dir])
    (run_dir / runs.FINAL).write_bytes(runs.RunDir(trained).file_path("final").read_bytes())
    write_manifest(run_dir, {**m, "state": "complete", "files": {**m["files"], "final": final}})
    with pytest.raises(RunDirError, match=r"commit.json: field 'epoch' is 2 with state 'complete', but config.json trains 5"):
        runs.load_runs([run_dir])
    assert runs.main(["verify", str(run_dir)]) == 1
    with pytest.raises(RunDirError, match="trains 5 epochs"):
        experiment.run(config(quadrants_npz, epochs=5), run_dir=run_dir)


@pytest.mark.parametrize("damage", ["no-files", "no-state", "files-not-object", "bad-sha", "deep", "bad-utf8"])
def test_a_malformed_commit_is_one_error_naming_it(quadrants_npz, trained, tmp_path, capsys, damage):
    run_dir = copy_run(trained, tmp_path / "run")
    m = manifest(run_dir)
    path = run_dir / runs.COMMIT
    if damage == "deep":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif damage == "bad-utf8":
        path.write_bytes(b'{"state": "\xff"}')
    else:
        if damage == "no-files":
            del m["files"]
        elif damage == "no-state":
            del m["state"]
        elif damage == "files-not-object":
            m["files"] = ["checkpoint-0002.pt"]
        else:
            m["files"]["last"]["sha256"] = "zz"
        write_manifest(run_dir, m)
    field = {"no-files": "'files' is missing", "no-state": "'state' is missing", "files-not-object": "'files' must be an object",
             "bad-sha": "'files.last.sha256' must be a sha256", "deep": "not valid JSON", "bad-utf8": "not valid JSON"}[damage]
    with pytest.raises(RunDirError, match=rf"{path}.*{field}"):
        runs.load_runs([run_dir])
    assert runs.main(["verify", str(run_dir)]) == 1
    assert field.split(" ")[0] in capsys.readouterr().out


def test_a_safetensors_header_claiming_2_63_bytes_names_the_file(quadrants_npz, trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    m = manifest(run_dir)
    name = m["files"]["last"]["name"]
    data = struct.pack("<Q", 2 ** 63) + b"{}"
    (run_dir / name).write_bytes(data)
    m["files"]["last"].update(sha256=runs.sha256(data), bytes=len(data))  # a consistent forgery: only the format shows it
    write_manifest(run_dir, m)
    with pytest.raises(RunDirError, match=rf"{run_dir / name} is not a readable safetensors file"):
        runs.RunDir(run_dir).weights()
    with pytest.raises(RunDirError, match=rf"{name} is not a readable safetensors file"):
        experiment.load_learner(run_dir)


def test_verify_reports_every_run_damaged_or_not(trained, tmp_path, capsys):
    root = tmp_path / "root"
    for name in ("a", "b", "c"):
        copy_run(trained, root / name)
    (root / "a" / runs.COMMIT).write_text('{"state": "comp')
    (root / "c" / runs.COMMIT).write_text('{"state": "complete"}')
    assert runs.main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {root / 'a'}" in out and f"intact  {root / 'b'}" in out and f"DAMAGED {root / 'c'}" in out
    assert "1 intact, 2 damaged" in out


# ---------------------------------------------------------------- operations


def test_verify_repair_and_reset_of_a_path_that_is_no_run_refuse(tmp_path, capsys):
    typo = tmp_path / "typo"
    assert runs.main(["verify", str(typo)]) == 2
    assert "is not a run directory nor a folder of runs" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert runs.main(["verify", str(tmp_path / "empty")]) == 2
    assert runs.main(["reset", str(typo)]) == 2 and runs.main(["repair", str(typo)]) == 2
    assert not typo.exists()
    assert runs.main(["reset", str(tmp_path / "empty")]) == 2 and (tmp_path / "empty").exists()


def test_repair_leaves_no_lock_behind(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    lines = (run_dir / runs.METRICS).read_bytes().splitlines(keepends=True)
    (run_dir / runs.METRICS).write_bytes(b"".join(lines[:-1]))
    assert runs.main(["repair", str(run_dir)]) == 0 and not runs.RunDir(run_dir).verify()
    assert not (run_dir / runs.LOCK).exists()
    assert runs.main(["repair", str(run_dir)]) == 0 and not (run_dir / runs.LOCK).exists()


@pytest.fixture
def read_only(monkeypatch):
    """The file system refuses every write (as a read-only mount does, even for root)."""
    real_open = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

    def ro_open(path, flags, *a, **kw):
        if flags & writing:
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *a, **kw)

    def refuse(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "open", ro_open)
    for name in ("unlink", "replace", "rename", "mkdir", "rmdir"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr(runs, "atomic_write_bytes", refuse)


def test_a_complete_run_is_reused_without_the_lock_or_any_write(quadrants_npz, trained, tmp_path, read_only):
    final, records = runs.RunDir(trained).reuse(config(quadrants_npz))
    assert final["epochs_done"] == EPOCHS and len(records) == EPOCHS
    with pytest.raises(RunDirError, match=r"cannot take the lock .*Read-only file system.*complete run is reused"):
        with runs.RunDir(trained).lock():
            pass
    with pytest.raises(RunDirError, match="different config"):
        runs.RunDir(trained).reuse(config(quadrants_npz, lr=0.2))


@needs_fit_call_site
def test_experiment_run_reuses_a_complete_run_on_a_read_only_root(quadrants_npz, trained, read_only):
    assert experiment.run(config(quadrants_npz), run_dir=trained).final["epochs_done"] == EPOCHS


HOLDER = r"""
import sys, time
from cooplib.engine import runs
with runs.RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_waiting_for_a_run_another_process_holds(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"is being trained by pid {holder.pid} on host"):
            with runs.RunDir(run_dir).lock():
                pass
        t0 = time.monotonic()
        with pytest.raises(RunLockedError, match=r"still being trained by .* after waiting 0.5 s"):
            with runs.RunDir(run_dir).lock(wait=True, timeout=0.5):
                pass
        assert 0.4 < time.monotonic() - t0 < 5
        out = capsys.readouterr().out
        assert out.count("waiting for") == 1 and f"waiting for {run_dir} (held by pid {holder.pid} on host " in out
    finally:
        holder.kill()
        holder.wait()
    short = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert short.stdout.readline().strip() == "locked"
        with runs.RunDir(run_dir).lock(wait=True, timeout=60):
            assert (run_dir / runs.LOCK).read_text().startswith(f"pid {os.getpid()} on host ")
        assert capsys.readouterr().out.count("waiting for") == 1
    finally:
        short.kill()
        short.wait()


@needs_fit_call_site
def test_a_second_process_wanting_the_same_run_waits_and_reuses_it(quadrants_npz, tmp_path, capfd):
    cfg = config(quadrants_npz, epochs=1)
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", "import json, sys\nfrom cooplib.engine import experiment\n"
                              "from cooplib.engine.config import RunConfig\nfrom cooplib.engine import runs\n"
                              "rd = runs.RunDir(sys.argv[2])\n"
                              "with rd.lock():\n    print('locked', flush=True)\n    import time; time.sleep(2)\n"
                              "experiment.run(RunConfig.from_dict(json.loads(sys.argv[1])), run_dir=sys.argv[2])\n",
                              json.dumps(cfg.to_dict()), str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        result = experiment.run(cfg, run_dir=run_dir, wait=True, wait_timeout=120)
        assert result.final["epochs_done"] == 1
        assert "waiting for" in capfd.readouterr().out
    finally:
        first.kill()
        first.wait()


def test_a_run_that_lost_its_config_is_reported_and_never_restarted(quadrants_npz, trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    (run_dir / runs.CONFIG).unlink()
    del before[runs.CONFIG]
    assert runs.main(["verify", str(run_dir)]) == 1
    assert f"DAMAGED {run_dir}" in capsys.readouterr().out
    with pytest.raises(RunDirError, match=r"config.json is missing although the run has a commit.*nothing was changed"):
        experiment.run(config(quadrants_npz), run_dir=run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != runs.LOCK} == before
