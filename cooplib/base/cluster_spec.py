"""The text form of a cluster spec: what a profile, `$COOPLIB_CLUSTER` or `run_all` may name.

Checked here without Dask, so that a profile is refused before anything starts; what the
names mean and how a cluster is opened is `cooplib.engine.cluster`.
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

#: dask-jobqueue clusters a mapping may name: {"slurm": {...}} -> SLURMCluster
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
SPECS = ("'auto', 'serial', 'local:N', a scheduler address 'tcp://host:port', a mapping {'slurm': {...}} / "
         "{'pbs': {...}} of dask-jobqueue options, a distributed.Client or a Dask cluster object (LocalCluster, SLURMCluster, ...)")


def check_text_spec(spec: Any) -> None:
    """A `ConfigError` naming what to write when the string or mapping `spec` is no cluster."""
    if isinstance(spec, str):
        if spec in ("auto", "serial") or spec.startswith(("tcp://", "tls://")):
            return
        if spec.startswith(("local:", "gpus:")):
            kind, n = spec.split(":", 1)
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(f"cluster {spec!r}: expected {kind}:N with N >= 1 workers")
            return
    elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in JOBQUEUE:
        options = next(iter(spec.values()))
        if options is None or isinstance(options, dict):
            return
        raise ConfigError(f"cluster {spec!r}: the {next(iter(spec))} options must be a mapping of dask-jobqueue keyword arguments")
    raise ConfigError(f"unknown cluster {spec!r}: use {SPECS}")


def profile_problem(spec: Any) -> str | None:
    """Why a profile's `cluster:` entry is no cluster spec, or None. A profile is text: a
    string ('local:4', 'tcp://host:8786', ...) or a jobqueue mapping."""
    if not isinstance(spec, (str, dict)):
        return (f"cluster must be a string like 'local:4' or 'tcp://host:8786', or a mapping like "
                f"{{slurm: {{cores: 8, jobs: 4}}}}, got {spec!r}")
    try:
        check_text_spec(spec)
    except ConfigError as exc:
        return str(exc)
    return None
