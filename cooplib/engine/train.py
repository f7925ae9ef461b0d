"""`fit`: the one training loop every Learner shares.

SGD (momentum, Nesterov, weight decay) with a per-epoch step or cosine schedule; bf16
autocast and channels_last on CUDA and on CPUs with native bf16 (`runtime.resolve`,
recorded in config.json as `resolved` and kept on resume); optional torch.compile; seeded and optionally
deterministic; every head evaluated (top-1/top-5, percent) each epoch. Each finished
epoch is handed to the run directory (`runs.RunDir.commit_epoch`), which makes its
records, weights and checkpoint visible together; a killed run resumes from its last
commit; a non-finite loss, weight or BatchNorm statistic stops the run before it is
committed.

The step has no host synchronisation: loss terms and correct counts accumulate in
device tensors that are read once per epoch.

What a run was trained from is recorded when it starts and checked when it is resumed or
reused: the data (`cooplib.data.fingerprint`, in config.json's ``data.fingerprint``) and
the runs it depends on (``provenance``: a KD teacher, an ``init_from`` parent; see
`cooplib.engine.experiment.run_identity`). A run that stops early says so in one line naming its
run directory and how to resume it: Ctrl-C (the KeyboardInterrupt is re-raised), SIGTERM
(`RunInterrupted`) and a failed write such as a full disk (`StorageError`).
"""
from __future__ import annotations

import errno
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed, metrics, runs, runtime
from .config import RunConfig
from ..data import DeviceLoader, ImageData, fingerprint
from ..base.errors import CooplibError, DivergedError, RunDirError
from ..methods.base import Learner, TrainState
from .optim import carry_optimizer_state, gradient_ratio, lr_factor, make_optimizer, set_lr


class RunInterrupted(CooplibError):
    """The run was stopped by a signal (SIGTERM) after its last commit; it resumes from there."""


class StorageError(RunDirError, OSError):
    """Writing the run's record failed (disk full, read-only, I/O error); it resumes from its last commit."""


class _Terminated(BaseException):
    """Raised by the SIGTERM handler inside `fit` (a BaseException, like KeyboardInterrupt,
    so that no `except Exception` on the way swallows it)."""


@dataclass
class RunResult:
    run_dir: Path
    final: dict
    metrics: list[dict]


# ---------------------------------------------------------------- settings


def progress_enabled(config: RunConfig) -> bool:
    return config.progress and os.environ.get("COOPLIB_PROGRESS", "1") != "0"


# ---------------------------------------------------------------- the loop


def fit(
    learner: Learner,
    data: ImageData,
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
    initial_optimizer_state: dict | None = None,
    provenance: dict | None = None,
    wait: bool | None = None,
    wait_timeout: float | None = None,
) -> RunResult:
    """Train `learner` on `data` as `config` says, recording everything in `run_dir`.

    A complete run directory with the same config is returned as it is; an incomplete
    one is resumed from its last committed epoch (bit-identical on the same device when
    `config.deterministic`); one with a different config is an error, and so is a run
    directory another process is training (its lock is held).
    `initial_optimizer_state` (per-parameter state such as momentum, e.g. from
    `Learner.init_from`) is loaded into a fresh run's optimizer; its hyperparameters
    (lr, momentum, ...) stay those of `config`.
    `provenance` (role -> identity of a run this one depends on: ``teacher``,
    ``init_from``) is recorded in config.json when the run starts; resuming (or reusing)
    with another identity is an error, and so is data with another fingerprint.
    Ctrl-C, SIGTERM and a failed write (disk full) end with one line naming the run
    directory and how to resume it (resuming is unaffected: bit-identical).
    A run another process is training is waited for (one line says so; `wait_timeout`
    seconds at most, None = no limit), then reused or resumed; `wait=False` makes it an
    error at once. By default it waits when resuming is allowed.
    """
    run = runs.RunDir(run_dir)
    device = runtime.resolve_device(config.device)
    main = distributed.is_main()  # under torchrun, rank 0 alone locks and writes the run directory
    wait = resume if wait is None else wait
    try:
        with _sigterm_raises(), run.lock(wait=wait, timeout=wait_timeout) if main else nullcontext():
            if main:
                run.admit(config, resume)
                if not (run.path / runs.CONFIG).exists():
                    run.create(_run_metadata(config, data, device, provenance))
                else:
                    meta = run.meta()
                    check_data(run, data, meta)
                    check_provenance(run, provenance, meta)
            ckpt = run.recover() if main else None  # verified once; other ranks read it after the barrier
            distributed.barrier()
            if run.state == "complete":  # nothing is trained
                return RunResult(run.path, run.final(), run.records())
            if not main:
                ckpt = run.checkpoint()
            resolved = run_resolved(run, config, device)
            with runtime.determinism(config.deterministic):
                return _fit(learner, data, config, run, device, ckpt, initial_optimizer_state, resolved)
    except KeyboardInterrupt:
        if main:
            print(_stopped(run, config, "Ctrl-C"), file=sys.stderr, flush=True)
        raise
    except _Terminated:
        raise RunInterrupted(_stopped(run, config, "SIGTERM")) from None
    except OSError as exc:
        if isinstance(exc, CooplibError) or exc.errno is None:
            raise
        raise _storage_error(run, config, exc) from exc


def _epochs_done(run: runs.RunDir) -> int | None:
    try:
        return run.epochs_done
    except (CooplibError, OSError):
        return None


def _stopped(run: runs.RunDir, config: RunConfig, how: str) -> str:
    """The one line that says where a stopped run is and how to go on."""
    return f"interrupted ({how}) {_where(run, config)}"


def _where(run: runs.RunDir, config: RunConfig) -> str:
    done = _epochs_done(run)
    if done is None:
        return f"in {run.path}: re-run the same call to resume from its last committed epoch"
    if done >= config.epochs:
        return f"after the last epoch ({done} of {config.epochs}) of {run.path}: re-run the same call to reuse it"
    if done == 0:
        return f"before the first epoch of {run.path} was committed: re-run the same call to start it again"
    return f"after epoch {done} of {config.epochs} of {run.path}: re-run the same call to resume from the end of epoch {done}"


def _storage_error(run: runs.RunDir, config: RunConfig, exc: OSError) -> "StorageError":
    what = exc.strerror or str(exc)
    file = f" writing {exc.filename}" if exc.filename else ""
    hint = "free disk space" if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else "fix the storage"
    err = StorageError(f"{what} ([Errno {exc.errno}]){file} {_where(run, config)} ({hint} first; the last commit is intact)")
    err.errno = exc.errno  # (strerror and filename stay unset: they would replace the message in str())
    return err


class _sigterm_raises:
    """While training, SIGTERM raises `_Terminated` in the main thread (turned into
    `RunInterrupted` with its one line), instead of ending the process without a word.
    Only where SIGTERM still has its default action (a handler someone installed stays)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _on_sigterm(signum, frame):
    raise _Terminated()


def check_data(run: runs.RunDir, data: ImageData, meta: dict | None = None) -> None:
    """The data `run` was trained on (its recorded fingerprint) must be `data`; a record
    from before fingerprints were kept is accepted as it is."""
    recorded = (meta if meta is not None else run.meta()).get("data") or {}
    was = recorded.get("fingerprint")
    if not isinstance(was, str):
        return
    now = fingerprint(data)
    if was != now:
        sizes = (f"; {recorded.get('n_train')} train / {recorded.get('n_test')} test images then, "
                 f"{len(data.y_train)} / {len(data.y_test)} now")
        raise RunDirError(
            f"dataset {data.name!r} is not the data {run.path} was trained on (fingerprint {was[:16]} recorded, "
            f"{now[:16]} now{sizes}): it was replaced or changed under the same name. Restore the original data, "
            f"give the new data its own name (another file name), or move the run aside with "
            f"`python -m cooplib.engine.runs reset {run.path}` to retrain it on this data")


#: how a role of `provenance` is named in messages: (what it is, what depends on it)
ROLES = {"teacher": ("teacher", "student"), "init_from": ("parent (init_from)", "run")}


def check_provenance(run: runs.RunDir, provenance: dict | None, meta: dict | None = None) -> None:
    """Each run `run` depends on (`provenance`: role -> identity, see
    `experiment.run_identity`) must be the one recorded when it started (its weights'
    sha256); a record without provenance (older cooplib) is accepted as it is."""
    recorded = (meta if meta is not None else run.meta()).get("provenance") or {}
    for role, ident in (provenance or {}).items():
        old = recorded.get(role) if isinstance(recorded, dict) else None
        if not isinstance(old, dict) or "weights_sha256" not in old:
            continue
        if old["weights_sha256"] != ident["weights_sha256"]:
            what, dependent = ROLES.get(role, (role, "run"))
            raise RunDirError(
                f"{what} {ident['run']} changed since this {dependent} started (weights sha256 "
                f"{old['weights_sha256'][:16]} -> {ident['weights_sha256'][:16]}): retrain the {dependent} (move it aside "
                f"with `python -m cooplib.engine.runs reset {run.path}`) or restore the {what.split()[0]} "
                f"({old.get('path', ident.get('path'))})")


def run_resolved(run: runs.RunDir, config: RunConfig, device: torch.device) -> dict:
    """The precision and layout the run in `run` trains with: those its config.json
    recorded (`resolved`, written when the run was created); a run created before
    that record existed keeps the rules it started under (`runtime.resolve`)."""
    meta = run.meta()
    return runtime.resolve(config, device, recorded=meta.get("resolved"), started="resolved" not in meta)


def _fit(learner, data, config, run: runs.RunDir, device, ckpt, initial_optimizer_state, resolved: dict) -> RunResult:
    from ..models import flops

    torch.manual_seed(config.seed)
    learner.bind_data(data.y_train)
    amp_dtype = runtime.resolved_dtype(resolved)
    channels_last = bool(resolved["channels_last"])
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    learner.to(device=device, memory_format=memory_format)
    cost = flops.cost(learner, tuple(data.x_train.shape[1:]))

    common = dict(device=device, mean=data.mean, std=data.std, channels_last=channels_last)
    train_loader = DeviceLoader(
        data.x_train, data.y_train, config.batch_size, augment=data.augment.named(config.augment),
        shuffle=True, seed=config.seed, views=learner.views, with_index=True, **common,
    )
    # with several ranks each evaluates its slice of the test set; the sums are reduced
    test_loader = DeviceLoader(distributed.shard(data.x_test), distributed.shard(data.y_test), max(config.batch_size, 256), **common)
    model = distributed.wrap(learner, device, config.sync_bn)
    opt = make_optimizer(learner, config, device)
    ratio = gradient_ratio(learner, opt, config)
    # static shapes: the last partial batch (and evaluation) compile once each, then hit
    # the cache every epoch instead of recompiling
    model = torch.compile(model, dynamic=False) if config.compile else model
    main = distributed.is_main()

    records: list[dict] = []
    best_epoch = 0
    if ckpt is not None:
        learner.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["loader"])
        runtime.set_rng_state(ckpt["rng"], device)
        records, best_epoch = list(run.records()), ckpt["best_epoch"]
    elif initial_optimizer_state is not None:
        carry_optimizer_state(opt, initial_optimizer_state)
    start_epoch = len(records)

    writer = _tensorboard(run.path, config, start_epoch) if main else None
    steps = len(train_loader)
    bar = _progress_bar(config, steps, start_epoch, run.path) if main else None
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    primary = f"test/{learner.primary_head}/top1"
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            lr = set_lr(opt, lr_factor(config, epoch))
            model.train()
            sums: dict[tuple[str, ...], torch.Tensor] = {}
            n = 0
            for step, (x, y, idx) in enumerate(train_loader):
                # every rank draws the global batch, trains on its slice (of each view: x is (V, B, ...) when V > 1)
                x, y, idx = distributed.shard(x, dim=x.ndim - 4), distributed.shard(y), distributed.shard(idx)
                bs = y.shape[0]
                for sub in range(learner.substeps):
                    state = TrainState(epoch, config.epochs, step, steps, sub, index=idx)
                    with amp():
                        heads = model(x)
                        total, parts = learner.loss(heads, y, state)
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    if ratio is not None:
                        ratio.update(lr / config.lr)
                    opt.step()
                    learner.after_step(state)
                    # accuracy of the heads before this batch's updates (substep 0 only)
                    key, vec = metrics.step_terms(total, parts, heads if sub == 0 else None, y)
                    sums[key] = sums[key] + vec if key in sums else vec
                n += bs
                if bar is not None:
                    bar.update(1)
            train_metrics = metrics.epoch_means(sums, n)  # the epoch's one host sync
            train_seconds = time.perf_counter() - t0  # after that sync: device work included
            _stop_if_diverged(run, learner, epoch, train_metrics)
            test_metrics = {}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                test_metrics = {f"test/{k}": v for k, v in metrics.evaluate(model, test_loader, amp_dtype, device).items()}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record = {"epoch": epoch + 1, "lr": lr, "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
                      **train_metrics, **test_metrics}
            if ratio is not None:
                record.update(ratio.last_lrs())
            records.append(record)
            # the best evaluated epoch; before the first evaluation (eval_every > 1) the latest
            best = records[best_epoch - 1] if best_epoch else {}
            if primary not in best or (primary in record and record[primary] > best[primary]):
                best_epoch = epoch + 1
            final = None
            if epoch + 1 == config.epochs:
                final = {
                    "epochs_done": len(records), "primary_head": learner.primary_head, "last": records[-1],
                    "best": records[best_epoch - 1], "seconds": sum(r["seconds"] for r in records),
                    "wall_seconds_this_session": time.perf_counter() - t_run, **cost,
                }
            ckpt = {"format": runs.CHECKPOINT_FORMAT, "epoch": epoch + 1, "best_epoch": best_epoch, "records": records,
                    "final": final, "model": learner.state_dict(), "optimizer": opt.state_dict(),
                    "loader": train_loader.state_dict(), "rng": runtime.rng_state(device)}
            if main:
                run.commit_epoch(epoch=epoch + 1, records=records, checkpoint=runs.torch_bytes(ckpt),
                                 weights=runs.weights_bytes(learner.state_dict()), best_epoch=best_epoch, final=final)
            if writer is not None:
                for k, v in record.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{record['train/loss']:.3f}", **({"top1": f"{record[primary]:.2f}"} if primary in record else {}))
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return RunResult(run.path, final, records)


def _run_metadata(config: RunConfig, data: ImageData, device: torch.device, provenance: dict | None = None) -> dict:
    meta = {
        "config": config.to_dict(),
        "data": {
            "name": data.name, "num_classes": data.num_classes, "in_channels": data.in_channels,
            "image_size": list(data.image_size), "n_train": len(data.y_train), "n_test": len(data.y_test),
            "mean": list(data.mean), "std": list(data.std), "fingerprint": fingerprint(data),
        },
        "versions": runtime.versions(),
        "device_name": runtime.device_name(device),
        # what precision="auto" / channels_last=None mean for this run (kept on resume)
        "resolved": runtime.resolve(config, device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if provenance:  # the runs this one is trained from (not part of the config: run names stay)
        meta["provenance"] = provenance
    return meta


def _stop_if_diverged(run: runs.RunDir, learner: Learner, epoch: int, train_metrics: dict) -> None:
    """Stop before a non-finite loss, weight or BatchNorm statistic reaches a commit."""
    tensors = [(k, v) for k, v in learner.state_dict().items() if v.is_floating_point()]
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors]).tolist()  # one sync per epoch
    bad = [k for (k, _), ok in zip(tensors, finite) if not ok]
    if math.isfinite(train_metrics["train/loss"]) and not bad:
        return
    what = (f"the training loss became non-finite in epoch {epoch + 1} "
            f"({', '.join(f'{k}={v:.4g}' for k, v in train_metrics.items() if not k.endswith('top1'))})"
            if not math.isfinite(train_metrics["train/loss"]) else
            f"{len(bad)} weight/buffer tensor(s) became non-finite in epoch {epoch + 1} (e.g. {', '.join(bad[:3])})")
    done = run.epochs_done
    kept = (f"epoch {done} is kept as the last committed epoch ({run.file_path('checkpoint').name}, "
            f"{run.file_path('last').name})" if done else "no epoch had been committed, so no weights are kept")
    msg = f"{what}. {kept} in {run.path}; lower lr, check the loss terms, or use precision='fp32'."
    if distributed.is_main():
        run.mark_diverged(msg)
    raise DivergedError(msg)


def _tensorboard(run_dir: Path, config: RunConfig, start_epoch: int):
    if not config.tensorboard:
        return None
    from . import tensorboard_log  # scalars below; HParams records (config, final metrics) in the same run

    return tensorboard_log.open_writer(run_dir, config, start_epoch)


def _progress_bar(config: RunConfig, steps: int, start_epoch: int, run_dir: Path):
    if not progress_enabled(config):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=steps * config.epochs, initial=steps * start_epoch, desc=run_dir.name, unit="step",
        dynamic_ncols=True, leave=True,
    )
