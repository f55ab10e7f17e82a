"""MPICluster: ipyparallel engines as MPI ranks, training streamed from rank 0, Stop, resize, connect.

One cluster (in a temporary profile) serves the module; each test that needs two healthy engines gets them
from the ``cluster`` fixture, which resizes or restarts the shared cluster first, so the tests run in any
order. Runs are tiny (a few cubes, four components, one thread per rank).
"""

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from gmmkit.cluster import MPICluster
from gmmkit.errors import InputError, LaunchError
from gmmkit.machine import available_cores
from gmmkit.parallel import launch

HOROVOD = importlib.util.find_spec("horovod") is not None  # else the current lane: the mpi backend
SMALL = {"data": {"size": 48, "val_size": 8, "train_size": 32}, "model": {"filters": 4, "latent": 16}}


def tiny(out, **train):
    return tiny_config(out, **SMALL, **{"epochs": 3, **train})


# --- no cluster needed -----------------------------------------------------------------------


def test_arguments_are_checked():
    with pytest.raises(InputError, match="n: expected a positive number of engines"):
        MPICluster(n=0)
    with pytest.raises(InputError, match="controller_ip"):
        MPICluster(n=1, controller_ip="")
    with pytest.raises(LaunchError, match="cluster_id 'nope': no running cluster"):
        MPICluster.connect(cluster_id="nope", profile_dir="/tmp/gmmkit-no-such-profile")


def test_engine_launch_settings():
    c = MPICluster(n=1, mpi_args=["--report-bindings"], env={"GMMKIT_X": "1"})
    assert c.engine_mpi_args(1)[-1] == "--report-bindings"
    assert "--oversubscribe" in c.engine_mpi_args(available_cores() + 1)
    assert "--oversubscribe" not in c.engine_mpi_args(1)
    assert "--host" not in c.engine_mpi_args(1)  # this machine only
    env = c.engine_env()
    assert env["GMMKIT_X"] == "1" and env["TF_CPP_MIN_LOG_LEVEL"]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    assert ("OMPI_ALLOW_RUN_AS_ROOT" in env) == root and ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM" in env) == root
    # the placement of gmmkit train, as OpenMPI settings (a user's own setting wins: test_launch)
    assert env["OMPI_MCA_mpi_yield_when_idle"] == "1"  # idle ranks yield the CPU to TensorFlow
    assert env["OMPI_MCA_hwloc_base_binding_policy"] == "none" and env["OMPI_MCA_rmaps_base_mapping_policy"] == "slot"
    assert "PATH" not in env  # only additions: the launcher merges them into the kernel's environment
    # engines on this machine talk through shared memory (no TCP port of theirs) and mpiexec over the loopback
    assert env["OMPI_MCA_oob_tcp_if_include"] == "127.0.0.0/8" and "tcp" in env["OMPI_MCA_btl"].split(",")[-1]


def test_engines_on_hosts_get_the_placement_of_gmmkit_train(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("nodeA slots=2\nnodeB slots=2\n")
    c = MPICluster(n=3, hostfile=str(hostfile), controller_ip="10.0.0.1", env={"GMMKIT_CACHE": "/shared/cache"})
    assert c.slots == 4
    args = c.engine_mpi_args(3)
    assert args[args.index("--host") + 1] == "nodeA:2,nodeB:2"
    forwarded = {args[i + 1] for i, a in enumerate(args) if a == "-x"}
    assert {"GMMKIT_CACHE", "IPP_CLUSTER_ID", "IPP_PROFILE_DIR", "IPP_CONNECTION_INFO"} <= forwarded
    with pytest.raises(InputError, match="n: expected at most the 4 slots"):
        MPICluster(n=5, hostfile=str(hostfile), controller_ip="10.0.0.1")
    with pytest.raises(InputError, match="controller_ip: the engines on nodeA:2,nodeB:2 .* cannot reach"):
        MPICluster(n=2, hostfile=str(hostfile))  # 127.0.0.1 is no address for engines on other hosts
    with pytest.raises(InputError, match="n: expected at most the 4 slots"):
        c.resize(5)
    template = MPICluster.slurm(2, controller_ip="10.0.0.1", sbatch_options=["--nodes=2"])._engine_config()
    script = template.SlurmEngineSetLauncher.batch_template
    assert "#SBATCH --nodes=2" in script and "exec mpiexec -x " in script and "-n {n} {program_and_args}" in script


# --- a real cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    profile = tmp_path_factory.mktemp("ipython") / "profile_gmmkit"
    c = MPICluster(n=2, profile_dir=str(profile)).start()
    yield c
    c.stop()


@pytest.fixture
def cluster(shared_cluster):
    """The shared cluster with two engines that answer, whatever an earlier test did to it."""
    try:
        healthy = shared_cluster.n == 2 and sorted(shared_cluster.rank_map(refresh=True).values()) == [0, 1]
    except Exception:
        healthy = False
    if not healthy:
        shared_cluster.restart(2)
    return shared_cluster


@pytest.mark.mpi
def test_engines_are_the_ranks_of_one_world_and_files_are_private(cluster):
    ranks = cluster.rank_map()
    assert sorted(ranks.values()) == [0, 1] and sorted(ranks) == sorted(cluster.client.ids)
    assert cluster.engine_of_rank(0) in ranks
    files = cluster.connection_files()
    assert {p.name.rsplit("-", 1)[-1] for p in files} >= {"client.json", "engine.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    client_info = json.loads(next(p for p in files if p.name.endswith("-client.json")).read_text())
    assert client_info["interface"] == "tcp://127.0.0.1"  # the controller listens on localhost only


@pytest.mark.mpi
def test_train_needs_as_many_workers_as_engines(cluster, tmp_path):
    with pytest.raises(InputError, match=r"train.workers: expected 2 .* received 1; call cluster.resize\(1\)"):
        cluster.train(tiny(tmp_path / "r", workers=1))


def streamed_is_written(run, summary) -> list[int]:
    """The epochs rank 0 streamed, asserted equal to what it wrote in its metrics.jsonl. The records travel
    apart from the result (ipyparallel's iopub): the last may arrive after wait() returned, so it is waited for."""
    deadline = time.monotonic() + 60
    while len(run.metrics) < summary["epochs"]:
        assert time.monotonic() < deadline, f"streamed {len(run.metrics)} of {summary['epochs']} epochs"
        time.sleep(0.05)
    with open(Path(run.cfg.out) / "metrics.jsonl") as fh:
        assert [json.loads(line) for line in fh] == run.metrics  # the stream is what rank 0 wrote
    return [r["epoch"] for r in run.metrics]


@pytest.mark.mpi
def test_rank_0_streams_each_epoch_while_the_run_goes_on_and_stop_ends_it_keeping_the_cluster(cluster, tmp_path):
    # a run that cannot end by itself: epochs arrive while it goes on, on any machine (a 4-epoch run could end
    # between two looks of the test on a fast one)
    run = cluster.train(tiny(tmp_path / "s", workers=2, strategy="weak", epochs=10000))
    deadline = time.monotonic() + 300
    while len(run.metrics) < 2:
        assert not run.done() and time.monotonic() < deadline, "no epoch arrived while the run went on"
        time.sleep(0.05)
    summary = run.stop(wait=True, timeout=30)  # a bounded wait: the run ends after its current step
    assert summary["status"] == "stopped" and summary["workers"] == 2
    assert summary["backend"].startswith("horovod" if HOROVOD else "mpi4py")  # each lane's default backend
    assert streamed_is_written(run, summary) == list(range(1, summary["epochs"] + 1))
    assert summary["epochs"] >= 2
    # the engines stay: the next run streams every epoch to its end
    assert sorted(cluster.rank_map(refresh=True).values()) == [0, 1]
    again = cluster.train(tiny(tmp_path / "again", workers=2, epochs=2))
    summary = again.wait(timeout=120)
    assert summary["status"] == "max_epochs" and summary["workers"] == 2
    assert streamed_is_written(again, summary) == [1, 2]


@pytest.mark.mpi
def test_a_dying_engine_is_reported_and_restart_recovers(cluster, tmp_path):
    pids = cluster.client[:].apply_sync(os.getpid)
    pid_of_rank = {cluster.rank_map()[e]: pid for e, pid in zip(cluster.client.ids, pids)}
    run = cluster.train(tiny(tmp_path / "k", workers=2, epochs=10000))
    deadline = time.monotonic() + 300
    while not run.metrics and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid_of_rank[1], 9)
    # not TimeoutError: reported within the wait, in mpiexec's words (which rank, how it ended)
    with pytest.raises(RuntimeError, match=r"rank 1 \(pid \d+ on \S+\) was killed by SIGKILL"):
        run.wait(timeout=60)
    finished = [json.loads(line) for line in open(tmp_path / "k" / "metrics.jsonl")]
    assert finished and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))
    cluster.restart(2)  # a fresh MPI world
    assert sorted(cluster.rank_map(refresh=True).values()) == [0, 1]
    assert cluster.train(tiny(tmp_path / "after", workers=2, epochs=1)).wait(timeout=120)["status"] == "max_epochs"


@pytest.mark.mpi
def test_resize_restarts_the_engines_as_a_new_world(cluster):
    old = set(cluster.client.ids)
    cluster.resize(1)
    assert cluster.n == 1 and sorted(cluster.rank_map().values()) == [0]
    assert not set(cluster.client.ids) & old  # new engines, not the old ones left over
    for path in cluster.connection_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cluster.restart()  # ipyparallel's own restart of the engine set, same size and launch settings
    assert cluster.n == 1 and sorted(cluster.rank_map(refresh=True).values()) == [0]


@pytest.mark.mpi
def test_connect_to_a_cluster_started_with_ipcluster(tmp_path):
    profile = tmp_path / "profile_shell"
    ipcluster = [
        os.path.join(os.path.dirname(sys.executable), "ipcluster"),
        "start",
        "--engines=MPI",
        "-n",
        "2",
        f"--profile-dir={profile}",
        "--cluster-id=shell",
        "--daemonize",
    ]
    subprocess.run(ipcluster, env=launch.mpi_env(), check=True, timeout=120)
    cluster_file = profile / "security" / "cluster-shell.json"
    deadline = time.monotonic() + 120
    while not _has_engines(cluster_file):
        assert time.monotonic() < deadline, "ipcluster did not write its cluster file"
        time.sleep(0.2)
    try:
        with MPICluster.connect(cluster_id="shell", profile_dir=str(profile), timeout=120) as c:
            assert c.n == 2 and sorted(c.rank_map().values()) == [0, 1]
        assert not c.running  # leaving the block disconnected ...
        c = MPICluster.connect(cluster_id="shell", profile_dir=str(profile))  # ... the cluster still runs
        assert sorted(c.rank_map().values()) == [0, 1]
    finally:
        MPICluster.connect(cluster_id="shell", profile_dir=str(profile)).stop()


def _has_engines(cluster_file) -> bool:
    try:
        return bool(json.loads(cluster_file.read_text()).get("engines"))
    except (OSError, ValueError):
        return False
