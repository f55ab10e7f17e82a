"""gmmkit's commands on emulated hosts (issue 17): ranks on two hosts through a hostfile or --hosts.

Every rank runs on its own emulated host (a network and UTS namespace with its own name and address,
``tests/support/hosts.py``) and starts with the clean environment of an ssh login (``gmk-rsh``), so what
the ranks need must travel the way it must on a real cluster: gmmkit's launcher forwards ``PYTHONPATH``,
``GMMKIT_*``, ``TF_*`` and the rest (``gmmkit.parallel.launch.FORWARDED``). The test process only adds
what a site would configure: OpenMPI's launch agent (``OMPI_MCA_plm_rsh_agent``).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_horovod, tiny_config, wait_for

from gmmkit.data import load_phantoms
from gmmkit.data.cubes import CubeSet
from gmmkit.files import read_jsonl
from gmmkit.parallel import launch, network, placement

pytestmark = pytest.mark.mpi
LOST_HOST_LIMIT_S = 30  # issue 17: a lost host is named within 30 s


def gmmkit(hosts, *args, timeout=300, check=True):
    """``gmmkit ARGS`` from the head (the root namespace), as a user on a login node types it."""
    cmd = [sys.executable, "-m", "gmmkit", *map(str, args)]
    proc = subprocess.run(cmd, env=hosts.mpi_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def losses(run_dir, key="val_loss"):
    return [r[key] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


@needs_horovod
def test_ranks_on_hosts_talk_over_the_network_that_reaches_them(emulated_hosts):
    """OpenMPI's TCP transports keep to the hosts' network (10.213.0.0/24: the head's bridge and every host),
    not every interface they find (the root namespace's eth0 too); its settings reach the ranks below."""
    hosts = placement.parse_hostfile(emulated_hosts.hostfile)
    assert network.mca_network(hosts) == {"btl_tcp_if_include": "10.213.0.0/24", "oob_tcp_if_include": "10.213.0.0/24"}
    settings = launch.mpi_settings({"OMPI_MCA_mca_base_param_files": "/nonexistent"}, hosts)
    assert settings["OMPI_MCA_btl_tcp_if_include"] == "10.213.0.0/24" and "OMPI_MCA_btl" not in settings


@pytest.mark.lane  # in the current lane on the MPI backend (no Horovod there)
def test_strong_run_with_one_rank_per_host_follows_the_sequential_run(emulated_hosts, tmp_path):
    """In exact mode (issue 16) the 2-rank run across hosts, over TCP, has the one-process run's losses and
    weights to the last bit."""
    cfg = tiny_config(tmp_path / "n1", epochs=2, lr=2e-3, exact=True)
    two = cfg.replace(train={"strategy": "strong", "workers": 2}, out=str(tmp_path / "n2"))
    for run in (cfg, two):
        (tmp_path / f"{Path(run.out).name}.json").write_text(run.to_json())
    gmmkit(emulated_hosts, "train", "--config", tmp_path / "n1.json")
    proc = gmmkit(emulated_hosts, "train", "--config", tmp_path / "n2.json", "--hostfile", emulated_hosts.hostfile)
    assert "launching 2 ranks with mpirun on gmk-node0:1,gmk-node1:1" in proc.stdout
    summary = json.loads((tmp_path / "n2" / "summary.json").read_text())
    assert summary["hosts"] == ["gmk-node0", "gmk-node1"] and summary["local_ranks"] == [0, 0]
    assert summary["workers"] == 2 and summary["status"] == "max_epochs" and summary["exact"]
    for key in ("train_loss", "val_loss"):
        assert losses(tmp_path / "n2", key) == losses(tmp_path / "n1", key)
    with np.load(tmp_path / "n1" / "checkpoint.npz") as a, np.load(tmp_path / "n2" / "checkpoint.npz") as b:
        arrays = [k for k in a.files if k[0] in "wo" and k[1:].isdigit()]
        assert arrays and all(np.array_equal(a[k], b[k]) for k in arrays)


def _train_until_first_epoch(hosts, cfg, *flags):
    """Start ``gmmkit train`` for ``cfg`` and return the process once the run has finished an epoch."""
    cfg_file = os.path.join(os.path.dirname(cfg.out), "cfg.json")
    with open(cfg_file, "w") as fh:
        fh.write(cfg.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", cfg_file, *map(str, flags)]
    proc = subprocess.Popen(
        cmd,
        env=hosts.mpi_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(cfg.out),
    )
    deadline = time.monotonic() + 300
    while len(read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch:\n" + "".join(
            proc.communicate(timeout=30)
        )
        time.sleep(0.1)
    return proc, cfg_file


def _lose(hosts, proc, how: str, name: str) -> tuple[float, str]:
    """Lose host ``name`` (``kill`` all its processes or ``cut`` its link) under a running ``gmmkit train``;
    returns the seconds until gmmkit exited and what it printed on stderr."""
    t0 = time.monotonic()
    hosts.kill(name) if how == "kill" else hosts.cut(name)
    try:
        _, stderr = proc.communicate(timeout=LOST_HOST_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(
            f"gmmkit train still running {LOST_HOST_LIMIT_S} s after {how} of {name}:\n" + "".join(proc.communicate())
        )
    finally:
        if how == "cut":
            hosts.kill(name)  # its rank and daemon live on, unreachable: a real cluster would reboot the node
            hosts.restore(name)
    return time.monotonic() - t0, stderr


@needs_horovod
def test_a_killed_host_is_named_with_its_ranks_and_the_run_resumes(emulated_hosts, tmp_path, record_property):
    """Three ranks, two on gmk-node0 and one on gmk-node1, each host's cores shared by its own ranks."""
    hostfile = emulated_hosts.write_hostfile(tmp_path / "hostfile", slots=2, hosts=["gmk-node0"])
    with open(hostfile, "a") as fh:
        fh.write("gmk-node1 slots=1\n")
    cfg = tiny_config(tmp_path / "run", epochs=10000, workers=3, threads=None)
    proc, cfg_file = _train_until_first_epoch(emulated_hosts, cfg, "--hostfile", hostfile)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hosts"] == ["gmk-node0", "gmk-node0", "gmk-node1"] and summary["local_ranks"] == [0, 1, 0]
    cores = len(os.sched_getaffinity(0))  # every emulated host has this machine's cores
    assert summary["threads"] == [max(1, cores // 2)] * 2 + [cores]

    took, stderr = _lose(emulated_hosts, proc, "kill", "gmk-node1")
    record_property("seconds_to_name_the_host", round(took, 2))
    print(f"\n[gmmkit train, host killed] exited {took:.2f} s later:\n{stderr[-600:]}")
    assert proc.returncode != 0
    assert "host gmk-node1 (rank 2) was lost" in stderr and "--resume" in stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "host gmk-node1 (rank 2) was lost" in summary["error"]
    finished = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert finished and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))

    # the host is back (an empty namespace, like a rebooted node): --resume continues on both hosts
    gmmkit(
        emulated_hosts,
        "train",
        "--resume",
        "--out",
        tmp_path / "run",
        "--epochs",
        len(finished) + 1,
        "--hostfile",
        hostfile,
    )
    resumed = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == list(range(1, len(finished) + 2))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "max_epochs"


@needs_horovod
def test_a_host_whose_link_is_cut_is_named_within_30_s(emulated_hosts, tmp_path, record_property):
    """Nothing closes when a link is cut: only gmmkit's TCP keepalive settings for mpirun's daemon connections
    (the test sets none) end the job in time."""
    assert not [k for k in emulated_hosts.mpi_env() if "keepalive" in k]
    # a cubes.npz named relative to the working folder: every rank reads it where it lies (a shared folder)
    CubeSet.of(load_phantoms(120, seed=0, cube=16).cubes).save(tmp_path / "cubes.npz")
    cfg = tiny_config(tmp_path / "run", {"dataset": "cubes.npz"}, epochs=10000, workers=2)
    proc, _ = _train_until_first_epoch(emulated_hosts, cfg, "--hosts", "gmk-node0,gmk-node1")
    took, stderr = _lose(emulated_hosts, proc, "cut", "gmk-node1")
    record_property("seconds_to_name_the_host", round(took, 2))
    print(f"\n[gmmkit train, link cut] exited {took:.2f} s later:\n{stderr[-600:]}")
    assert proc.returncode != 0 and "host gmk-node1 (rank 1) was lost" in stderr
    finished = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert finished and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dataset"] == str(tmp_path / "cubes.npz")


@needs_horovod
def test_the_sweep_runs_real_ranks_across_hosts_up_to_the_slots(emulated_hosts, tmp_path):
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(tiny_config(tmp_path / "unused", epochs=2).to_json())
    out = tmp_path / "sweep"
    proc = gmmkit(
        emulated_hosts,
        "sweep",
        "--config",
        cfg_file,
        "--strategies",
        "strong",
        "--workers",
        "1,2,4",
        "--simulate",
        "--no-calibrate",
        "--exact",
        "--hostfile",
        emulated_hosts.hostfile,
        "--out",
        out,
    )
    results = json.loads((out / "results.json").read_text())
    modes = {r["workers"]: (r["mode"], r["status"]) for r in results["runs"]}
    assert modes == {1: ("real", "max_epochs"), 2: ("real", "max_epochs"), 4: ("simulated", "max_epochs")}, proc.stdout
    real = json.loads((out / "runs" / "strong-n2" / "summary.json").read_text())
    assert real["hosts"] == ["gmk-node0", "gmk-node1"] and not real["simulated"]
    study = json.loads((out / "study.json").read_text())
    assert study["placement"]["hosts"] == [["gmk-node0", 1], ["gmk-node1", 1]] and study["max_real"] is None
    for n in (2, 4):  # exact mode: real ranks across hosts and the simulation on the sequential path, bitwise
        assert losses(out / "runs" / f"strong-n{n}") == losses(out / "runs" / "sequential-n1")


def test_a_host_that_cannot_reach_mpirun_is_named_and_nothing_is_written(emulated_hosts, tmp_path, monkeypatch):
    """A host that cannot connect back to mpirun (here: the head unreachable from it, an answer its daemon gets at
    once) fails the job at its start: gmmkit says which host, in one line of its own, after the daemon's tries
    (oob_tcp_retry_delay: one a second; 2 here, set as a user sets OpenMPI's parameters, 10 by default), and
    leaves no run folder behind."""
    monkeypatch.setenv("OMPI_MCA_oob_tcp_max_recon_attempts", "2")
    cfg = tiny_config(tmp_path / "run", workers=2)
    (tmp_path / "run.json").write_text(cfg.to_json())
    route = ["ip", "route", "add", "unreachable", f"{emulated_hosts.head_address}/32"]
    emulated_hosts.run("gmk-node1", *route).check_returncode()
    try:
        t0 = time.monotonic()
        proc = gmmkit(
            emulated_hosts, "train", "--config", tmp_path / "run.json", "--hosts", "gmk-node0,gmk-node1", check=False
        )
        took = time.monotonic() - t0
    finally:
        emulated_hosts.run("gmk-node1", "ip", "route", "del", "unreachable", f"{emulated_hosts.head_address}/32")
    print(f"\n[a host that cannot reach mpirun] {took:.1f} s: {proc.stderr.strip().splitlines()[-1:]}")
    ours = [line for line in proc.stderr.splitlines() if line.startswith("gmmkit train: error:")]
    assert proc.returncode != 0 and ours == [
        "gmmkit train: error: the job did not start: host gmk-node1 could not connect back to mpirun "
        "(its network, or a firewall between the hosts)"
    ], proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def _no_route_count(hosts, name) -> int:
    """How many packets host ``name``'s kernel found no route for (``Ip: OutNoRoutes`` of its namespace)."""
    ip = [
        line.split() for line in hosts.run(name, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Ip:")
    ]
    return int(ip[1][ip[0].index("OutNoRoutes")])


def test_a_host_unreachable_as_its_daemon_starts_joins_once_it_answers(emulated_hosts):
    """gmmkit's OpenMPI settings let a daemon that finds mpirun unreachable try again (each second, 10 times):
    host 2 has no route to the head until its daemon has tried and failed (its kernel counts the attempt), then
    has one; the job runs. OpenMPI's default gives up at the first failure (the message of the test above)."""
    where = placement.Placement((("gmk-node0", 1), ("gmk-node1", 1)), "hosts", "gmk-node0:1,gmk-node1:1")
    env = launch.mpi_env(emulated_hosts.mpi_env(), where)
    route = ("throw", f"{emulated_hosts.head_address}/32")  # a lookup that ends in "no route": counted
    emulated_hosts.run("gmk-node1", "ip", "route", "add", *route).check_returncode()
    try:
        before = _no_route_count(emulated_hosts, "gmk-node1")
        job = subprocess.Popen(
            launch.mpirun_command(2, ["hostname"], placement=where, env=env),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: _no_route_count(emulated_hosts, "gmk-node1") > before, job, 60, "the daemon's first try")
    finally:
        emulated_hosts.run("gmk-node1", "ip", "route", "del", *route)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and sorted(out.split()) == ["gmk-node0", "gmk-node1"], out


def test_the_emulated_hosts_are_found_to_be_this_machine(emulated_hosts, monkeypatch):
    """The wall-time model charges ranks that share a machine for it (issue 28): hosts that are this kernel under
    other names (the same boot id, asked on each host) share it; a host that cannot be asked is taken for another."""
    from gmmkit.study.perfmodel import one_machine

    for name, value in emulated_hosts.mpi_env({}).items():  # the site's launch agent, as a cluster sets it once
        monkeypatch.setenv(name, value)
    assert one_machine(placement.Placement((("gmk-node0", 1), ("gmk-node1", 1)), "hosts", "gmk-node0:1,gmk-node1:1"))
    assert not one_machine(
        placement.Placement((("gmk-node0", 1), ("gmk-nowhere", 1)), "hosts", "gmk-node0:1,gmk-nowhere:1")
    )
