"""TensorBoard's HParams tab: each run's config and final metrics, in the run's own events.

Read back as TensorBoard reads them: the event files with its multiplexer, and the
HParams plugin's own handlers (what its tab asks the server: the experiment, then the
session groups), so "the tab can filter and compare the runs" is what is checked."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cooplib.engine import experiment, runs, train
from cooplib.engine.config import RunConfig
from cooplib.methods import Baseline
from cooplib.models import build

pytest.importorskip("tensorboard")
from tensorboard import context  # noqa: E402
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins import base_plugin  # noqa: E402
from tensorboard.plugins.hparams import (  # noqa: E402
    api_pb2, backend_context, get_experiment, list_session_groups, metadata)

FINAL = ("final/epochs_done", "final/test_top1_best", "final/test_top1_last")
TINY = dict(method="baseline", model="resnet8", dataset="digits", test_size=100, batch_size=50, lr=0.05,
            schedule="constant", progress=False, tensorboard=True, device="cpu")


def tiny(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Two complete runs whose configs differ in epochs and train_size (names differ only by the hash)."""
    root = tmp_path_factory.mktemp("runs")
    dirs = [experiment.run(tiny(epochs=1, train_size=100), root).run_dir,
            experiment.run(tiny(epochs=2, train_size=120), root).run_dir]
    return root, dirs


def _multiplexer(logdir: Path):
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return mux


def _start_info(mux, run: str):
    content = mux.SummaryMetadata(run, metadata.SESSION_START_INFO_TAG).plugin_data.content
    return {k: v for k, v in metadata.parse_session_start_info_plugin_data(content).hparams.items()}


def _value(v):
    kind = v.WhichOneof("kind")
    return {"number_value": v.number_value, "string_value": v.string_value, "bool_value": v.bool_value}[kind]


def _hparams_tab(logdir: Path):
    """(experiment, session groups) as the HParams tab gets them from TensorBoard's server."""
    mux = _multiplexer(logdir)
    ctx = backend_context.Context(base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))))
    rc = context.RequestContext()
    exp = get_experiment.Handler(rc, ctx, "", api_pb2.GetExperimentRequest(hparams_limit=1000)).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, aggregation_type=api_pb2.AGGREGATION_AVG,
        allowed_statuses=list(api_pb2.Status.values()),
        col_params=[api_pb2.ColParams(hparam=h.name) for h in exp.hparam_infos]
        + [api_pb2.ColParams(metric=m.name) for m in exp.metric_infos])
    groups = list_session_groups.Handler(rc, ctx, "", request).run().session_groups
    return exp, {g.name: g for g in groups}


def _tags(run_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every summary in the run's event files, as written (no purge applied)."""
    out = []
    for path in sorted((run_dir / runs.EVENTS).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            out += [(v.tag, event.step) for v in event.summary.value]
    return out


def test_each_run_holds_its_config_as_hparams(two_runs):
    root, dirs = two_runs
    mux = _multiplexer(root)
    # one TensorBoard run per run directory: no timestamped sub-directory (as add_hparams makes)
    assert sorted(mux.Runs()) == sorted(f"{d.name}/{runs.EVENTS}" for d in dirs)
    for d in dirs:
        cfg = runs.RunDir(d).config()
        hp = {k: _value(v) for k, v in _start_info(mux, f"{d.name}/{runs.EVENTS}").items()}
        assert hp["epochs"] == cfg.epochs and hp["train_size"] == cfg.train_size and hp["seed"] == cfg.seed
        assert (hp["method"], hp["model"], hp["dataset"]) == ("baseline", "resnet8", "digits")
        assert hp["lr"] == pytest.approx(0.05) and hp["schedule"] == "constant" and hp["nesterov"] is True
        assert hp["method_args.label_smoothing"] == 0.0  # the method's default, filled in
        assert hp["milestones"] == "[0.5,0.75]" and hp["init_from"] == "None"  # lists and None as text
        assert "progress" not in hp and "tensorboard" not in hp  # cosmetic
        assert hp["run_label"] == (f"train_size={cfg.train_size} test_size=100 epochs={cfg.epochs} batch_size=50 "
                                   f"lr=0.05 schedule=constant")
        # no experiment summary: TensorBoard builds one from all the runs' session starts
        assert metadata.EXPERIMENT_TAG not in mux.Runs()[f"{d.name}/{runs.EVENTS}"]["tensors"]


def test_hparams_tab_compares_the_two_configs(two_runs):
    root, dirs = two_runs
    exp, groups = _hparams_tab(root)
    infos = {h.name: h for h in exp.hparam_infos}
    # the fields that differ across the runs come first (the tab shows the first five), filterable
    assert {h.name for h in exp.hparam_infos[:3]} == {"epochs", "train_size", "run_label"}
    assert all(infos[k].differs for k in ("epochs", "train_size", "run_label"))
    assert not infos["model"].differs and list(infos["model"].domain_discrete.values)[0].string_value == "resnet8"
    assert (infos["epochs"].domain_interval.min_value, infos["epochs"].domain_interval.max_value) == (1, 2)
    assert set(FINAL) <= {m.name.tag for m in exp.metric_infos}
    table = runs.load_runs(root)
    assert sorted(groups) == sorted(f"{d.name}/{runs.EVENTS}" for d in dirs)
    for d in dirs:
        g = groups[f"{d.name}/{runs.EVENTS}"]
        row = table.set_index("run").loc[d.name]
        metrics = {m.name.tag: m.value for m in g.metric_values}
        assert metrics["final/test_top1_last"] == pytest.approx(row["last/test/net/top1"])
        assert metrics["final/test_top1_best"] == pytest.approx(row["best/test/net/top1"])
        assert metrics["final/epochs_done"] == row["epochs_done"] == row["epochs"]
        assert g.hparams["epochs"].number_value == row["epochs"]
        assert [s.status for s in g.sessions] == [api_pb2.STATUS_SUCCESS]


def test_reusing_a_complete_run_writes_nothing(two_runs):
    root, dirs = two_runs
    before = {p: p.stat().st_size for d in dirs for p in (d / runs.EVENTS).iterdir()}
    for d in dirs:
        res = experiment.run(runs.RunDir(d).config(), root)
        assert res.run_dir == d
        # fit on the complete run directly (what experiment.run skips): returned as it is
        cfg = runs.RunDir(d).config()
        data = experiment.load_data(cfg)
        train.fit(experiment.build_learner(cfg, data)[0], data, cfg, d)
    assert {p: p.stat().st_size for d in dirs for p in (d / runs.EVENTS).iterdir()} == before


class StopAt(Baseline):
    """Ctrl-C once, in the middle of epoch `epoch` (0-based): the epochs before it are committed."""

    def __init__(self, net, epoch: int):
        super().__init__(net)
        self.epoch, self.fired = epoch, False

    def loss(self, heads, y, state):
        if not self.fired and state.epoch == self.epoch and state.step == 1:
            self.fired = True
            raise KeyboardInterrupt
        return super().loss(heads, y, state)


def test_resumed_run_records_its_session_once(tmp_path):
    cfg = tiny(epochs=3, train_size=100)
    run_dir = tmp_path / cfg.run_name()
    data = experiment.load_data(cfg)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(StopAt(build("resnet8", data.num_classes, data.in_channels), epoch=1), data, cfg, run_dir)
    assert runs.status(run_dir) == "running"
    tags = _tags(run_dir)
    assert tags.count((metadata.SESSION_START_INFO_TAG, 0)) == 1
    assert metadata.SESSION_END_INFO_TAG not in {t for t, _ in tags}  # stopped: not ended
    res = experiment.run(cfg, tmp_path)  # resumes from epoch 1
    assert res.final["epochs_done"] == 3
    tags = _tags(run_dir)
    names = [t for t, _ in tags]
    assert names.count(metadata.SESSION_START_INFO_TAG) == 1 and names.count(metadata.SESSION_END_INFO_TAG) == 1
    assert all(names.count(t) == 1 for t in FINAL)
    assert [s for t, s in tags if t == "test/net/top1"] == [1, 2, 3]  # each epoch once, across both sessions
    _, groups = _hparams_tab(tmp_path)
    metrics = {m.name.tag: m.value for m in groups[f"{run_dir.name}/{runs.EVENTS}"].metric_values}
    assert metrics["final/test_top1_last"] == pytest.approx(res.final["last"]["test/net/top1"])
    assert metrics["final/epochs_done"] == 3


def test_runs_trained_without_hparams_get_them_added(tmp_path, capsys):
    from cooplib.engine import tensorboard_log

    run_dir = experiment.run(tiny(epochs=1, train_size=100, tensorboard=False), tmp_path).run_dir
    assert not (run_dir / runs.EVENTS).exists()
    assert tensorboard_log.main([str(tmp_path)]) == 0
    assert "added session start, final metrics and end" in capsys.readouterr().out
    assert tensorboard_log.main([str(tmp_path)]) == 0
    assert "nothing to add" in capsys.readouterr().out
    names = [t for t, _ in _tags(run_dir)]
    assert names.count(metadata.SESSION_START_INFO_TAG) == 1 and all(names.count(t) == 1 for t in FINAL)
    assert runs.RunDir(run_dir).verify() == []  # the record is untouched
