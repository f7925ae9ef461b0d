"""Sweeps on a real Dask LocalCluster: same run directories as serial, survive a lost
worker, and a failing run does not stop the others."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from cooplib.engine import cluster, experiment, runs
from cooplib.engine.config import RunConfig
from cooplib.base.errors import ConfigError, SweepError


def configs(quadrants_npz, epochs=3, schedule="step") -> list[RunConfig]:
    base = RunConfig(dataset="npz", dataset_args={"path": str(quadrants_npz)}, model="resnet8", epochs=epochs, batch_size=32,
                     lr=0.05, deterministic=True, device="cpu", progress=False, tensorboard=False, schedule=schedule)
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
def test_local_cluster_sweep_equals_serial_and_survives_a_killed_worker(quadrants_npz, tmp_path):
    cfgs = configs(quadrants_npz, epochs=6)
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
def test_a_failing_run_is_reported_and_does_not_stop_the_others(quadrants_npz, tmp_path, where):
    good = configs(quadrants_npz, epochs=1, schedule="constant")[:2]
    bad = good[0].replace(dataset_args={"path": str(tmp_path / "missing.npz")})
    with pytest.raises(SweepError, match=r"1 of 3 run\(s\) failed.*\n.*" + bad.run_name() + r": DatasetNotFoundError"):
        experiment.run_all([good[0], bad, good[1]], tmp_path / "runs", cluster=where)
    assert all(runs.status(tmp_path / "runs" / c.run_name()) == "complete" for c in good)


SLURM_CONF = """ClusterName=cooplibtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm(tmp_path_factory, monkeypatch):
    """A real one-node Slurm (slurmctld + slurmd, munge auth) for this test, as root."""
    import shutil
    import socket
    import subprocess

    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "sinfo", "munged", "munge") if not shutil.which(b)
               and not Path(f"/usr/sbin/{b}").exists()]
    if missing or os.geteuid() != 0:
        pytest.skip(f"a local Slurm needs root and Debian's slurm-wlm + munge ({'missing ' + ', '.join(missing) if missing else 'not root'})")
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "-c"], check=False)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], capture_output=True)
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
            pytest.skip("munged could not start, so Slurm cannot authenticate")
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 2048
    conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], dir=d, ctld_port=_free_port(),
                                      d_port=_free_port(), cpus=os.cpu_count(), memory=memory))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    started = [subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], capture_output=True, text=True)
               for daemon in ("slurmctld", "slurmd")]
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
            if out == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "; ".join(p.stderr.strip() for p in started) + " " + (d / "slurmctld.log").read_text()[-500:]
            pytest.skip(f"the Slurm daemons did not come up: {logs}")
        yield d
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            if (d / pid_file).exists():
                try:
                    os.kill(int((d / pid_file).read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.mark.slow
def test_a_sweep_runs_on_slurm_through_dask_jobqueue(quadrants_npz, tmp_path, slurm):
    cfgs = configs(quadrants_npz, epochs=2, schedule="constant")[:2]
    spec = {"slurm": {"cores": 1, "memory": "2GB", "processes": 1, "walltime": "00:10:00", "jobs": 2,
                      "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
                      "log_directory": str(slurm / "logs")}}
    dirs = experiment.run_all(cfgs, tmp_path / "runs", cluster=spec)
    assert [runs.status(d) for d in dirs] == ["complete", "complete"]
    # the work ran in Slurm jobs: each wrote its log through the batch system
    assert len(list((slurm / "logs").glob("*.err"))) >= 1


def test_jobqueue_job_scripts_for_slurm_and_pbs():
    """What a cluster receives, as text (the part no local daemon can show for PBS)."""
    import dask_jobqueue

    slurm = dask_jobqueue.SLURMCluster(cores=8, memory="32GB", walltime="04:00:00", queue="gpu",
                                       job_extra_directives=["--gres=gpu:1"], scheduler_options={"dashboard_address": ":0"})
    pbs = dask_jobqueue.PBSCluster(cores=8, memory="32GB", walltime="04:00:00", queue="gpu",
                                   resource_spec="select=1:ncpus=8:ngpus=1:mem=32GB", scheduler_options={"dashboard_address": ":0"})
    try:
        s, p = slurm.job_script(), pbs.job_script()
    finally:
        slurm.close()
        pbs.close()
    assert "#SBATCH -p gpu" in s and "#SBATCH --gres=gpu:1" in s and "#SBATCH -t 04:00:00" in s and "distributed.cli.dask_worker" in s
    assert "#PBS -q gpu" in p and "#PBS -l select=1:ncpus=8:ngpus=1:mem=32GB" in p and "#PBS -l walltime=04:00:00" in p
