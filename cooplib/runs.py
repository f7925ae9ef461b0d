"""Run directories: the unit of record, their commit/recover protocol, and pandas views.

Layout of one run directory:

    config.json              the RunConfig, data, versions, device, start time
    commit.json              the commit point: which epoch is recorded, the files that
                             hold it with their sha256, and the run's state
                             (running / complete / diverged)
    metrics.jsonl            one JSON line per committed epoch (every loss term, every
                             head's top-1/top-5 in percent, lr, seconds)
    checkpoint-NNNN.pt       full training state after epoch NNNN (weights, optimizer,
                             loader, RNG, the records); torch.load(weights_only=True)
    model-NNNN.safetensors   weights after epoch NNNN (the last committed epoch)
    best-NNNN.safetensors    weights at the best epoch so far (test top-1 of the
                             learner's primary head, as the reference codes select it)
    final.json               last and best epoch and the cost, once the run is complete
    events/                  TensorBoard events (a view, not part of the record)
    .lock                    held (flock) by the process training the run

Why this shape: every epoch is committed by one atomic rename of `commit.json`, written
after every file it names. A crash (even SIGKILL) at any moment leaves either the old
commit with all of its files, or the new one with all of its files; files of an epoch
that was not committed are removed on resume, and metrics lines past the committed
count are dropped. Checksums recorded at commit are verified on every load, so a
damaged file is an error that names it, never a silently different result.

    python -m cooplib.runs verify RUN_OR_ROOT     check every run's files against commit.json
    python -m cooplib.runs repair RUN_DIR         rebuild metrics.jsonl/final.json from the checkpoint
    python -m cooplib.runs reset RUN_DIR          move a damaged run aside so that it retrains
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from .errors import RunDirError, RunLockedError

CONFIG = "config.json"
COMMIT = "commit.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"
EVENTS = "events"
LOCK = ".lock"
CHECKPOINT_FORMAT = 2
COMMIT_FORMAT = 1
#: prefixes of the per-epoch files a commit names; anything else with them is uncommitted
EPOCH_FILES = ("checkpoint-", "model-", "best-")


# ---------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    """A JSON file; a damaged one is an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); the file is damaged") from exc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metrics_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint(path: Path, data: bytes | None = None) -> dict:
    """A checkpoint loaded without executing code from it; a corrupt file is a clear error."""
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that needs code
        raise RunDirError(
            f"checkpoint {path} is corrupt or not a cooplib checkpoint ({type(exc).__name__}: {exc}). "
            f"Restart the run with `python -m cooplib.runs reset {path.parent}`."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"checkpoint {path} has an unknown format; restart the run with `python -m cooplib.runs reset {path.parent}`")
    return ckpt


# ---------------------------------------------------------------- one run directory


class RunDir:
    """One run directory: reading its committed record, and (under `lock()`) writing it.

    Readers see only what `commit.json` names, verified by checksum. The training loop
    hands each finished epoch to `commit_epoch`; nothing else writes the record.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ reading

    def meta(self) -> dict:
        path = self.path / CONFIG
        if not path.exists():
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG})")
        return read_json(path)

    def config(self):
        """The RunConfig recorded in config.json (an unknown key names the file)."""
        from .config import RunConfig
        from .errors import ConfigError

        try:
            return RunConfig.from_dict(self.meta()["config"])
        except (ConfigError, TypeError) as exc:
            raise RunDirError(f"{self.path / CONFIG}: {exc} (written by another cooplib version?)") from exc

    def manifest(self) -> dict | None:
        path = self.path / COMMIT
        return read_json(path) if path.exists() else None

    @property
    def state(self) -> str:
        """new (nothing yet), running (started or interrupted), complete or diverged."""
        manifest = self.manifest()
        if manifest is not None:
            return manifest["state"]
        return "running" if (self.path / CONFIG).exists() else "new"

    @property
    def epochs_done(self) -> int:
        manifest = self.manifest()
        return manifest["epoch"] if manifest else 0

    def _file(self, manifest: dict, role: str) -> tuple[Path, bytes]:
        """The bytes of a committed file, checked against the checksum of its commit."""
        entry = manifest["files"].get(role)
        if entry is None:
            raise RunDirError(f"{self.path} has no committed {role} file (state {manifest['state']}, epoch {manifest['epoch']})")
        path = self.path / entry["name"]
        if not path.exists():
            raise RunDirError(f"{path} is missing although {COMMIT} names it; {self._advice(role)}")
        data = path.read_bytes()
        if sha256(data) != entry["sha256"]:
            raise RunDirError(f"{path} does not match the checksum recorded when it was committed: the file is damaged; {self._advice(role)}")
        return path, data

    def _advice(self, role: str) -> str:
        if role in ("metrics", "final"):
            return f"rebuild it from the checkpoint with `python -m cooplib.runs repair {self.path}`"
        return f"retrain the run after `python -m cooplib.runs reset {self.path}` (moves it aside)"

    def records(self) -> list[dict]:
        """The committed epoch records, verified (lines past the commit are uncommitted)."""
        manifest = self.manifest()
        if manifest is None:
            return []
        n, path = manifest["epoch"], self.path / METRICS
        lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
        if len(lines) < n or sha256(b"".join(lines[:n])) != manifest["metrics_sha256"]:
            found = f"{len(lines)} line(s)" if len(lines) < n else "lines that differ from the committed ones"
            raise RunDirError(f"{path} is damaged: {n} epoch(s) were committed, the file has {found}; {self._advice('metrics')}")
        return [json.loads(line) for line in lines[:n]]

    def final(self) -> dict | None:
        manifest = self.manifest()
        if manifest is None or "final" not in manifest["files"]:
            return None
        path, data = self._file(manifest, "final")
        return json.loads(data)

    def file_path(self, role: str) -> Path:
        """Path of a committed file: 'checkpoint', 'last' or 'best' weights, 'final'."""
        manifest = self.manifest()
        if manifest is None:
            raise RunDirError(f"{self.path} has not committed an epoch yet")
        return self._file(manifest, role)[0]

    def weights(self, which: str = "last") -> dict:
        """The `last` or `best` weights (safetensors, checksum verified)."""
        from safetensors.torch import load

        if which not in ("last", "best"):
            raise ValueError(f"weights must be 'last' or 'best', got {which!r}")
        manifest = self.manifest()
        if manifest is None:
            raise RunDirError(f"{self.path} has no weights: the run has not finished an epoch yet")
        return load(self._file(manifest, which)[1])

    def checkpoint(self) -> dict | None:
        """The committed training state (checksum verified), or None before epoch 1."""
        manifest = self.manifest()
        if manifest is None or "checkpoint" not in manifest["files"]:
            return None
        path, data = self._file(manifest, "checkpoint")
        return load_checkpoint(path, data)

    def verify(self) -> list[str]:
        """Every problem of the committed record (empty when it is intact)."""
        problems = []
        manifest = self.manifest()
        if manifest is None:
            return problems
        for role in manifest["files"]:
            try:
                self._file(manifest, role)
            except RunDirError as exc:
                problems.append(str(exc))
        try:
            self.records()
        except RunDirError as exc:
            problems.append(str(exc))
        return problems

    # ------------------------------------------------------------ writing

    @contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold the run's OS file lock (released when the process dies, whatever the cause)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise RunLockedError(
                    f"{self.path} is being trained by {holder}; wait for it to finish (a complete run is "
                    f"then reused) or use another run directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
            yield self
        finally:
            os.close(fd)

    def admit(self, config, resume: bool = True) -> None:
        """Check that `config` may train here: an existing run must hold the same config
        (cosmetic fields aside), be resumable, and not have diverged."""
        from .config import differences
        from .errors import DivergedError

        if not (self.path / CONFIG).exists():
            return
        diffs = differences(self.config().semantic(), config.semantic())
        if diffs:
            raise RunDirError(
                f"{self.path} holds a run with a different config ({'; '.join(diffs)}). Nothing was changed there. "
                f"Use another run directory (experiment.run names one per config) or restore those parameters."
            )
        if self.state == "diverged":
            raise DivergedError(f"{self.path} diverged before ({self.manifest().get('message', '')}); "
                                f"rerunning the same config diverges again")
        if not resume:
            raise RunDirError(f"{self.path} already holds a run; pass resume=True to continue it, or use another directory")

    def create(self, meta: dict) -> None:
        write_json(self.path / CONFIG, meta)

    def recover(self) -> dict | None:
        """Back to the last commit: remove temporary and uncommitted files, drop metrics
        lines past the commit, verify what remains; return the checkpoint (None if none).
        Call with the lock held."""
        if self.manifest() is None and any((self.path / old).exists() for old in ("status.json", "checkpoint.pt")):
            raise RunDirError(f"{self.path} was written by an older cooplib (no {COMMIT}); nothing was changed. "
                              f"Move it aside with `python -m cooplib.runs reset {self.path}` to retrain it")
        manifest = self.manifest() or {"files": {}, "epoch": 0}
        named = {e["name"] for e in manifest["files"].values()}
        for p in self.path.iterdir():
            if p.is_file() and ((p.name.startswith(".") and p.name.endswith(".tmp"))
                                or (p.name.startswith(EPOCH_FILES) and p.name not in named)
                                or (p.name == FINAL and p.name not in named)):
                p.unlink()
        records = self.records()  # verified prefix
        if (self.path / METRICS).exists() and (self.path / METRICS).read_bytes() != metrics_bytes(records):
            atomic_write_bytes(self.path / METRICS, metrics_bytes(records))
        ckpt = self.checkpoint()
        if ckpt is not None and (ckpt["epoch"] != len(records) or _strip_time(ckpt["records"]) != _strip_time(records)):
            raise RunDirError(f"{self.path}: the checkpoint holds epoch {ckpt['epoch']} but metrics.jsonl disagrees with it; "
                              f"{self._advice('metrics')}")
        return ckpt

    def commit_epoch(self, *, epoch: int, records: list[dict], checkpoint: bytes, weights: bytes, best_epoch: int,
                     final: dict | None = None) -> None:
        """Record epoch `epoch`: write its files, then commit them with one rename.

        `checkpoint` and `weights` are serialised bytes; `final` (the run's summary)
        makes this the last commit, state `complete`. Call with the lock held.
        """
        if len(records) != epoch:
            raise RunDirError(f"internal: committing epoch {epoch} with {len(records)} records")
        previous = self.manifest() or {"files": {}}
        files = {}
        for role, name, data in (("checkpoint", f"checkpoint-{epoch:04d}.pt", checkpoint),
                                 ("last", f"model-{epoch:04d}.safetensors", weights)):
            atomic_write_bytes(self.path / name, data)
            files[role] = {"name": name, "sha256": sha256(data), "bytes": len(data)}
        if best_epoch == epoch:
            name = f"best-{epoch:04d}.safetensors"
            atomic_write_bytes(self.path / name, weights)
            files["best"] = {**files["last"], "name": name}
        else:
            files["best"] = previous["files"]["best"]
        metrics = metrics_bytes(records)
        atomic_write_bytes(self.path / METRICS, metrics)
        if final is not None:
            data = json_bytes(final)
            atomic_write_bytes(self.path / FINAL, data)
            files["final"] = {"name": FINAL, "sha256": sha256(data), "bytes": len(data)}
        self._commit({"format": COMMIT_FORMAT, "state": "complete" if final is not None else "running", "epoch": epoch,
                      "best_epoch": best_epoch, "metrics_sha256": sha256(metrics), "files": files,
                      "committed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for role, entry in previous["files"].items():  # superseded files, now unreferenced
            if entry["name"] not in {e["name"] for e in files.values()}:
                (self.path / entry["name"]).unlink(missing_ok=True)

    def mark_diverged(self, message: str) -> None:
        """Record divergence; the last committed epoch and its files stay as they are."""
        previous = self.manifest() or {"epoch": 0, "best_epoch": 0, "metrics_sha256": sha256(b""), "files": {}}
        self._commit({**previous, "format": COMMIT_FORMAT, "state": "diverged", "message": message})

    def _commit(self, manifest: dict) -> None:
        write_json(self.path / COMMIT, manifest)


def _strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


def status(run_dir: Path) -> str:
    return RunDir(run_dir).state


def read_metrics(run_dir: Path) -> list[dict]:
    """The committed epoch records of a run (an empty list before the first epoch ends)."""
    return RunDir(run_dir).records()


# ---------------------------------------------------------------- repair


def repair(run_dir: str | Path) -> list[str]:
    """Rebuild metrics.jsonl and final.json from the (verified) checkpoint; return what changed."""
    rd = RunDir(run_dir)
    with rd.lock():
        manifest = rd.manifest()
        if manifest is None:
            raise RunDirError(f"{rd.path} has no commit: nothing to repair (it restarts from scratch when run)")
        ckpt = rd.checkpoint()  # raises if the checkpoint itself is damaged
        done = []
        if rd.verify():
            records = ckpt["records"]
            metrics = metrics_bytes(records)
            atomic_write_bytes(rd.path / METRICS, metrics)
            manifest["metrics_sha256"] = sha256(metrics)
            done.append(f"metrics.jsonl rebuilt from {manifest['files']['checkpoint']['name']} ({len(records)} epochs)")
            if "final" in manifest["files"] and ckpt.get("final") is not None:
                data = json_bytes(ckpt["final"])
                atomic_write_bytes(rd.path / FINAL, data)
                manifest["files"]["final"] = {"name": FINAL, "sha256": sha256(data), "bytes": len(data)}
                done.append("final.json rebuilt from the checkpoint")
            rd._commit(manifest)
        left = rd.verify()
        if left:
            raise RunDirError("still damaged after repair: " + "; ".join(left))
        return done


def reset(run_dir: str | Path) -> Path:
    """Move a run directory aside (`<name>.damaged-<time>`) so that the same config retrains."""
    rd = RunDir(run_dir)
    with rd.lock():
        target = rd.path.with_name(f"{rd.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        rd.path.rename(target)
    return target


# ---------------------------------------------------------------- many runs -> pandas


def find_runs(root) -> list[Path]:
    """Run directories under `root` (searched recursively), or the given list of them."""
    if isinstance(root, (str, Path)):
        root = Path(root)
        if (root / CONFIG).exists():
            return [root]
        return sorted(p.parent for p in root.rglob(CONFIG) if ".damaged-" not in str(p))
    return [Path(p) for p in root]


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}{k}": (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in d.items()}


def _entries(root) -> list[tuple[str | None, Path]]:
    """(label, run_dir) pairs: labels from a {label: run_dir} mapping (one run may carry
    several labels, e.g. the full ONE also being the 3-branch point of a sweep), else None.
    A key may be a tuple such as (label, seed), to repeat a label across seeds: its first
    element is the label (the seed is read from the run's config)."""
    if isinstance(root, Mapping):
        return [(str(label[0] if isinstance(label, tuple) else label), Path(p)) for label, p in root.items()]
    return [(None, p) for p in find_runs(root)]


def load_runs(root) -> pd.DataFrame:
    """One row per run: its config (plain columns), status, cost, last/best metrics.

    `root`: a folder searched recursively, a list of run directories, or a mapping
    {label: run_dir} or {(label, seed): run_dir} (the label becomes a `label` column). Metric columns are prefixed
    `last/` and `best/`, e.g. `last/test/net/top1`; `deployed` names the head of the
    network deployed at test time. A damaged record is an error naming its file.
    """
    rows = []
    for label, run_dir in _entries(root):
        rd = RunDir(run_dir)
        meta = rd.meta()
        row = {"run_dir": str(run_dir), "run": run_dir.name, "status": rd.state}
        if label is not None:
            row["label"] = label
        row.update(_flat("", meta["config"]))
        row.update({f"method_args.{k}": v for k, v in meta["config"].get("method_args", {}).items()})
        row["device_name"] = meta.get("device_name")
        row.update({f"data.{k}": v for k, v in (meta.get("data") or {}).items() if k in ("n_train", "n_test", "num_classes")})
        final = rd.final()
        if final is not None:
            row.update({k: final.get(k) for k in ("params", "train_flops", "test_params", "test_flops", "seconds", "epochs_done")})
            row["deployed"] = final.get("primary_head")
            row["best_epoch"] = final["best"]["epoch"]
            row.update(_flat("last/", final["last"]))
            row.update(_flat("best/", final["best"]))
        else:
            records = rd.records()
            row["epochs_done"] = len(records)
            if records:
                row.update(_flat("last/", records[-1]))
        rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(root) -> pd.DataFrame:
    """One row per (run, epoch) with the run's method/model/dataset/seed (and label) alongside."""
    frames = []
    for label, run_dir in _entries(root):
        rd = RunDir(run_dir)
        records = rd.records()
        if not records:
            continue
        cfg = rd.meta()["config"]
        df = pd.DataFrame(records)
        df.insert(0, "run", run_dir.name)
        for key in ("method", "model", "dataset", "seed"):
            df.insert(1, key, cfg[key])
        if label is not None:
            df.insert(1, "label", label)
        for key, value in cfg.get("method_args", {}).items():
            df[f"method_args.{key}"] = value if not isinstance(value, (list, dict)) else str(value)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def long_metrics(metrics: pd.DataFrame, split: str = "test", stat: str = "top1") -> pd.DataFrame:
    """Melt `split/<head>/stat` columns into rows with a `head` column (for plotting)."""
    prefix, suffix = f"{split}/", f"/{stat}"
    cols = [c for c in metrics.columns if c.startswith(prefix) and c.endswith(suffix)]
    # every column that describes the run or the epoch (a notebook may add its own, e.g. "training")
    id_cols = [c for c in metrics.columns if "/" not in c and c not in ("lr", "seconds", "train_seconds")]
    out = metrics.melt(id_vars=id_cols, value_vars=cols, var_name="head", value_name=stat)
    out["head"] = out["head"].str[len(prefix) : -len(suffix)]
    return out


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cooplib.runs", description="Check, repair or reset run directories.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("verify", help="check every run under a folder against its commit.json").add_argument("root")
    sub.add_parser("repair", help="rebuild metrics.jsonl / final.json of a run from its checkpoint").add_argument("run_dir")
    sub.add_parser("reset", help="move a run aside so that the same config retrains from scratch").add_argument("run_dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "verify":
            bad = 0
            for run_dir in find_runs(args.root):
                problems = RunDir(run_dir).verify()
                bad += bool(problems)
                for p in problems:
                    print(f"DAMAGED {p}")
            print(f"{len(find_runs(args.root)) - bad} intact, {bad} damaged")
            return 1 if bad else 0
        if args.cmd == "repair":
            for line in repair(args.run_dir) or ["nothing to repair: the record is intact"]:
                print(line)
        else:
            print(f"moved to {reset(args.run_dir)}; running the same config retrains it")
    except RunDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
