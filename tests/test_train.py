"""The one loop: schedule actually applied, resume == uninterrupted, crash safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cooplib import losses
from cooplib.engine import metrics, optim, runs, runtime, train
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError, DivergedError, RunDirError
from cooplib.methods import Baseline
from cooplib.methods.base import Learner
from cooplib.models import build

QUIET = dict(progress=False, tensorboard=False, device="cpu")


def small_config(**kw) -> RunConfig:
    base = dict(model="resnet8", dataset="quadrants", epochs=4, batch_size=32, lr=0.05, weight_decay=5e-4, deterministic=True, **QUIET)
    base.update(kw)
    return RunConfig(**base)


def baseline(data, seed=0) -> Baseline:
    torch.manual_seed(seed)
    return Baseline(build("resnet8", data.num_classes, data.in_channels))


class SumOfWeights(Learner):
    """loss = sum of weights: every weight's gradient is exactly 1, so a plain SGD step moves it by -lr."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.w = nn.Linear(d, c, bias=False)
        nn.init.zeros_(self.w.weight)

    def forward(self, x):
        return {"net": self.w(x.flatten(1))}

    def loss(self, heads, y, state):
        total = self.w.weight.sum() + 0 * heads["net"].sum()
        return total, {"sum": total}


def test_lr_factor_step_and_cosine():
    cfg = RunConfig(epochs=300)
    assert [optim.lr_factor(cfg, e) for e in (0, 149, 150, 224, 225, 299)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = RunConfig(epochs=10, schedule="cosine")
    assert optim.lr_factor(cos, 0) == 1 and optim.lr_factor(cos, 5) == pytest.approx(0.5)


def test_logged_lr_is_the_lr_the_optimizer_applied(tiny_data, tmp_path):
    # One step per epoch (batch = whole set), no momentum/decay: each weight falls by exactly the lr.
    cfg = small_config(epochs=4, batch_size=96, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, augment="none")
    learner = SumOfWeights(3 * 8 * 8, 4)
    res = train.fit(learner, tiny_data, cfg, tmp_path / "run")
    lrs = [r["lr"] for r in res.metrics]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert learner.w.weight.detach() == pytest.approx(torch.full((4, 192), -sum(lrs)), abs=1e-6)


def _same_weights(a: Path, b: Path) -> bool:
    return runs.RunDir(a).file_path("last").read_bytes() == runs.RunDir(b).file_path("last").read_bytes()


def _strip_time(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


class Interrupting(Baseline):
    """Raises KeyboardInterrupt once, in the middle of an epoch, like a user pressing Ctrl-C."""

    def __init__(self, net, at: tuple[int, int]):
        super().__init__(net)
        self.at, self.fired = at, False

    def loss(self, heads, y, state):
        if not self.fired and (state.epoch, state.step) == self.at:
            self.fired = True
            raise KeyboardInterrupt
        return super().loss(heads, y, state)


def test_interrupted_then_resumed_equals_uninterrupted(tiny_data, tmp_path, one_thread):
    cfg = small_config(epochs=4)
    ref = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")

    torch.manual_seed(0)
    net = build("resnet8", 4, 3)
    with pytest.raises(KeyboardInterrupt):
        train.fit(Interrupting(net, at=(2, 1)), tiny_data, cfg, tmp_path / "cut")
    assert runs.status(tmp_path / "cut") == "running"
    assert len(runs.read_metrics(tmp_path / "cut")) == 2
    # resume in a fresh learner with a different init: everything must come from the checkpoint
    resumed = train.fit(baseline(tiny_data, seed=123), tiny_data, cfg, tmp_path / "cut")
    assert _same_weights(tmp_path / "ref", tmp_path / "cut")
    assert _strip_time(resumed.metrics) == _strip_time(ref.metrics)
    assert _strip_time([resumed.final["best"]]) == _strip_time([ref.final["best"]])


def _interrupt_at(run_dir: Path, data, cfg: RunConfig, at=(2, 1)) -> None:
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(Interrupting(build("resnet8", 4, 3), at=at), data, cfg, run_dir)
    assert len(runs.read_metrics(run_dir)) == at[0]


@pytest.mark.parametrize("started, resumed", [("0", "1"), ("1", "0")])
def test_resumed_run_keeps_the_precision_it_started_with(tiny_data, tmp_path, one_thread, monkeypatch, started, resumed):
    """precision="auto" on the CPU follows the bf16 detection; a run started under one
    answer resumes under it even when the answer (e.g. the default) has changed since,
    and equals a run trained without interruption under that answer."""
    cfg = small_config(epochs=4)
    monkeypatch.setenv("COOPLIB_CPU_BF16", started)
    ref = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")
    _interrupt_at(tmp_path / "cut", tiny_data, cfg)
    monkeypatch.setenv("COOPLIB_CPU_BF16", resumed)
    res = train.fit(baseline(tiny_data, seed=123), tiny_data, cfg, tmp_path / "cut")
    assert _same_weights(tmp_path / "ref", tmp_path / "cut")
    assert _strip_time(res.metrics) == _strip_time(ref.metrics)
    want = {"precision": "bf16", "channels_last": True, "cpu_bf16": True} if started == "1" else \
        {"precision": "fp32", "channels_last": True, "cpu_bf16": False}
    assert runs.read_json(tmp_path / "cut" / runs.CONFIG)["resolved"] == want
    # and the other answer computes something else (so the check above means something)
    other = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "other")
    assert _strip_time(other.metrics) != _strip_time(ref.metrics)


def test_run_from_before_the_record_resumes_in_fp32(tiny_data, tmp_path, one_thread, monkeypatch):
    """A run directory whose config.json has no `resolved` was started when "auto" meant
    fp32 and the contiguous layout on the CPU: it keeps them (bit-identical resume)
    although the CPU now defaults to bf16 and channels_last."""
    cfg = small_config(epochs=3)
    monkeypatch.setenv("COOPLIB_CPU_BF16", "1")

    def legacy(run_dir):  # config.json as cooplib wrote it before the record existed
        meta = train._run_metadata(cfg, tiny_data, torch.device("cpu"))
        del meta["resolved"]
        runs.RunDir(run_dir).path.mkdir(parents=True)
        runs.RunDir(run_dir).create(meta)

    legacy(tmp_path / "ref")
    ref = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")
    legacy(tmp_path / "cut")
    _interrupt_at(tmp_path / "cut", tiny_data, cfg, at=(1, 1))
    res = train.fit(baseline(tiny_data, seed=123), tiny_data, cfg, tmp_path / "cut")
    assert _same_weights(tmp_path / "ref", tmp_path / "cut")
    assert _strip_time(res.metrics) == _strip_time(ref.metrics)
    # the same run in fp32 + contiguous from scratch today: identical; with the new default: not
    plain = train.fit(baseline(tiny_data), tiny_data, cfg.replace(precision="fp32", channels_last=False), tmp_path / "plain")
    assert _strip_time(plain.metrics) == _strip_time(ref.metrics)
    new = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "new")
    assert _strip_time(new.metrics) != _strip_time(ref.metrics)


KILLED_RUN = """
import sys, torch
torch.set_num_threads(1)
from cooplib.engine import experiment
from cooplib.engine.config import RunConfig
cfg = RunConfig.from_dict(__import__('json').loads(sys.argv[1]))
experiment.run(cfg, run_dir=sys.argv[2])
"""


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_same_result(tmp_path, one_thread):
    cfg = RunConfig(model="resnet8", dataset="digits", epochs=8, batch_size=64, lr=0.05, deterministic=True, **QUIET)
    from cooplib.engine import experiment

    ref = experiment.run(cfg, run_dir=tmp_path / "ref")
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(cfg.to_dict()), str(cut)])
    deadline = time.time() + 120
    while time.time() < deadline and len(runs.read_metrics(cut)) < 2 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(runs.read_metrics(cut))
    assert 2 <= done < cfg.epochs, "the run must be killed mid-way for this test to mean anything"
    assert runs.status(cut) == "running"
    resumed = experiment.run(cfg, run_dir=cut)
    assert _same_weights(tmp_path / "ref", cut)
    assert _strip_time(resumed.metrics) == _strip_time(ref.metrics)


class NaNAtEpoch(Baseline):
    def __init__(self, net, epoch: int):
        super().__init__(net)
        self.bad_epoch = epoch

    def loss(self, heads, y, state):
        total, parts = super().loss(heads, y, state)
        if state.epoch == self.bad_epoch:
            total = total * float("nan")
        return total, parts


def test_diverging_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
    cfg = small_config(epochs=4)
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"non-finite in epoch 3.*epoch 2 is kept .*checkpoint-0002.pt"):
        train.fit(NaNAtEpoch(build("resnet8", 4, 3), epoch=2), tiny_data, cfg, run_dir)
    assert runs.status(run_dir) == "diverged"
    ckpt = runs.RunDir(run_dir).checkpoint()
    assert ckpt["epoch"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(runs.read_metrics(run_dir)) == 2
    with pytest.raises(DivergedError, match="diverged before"):
        train.fit(baseline(tiny_data), tiny_data, cfg, run_dir)


def test_resume_with_a_different_config_is_refused_and_changes_nothing(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1, schedule="constant"), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != runs.LOCK}
    with pytest.raises(RunDirError, match=r"lr: 0.05 -> 0.2"):
        train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1, schedule="constant", lr=0.2), run_dir)
    assert before == {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != runs.LOCK}
    with pytest.raises(RunDirError, match="resume=True"):
        train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1, schedule="constant"), run_dir, resume=False)


def test_complete_run_is_reused_not_retrained(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    first = train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1, schedule="constant"), run_dir)
    ckpt = runs.RunDir(run_dir).file_path("checkpoint")
    stamp = ckpt.stat().st_mtime_ns
    again = train.fit(baseline(tiny_data, seed=5), tiny_data, small_config(epochs=1, schedule="constant", progress=True), run_dir)
    assert again.final == first.final and ckpt.stat().st_mtime_ns == stamp


def test_corrupt_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train.fit(Interrupting(build("resnet8", 4, 3), at=(1, 0)), tiny_data, small_config(epochs=3), run_dir)
    path = runs.RunDir(run_dir).file_path("checkpoint")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    metrics = (run_dir / runs.METRICS).read_bytes()
    with pytest.raises(RunDirError, match=r"checkpoint-0001.pt does not match the checksum.*cooplib.engine.runs reset"):
        train.fit(baseline(tiny_data), tiny_data, small_config(epochs=3), run_dir)
    assert (run_dir / runs.METRICS).read_bytes() == metrics


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_loading_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": runs.CHECKPOINT_FORMAT, "payload": _Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError, match="corrupt or not a cooplib checkpoint"):
        runs.load_checkpoint(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "PWNED").exists()


def test_run_directory_records(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = small_config(epochs=2, schedule="constant", tensorboard=True)
    res = train.fit(baseline(tiny_data), tiny_data, cfg, run_dir)
    meta = runs.read_json(run_dir / runs.CONFIG)
    assert meta["config"] == cfg.to_dict() and meta["versions"]["torch"] == torch.__version__
    # what precision="auto" / channels_last=None meant here, as trained
    assert meta["resolved"] == runtime.resolve(cfg, torch.device("cpu"))
    assert set(meta["resolved"]) == {"precision", "channels_last", "cpu_bf16"}
    rec = res.metrics[-1]
    for key in ("epoch", "lr", "seconds", "train_seconds", "train/loss", "train/ce/net", "train/net/top1", "test/net/top1", "test/net/top5", "test/net/loss"):
        assert key in rec
    assert rec["test/net/top5"] >= rec["test/net/top1"]
    assert res.final["best"]["test/net/top1"] == max(r["test/net/top1"] for r in res.metrics)
    assert any((run_dir / runs.EVENTS).iterdir())
    # final weights load without pickle and equal the checkpoint's
    from safetensors.torch import load_file

    w = load_file(runs.RunDir(run_dir).file_path("last"))
    ckpt = runs.RunDir(run_dir).checkpoint()
    assert all(torch.equal(w[k], ckpt["model"][k]) for k in w)
    assert not list(run_dir.glob(".*.tmp"))
    frame = runs.load_runs(tmp_path)
    assert frame.loc[0, "status"] == "complete" and frame.loc[0, "last/test/net/top1"] == rec["test/net/top1"]
    # one run may carry several labels (e.g. a sweep point that is also the main run)
    labelled = runs.load_runs({"main": run_dir, "sweep": run_dir})
    assert list(labelled["label"]) == ["main", "sweep"] and labelled["run_dir"].nunique() == 1
    assert list(runs.load_metrics({"main": run_dir, "sweep": run_dir}).groupby("label").size()) == [2, 2]


class FixedLogits(Learner):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.i = 0

    def forward(self, x):
        out = self.logits[self.i : self.i + x.shape[0]]
        self.i += x.shape[0]
        return {"net": out}


def test_evaluate_top1_top5_and_loss_by_hand():
    from cooplib.data import DeviceLoader

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(30, 8, generator=g)
    y = torch.randint(0, 8, (30,), generator=g)
    x = torch.zeros(30, 1, 2, 2, dtype=torch.uint8)
    loader = DeviceLoader(x, y, 7, device=torch.device("cpu"), mean=(0.5,), std=(0.5,))
    out = metrics.evaluate(FixedLogits(logits), loader, None, torch.device("cpu"))
    rank = (logits > logits.gather(1, y[:, None])).sum(1)  # 0 = predicted first
    assert out["net/top1"] == pytest.approx(100 * (rank == 0).float().mean().item())
    assert out["net/top5"] == pytest.approx(100 * (rank < 5).float().mean().item())
    assert out["net/loss"] == pytest.approx(losses.cross_entropy(logits, y).item(), rel=1e-5)


class FrozenLinear(Learner):
    """A fixed linear classifier (its loss has zero gradient): training metrics must equal
    an evaluation of the same function on the training set."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.w = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        z = self.w(x.flatten(1))
        return {"net": z, "flipped": -z}

    def loss(self, heads, y, state):
        ce = losses.cross_entropy(heads["net"], y)
        return 0 * ce, {"ce/net": ce.detach()}


def test_training_metrics_are_per_sample_means_over_the_epoch(tiny_data, tmp_path):
    from cooplib.data import DeviceLoader

    cfg = small_config(epochs=1, schedule="constant", batch_size=40, momentum=0.0, nesterov=False, weight_decay=0.0, augment="none")
    learner = FrozenLinear()
    rec = train.fit(learner, tiny_data, cfg, tmp_path / "run").metrics[0]  # 96 images: batches of 40, 40, 16
    loader = DeviceLoader(tiny_data.x_train, tiny_data.y_train, 96, device=torch.device("cpu"), mean=tiny_data.mean, std=tiny_data.std)
    ref = metrics.evaluate(learner, loader, None, torch.device("cpu"))
    assert rec["train/net/top1"] == pytest.approx(ref["net/top1"]) and rec["train/flipped/top1"] == pytest.approx(ref["flipped/top1"])
    assert rec["train/ce/net"] == pytest.approx(ref["net/loss"], rel=1e-5)
    assert rec["train/loss"] == 0.0


def test_labels_repeat_across_seeds_without_string_encoding(tiny_data, tmp_path):
    a = train.fit(baseline(tiny_data), tiny_data, small_config(epochs=1, schedule="constant"), tmp_path / "a").run_dir
    b = train.fit(baseline(tiny_data, 1), tiny_data, small_config(epochs=1, schedule="constant", seed=1), tmp_path / "b").run_dir
    frame = runs.load_runs({("base", 0): a, ("base", 1): b})
    assert list(frame["label"]) == ["base", "base"] and list(frame["seed"]) == [0, 1]
    assert list(frame["deployed"]) == ["net", "net"]
    assert set(runs.load_metrics({("base", 0): a, ("base", 1): b})["label"]) == {"base"}


def test_eval_every_skips_test_passes_but_keeps_training_identical(tiny_data, tmp_path, one_thread):
    every = train.fit(baseline(tiny_data), tiny_data, small_config(epochs=5), tmp_path / "every")
    sparse = train.fit(baseline(tiny_data), tiny_data, small_config(epochs=5, eval_every=2), tmp_path / "sparse")
    tested = [r["epoch"] for r in sparse.metrics if "test/net/top1" in r]
    assert tested == [2, 4, 5]  # every 2nd epoch and always the last
    assert all("train/net/top1" in r for r in sparse.metrics)
    # evaluation draws no randomness and changes no weight: the same training either way
    assert _same_weights(tmp_path / "every", tmp_path / "sparse")
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("test/")} for r in rows]  # noqa: E731
    assert drop(_strip_time(sparse.metrics)) == drop(_strip_time(every.metrics))
    # the best epoch is chosen among evaluated epochs only
    assert sparse.final["best"]["epoch"] in tested
    best_of_tested = max(tested, key=lambda e: (sparse.metrics[e - 1]["test/net/top1"], -e))
    assert sparse.final["best"]["epoch"] == best_of_tested


def test_eval_every_resumes_bit_identical(tiny_data, tmp_path, one_thread):
    cfg = small_config(epochs=4, eval_every=3)
    ref = train.fit(baseline(tiny_data), tiny_data, cfg, tmp_path / "ref")
    _interrupt_at(tmp_path / "cut", tiny_data, cfg, at=(1, 1))  # before any evaluation
    resumed = train.fit(baseline(tiny_data, seed=123), tiny_data, cfg, tmp_path / "cut")
    assert _same_weights(tmp_path / "ref", tmp_path / "cut")
    assert _strip_time(resumed.metrics) == _strip_time(ref.metrics)


def test_eval_every_must_be_positive_and_keeps_old_run_names():
    with pytest.raises(ConfigError, match="eval_every must be an integer >= 1"):
        small_config(eval_every=0)
    assert small_config(eval_every=1).digest() == small_config().digest()
    assert small_config(eval_every=2).digest() != small_config().digest()
