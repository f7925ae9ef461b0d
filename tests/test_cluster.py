"""Sweeps on a real Dask LocalCluster: same run directories as serial, survive a lost
worker, and a failing run does not stop the others; a researcher's own Client, cluster
object or default client runs them and stays open."""
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


def _restore(environ: dict) -> None:
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def environ_kept():
    """What a test here sets in os.environ is put back (a Dask nanny sets OMP_NUM_THREADS=1
    and more in this process when it spawns a worker: that slowed every later test)."""
    before = dict(os.environ)
    yield
    _restore(before)


@pytest.fixture(scope="module")
def local_cluster():
    """The researcher's own LocalCluster: 2 worker processes of 1 thread each."""
    from distributed import LocalCluster

    before = dict(os.environ)
    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    _restore(before)  # the nannies' OMP_NUM_THREADS=1 etc. stay out of this pytest process
    try:
        yield local
    finally:
        local.close()
        _restore(before)


@pytest.fixture
def client(local_cluster):
    """`Client(LocalCluster(...))` as a researcher opens it: the running default client."""
    from distributed import Client

    with Client(local_cluster) as c:
        yield c


def tiny_digits() -> list[RunConfig]:
    base = RunConfig(dataset="digits", model="resnet8", epochs=1, batch_size=32, train_size=100, test_size=100,
                     schedule="constant", device="cpu", progress=False, tensorboard=False)
    return [base.replace(seed=0), base.replace(seed=1)]


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


def test_cluster_in_force_explicit_then_default_client_then_environment(monkeypatch):
    """Nothing is started to find out: a named cluster wins, then the default client."""
    monkeypatch.delenv(cluster.ENV, raising=False)
    assert cluster.default_client() is None  # no Client opened in this process: nothing to use

    class Cluster:  # what LocalCluster and dask-jobqueue clusters have in common
        scheduler_address = "tcp://127.0.0.1:1"

    named = Cluster()
    assert cluster.resolve(named) is named and cluster.is_cluster_object(named) and not cluster.is_serial(named)
    cluster.check_spec(named)
    monkeypatch.setattr(cluster, "default_client", lambda: "the default client")
    monkeypatch.setenv(cluster.ENV, "local:3")
    assert cluster.resolve(None) == "the default client"  # before $COOPLIB_CLUSTER and the profile's
    assert cluster.resolve("local:2") == "local:2" and cluster.resolve(named) is named
    assert cluster.is_serial("serial")  # the opt-out, even with a default client
    for bad in ("lokal:2", "local:0", {"slurm": 4}, {"sge": {}}, 3):
        with pytest.raises(ConfigError, match="cluster"):
            cluster.check_spec(bad)


@pytest.mark.slow
@pytest.mark.parametrize("named", ["client", "cluster object", "nothing (the default client)", "serial"])
def test_run_all_on_the_researchers_own_dask_client(local_cluster, client, tmp_path, named):
    """run_all(cluster=Client(LocalCluster(...))), cluster=the LocalCluster, or nothing named
    while that Client is the default: the runs are tasks on its workers, and the client and
    cluster are still open afterwards. "serial" still means this process."""
    from distributed import get_task_stream
    from distributed.core import Status

    assert cluster.default_client() is client
    given = {"client": client, "cluster object": local_cluster, "serial": "serial"}.get(named)
    cfgs = tiny_digits()
    with get_task_stream(client) as stream:
        dirs = experiment.run_all(cfgs, tmp_path / "runs", cluster=given)
    assert [runs.status(d) for d in dirs] == ["complete"] * len(cfgs)
    tasks = {t["key"]: t["worker"] for t in stream.data if str(t["key"]).startswith("run-")}
    if named == "serial":
        assert tasks == {}
    else:  # one task per run, on the workers of this cluster (processes other than this one)
        assert sorted(tasks) == sorted(experiment._task_key(d) for d in dirs)
        pids = client.run(os.getpid)
        assert set(tasks.values()) <= set(pids) and os.getpid() not in pids.values()
    assert client.status == "running" and local_cluster.status == Status.running
    assert len(client.scheduler_info()["workers"]) == 2 and client.submit(sum, [1, 2]).result() == 3
    assert cluster.default_client() is client  # a client cooplib connected to the cluster is closed, not left as default


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
    import dask

    nanny_keys = list(dask.config.get("distributed.nanny.pre-spawn-environ"))  # OMP_NUM_THREADS, MKL_..., ...
    before = {k: os.environ.get(k) for k in nanny_keys}
    with pytest.raises(SweepError, match=r"1 of 3 run\(s\) failed.*\n.*" + bad.run_name() + r": DatasetNotFoundError"):
        experiment.run_all([good[0], bad, good[1]], tmp_path / "runs", cluster=where)
    assert all(runs.status(tmp_path / "runs" / c.run_name()) == "complete" for c in good)
    assert {k: os.environ.get(k) for k in nanny_keys} == before  # a LocalCluster's nannies set them here; put back


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
