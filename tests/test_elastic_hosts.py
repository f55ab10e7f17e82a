"""Elastic strong scaling on emulated hosts (issue 27): ``gmmkit train --elastic`` loses a host and goes on.

A host is lost the way a node that loses power is (every process on it is killed and its link is cut) or the
way one whose network fails is (its link is cut, its processes live on); either way it stays down, so the
liveness probe of the restart finds it dead (a host only killed is an empty namespace: a rebooted node, which
answers). Every wait is for an event (a file, a process's end), bounded.
"""

import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from conftest import needs_horovod, tiny_config, wait_for

from gmmkit.files import read_jsonl
from gmmkit.parallel import launch, placement

pytestmark = [pytest.mark.mpi, needs_horovod]
BOUND_S = 600  # any wait: a missed bound fails as a missing behaviour


def _start(hosts, cfg, *flags):
    """``gmmkit train --config CFG FLAGS`` from the head, as a user types it; returns the process."""
    cfg_file = os.path.join(os.path.dirname(cfg.out), f"{os.path.basename(cfg.out)}.json")
    with open(cfg_file, "w") as fh:
        fh.write(cfg.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", cfg_file, *map(str, flags)]
    return subprocess.Popen(cmd, env=hosts.mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until_epochs(proc, out, epochs: int) -> None:
    """Wait until the run in ``out`` has committed ``epochs`` epochs (its metrics.jsonl), the process running."""
    deadline = time.monotonic() + BOUND_S
    while len(read_jsonl(os.path.join(out, "metrics.jsonl"))) < epochs:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not commit {epochs} epoch(s) while running:\n" + "".join(proc.communicate()))
        time.sleep(0.05)


@contextlib.contextmanager
def _powered_off(hosts, name):
    """Host ``name`` loses power: its processes are killed and its link is down until the block ends (then it
    comes back empty, like a rebooted node)."""
    try:
        hosts.kill(name)
        hosts.cut(name)
        yield
    finally:
        hosts.kill(name)  # a probe's daemon that reached it before the cut
        hosts.restore(name)


def _finish(proc) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("gmmkit train did not end:\n" + "".join(proc.communicate()))


def _no_process_left(hosts, names) -> None:
    deadline = time.monotonic() + 60
    while any(hosts.pids(n) for n in names):
        assert time.monotonic() < deadline, {n: hosts.pids(n) for n in names}
        time.sleep(0.1)


def _losses(out, key):
    return [r[key] for r in read_jsonl(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The one-process exact run every elastic run here must equal: its config and run directory."""
    one = tiny_config(tmp_path_factory.mktemp("uninterrupted") / "n1", epochs=4, lr=2e-3, exact=True)
    cfg_file = os.path.join(os.path.dirname(one.out), "n1.json")
    with open(cfg_file, "w") as fh:
        fh.write(one.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", cfg_file]
    subprocess.run(cmd, env=launch.mpi_env(), capture_output=True, text=True, timeout=BOUND_S, check=True)
    return one


def _same_arrays(one, two) -> None:
    """Every weight and optimizer array of the two runs' checkpoints is the same, to the last bit."""
    with np.load(os.path.join(one, "checkpoint.npz")) as a, np.load(os.path.join(two, "checkpoint.npz")) as b:
        arrays = [k for k in a.files if k[0] in "wo" and k[1:].isdigit()]
        assert arrays and sorted(arrays) == sorted(k for k in b.files if k[0] in "wo" and k[1:].isdigit())
        assert all(np.array_equal(a[k], b[k]) for k in arrays)


def _rank_of_resume(hosts, name):
    """The process of a resumed run's rank on host ``name``, once it is there (None before)."""
    for pid in hosts.pids(name):
        with contextlib.suppress(psutil.Error):
            if "--resume" in psutil.Process(pid).cmdline():
                return psutil.Process(pid)
    return None


def test_a_lost_host_is_dropped_and_taken_back_when_it_returns_on_the_same_bits(
    emulated_hosts, uninterrupted, tmp_path
):
    """A 2-host exact strong run, one rank a host, the hosts from a discovery script. Host 2's link is cut after
    the first epoch is committed (its processes live on, unreachable; it leaves the script's list): the run
    restarts on host 1 alone, and the terminal and summary.json say why. Host 2 comes back (rebooted, listed
    again): the run takes it back at its next checkpoint, ends on 2 ranks with the uninterrupted one-process
    run's losses and weights to the last bit, and summary.json lists the loss and the growth. The resumed rank
    is paused meanwhile (SIGSTOP), so that the run cannot end before the host is back, whatever the machine's
    speed. (A host that loses power, its processes killed too: tests/test_hosts_notebook.py, where the run ends
    alone on the same bits.)"""
    one, listing = uninterrupted, tmp_path / "hosts.txt"
    listing.write_text("gmk-node0:1\ngmk-node1:1\n")
    script = tmp_path / "discover"
    script.write_text(f"#!/bin/sh\ncat {listing}\n")
    script.chmod(0o755)
    two = one.replace(train={"workers": 2, "elastic": True, "checkpoint_every": 5}, out=str(tmp_path / "n2"))
    proc = _start(emulated_hosts, two, "--host-discovery-script", script)
    summary = lambda: json.loads((tmp_path / "n2" / "summary.json").read_text())  # noqa: E731
    paused = None
    try:
        _until_epochs(proc, two.out, 1)
        listing.write_text("gmk-node0:1\n")  # the scheduler drops the node, whose network then fails
        emulated_hosts.cut("gmk-node1")
        wait_for(lambda: _rank_of_resume(emulated_hosts, "gmk-node0"), proc, BOUND_S, "the rank of the restart")
        paused = _rank_of_resume(emulated_hosts, "gmk-node0")
        paused.suspend()
        emulated_hosts.kill("gmk-node1")  # rebooted: back, empty, and listed again
        emulated_hosts.restore("gmk-node1")
        listing.write_text("gmk-node0:1\ngmk-node1:1\n")
        wait_for(lambda: (tmp_path / "n2" / "STOP").exists(), proc, BOUND_S, "the growth's request")
        paused.resume()
        paused = None
        stdout, stderr = _finish(proc)
    finally:
        if paused is not None:
            with contextlib.suppress(psutil.Error):
                paused.resume()
        emulated_hosts.restore("gmk-node1")
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    ended = summary()
    assert ended["status"] == "max_epochs" and ended["epochs"] == 4, ended
    assert ended["hosts"] == ["gmk-node0", "gmk-node1"] and ended["workers"] == 2
    lost, grown = ended["restarts"]
    assert "host gmk-node1 (rank 1) was lost" in lost["cause"] and not lost.get("grown"), lost
    assert (lost["workers_before"], lost["workers_after"], lost["hosts_after"]) == (2, 1, ["gmk-node0"])
    assert lost["hosts_before"] == ["gmk-node0", "gmk-node1"] and lost["dropped"] == [], lost  # unlisted, not probed
    assert 1 <= lost["from_epoch"] < 4 and lost["lost_s"] >= 0, lost
    said = [line for line in stdout.splitlines() if line.startswith("restart ")]
    assert len(said) == 1 and "restart 1/3: host gmk-node1 (rank 1) was lost" in said[0], stdout
    assert grown["grown"] and grown["cause"] == "host gmk-node1 came back", grown
    assert (grown["workers_before"], grown["workers_after"]) == (1, 2)
    assert grown["hosts_before"] == ["gmk-node0"] and grown["hosts_after"] == ["gmk-node0", "gmk-node1"]
    assert [line for line in stdout.splitlines() if line.startswith("grown: host gmk-node1 came back")], stdout
    print(f"\n[elastic growth] {lost['cause']} -> {grown['cause']} at epoch {grown['from_epoch']}")

    for key in ("train_loss", "val_loss"):
        assert _losses(two.out, key) == _losses(one.out, key)
    _same_arrays(one.out, two.out)


def test_no_restart_left_ends_failed_with_every_cause(emulated_hosts, tmp_path):
    """--max-restarts 0: the lost host ends the run ``failed``, its cause and why it was not restarted in
    summary.json and on stderr, and no process is left on any host."""
    cfg = tiny_config(tmp_path / "run", epochs=10000, workers=2, elastic=True, max_restarts=0)
    proc = _start(emulated_hosts, cfg, "--hostfile", emulated_hosts.hostfile)
    _until_epochs(proc, cfg.out, 1)
    emulated_hosts.kill("gmk-node1")
    _, stderr = _finish(proc)
    assert proc.returncode != 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["restarts"] == [], summary
    assert "(1) host gmk-node1 (rank 1) was lost" in summary["error"], summary["error"]
    assert "not restarted: train.max_restarts=0 reached" in summary["error"]
    assert "host gmk-node1 (rank 1) was lost" in stderr and "not restarted" in stderr, stderr
    _no_process_left(emulated_hosts, emulated_hosts.names)


def test_the_liveness_probe_finds_a_host_without_power_dead(emulated_hosts):
    """Both hosts answer; one whose link is down does not, and is given up on at the probe's bound."""
    hosts, env = placement.parse_hostfile(emulated_hosts.hostfile), emulated_hosts.mpi_env()
    assert launch.alive_hosts(hosts, env=env) == ["gmk-node0", "gmk-node1"]
    with _powered_off(emulated_hosts, "gmk-node1"):
        assert launch.alive_hosts(hosts, env=env) == ["gmk-node0"]
