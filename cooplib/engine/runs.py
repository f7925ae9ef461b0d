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

What is trusted: nothing a record says is followed blindly. `commit.json` and
`config.json` are checked against a schema (required keys and their types, numbers
finite and within 64 bits, a `complete` state only with a `final` entry at the config's
last epoch); every file a commit names is a plain file name of its role
(`checkpoint-NNNN.pt`, ...), read without following symbolic links, so nothing outside
the run directory is ever read, written or deleted; the lock file is opened with
O_NOFOLLOW. The config's sha256 is part of every commit written since it was recorded
(the first, epoch-0 commit is written with config.json); an older commit without it is
accepted, and `verify` says that its config is unchecked. A `commit.json` that is lost
while the run holds committed files is never taken for a fresh start: every operation
refuses, naming `repair`, which rebuilds the commit from the newest checkpoint that
verifies (its zip CRCs, its own records and weights). Reading or reusing a complete run
takes no lock and writes nothing (`RunDir.reuse`); a run another process holds can be
waited for (`RunDir.lock(wait=True)`).

    python -m cooplib.engine.runs verify RUN_OR_ROOT     check every run's files against commit.json (one line per run)
    python -m cooplib.engine.runs repair RUN_DIR         rebuild metrics.jsonl/final.json (or a lost commit.json) from the checkpoint
    python -m cooplib.engine.runs reset RUN_DIR          move a damaged run aside so that it retrains
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import math
import os
import re
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from ..base.errors import RunDirError, RunLockedError

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
#: the file name each role of a commit may have (the number is the epoch it holds)
ROLE_NAMES = {
    "checkpoint": re.compile(r"checkpoint-(\d{4,9})\.pt"),
    "last": re.compile(r"model-(\d{4,9})\.safetensors"),
    "best": re.compile(r"best-(\d{4,9})\.safetensors"),
    "final": re.compile(re.escape(FINAL)),
}
STATES = ("running", "complete", "diverged")
#: the most a JSON record (config.json, commit.json) may hold
MAX_JSON_BYTES = 16 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2 ** 63


# ---------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part.
    (The rename replaces whatever has the name, a symbolic link included, never its target.)"""
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


def read_plain(path: Path, *, max_bytes: int | None = None, size: int | None = None) -> bytes | None:
    """The bytes of the plain file `path` (None when there is none). A symbolic link is
    refused, never followed, and so are folders, devices and pipes: a record can make
    nothing outside its run directory be read. `max_bytes` bounds the size; `size` is the
    size recorded at commit (another size is damage, found before reading)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link; the files of a run directory must be plain files in it "
                              f"(links are not followed)") from None
        raise RunDirError(f"{path} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a plain file"
            raise RunDirError(f"{path} is {kind}; the records of a run directory are plain files")
        if size is not None and st.st_size != size:
            raise RunDirError(f"{path} does not match the checksum recorded when it was committed "
                              f"({st.st_size} bytes, {size} committed)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise RunDirError(f"{path} is too large for a record ({st.st_size} bytes, at most {max_bytes}); the file is damaged")
        chunks, left = [], st.st_size if size is not None else None
        while True:
            chunk = os.read(fd, 1 << 20 if left is None else max(1, min(left, 1 << 20)))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
                if left <= 0:
                    break
        return b"".join(chunks)
    finally:
        os.close(fd)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _int64(text: str) -> int:
    if len(text.lstrip("-")) > 19 or not -_INT64 <= int(text) < _INT64:
        raise ValueError(f"integer {text[:30]}{'...' if len(text) > 30 else ''} is out of range")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a record may hold")


def parse_json(data: bytes, path: Path, *, strict: bool = False) -> Any:
    """JSON `data` of the file `path`; whatever is wrong with it (syntax, nesting too deep,
    an out-of-range number, bad encoding) is a `RunDirError` naming the file. `strict`:
    no NaN/Infinity, floats finite, integers within 64 bits (config.json, commit.json)."""
    hooks = dict(parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int64) if strict else {}
    try:
        return json.loads(data.decode("utf-8"), **hooks)
    except RecursionError:
        raise RunDirError(f"{path} is not valid JSON (nested too deeply); the file is damaged") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{path} is not valid JSON ({str(exc)[:200]}); the file is damaged") from None


def read_json(path: Path) -> Any:
    """A JSON file (a plain file, links not followed); a damaged one is an error that names it."""
    path = Path(path)
    data = read_plain(path, max_bytes=MAX_JSON_BYTES)
    if data is None:
        raise RunDirError(f"{path} does not exist")
    return parse_json(data, path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metrics_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def weights_bytes(state: Mapping[str, Any]) -> bytes:
    """A state dict as safetensors bytes (the same bytes `train` commits as model-NNNN)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def load_weights(path: Path, data: bytes) -> dict:
    """safetensors bytes of the file `path` as tensors; a malformed file is an error naming it."""
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # SafetensorError (header too large, truncated, ...) and kin
        raise RunDirError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"retrain the run after `python -m cooplib.engine.runs reset {path.parent}`") from None


def load_checkpoint(path: Path, data: bytes | None = None) -> dict:
    """A checkpoint loaded without executing code from it; a corrupt file is a clear error."""
    import torch

    path = Path(path)
    if data is None:
        data = read_plain(path)
        if data is None:
            raise RunDirError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or a pickle that needs code
        raise RunDirError(
            f"checkpoint {path} is corrupt or not a cooplib checkpoint ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Restart the run with `python -m cooplib.engine.runs reset {path.parent}`."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"checkpoint {path} has an unknown format; restart the run with `python -m cooplib.engine.runs reset {path.parent}`")
    return ckpt


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(manifest: Any, path: Path) -> dict:
    """`manifest` (commit.json at `path`) against its schema: one error naming the file and the field."""
    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise RunDirError(f"{path}: {field} {what}; the commit is damaged or was edited "
                              f"(rebuild it with `python -m cooplib.engine.runs repair {path.parent}`)")

    need(isinstance(manifest, dict), "the file", "must hold a JSON object")
    for key, kind in (("format", int), ("state", str), ("epoch", int), ("best_epoch", int), ("metrics_sha256", str),
                      ("files", dict)):
        need(key in manifest, f"field {key!r}", "is missing")
        ok = _is_int(manifest[key]) if kind is int else isinstance(manifest[key], kind)
        need(ok, f"field {key!r}", f"must be {'an integer' if kind is int else 'a string' if kind is str else 'an object'}, "
                                   f"got {type(manifest[key]).__name__}")
    need(manifest["format"] == COMMIT_FORMAT, "field 'format'", f"is {manifest['format']}, this cooplib reads {COMMIT_FORMAT}")
    state, epoch, best, files = manifest["state"], manifest["epoch"], manifest["best_epoch"], manifest["files"]
    need(state in STATES, "field 'state'", f"must be one of {STATES}, got {state[:40]!r}")
    need(epoch >= 0, "field 'epoch'", f"must be >= 0, got {epoch}")
    need((epoch == 0 and best == 0) or 1 <= best <= epoch, "field 'best_epoch'", f"must be in 1..epoch ({epoch}), got {best}")
    need(bool(_HEX64.fullmatch(manifest["metrics_sha256"])), "field 'metrics_sha256'", "must be a sha256 (64 hex digits)")
    if "config_sha256" in manifest:
        need(isinstance(manifest["config_sha256"], str) and bool(_HEX64.fullmatch(manifest["config_sha256"])),
             "field 'config_sha256'", "must be a sha256 (64 hex digits)")
    for key in ("message", "committed"):
        need(not (key in manifest and not isinstance(manifest[key], str)), f"field {key!r}", "must be a string")
    for role, entry in files.items():
        where = f"field 'files.{role[:40]}'"
        need(role in ROLE_NAMES, where, f"is not a file role ({', '.join(ROLE_NAMES)})")
        need(isinstance(entry, dict), where, "must be an object")
        for key, kind in (("name", str), ("sha256", str), ("bytes", int)):
            ok = key in entry and (_is_int(entry[key]) if kind is int else isinstance(entry[key], kind))
            need(ok, f"{where[:-1]}.{key}'", f"is missing or not {'an integer' if kind is int else 'a string'}")
        name = entry["name"]
        plain = name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name
        need(plain, f"{where[:-1]}.name'", f"must be a plain file name in the run directory, got {name[:80]!r}")
        match = ROLE_NAMES[role].fullmatch(name)
        need(match is not None, f"{where[:-1]}.name'", f"must be named like {ROLE_NAMES[role].pattern!r}, got {name[:80]!r}")
        if role != "final":
            number = int(match.group(1))
            need(number == (best if role == "best" else epoch), f"{where[:-1]}.name'",
                 f"names epoch {number}, the commit says {best if role == 'best' else epoch}")
        need(bool(_HEX64.fullmatch(entry["sha256"])), f"{where[:-1]}.sha256'", "must be a sha256 (64 hex digits)")
        need(entry["bytes"] >= 0, f"{where[:-1]}.bytes'", "must be >= 0")
    need(epoch == 0 or {"checkpoint", "last", "best"} <= set(files), "field 'files'",
         f"must name the checkpoint, last and best weights of epoch {epoch}")
    need(epoch > 0 or not files, "field 'files'", "must be empty at epoch 0")
    need((state == "complete") == ("final" in files), "field 'state'",
         f"is {state!r} but the commit {'names no' if state == 'complete' else 'names a'} final.json")
    return manifest


def check_meta(meta: Any, path: Path) -> dict:
    """config.json (at `path`) against its schema: one error naming the file and the field."""
    from .config import RunConfig
    from ..base.errors import ConfigError

    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise RunDirError(f"{path}: {field} {what}")

    need(isinstance(meta, dict), "the file", "must hold a JSON object")
    need("config" in meta, "field 'config'", "is missing")
    need(isinstance(meta["config"], dict), "field 'config'", "must be an object")
    try:
        RunConfig.from_dict(meta["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path}: {exc} (written by another cooplib version, or edited?)") from None
    for key, kind in (("data", dict), ("versions", dict), ("resolved", dict), ("provenance", dict), ("created", str)):
        need(key not in meta or isinstance(meta[key], kind), f"field {key!r}", f"must be {'an object' if kind is dict else 'a string'}")
    need(meta.get("device_name") is None or isinstance(meta["device_name"], str), "field 'device_name'", "must be a string")
    for key in ("num_classes", "in_channels", "n_train", "n_test"):
        value = (meta.get("data") or {}).get(key)
        need(value is None or (_is_int(value) and value >= (1 if key in ("num_classes", "in_channels") else 0)),
             f"field 'data.{key}'", f"must be a positive integer, got {value!r}")
    return meta


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

    def _read(self, name: str, **kw) -> bytes | None:
        return read_plain(self.path / name, **kw)

    def epoch_files(self) -> list[str]:
        """Names of the plain checkpoint/model/best files in the run directory, sorted."""
        try:
            entries = list(os.scandir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise RunDirError(f"{self.path} cannot be listed ({exc.strerror})") from None
        return sorted(e.name for e in entries if e.is_file(follow_symlinks=False)
                      and any(ROLE_NAMES[r].fullmatch(e.name) for r in ("checkpoint", "last", "best")))

    def _raw_manifest(self) -> dict | None:
        """commit.json, checked against its schema (None: nothing committed). A commit
        that is lost while committed files are there is an error, never a fresh start."""
        path = self.path / COMMIT
        data = self._read(COMMIT, max_bytes=MAX_JSON_BYTES)
        if data is None:
            found = self.epoch_files()
            if found:
                raise RunDirError(
                    f"{path} is missing although the run holds committed files ({', '.join(found[:4])}"
                    f"{', ...' if len(found) > 4 else ''}); nothing was changed or deleted. Rebuild the commit from the "
                    f"newest checkpoint with `python -m cooplib.engine.runs repair {self.path}` (or move the run aside with "
                    f"`python -m cooplib.engine.runs reset {self.path}`)")
            return None
        return check_manifest(parse_json(data, path, strict=True), path)

    def meta(self, manifest: dict | None | bool = True) -> dict:
        """config.json, checked against its schema and (when the commit recorded it) its sha256.
        `manifest`: the commit to check it against (True: read it; None/False: none)."""
        path = self.path / CONFIG
        data = self._read(CONFIG, max_bytes=MAX_JSON_BYTES)
        if data is None:
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG})")
        meta = check_meta(parse_json(data, path, strict=True), path)
        if manifest is True:
            manifest = self._raw_manifest()
        if manifest and "config_sha256" in manifest and sha256(data) != manifest["config_sha256"]:
            raise RunDirError(f"{path} does not match the checksum recorded in {COMMIT}: it was edited or damaged after "
                              f"the run started. Restore it, or retrain after `python -m cooplib.engine.runs reset {self.path}`")
        return meta

    def config(self):
        """The RunConfig recorded in config.json (an unknown key names the file)."""
        from .config import RunConfig

        return RunConfig.from_dict(self.meta()["config"])

    def manifest(self) -> dict | None:
        """The commit (None before any), checked: its schema, the config's checksum, and
        its epoch against the config's (a complete run is at its last epoch)."""
        manifest = self._raw_manifest()
        if manifest is None:
            return None
        epochs = self.meta(manifest)["config"]["epochs"]
        if manifest["epoch"] > epochs or (manifest["state"] == "complete" and manifest["epoch"] != epochs):
            raise RunDirError(f"{self.path / COMMIT}: field 'epoch' is {manifest['epoch']} with state {manifest['state']!r}, "
                              f"but {CONFIG} trains {epochs} epochs; the commit is damaged or was edited")
        return manifest

    @property
    def state(self) -> str:
        """new (nothing yet), running (started or interrupted), complete or diverged."""
        manifest = self.manifest()
        if manifest is not None:
            return manifest["state"]
        return "running" if os.path.lexists(self.path / CONFIG) else "new"

    @property
    def epochs_done(self) -> int:
        manifest = self.manifest()
        return manifest["epoch"] if manifest else 0

    def _file(self, manifest: dict, role: str) -> tuple[Path, bytes]:
        """The bytes of a committed file, checked against the checksum of its commit."""
        entry = manifest["files"].get(role)
        if entry is None:
            raise RunDirError(f"{self.path} has no committed {role} file (state {manifest['state']}, epoch {manifest['epoch']})")
        path = self.path / entry["name"]  # a plain name of its role (check_manifest)
        try:
            data = self._read(entry["name"], size=entry["bytes"])
        except RunDirError as exc:
            raise RunDirError(f"{exc}: the file is damaged; {self._advice(role)}") from None
        if data is None:
            raise RunDirError(f"{path} is missing although {COMMIT} names it; {self._advice(role)}")
        if sha256(data) != entry["sha256"]:
            raise RunDirError(f"{path} does not match the checksum recorded when it was committed: the file is damaged; {self._advice(role)}")
        return path, data

    def _advice(self, role: str) -> str:
        if role in ("metrics", "final"):
            return f"rebuild it from the checkpoint with `python -m cooplib.engine.runs repair {self.path}`"
        return f"retrain the run after `python -m cooplib.engine.runs reset {self.path}` (moves it aside)"

    def _metrics_lines(self) -> list[bytes]:
        data = self._read(METRICS)
        return data.splitlines(keepends=True) if data is not None else []

    def records(self) -> list[dict]:
        """The committed epoch records, verified (lines past the commit are uncommitted)."""
        manifest = self.manifest()
        if manifest is None:
            return []
        n, path = manifest["epoch"], self.path / METRICS
        lines = self._metrics_lines()
        if len(lines) < n or sha256(b"".join(lines[:n])) != manifest["metrics_sha256"]:
            found = f"{len(lines)} line(s)" if len(lines) < n else "lines that differ from the committed ones"
            raise RunDirError(f"{path} is damaged: {n} epoch(s) were committed, the file has {found}; {self._advice('metrics')}")
        records = [parse_json(line, path) for line in lines[:n]]
        if not all(isinstance(r, dict) for r in records):
            raise RunDirError(f"{path}: every line must be a JSON object; {self._advice('metrics')}")
        return records

    def final(self) -> dict | None:
        manifest = self.manifest()
        if manifest is None or "final" not in manifest["files"]:
            return None
        path, data = self._file(manifest, "final")
        final = parse_json(data, path)
        if not isinstance(final, dict) or not all(isinstance(final.get(k), dict) for k in ("last", "best")):
            raise RunDirError(f"{path}: fields 'last' and 'best' must be objects; {self._advice('final')}")
        return final

    def file_path(self, role: str) -> Path:
        """Path of a committed file: 'checkpoint', 'last' or 'best' weights, 'final'."""
        manifest = self.manifest()
        if manifest is None:
            raise RunDirError(f"{self.path} has not committed an epoch yet")
        return self._file(manifest, role)[0]

    def weights(self, which: str = "last") -> dict:
        """The `last` or `best` weights (safetensors, checksum verified)."""
        if which not in ("last", "best"):
            raise ValueError(f"weights must be 'last' or 'best', got {which!r}")
        manifest = self.manifest()
        if manifest is None:
            raise RunDirError(f"{self.path} has no weights: the run has not finished an epoch yet")
        return load_weights(*self._file(manifest, which))

    def checkpoint(self) -> dict | None:
        """The committed training state (checksum verified), or None before epoch 1."""
        manifest = self.manifest()
        if manifest is None or "checkpoint" not in manifest["files"]:
            return None
        path, data = self._file(manifest, "checkpoint")
        return load_checkpoint(path, data)

    def check(self) -> tuple[list[str], list[str]]:
        """(problems, notes) of the record: problems make it damaged (empty: intact);
        notes say what could not be checked. Never raises for what the files hold."""
        problems: list[str] = []
        notes: list[str] = []
        try:
            manifest = self.manifest()
            self.meta(manifest or None)
        except (RunDirError, OSError) as exc:
            return [str(exc)], notes
        if manifest is None:
            has = [n for n in (METRICS, FINAL) if os.path.lexists(self.path / n)]
            notes.append(f"no {COMMIT}: {'a record without weights (' + ', '.join(has) + ' unchecked)' if has else 'nothing committed yet'}")
            return problems, notes
        if "config_sha256" not in manifest:
            notes.append(f"{CONFIG} unchecked: committed before config checksums were recorded")
        for role in manifest["files"]:
            try:
                self._file(manifest, role)
            except (RunDirError, OSError) as exc:
                problems.append(str(exc))
        try:
            self.records()
        except (RunDirError, OSError) as exc:
            problems.append(str(exc))
        if not problems and "final" in manifest["files"]:
            try:
                self.final()
            except RunDirError as exc:
                problems.append(str(exc))
        return problems, notes

    def verify(self) -> list[str]:
        """Every problem of the committed record (empty when it is intact)."""
        return self.check()[0]

    def reuse(self, config, resume: bool = True) -> tuple[dict, list[dict]] | None:
        """(final, records) of a complete run of `config` here, read and verified without
        the lock and without writing anything (a read-only run root is fine); None when
        the run is not complete. A different config, or `resume=False`, is `admit`'s error;
        a damaged record is an error naming the file."""
        if not os.path.lexists(self.path / CONFIG):  # new, or damaged: the locked path says which
            return None
        manifest = self.manifest()
        if manifest is None or manifest["state"] != "complete":
            return None
        self.admit(config, resume)
        problems = self.verify()
        if problems:
            raise RunDirError("; ".join(problems))
        self._tidy(manifest)
        return self.final(), self.records()

    def _leftovers(self, manifest: dict) -> list[str]:
        """Plain files recovery removes: temporaries, and epoch files or final.json the commit does not name."""
        named = {e["name"] for e in manifest["files"].values()}
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return []
        return [e.name for e in entries if e.is_file(follow_symlinks=False) and (
            (e.name.startswith(".") and e.name.endswith(".tmp"))
            or (e.name.startswith(EPOCH_FILES) and e.name not in named) or (e.name == FINAL and e.name not in named))]

    def _tidy(self, manifest: dict) -> None:
        """Remove what a run killed after its last commit left (superseded files) when the
        lock can be had at once; a read-only or busy run directory is left as it is."""
        if not self._leftovers(manifest):
            return
        try:
            with self.lock(create=False):
                now = self.manifest()
                if now == manifest:
                    for name in self._leftovers(now):
                        os.unlink(self.path / name)
        except (RunDirError, OSError):
            pass

    # ------------------------------------------------------------ writing

    def _open_lock(self) -> int:
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunDirError(f"the lock file {path} is a symbolic link; it must be a plain file in the run directory "
                                  f"(the link was not followed): remove it") from None
            if exc.errno == errno.EISDIR:
                raise RunDirError(f"the lock file {path} is a folder; it must be a plain file: remove it") from None
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise RunDirError(f"cannot take the lock {path} ({exc.strerror}): training, repair and reset write the "
                                  f"run directory (a complete run is reused and read without the lock)") from None
            raise RunDirError(f"cannot open the lock file {path} ({exc.strerror})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a plain file" if not stat.S_ISREG(st.st_mode) else "a hard link to another file"
            raise RunDirError(f"the lock file {path} is {what}; it must be a plain file of its own: remove it")
        return fd

    @contextmanager
    def lock(self, *, wait: bool = False, timeout: float | None = None, create: bool = True, remove: bool = False,
             poll: float = 0.2) -> Iterator["RunDir"]:
        """Hold the run's OS file lock (released when the process dies, whatever the cause).

        `wait`: while another process holds it, print one line ("waiting for <run> (held
        by pid N on host H)") and wait, at most `timeout` seconds (None: as long as it
        takes), instead of raising `RunLockedError`. `create`: make the run directory if
        there is none (else that is an error). `remove`: delete the lock file on release
        (a holder that finds its file gone takes the lock again, on the new file).
        """
        import fcntl

        if create and not self.path.is_dir():
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a run directory (no such folder); nothing was created")
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while True:
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if not wait:
                    raise RunLockedError(
                        f"{self.path} is being trained by {holder}; wait for it to finish (a complete run is then "
                        f"reused; `wait=True` waits) or use another run directory") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise RunLockedError(f"{self.path} is still being trained by {holder} after waiting {timeout:g} s; "
                                         f"wait longer (timeout) or use another run directory") from None
                if not announced:
                    print(f"waiting for {self.path} (held by {holder.split(' since ')[0]})", flush=True)
                    announced = True
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
                continue
            except BaseException:
                os.close(fd)
                raise
            if self._is_lock_file(fd):
                break
            os.close(fd)  # its previous holder removed the file: lock the one at the path now
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
            yield self
        finally:
            if remove and self._is_lock_file(fd):
                os.unlink(self.path / LOCK)
            os.close(fd)

    def _is_lock_file(self, fd: int) -> bool:
        try:
            here = os.lstat(self.path / LOCK)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def admit(self, config, resume: bool = True) -> None:
        """Check that `config` may train here: an existing run must hold the same config
        (cosmetic fields aside), be resumable, and not have diverged."""
        from .config import differences
        from ..base.errors import DivergedError

        if not os.path.lexists(self.path / CONFIG):
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
        """Start the record: config.json, then the epoch-0 commit holding its checksum.
        Refused where a commit or committed files exist (config.json was lost)."""
        found = self.epoch_files()
        if os.path.lexists(self.path / COMMIT) or found:
            raise RunDirError(f"{self.path / CONFIG} is missing although the run has a commit or committed files "
                              f"({', '.join(([COMMIT] if os.path.lexists(self.path / COMMIT) else []) + found[:3])}); "
                              f"nothing was changed. Restore {CONFIG}, or move the run aside with "
                              f"`python -m cooplib.engine.runs reset {self.path}`")
        data = json_bytes(meta)
        check_meta(parse_json(data, self.path / CONFIG, strict=True), self.path / CONFIG)
        atomic_write_bytes(self.path / CONFIG, data)
        self._commit({"format": COMMIT_FORMAT, "state": "running", "epoch": 0, "best_epoch": 0,
                      "metrics_sha256": sha256(b""), "files": {}, "config_sha256": sha256(data),
                      "committed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _config_sha256(self, previous: dict | None) -> str:
        if previous and "config_sha256" in previous:
            return previous["config_sha256"]
        data = self._read(CONFIG, max_bytes=MAX_JSON_BYTES)
        if data is None:
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG})")
        return sha256(data)

    def recover(self) -> dict | None:
        """Back to the last commit: remove temporary and uncommitted files, drop metrics
        lines past the commit, verify what remains; return the checkpoint (None if none).
        Call with the lock held. Only plain files are removed; a lost commit is an error."""
        if not os.path.lexists(self.path / COMMIT) and any(os.path.lexists(self.path / old) for old in ("status.json", "checkpoint.pt")):
            raise RunDirError(f"{self.path} was written by an older cooplib (no {COMMIT}); nothing was changed. "
                              f"Move it aside with `python -m cooplib.engine.runs reset {self.path}` to retrain it")
        if os.path.islink(self.path / EVENTS):
            raise RunDirError(f"{self.path / EVENTS} is a symbolic link; TensorBoard events are written in the run "
                              f"directory only: remove the link")
        manifest = self.manifest() or {"files": {}, "epoch": 0}
        for name in self._leftovers(manifest):
            os.unlink(self.path / name)
        records = self.records()  # verified prefix
        if self._read(METRICS) not in (None, metrics_bytes(records)):
            atomic_write_bytes(self.path / METRICS, metrics_bytes(records))
        ckpt = self.checkpoint()
        if ckpt is not None and (ckpt.get("epoch") != len(records) or _strip_time(ckpt.get("records") or []) != _strip_time(records)):
            raise RunDirError(f"{self.path}: the checkpoint holds epoch {ckpt.get('epoch')} but metrics.jsonl disagrees with it; "
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
        previous = self.manifest()
        config_sha = self._config_sha256(previous)
        previous = previous or {"files": {}}
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
                      "config_sha256": config_sha, "committed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for role, entry in previous["files"].items():  # superseded files, now unreferenced (plain names, checked)
            if entry["name"] not in {e["name"] for e in files.values()}:
                (self.path / entry["name"]).unlink(missing_ok=True)

    def mark_diverged(self, message: str) -> None:
        """Record divergence; the last committed epoch and its files stay as they are."""
        previous = self.manifest()
        config_sha = self._config_sha256(previous)
        previous = previous or {"epoch": 0, "best_epoch": 0, "metrics_sha256": sha256(b""), "files": {}}
        self._commit({**previous, "format": COMMIT_FORMAT, "state": "diverged", "message": message,
                      "config_sha256": config_sha})

    def _commit(self, manifest: dict) -> None:
        write_json(self.path / COMMIT, manifest)

    # ------------------------------------------------------------ rebuilding a lost commit

    def _verified_checkpoint(self, name: str, epochs: int) -> dict:
        """The checkpoint `name`, checked by its own content: every zip member's CRC, a
        weights-only load, and records, best epoch and summary consistent with its epoch."""
        import zipfile

        path = self.path / name
        epoch = int(ROLE_NAMES["checkpoint"].fullmatch(name).group(1))
        data = self._read(name)
        if data is None:
            raise RunDirError(f"{path} disappeared")
        try:
            bad = zipfile.ZipFile(io.BytesIO(data)).testzip()
        except Exception as exc:  # BadZipFile, truncated central directory, ...
            raise RunDirError(f"{path} is not a complete checkpoint ({type(exc).__name__}: {str(exc)[:100]})") from None
        if bad is not None:
            raise RunDirError(f"{path} is damaged (the CRC of its member {bad} does not match)")
        ckpt = load_checkpoint(path, data)
        records, best, final = ckpt.get("records"), ckpt.get("best_epoch"), ckpt.get("final")
        ok = (ckpt.get("epoch") == epoch and isinstance(records, list) and len(records) == epoch
              and all(isinstance(r, dict) and r.get("epoch") == i + 1 for i, r in enumerate(records))
              and _is_int(best) and 1 <= best <= epoch and isinstance(ckpt.get("model"), dict) and epoch <= epochs
              and (final is None or (isinstance(final, dict) and epoch == epochs)))
        if not ok:
            raise RunDirError(f"{path} does not hold a consistent epoch {epoch} (its epoch, records, best epoch or "
                              f"summary disagree, or the config trains {epochs} epochs)")
        return ckpt

    def rebuild_commit(self) -> list[str]:
        """Rebuild a lost commit.json from the newest checkpoint that verifies by its own
        content; its metrics, final.json and weights are rewritten from it where they differ.
        Nothing is deleted. Call with the lock held; return what was done."""
        meta_data = self._read(CONFIG, max_bytes=MAX_JSON_BYTES)
        if meta_data is None:
            raise RunDirError(f"{self.path} has no {CONFIG}; its commit cannot be rebuilt. Move it aside with "
                              f"`python -m cooplib.engine.runs reset {self.path}`")
        epochs = self.meta(manifest=None)["config"]["epochs"]
        names = sorted((n for n in self.epoch_files() if ROLE_NAMES["checkpoint"].fullmatch(n)), reverse=True)
        failures = []
        for name in names:
            try:
                ckpt = self._verified_checkpoint(name, epochs)
                break
            except RunDirError as exc:
                failures.append(str(exc))
        else:
            raise RunDirError(f"{self.path / COMMIT} is lost and no checkpoint verifies "
                              f"({'; '.join(failures) or 'there is none'}); nothing was changed. Retrain the run after "
                              f"`python -m cooplib.engine.runs reset {self.path}`")
        epoch, best_epoch, final = ckpt["epoch"], ckpt["best_epoch"], ckpt["final"]
        done = [f"{n}: not used ({f})" for n, f in zip(names, failures)]
        weights = weights_bytes(ckpt["model"])

        def put(file: str, data: bytes) -> dict:
            if self._read(file) != data:
                atomic_write_bytes(self.path / file, data)
                done.append(f"{file} rebuilt from {name}")
            return {"name": file, "sha256": sha256(data), "bytes": len(data)}

        files = {"checkpoint": {"name": name, "sha256": sha256(self._read(name)), "bytes": len(self._read(name))},
                 "last": put(f"model-{epoch:04d}.safetensors", weights)}
        if best_epoch == epoch:
            files["best"] = put(f"best-{epoch:04d}.safetensors", weights)
        else:
            best_name = f"best-{best_epoch:04d}.safetensors"
            data = self._read(best_name)
            if data is None:
                raise RunDirError(f"{self.path / COMMIT} is lost and {best_name} (the best weights, epoch {best_epoch}) is "
                                  f"missing too; nothing was changed. Retrain after `python -m cooplib.engine.runs reset {self.path}`")
            best = load_weights(self.path / best_name, data)
            if {k: (v.shape, v.dtype) for k, v in best.items()} != {k: (v.shape, v.dtype) for k, v in ckpt["model"].items()}:
                raise RunDirError(f"{self.path / best_name} does not hold this run's tensors; nothing was changed. "
                                  f"Retrain after `python -m cooplib.engine.runs reset {self.path}`")
            files["best"] = {"name": best_name, "sha256": sha256(data), "bytes": len(data)}
            done.append(f"{best_name} kept as found: the checkpoint holds no copy of the best epoch's weights to check it against")
        metrics = metrics_bytes(ckpt["records"])
        put(METRICS, metrics)
        if final is not None:
            files["final"] = put(FINAL, json_bytes(final))
        self._commit({"format": COMMIT_FORMAT, "state": "complete" if final is not None else "running", "epoch": epoch,
                      "best_epoch": best_epoch, "metrics_sha256": sha256(metrics), "files": files,
                      "config_sha256": sha256(meta_data), "committed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        done.append(f"{COMMIT} rebuilt from {name} (epoch {epoch} of {epochs}, "
                    f"{'complete' if final is not None else 'running'}); {CONFIG} recorded as found")
        return done


def _strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} if isinstance(r, dict) else r for r in records]


def status(run_dir: Path) -> str:
    return RunDir(run_dir).state


def read_metrics(run_dir: Path) -> list[dict]:
    """The committed epoch records of a run (an empty list before the first epoch ends)."""
    return RunDir(run_dir).records()


# ---------------------------------------------------------------- repair


def _existing_run(run_dir: str | Path) -> RunDir:
    """The run directory `run_dir`, which must exist and hold a run (nothing is created)."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise RunDirError(f"{rd.path} is not a run directory (no such folder); nothing was created")
    if not any(os.path.lexists(rd.path / n) for n in (CONFIG, COMMIT)) and not rd.epoch_files():
        raise RunDirError(f"{rd.path} is not a run directory (no {CONFIG}, {COMMIT} or checkpoint); nothing was changed")
    return rd


def repair(run_dir: str | Path) -> list[str]:
    """Rebuild metrics.jsonl and final.json from the (verified) checkpoint, or a lost
    commit.json from the newest checkpoint that verifies; return what changed."""
    rd = _existing_run(run_dir)
    with rd.lock(create=False, remove=True):
        if not os.path.lexists(rd.path / COMMIT) and rd.epoch_files():
            return rd.rebuild_commit()
        manifest = rd.manifest()
        if manifest is None:
            raise RunDirError(f"{rd.path} has no commit: nothing to repair (it restarts from scratch when run)")
        ckpt = rd.checkpoint()  # raises if the checkpoint itself is damaged
        done = []
        if rd.verify() and ckpt is not None:
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
    rd = _existing_run(run_dir)
    target = rd.path.with_name(f"{rd.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.lexists(target):
        raise RunDirError(f"{target} exists already; nothing was moved (try again in a second)")
    with rd.lock(create=False):
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
        data = meta.get("data") or {}
        row.update({f"data.{k}": v for k, v in data.items() if k in ("n_train", "n_test", "num_classes", "in_channels")})
        if "image_size" in data:
            row["data.image_size"] = tuple(data["image_size"])
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
    ap = argparse.ArgumentParser(prog="python -m cooplib.engine.runs", description="Check, repair or reset run directories.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("verify", help="check every run under a folder against its commit.json").add_argument("root")
    sub.add_parser("repair", help="rebuild metrics.jsonl / final.json of a run from its checkpoint").add_argument("run_dir")
    sub.add_parser("reset", help="move a run aside so that the same config retrains from scratch").add_argument("run_dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "verify":
            return _verify_command(Path(args.root))
        if args.cmd == "repair":
            for line in repair(args.run_dir) or ["nothing to repair: the record is intact"]:
                print(line)
        else:
            print(f"moved to {reset(args.run_dir)}; running the same config retrains it")
    except (RunDirError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _verify_command(root: Path) -> int:
    """One line per run (intact or DAMAGED, with its problems and notes); 1 if any is damaged."""
    if not root.is_dir():
        raise RunDirError(f"{root} is not a run directory nor a folder of runs (no such folder)")
    rd = RunDir(root)
    is_run = not os.path.lexists(root / CONFIG) and (os.path.lexists(root / COMMIT) or rd.epoch_files())
    found = [root] if is_run else find_runs(root)  # a run that lost its config.json is reported, not skipped
    if not found:
        raise RunDirError(f"{root} is not a run directory nor a folder of runs (no {CONFIG} under it)")
    bad = 0
    for run_dir in found:
        problems, notes = RunDir(run_dir).check()
        bad += bool(problems)
        print(f"{'DAMAGED' if problems else 'intact '} {run_dir}")
        for line in problems:
            print(f"    {line}")
        for line in notes:
            print(f"    note: {line}")
    print(f"{len(found) - bad} intact, {bad} damaged")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
