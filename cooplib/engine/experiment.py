"""Run experiments by name: RunConfig -> data + Learner -> `train.fit` -> run directory.

This is what notebooks call. Each config gets its own run directory named after it
(`RunConfig.run_name`, which includes a hash of the config), so re-executing a notebook
reuses complete runs, resumes interrupted ones, and never mixes two configs.

A run trained from other runs (a KD ``teacher``, an ``init_from`` parent) records their
identity when it starts (`run_identity`, config.json ``provenance``) and refuses to resume
or be reused after one of them changed; a complete run is reused and loaded without them
(its own weights are its record), so moving or deleting a teacher or parent keeps it.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import data as datasets
from .. import methods
from ..methods import kd
from ..base import profiles
from ..base.errors import ConfigError, RunDirError, SweepError
from . import cluster as cluster_mod
from . import runs
from .config import RunConfig
from .train import RunInterrupted, RunResult, check_data, check_provenance, fit


def runs_root(out_dir: str | Path | None = None, profile: str | None = None) -> Path:
    """Where run directories go: `out_dir`, else $COOPLIB_RUNS_DIR, else the profile's
    run root (``runs/<profile>`` of the project, see `cooplib.base.profiles.runs_dir_for`), else ./runs.

    A notebook passes its `profile`, so JupyterLab, papermill and `cooplib.book` all find
    the same runs whatever folder they start in, and complete runs are reused."""
    if out_dir is not None:
        return Path(out_dir).expanduser().resolve()
    env = os.environ.get("COOPLIB_RUNS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if profile is not None:
        try:
            return profiles.runs_dir_for(profiles.load_profile(profile))
        except ConfigError:  # cooplib installed without its notebooks/profiles
            return Path.cwd().resolve() / "runs" / profile
    return Path.cwd().resolve() / "runs"


def load_data(config: RunConfig) -> datasets.ImageData:
    """The dataset of `config`, subset as asked (deterministic in the data seed 0)."""
    data = datasets.load(config.dataset, root=config.data_root, download=config.download, **config.dataset_args)
    if config.train_size is not None or config.test_size is not None:
        data = data.subset(config.train_size, config.test_size, seed=0)
    return data


def build_learner(config: RunConfig, data: datasets.ImageData) -> tuple[methods.Learner, dict | None]:
    """The Learner of `config` (seeded), and the optimizer state to start from.

    With `config.init_from` the weights come from that run (`Learner.init_from`:
    strict load, or a method's own transformation such as branch expansion).
    """
    learner, opt_state, _ = _build_learner(config, data)
    return learner, opt_state


def _build_learner(config: RunConfig, data: datasets.ImageData) -> tuple[methods.Learner, dict | None, dict]:
    """`build_learner`, and the identities of the runs it was built from (`run_identity`
    by role: ``teacher``, ``init_from``) that `fit` records and checks on resume. A
    teacher or parent that does not fit `data` is a `ConfigError` before anything is built."""
    provenance: dict[str, dict] = {}
    teacher = config.method_args.get("teacher")
    if config.method in kd.KINDS and isinstance(teacher, (str, os.PathLike)) and str(teacher):
        teacher_dir = runs.RunDir(teacher)
        if teacher_dir.state == "complete":  # else the factory says it is not a complete run
            provenance["teacher"] = run_identity(teacher_dir.path)
            why = kd.teacher_mismatch(provenance["teacher"], data.num_classes, data.in_channels, data.name)
            if why:
                raise ConfigError(why)
    torch.manual_seed(config.seed)
    learner = methods.build(config.method, config.model, data.num_classes, data.in_channels, **config.method_args)
    if config.init_from is None:
        return learner, None, provenance
    parent_dir = runs.RunDir(config.init_from)
    if parent_dir.state != "complete":
        raise RunDirError(f"init_from={str(parent_dir.path)!r} is not a complete run (status {parent_dir.state!r}); train it first")
    ident = provenance["init_from"] = run_identity(parent_dir.path)
    if (ident["num_classes"], ident["in_channels"]) != (data.num_classes, data.in_channels):
        raise ConfigError(f"init_from={ident['run']} does not fit this run's data: it was trained on {ident['dataset']!r} "
                          f"({ident['num_classes']} classes, {ident['in_channels']} channels), this run trains on "
                          f"{data.name!r} ({data.num_classes} classes, {data.in_channels} channels)")
    parent = load_learner(parent_dir.path)
    opt_state = parent_dir.checkpoint()["optimizer"]
    return learner, learner.init_from(parent, opt_state), provenance


def run_identity(run_dir: str | Path) -> dict:
    """What identifies a complete run that another is trained from: its name and path,
    the sha256 of its last weights as its commit.json records them, its dataset (name,
    classes, channels, fingerprint), method, model and options (to rebuild its shape
    without it), seed and last-epoch test top-1 of its primary head."""
    run = runs.RunDir(run_dir)
    manifest = run.manifest()
    if manifest is None or manifest["state"] != "complete":
        raise RunDirError(f"{run.path} is not a complete run (status {run.state!r}); train it first")
    meta = run.meta(manifest)
    cfg, data, final = meta["config"], meta.get("data") or {}, run.final()
    head = final.get("primary_head", "net")
    return {
        "run": run.path.name, "path": str(run.path.resolve()), "weights_sha256": manifest["files"]["last"]["sha256"],
        "dataset": data.get("name"), "num_classes": data.get("num_classes"), "in_channels": data.get("in_channels"),
        "data_fingerprint": data.get("fingerprint"), "method": cfg["method"], "model": cfg["model"],
        "method_args": cfg.get("method_args") or {}, "seed": cfg.get("seed"),
        "primary_head": head, "top1": final["last"].get(f"test/{head}/top1"),
    }


def load_learner(run_dir: str | Path, weights: str = "last") -> methods.Learner:
    """Rebuild the Learner of a run directory with its `last` or `best` weights
    (safetensors, checked against the checksum recorded at commit; no pickle).

    A distilled student is built with an untrained teacher of the shape its record holds
    (`kd.recorded_teacher`): its weights hold the teacher's, so its teacher run is not
    read and may be moved or gone (a record from before teacher identities were kept
    still needs it)."""
    run = runs.RunDir(run_dir)
    meta = run.meta()
    config = run.config()
    state = run.weights(weights)
    data = meta["data"]
    teacher = (meta.get("provenance") or {}).get("teacher") if config.method in kd.KINDS else None
    torch.manual_seed(config.seed)
    try:
        with kd.recorded_teacher(teacher) if teacher else nullcontext():
            learner = methods.build(config.method, config.model, data["num_classes"], data["in_channels"], **config.method_args)
    except ConfigError as exc:
        if config.method in kd.KINDS and not teacher and "is not a complete run" in str(exc):
            raise ConfigError(f"{run.path} was recorded before cooplib kept a student's teacher identity, so it needs "
                              f"its teacher run to be rebuilt: {exc}. Restore the teacher run there") from None
        raise
    learner.load_state_dict(state, strict=True)
    return learner


def load_teacher(run_dir: str | Path, num_classes: int | None = None, in_channels: int | None = None,
                 ) -> tuple[torch.nn.Module, float]:
    """The deployed network of a complete run and its last-epoch test top-1 (primary head):
    what a KD student's ``teacher=<run dir>`` resolves to (`kd.use_teacher_loader`). With
    `num_classes`/`in_channels` (the student's), a teacher of other ones is refused."""
    run = runs.RunDir(run_dir)
    if run.state != "complete":
        raise ConfigError(f"teacher={str(run_dir)!r} is not a complete run (status {run.state!r}); train it first")
    if num_classes is not None and in_channels is not None:
        why = kd.teacher_mismatch(run_identity(run.path), num_classes, in_channels)
        if why:
            raise ConfigError(why)
    final = run.final()
    top1 = final["last"][f"test/{final['primary_head']}/top1"]
    return load_learner(run.path, "last").deployable(), float(top1)


kd.use_teacher_loader(load_teacher)


def run(config: RunConfig, out_dir: str | Path | None = None, *, run_dir: str | Path | None = None, resume: bool = True,
        wait: bool | None = None, wait_timeout: float | None = None) -> RunResult:
    """Train (or reuse/resume) one run; its directory is `out_dir/config.run_name()`.
    A run another process holds is waited for, then reused (`train.fit`'s `wait`)."""
    target = Path(run_dir) if run_dir is not None else runs_root(out_dir) / config.run_name()
    return _train(config, load_data(config), target, resume, wait, wait_timeout)


#: one line per finished run: "1" prints it on the process's stderr (a script's terminal);
#: a file path appends it there, which is how the book shows the runs of its notebooks (a
#: kernel forwards even its own stderr into the notebook, so the book follows the file)
RUN_LOG = "COOPLIB_RUN_LOG"


def _log_run(target: Path, what: str, result: RunResult, seconds: float) -> None:
    where = os.environ.get(RUN_LOG, "")
    if where in ("", "0"):
        return
    epochs = (result.final or {}).get("epochs_done", "?")
    line = f"[cooplib] {Path(target).name}: {what}, {epochs} epochs, {seconds:.1f} s"
    if where == "1":
        print(line, file=sys.__stderr__, flush=True)
        return
    try:  # one short append: lines of concurrent kernels and workers do not interleave
        with open(where, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError:  # a log that cannot be written never stops training
        pass


def _train(config: RunConfig, data: datasets.ImageData, target: Path, resume: bool = True,
           wait: bool | None = None, wait_timeout: float | None = None) -> RunResult:
    t0 = time.perf_counter()
    done = _reuse(config, data, Path(target), resume)
    if done is not None:  # complete: neither its teacher nor its parent is needed
        _log_run(target, "reused", done, time.perf_counter() - t0)
        return done
    learner, opt_state, provenance = _build_learner(config, data)
    result = fit(learner, data, config, target, resume=resume, initial_optimizer_state=opt_state, provenance=provenance,
                 wait=wait, wait_timeout=wait_timeout)
    _log_run(target, "trained", result, time.perf_counter() - t0)
    return result


def _reuse(config: RunConfig, data: datasets.ImageData, target: Path, resume: bool) -> RunResult | None:
    """The complete run of `config` at `target` (None when there is none), read without
    the lock: its data must have the recorded fingerprint, and a teacher or parent it was
    trained from that is still there must still be the run it was (a moved or deleted
    one is fine: the run's own record stands)."""
    run = runs.RunDir(target)
    got = run.reuse(config, resume)
    if got is None:
        return None
    meta = run.meta()
    check_data(run, data, meta)
    recorded = meta.get("provenance") or {}
    for role, path in (("teacher", config.method_args.get("teacher")), ("init_from", config.init_from)):
        if role not in recorded or not isinstance(path, (str, os.PathLike)) or not str(path):
            continue
        try:
            ident = run_identity(path)
        except RunDirError:  # moved, deleted, incomplete or damaged: not the run it was, nor another
            continue
        check_provenance(run, {role: ident}, meta)
    final, records = got
    return RunResult(run.path, final, records)


def run_all(configs: Iterable[RunConfig], out_dir: str | Path | None = None, *, cluster: Any = None) -> list[Path]:
    """Run every config; return their run directories (in the order given).

    In this process, one run after another (each dataset loaded once), unless there is a
    Dask cluster: then one task per run. `cluster` is your `distributed.Client`, a Dask
    cluster object (`LocalCluster`, a dask-jobqueue cluster: cooplib connects its own
    client to it) or a spec ("serial", "local:N", "tcp://host:port", {"slurm": {...}});
    None takes the running default client (`Client(...)` you opened), else a profile's
    `cluster:` / $COOPLIB_CLUSTER, else one worker per GPU when there are two or more
    (`cooplib.engine.cluster`). What you pass is never closed.
    A run that fails does not stop the others; once all are done, `SweepError` lists the
    failed run directories. Configs that name the same run train once.
    """
    configs = list(configs)
    targets = [runs_root(out_dir) / c.run_name() for c in configs]
    unique = dict(zip(targets, configs))
    where = cluster_mod.resolve(cluster)  # once: the default client is looked up here
    if isinstance(where, str) and where == "serial":
        failures = _run_serial(unique)
    else:
        failures = _run_on_cluster(unique, where)
    if failures:
        lines = [f"  {target}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                 for target, exc in failures.items()]
        raise SweepError(f"{len(failures)} of {len(unique)} run(s) failed (the others are complete):\n" + "\n".join(lines))
    return targets


def _run_serial(unique: dict[Path, RunConfig]) -> dict[Path, BaseException]:
    cache: dict[tuple, datasets.ImageData] = {}
    failures = {}
    for target, config in unique.items():
        key = (config.dataset, config.data_root, config.download, repr(sorted(config.dataset_args.items())), config.train_size, config.test_size)
        try:
            if key not in cache:
                cache[key] = load_data(config)
            _train(config, cache[key], target)
        except RunInterrupted:  # SIGTERM: stop the sweep, as Ctrl-C does
            raise
        except Exception as exc:  # reported with its run directory once the others are done
            failures[target] = exc
    return failures


def _run_on_cluster(unique: dict[Path, RunConfig], spec: Any) -> dict[Path, BaseException]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    with cluster_mod.open_cluster(spec) as client:
        print(f"[cooplib] {len(unique)} run(s) on Dask ({len(client.nthreads())} worker(s) so far); dashboard: {client.dashboard_link}", flush=True)
        futures: dict[Path, Any] = {}
        for target, config in unique.items():  # a run initialised from another waits for it
            parent = futures.get(Path(config.init_from)) if config.init_from else None
            futures[target] = client.submit(_task, config, str(target), parent, key=_task_key(target), pure=False)
        owner = {f.key: t for t, f in futures.items()}
        failures = {}
        bar = tqdm(total=len(futures), desc="runs", unit="run", disable=os.environ.get("COOPLIB_PROGRESS", "1") == "0")
        for future in as_completed(list(futures.values()), loop=client.loop):  # this client's, default or not
            if future.status == "error":
                failures[owner[future.key]] = future.exception()
            bar.set_postfix(failed=len(failures), refresh=False)
            bar.update(1)
        bar.close()
    return failures


def _task_key(target: Path) -> str:
    """The Dask key of a run's task: its name and its folder. A long-lived client may
    still hold the task of the same run name in another run root (a sweep repeated in
    another out_dir), which Dask would hand back instead of training this one."""
    import hashlib

    return f"run-{target.name}-{hashlib.sha256(str(target).encode()).hexdigest()[:8]}"


def _task(config: RunConfig, target: str, parent: Any = None) -> str:
    """One run as a Dask task: torch uses the worker's thread count (its cores)."""
    from distributed import get_worker

    torch.set_num_threads(get_worker().state.nthreads)
    run(config, run_dir=target)
    return target


def evaluate_initial(config: RunConfig) -> dict[str, float]:
    """Test metrics of the Learner `config` starts from, before any training step.

    With `init_from`, this is what the inherited (e.g. expanded) weights compute:
    the check that an expansion preserved the function.
    """
    from ..data import DeviceLoader
    from .runtime import autocast_dtype, resolve_device
    from .metrics import evaluate

    data = load_data(config)
    learner, _ = build_learner(config, data)
    device = resolve_device(config.device)
    learner.to(device)
    loader = DeviceLoader(data.x_test, data.y_test, 256, device=device, mean=data.mean, std=data.std)
    return evaluate(learner, loader, autocast_dtype(config.precision, device), device)
