"""Where a sweep's runs execute: in this process, or as tasks of a Dask cluster.

cooplib builds no scheduler of its own. `experiment.run_all` asks `open_cluster` for a
Dask client and submits one task per run; the run directory stays the only record (a
lost task resumes from its last committed epoch, and the directory's lock keeps two
workers from training the same run).

The cluster is named by `run_all(cluster=...)`, a profile's `cluster:` entry, or
`$COOPLIB_CLUSTER`:

    None / "auto"        one worker process per visible GPU (each pinned to its GPU)
                         when there are two or more GPUs; else in this process
    "serial"             in this process, one run after another
    "local:N"            a LocalCluster of N worker processes (e.g. a many-core CPU)
    "tcp://host:8786"    an existing Dask scheduler (started with `dask scheduler`)
    {"slurm": {...}}     a dask-jobqueue SLURMCluster (or "pbs": PBSCluster) with these
                         keyword arguments (cores, memory, walltime, queue, account,
                         job_extra_directives, ...) and "jobs": how many to start
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from ..base.errors import ConfigError

ENV = "COOPLIB_CLUSTER"
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def resolve(spec: Any = None) -> Any:
    """The cluster spec in force: the argument, else $COOPLIB_CLUSTER, else "auto"."""
    if spec is None:
        spec = os.environ.get(ENV) or "auto"
        if spec.lstrip().startswith("{"):  # a jobqueue mapping, as a profile passes it on
            spec = json.loads(spec)
    if isinstance(spec, str) and spec == "auto":
        return f"gpus:{_gpu_count()}" if _gpu_count() >= 2 else "serial"
    return spec


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_serial(spec: Any) -> bool:
    return resolve(spec) == "serial"


@contextmanager
def open_cluster(spec: Any) -> Iterator[Any]:
    """A connected `distributed.Client` for `spec` (closed, with its cluster, on exit)."""
    from distributed import Client, LocalCluster

    spec = resolve(spec)
    if isinstance(spec, str) and spec.startswith(("local:", "gpus:")):
        kind, n = spec.split(":", 1)
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"cluster {spec!r}: expected {kind}:N with N >= 1 workers")
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        if kind == "gpus":
            client.register_plugin(PinGPU(int(n)))
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    elif isinstance(spec, str) and spec.startswith(("tcp://", "tls://")):
        client = Client(spec)
        try:
            yield client
        finally:
            client.close()
    elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in JOBQUEUE:
        import dask_jobqueue

        kind, options = next(iter(spec.items()))
        options = dict(options or {})
        jobs = int(options.pop("jobs", 1))
        cluster = getattr(dask_jobqueue, JOBQUEUE[kind])(**options)
        cluster.scale(jobs=jobs)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    else:
        raise ConfigError(
            f"unknown cluster {spec!r}: use 'auto', 'serial', 'local:N', a scheduler address 'tcp://host:port', "
            f"or a mapping {{'slurm': {{...}}}} / {{'pbs': {{...}}}} of dask-jobqueue options"
        )


class PinGPU(WorkerPlugin):
    """Give LocalCluster worker i the GPU i (set before the worker first touches CUDA)."""

    def __init__(self, n_gpus: int):
        self.n_gpus = n_gpus

    def setup(self, worker) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker.name) % self.n_gpus)
