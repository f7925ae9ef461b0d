"""Sweeps on a real Dask LocalCluster: same run directories as serial, survive a lost
worker, and a failing run does not stop the others."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cooplib import cluster, experiment, runs
from cooplib.config import RunConfig
from cooplib.errors import ConfigError, SweepError


@pytest.fixture
def npz_path(tmp_path):
    g = np.random.default_rng(0)
    y = np.arange(136) % 4
    x = g.integers(0, 60, (136, 3, 8, 8)).astype(np.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 150
    path = tmp_path / "quadrants.npz"
    np.savez(path, x_train=x[:96], y_train=y[:96], x_test=x[96:], y_test=y[96:])
    return path


def configs(npz_path, epochs=3) -> list[RunConfig]:
    base = RunConfig(dataset="npz", dataset_args={"path": str(npz_path)}, model="resnet8", epochs=epochs, batch_size=32,
                     lr=0.05, deterministic=True, device="cpu", progress=False, tensorboard=False)
    return [base.replace(seed=0), base.replace(seed=1), base.replace(method="one", method_args={"branches": 2}),
            base.replace(method="dml", method_args={"peers": 2})]


def serial_reference(cfgs, root) -> list[Path]:
    """The serial sweep with one torch thread, as each single-threaded worker computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return experiment.run_all(cfgs, root, cluster="serial")
    finally:
        torch.set_num_threads(threads)


def same_run(a: Path, b: Path) -> bool:
    ra, rb = runs.RunDir(a), runs.RunDir(b)
    untimed = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rs]  # noqa: E731
    return (rb.state == "complete" and not rb.verify()
            and ra.file_path("last").read_bytes() == rb.file_path("last").read_bytes()
            and untimed(ra.records()) == untimed(rb.records()))


def test_cluster_specs_resolve(monkeypatch):
    monkeypatch.delenv(cluster.ENV, raising=False)
    if torch.cuda.device_count() < 2:
        assert cluster.resolve(None) == "serial"  # a laptop: nothing changes
    monkeypatch.setenv(cluster.ENV, '{"slurm": {"cores": 4, "jobs": 2}}')
    assert cluster.resolve(None) == {"slurm": {"cores": 4, "jobs": 2}}
    assert cluster.resolve("local:2") == "local:2"
    with pytest.raises(ConfigError, match="unknown cluster 'lokal:2'"):
        with cluster.open_cluster("lokal:2"):
            pass


@pytest.mark.slow
def test_local_cluster_sweep_equals_serial_and_survives_a_killed_worker(npz_path, tmp_path):
    cfgs = configs(npz_path, epochs=6)
    ref = serial_reference(cfgs, tmp_path / "serial")
    killed = {}

    def kill_a_worker_mid_run():
        """SIGKILL the process training the first run that has committed 2 of 6 epochs."""
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for d in (tmp_path / "dask").glob("*"):
                rd = runs.RunDir(d)
                try:
                    if rd.state == "running" and 2 <= rd.epochs_done < 6 and (d / runs.LOCK).exists():
                        pid = int((d / runs.LOCK).read_text().split()[1])
                        os.kill(pid, signal.SIGKILL)
                        killed[d.name] = rd.epochs_done
                        return
                except (ValueError, IndexError, ProcessLookupError, FileNotFoundError, OSError):
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_mid_run)
    killer.start()
    dirs = experiment.run_all(cfgs + cfgs[:1], tmp_path / "dask", cluster="local:2")  # a duplicate trains once
    killer.join()
    assert killed, "a worker must have been killed mid-run for this test to mean anything"
    assert [d.name for d in dirs] == [d.name for d in ref + ref[:1]]
    assert all(same_run(a, b) for a, b in zip(ref, dirs))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["serial", "local:2"])
def test_a_failing_run_is_reported_and_does_not_stop_the_others(npz_path, tmp_path, where):
    good = configs(npz_path, epochs=1)[:2]
    bad = good[0].replace(dataset_args={"path": str(tmp_path / "missing.npz")})
    with pytest.raises(SweepError, match=r"1 of 3 run\(s\) failed.*\n.*" + bad.run_name() + r": DatasetNotFoundError"):
        experiment.run_all([good[0], bad, good[1]], tmp_path / "runs", cluster=where)
    assert all(runs.status(tmp_path / "runs" / c.run_name()) == "complete" for c in good)
