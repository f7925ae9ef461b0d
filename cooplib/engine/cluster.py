"""Where a sweep's runs execute: in this process, or as tasks of a Dask cluster.

cooplib builds no scheduler of its own. `experiment.run_all` asks `open_cluster` for a
Dask client and submits one task per run; the run directory stays the only record (a
lost task resumes from its last committed epoch, and the directory's lock keeps two
workers from training the same run).

The cluster is named by `run_all(cluster=...)` (every notebook's `cluster` parameter),
else it is the running default Dask client, else a profile's `cluster:` entry (which
`cooplib.book` passes as the notebooks' `cluster` parameter) or `$COOPLIB_CLUSTER`:

    a Client             yours (`Client(LocalCluster(...))`, `Client("tcp://...")`): used
                         as it is and never closed
    a cluster object     anything with a `scheduler_address` (`LocalCluster`, a
                         dask-jobqueue `SLURMCluster`, ...): cooplib connects a client of
                         its own for the sweep and closes that client, never your cluster
    None                 the running default client (the last `Client(...)` you opened,
                         `distributed.default_client()`; nothing is started), else
                         $COOPLIB_CLUSTER, else "auto"
    "auto"               one worker process per visible GPU (each pinned to its GPU)
                         when there are two or more GPUs; else in this process
    "serial"             in this process, one run after another (even when a default
                         client runs: the way to opt out)
    "local:N"            a LocalCluster of N worker processes (e.g. a many-core CPU)
    "tcp://host:8786"    an existing Dask scheduler (started with `dask scheduler`)
    {"slurm": {...}}     a dask-jobqueue SLURMCluster (or "pbs": PBSCluster) with these
                         keyword arguments (cores, memory, walltime, queue, account,
                         job_extra_directives, ...) and "jobs": how many to start

Clusters and clients that cooplib starts are closed when the sweep ends, and what Dask's
worker nannies set in this process's environment while spawning workers
(`OMP_NUM_THREADS=1`, ...) is put back as it was.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from ..base.cluster_spec import JOBQUEUE, SPECS, check_text_spec
from ..base.errors import ConfigError

ENV = "COOPLIB_CLUSTER"


def default_client() -> Any:
    """The running default Dask client (`distributed.default_client()`), or None. Starts nothing."""
    try:
        from distributed import default_client as current
    except ImportError:
        return None
    try:
        client = current()
    except ValueError:  # no client opened in this process
        return None
    return client if getattr(client, "status", None) == "running" else None


def resolve(spec: Any = None) -> Any:
    """The cluster in force: the argument, else the running default client, else
    $COOPLIB_CLUSTER, else "auto" (which becomes "gpus:N" or "serial")."""
    if spec is None:
        spec = default_client()
    if spec is None:
        spec = os.environ.get(ENV) or "auto"
        if spec.lstrip().startswith("{"):  # a jobqueue mapping, as JSON
            spec = json.loads(spec)
    if isinstance(spec, str) and spec == "auto":
        return f"gpus:{_gpu_count()}" if _gpu_count() >= 2 else "serial"
    return spec


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_serial(spec: Any) -> bool:
    resolved = resolve(spec)
    return isinstance(resolved, str) and resolved == "serial"


def is_client(obj: Any) -> bool:
    from distributed import Client

    return isinstance(obj, Client)


def is_cluster_object(obj: Any) -> bool:
    """A Dask cluster object (LocalCluster, dask-jobqueue clusters, ...): it has a scheduler address."""
    return not isinstance(obj, (str, bytes, dict)) and not is_client(obj) and hasattr(obj, "scheduler_address")


def check_spec(spec: Any) -> None:
    """A `ConfigError` naming what to write when `spec` is no cluster (checked without starting one)."""
    if spec is None or is_client(spec) or is_cluster_object(spec):
        return
    check_text_spec(spec)


@contextmanager
def open_cluster(spec: Any) -> Iterator[Any]:
    """A connected, synchronous `distributed.Client` for `spec`. A client you passed (or
    the default one) is yours and stays open; a client cooplib connects to your cluster
    object is closed on exit, the cluster is not; what cooplib starts itself (local:N,
    gpus:N, a jobqueue cluster) is closed with its client."""
    from distributed import Client

    spec = resolve(spec)
    check_spec(spec)
    if is_client(spec):
        if spec.status != "running":
            raise ConfigError(f"the Dask client {spec!r} is {spec.status}: pass a running Client (or another cluster)")
        if spec.asynchronous:
            raise ConfigError(f"the Dask client {spec!r} is asynchronous: run_all waits for its runs, so it needs a "
                              f"synchronous Client (Client(cluster), without asynchronous=True)")
        yield spec  # the caller's: never closed here
    elif is_cluster_object(spec):
        client = Client(spec, set_as_default=False)
        try:
            yield client
        finally:
            client.close()  # ours; the cluster is the caller's and stays up
    elif isinstance(spec, str) and spec.startswith(("local:", "gpus:")):
        from distributed import LocalCluster

        kind, n = spec.split(":", 1)
        with _environ_kept():
            cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=":0")
            try:
                client = Client(cluster, set_as_default=False)
                try:
                    if kind == "gpus":
                        client.register_plugin(PinGPU(int(n)))
                    yield client
                finally:
                    client.close()
            finally:
                cluster.close()
    elif isinstance(spec, str):  # a scheduler address
        client = Client(spec, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    else:  # a dask-jobqueue mapping
        import dask_jobqueue

        kind, options = next(iter(spec.items()))
        options = dict(options or {})
        jobs = int(options.pop("jobs", 1))
        with _environ_kept():
            cluster = getattr(dask_jobqueue, JOBQUEUE[kind])(**options)
            try:
                cluster.scale(jobs=jobs)
                client = Client(cluster, set_as_default=False)
                try:
                    yield client
                finally:
                    client.close()
            finally:
                cluster.close()


@contextmanager
def _environ_kept() -> Iterator[None]:
    """Put this process's environment back as it was: a Dask Nanny sets its
    `distributed.nanny.pre-spawn-environ` (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ...) in
    the *parent's* os.environ before spawning each worker, and leaves it there, which
    slowed everything this process (and its children) ran afterwards."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


class PinGPU(WorkerPlugin):
    """Give LocalCluster worker i the GPU i (set before the worker first touches CUDA)."""

    def __init__(self, n_gpus: int):
        self.n_gpus = n_gpus

    def setup(self, worker) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker.name) % self.n_gpus)
