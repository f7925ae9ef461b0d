"""A run's TensorBoard log: its per-epoch scalars and its HParams-plugin records.

Each run directory holds one TensorBoard run, ``<run_dir>/events/`` (`runs.EVENTS`), so
`tensorboard --logdir runs/<profile>` lists every run under its directory name. Besides
the scalars `train.fit` writes each epoch, the writer here records what the HParams tab
needs to filter and compare runs by config, in the run's own event directory (not in a
timestamped sub-directory, as `SummaryWriter.add_hparams` would, which TensorBoard shows
as a second run):

* the session start (once per run, when it starts or is first resumed by this code):
  every `RunConfig` field but the cosmetic ones, nested options flattened
  (``method_args.<option>``, the method's defaults filled in; ``dataset_args.<option>``),
  None, lists and mappings as text, and ``run_label``, the fields that differ from the
  defaults (e.g. ``epochs=20 train_size=360``);
* at the end: ``final/test_top1_last``, ``final/test_top1_best`` (test top-1 of the
  deployed head, as final.json holds them) and ``final/epochs_done``, and the session's
  status (success; failure for a diverged run).

No experiment summary is written: TensorBoard then builds the table from every run's
session start (`tensorboard.plugins.hparams.backend_context`), with each field that
differs across the runs first and shown by default, strings and booleans filtered by
their values, numbers by range, and every scalar as a metric column. (An experiment
summary per run would make TensorBoard pick one run's at random for all of them.)

Nothing is written twice: what a run's events already hold is looked up first, so a
resumed run keeps its one session start, and the end is written once, when the run
completes or diverges. Runs trained before this module (or whose end was not written,
say after a crash between the last commit and the log) get their records with

    python -m cooplib.engine.tensorboard_log RUNS_ROOT
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from . import runs
from .config import COSMETIC, RunConfig
from ..base.errors import RunDirError
from ..base.stats import DEFAULT_IGNORED

#: the metrics written when a run ends (tags of scalars in the run's own event directory)
FINAL_METRICS = ("final/test_top1_last", "final/test_top1_best", "final/epochs_done")
#: what `run_label` leaves out: the fields a run directory is named by, and how or where a
#: run executed (`stats.DEFAULT_IGNORED`: device, data_root, ...); they stay HParams columns
UNLABELLED = frozenset({"method", "model", "dataset", "seed"}) | DEFAULT_IGNORED


# ---------------------------------------------------------------- hparams of a config


def hparams(config: RunConfig) -> dict[str, bool | int | float | str]:
    """The HParams columns of `config`: every semantic field, nested options flattened
    (the method's and the dataset's defaults filled in), values bool/int/float/str, and
    ``run_label``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name in COSMETIC:
            continue
        value = getattr(config, f.name)
        if f.name == "method_args":
            out.update({f"method_args.{k}": v for k, v in _options("method", config.method, value).items()})
        elif f.name == "dataset_args":
            out.update({f"dataset_args.{k}": v for k, v in _options("dataset", config.dataset, value).items()})
        else:
            out[f.name] = value
    out = {k: _plain(v) for k, v in out.items()}
    out["run_label"] = run_label(config)
    return out


def run_label(config: RunConfig) -> str:
    """The fields of `config` that differ from their defaults (RunConfig's, the method's and
    the dataset's), e.g. ``"epochs=20 train_size=360"``, but those the run directory is
    named by (method, model, dataset, seed) and where or how it ran (`UNLABELLED`);
    ``"defaults"`` when nothing differs."""
    parts = []
    for f in dataclasses.fields(config):
        if f.name in UNLABELLED:
            continue
        value = getattr(config, f.name)
        if f.name in ("method_args", "dataset_args"):
            kind, name = ("method", config.method) if f.name == "method_args" else ("dataset", config.dataset)
            defaults = _options(kind, name, {})
            parts += [f"{f.name}.{k}={_text(v)}" for k, v in value.items() if k not in defaults or defaults[k] != v]
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if _plain(value) != _plain(default):
            parts.append(f"{f.name}={_text(value)}")
    return " ".join(parts) or "defaults"


def _options(kind: str, name: str, given: dict) -> dict:
    """`given` over the defaults of the registered method or dataset `name` (its factory's
    keyword-only parameters that have one); `given` alone for a name no registry knows."""
    try:
        if kind == "method":
            from ..methods import METHODS as registry
        else:
            from ..data import DATASETS as registry
        params = inspect.signature(registry.get(name)).parameters.values()
    except Exception:  # a name no registry knows (data passed to fit directly): its options as given
        return dict(given)
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    return {**defaults, **given}


def _plain(value: Any) -> bool | int | float | str:
    """A value the HParams plugin holds: bool, int, float and str as they are, anything else as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


# ---------------------------------------------------------------- event records


def _summary(tag: str, plugin_data) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(plugin_data))])


def session_start(config: RunConfig, start_time: float | None = None) -> Any:
    """The HParams plugin's session-start summary of `config` (its `hparams`)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time() if start_time is None else start_time)
    for key, value in hparams(config).items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = value
    return _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end(success: bool) -> Any:
    """The HParams plugin's session-end summary: success, or failure (a diverged run)."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def final_metrics(final: dict) -> dict[str, float]:
    """`FINAL_METRICS` of a complete run's final.json."""
    key = f"test/{final['primary_head']}/top1"
    return {"final/test_top1_last": float(final["last"][key]), "final/test_top1_best": float(final["best"][key]),
            "final/epochs_done": float(final["epochs_done"])}


def logged_tags(events_dir: Path) -> set[str]:
    """The tags of the HParams-plugin and `FINAL_METRICS` records the event files of
    `events_dir` hold (a damaged or truncated file: what could be read of it)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    wanted = {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG, *FINAL_METRICS}
    found: set[str] = set()
    if not events_dir.is_dir():
        return found
    for path in sorted(events_dir.glob("events.out.tfevents.*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            for event in EventFileLoader(str(path)).Load():
                found.update(v.tag for v in event.summary.value if v.tag in wanted)
        except Exception as exc:  # a view, not the record: unreadable events are rewritten, never an error
            warnings.warn(f"could not read all of {path}: {exc}", stacklevel=2)
    return found


def _created(run: runs.RunDir) -> float | None:
    try:
        return datetime.strptime(run.meta(False)["created"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except Exception:
        return None


def _write_start(writer, run: runs.RunDir, config: RunConfig) -> None:
    writer.file_writer.add_summary(session_start(config, _created(run)), global_step=0)


def _write_end(writer, run: runs.RunDir, have: set[str] | frozenset = frozenset()) -> None:
    """The end records of `run` (those of tags not in `have`) if it is complete (final
    metrics, success) or diverged (failure); nothing for a run that stopped (it resumes)."""
    state = run.state
    if state == "complete":
        final = run.final()
        for tag, value in final_metrics(final).items():
            if tag not in have:
                writer.add_scalar(tag, value, final["epochs_done"])
        writer.file_writer.add_summary(session_end(True), global_step=final["epochs_done"])
    elif state == "diverged":
        writer.file_writer.add_summary(session_end(False), global_step=run.epochs_done)


# ---------------------------------------------------------------- the writer train.fit uses


def open_writer(run_dir: str | Path, config: RunConfig, start_epoch: int) -> "RunWriter":
    """The SummaryWriter of the run in `run_dir`, resuming after `start_epoch` committed
    epochs (scalars past it, from a session that stopped, are purged), with the session
    start recorded unless its events hold it; its `close` records the end."""
    from tensorboard.plugins.hparams import metadata

    run = runs.RunDir(run_dir)
    events = run.path / runs.EVENTS
    started = metadata.SESSION_START_INFO_TAG in logged_tags(events)  # before this session's file exists
    writer = RunWriter(run, purge_step=start_epoch + 1 if start_epoch else None)
    if not started:
        _write_start(writer, run, config)
        writer.flush()
    return writer


class RunWriter(SummaryWriter):
    """A SummaryWriter in `run`'s event directory whose `close` also writes the run's end
    records (`_write_end`) once the run is complete or diverged, once."""

    def __init__(self, run: runs.RunDir, **kw: Any) -> None:
        super().__init__(str(run.path / runs.EVENTS), **kw)
        self.run = run
        self.ended = False

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            # called in train.fit's `finally`: a failure here must not hide the run's own error
            try:
                _write_end(self, self.run)
            except Exception as exc:
                warnings.warn(f"TensorBoard end records of {self.run.path} not written: {exc}", stacklevel=2)
        super().close()


# ---------------------------------------------------------------- runs trained before


def add_missing(run_dir: str | Path) -> list[str]:
    """Add to the events of the run in `run_dir` the HParams records it lacks (session
    start; the end of a complete or diverged run), holding its lock; what was added."""
    from tensorboard.plugins.hparams import metadata

    run = runs.RunDir(run_dir)
    with run.lock(wait=False, create=False):
        config = run.config()
        events = run.path / runs.EVENTS
        if events.is_symlink():
            raise RunDirError(f"{events} is a symbolic link; TensorBoard events are written in the run directory only")
        have = logged_tags(events)
        added = []
        writer = None
        try:
            if metadata.SESSION_START_INFO_TAG not in have:
                writer = SummaryWriter(str(events))
                _write_start(writer, run, config)
                added.append("session start")
            if metadata.SESSION_END_INFO_TAG not in have and run.state in ("complete", "diverged"):
                writer = writer or SummaryWriter(str(events))
                _write_end(writer, run, have)
                added.append("final metrics and end" if run.state == "complete" else "end (diverged)")
        finally:
            if writer is not None:
                writer.close()
    return added


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cooplib.engine.tensorboard_log",
        description="Add TensorBoard HParams records (config, final metrics) to runs that lack them, e.g. runs "
                    "trained before cooplib wrote them. Then: tensorboard --logdir ROOT, HParams tab.")
    ap.add_argument("root", help="a run directory or a folder of runs (searched recursively)")
    args = ap.parse_args(argv)
    failed = 0
    for run_dir in runs.find_runs(Path(args.root)):
        try:
            added = add_missing(run_dir)
        except Exception as exc:  # a run being trained (locked), a damaged record: say so, go on
            print(f"{run_dir}: skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run_dir}: {'added ' + ', '.join(added) if added else 'nothing to add'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
