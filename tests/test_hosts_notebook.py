"""The notebook's MPI cluster on emulated hosts (issue 17): one engine on each host, the controller on the
head's address, the dashboard driving a run, a client without the key refused, a lost host reported.

The engines start through ``mpiexec`` and the rsh agent with an ssh-like clean environment, exactly as the
CLI's ranks do (``tests/test_hosts_cli.py``); the only site setting the test adds is the launch agent.
"""

import json
import os
import time

import ipyparallel as ipp
import numpy as np
import pytest
from conftest import needs_horovod, tiny_config

from gmmkit.cluster import MPICluster
from gmmkit.files import read_jsonl
from gmmkit.ui.dashboard import Dashboard
from gmmkit.ui.runs import DashboardRun, restart_news

pytestmark = [pytest.mark.mpi, needs_horovod]
SMALL = {"data": {"size": 48, "val_size": 8, "train_size": 32}, "model": {"filters": 4, "latent": 16}}
LOST_HOST_LIMIT_S = 30  # issue 17: a lost host is named within 30 s


def tiny(out, **train):
    return tiny_config(out, **SMALL, **{"epochs": 2, "workers": 2, **train})


@pytest.fixture(scope="module")
def hosts_cluster(emulated_hosts, tmp_path_factory):
    profile = tmp_path_factory.mktemp("ipython") / "profile_hosts"
    cluster = MPICluster(
        n=2,
        hostfile=str(emulated_hosts.hostfile),
        controller_ip=emulated_hosts.head_address,
        profile_dir=str(profile),
        env=emulated_hosts.mpi_env({}),
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(hosts_cluster, emulated_hosts):
    """The module's cluster with one live engine per host, whatever an earlier test did to it."""
    try:
        healthy = sorted(r.host for r in hosts_cluster.rank_map(refresh=True).values()) == emulated_hosts.names
    except Exception:
        healthy = False
    if not healthy:
        hosts_cluster.restart(2)
    return hosts_cluster


def test_engines_run_on_both_hosts_and_the_dashboard_trains_across_them(cluster, emulated_hosts, tmp_path):
    ranks = sorted(cluster.rank_map().values())
    assert ranks == [0, 1] and [r.host for r in ranks] == emulated_hosts.names
    assert [r.local_rank for r in ranks] == [0, 0] and cluster.slots == 2
    client_info = json.loads(next(p for p in cluster.connection_files() if p.name.endswith("-client.json")).read_text())
    assert client_info["interface"] == f"tcp://{emulated_hosts.head_address}"

    dash = Dashboard(
        cluster, base=tiny(tmp_path / "unused"), out=str(tmp_path / "dash"), viewer=False, poll_interval=None
    )
    run = dash.start()
    summary = run.handle.wait(timeout=300)
    dash.poll()
    assert summary["status"] == "max_epochs" and summary["hosts"] == emulated_hosts.names
    assert summary["local_ranks"] == [0, 0]
    assert [r["epoch"] for r in run.handle.metrics] == [1, 2]  # streamed from rank 0 on gmk-node0


def test_a_client_without_the_key_runs_nothing_on_the_engines(cluster, tmp_path):
    """Every message is signed with the key of the connection files: the same client with another key is
    ignored by the controller (nothing runs), while with the right key the same call runs."""
    marker = tmp_path / "ran"  # os.makedirs runs on the engines as it is (a test function would be pickled by
    # reference to this module, which the engines cannot import)
    client_file = next(p for p in cluster.connection_files() if p.name.endswith("-client.json"))
    forged = tmp_path / "forged-client.json"
    forged.write_text(json.dumps({**json.loads(client_file.read_text()), "key": "0" * 36}))
    with pytest.raises(Exception, match="timed out|Timeout"):  # registration itself is ignored
        ipp.Client(str(forged), timeout=3)

    client = ipp.Client(str(client_file))
    try:
        client.wait_for_engines(2, timeout=30)
        key = client.session.key
        client.session.key = b"not-the-cluster-key"
        forged_call = tmp_path / "ran-unsigned"
        pending = client[:].apply_async(os.makedirs, str(forged_call), exist_ok=True)
        with pytest.raises(ipp.error.TimeoutError):
            pending.get(timeout=1)
        client.session.key = key
        assert client[:].apply_sync(os.makedirs, str(marker), exist_ok=True) == [None, None]  # signed, it runs
        assert marker.exists()
        # each engine runs its requests in the order they were sent: had the unsigned one been accepted, it
        # would have run before the signed one just answered (not merely "not within 5 s")
        assert not forged_call.exists()
    finally:
        client.close()


def test_a_lost_host_is_named_and_restart_recovers(cluster, emulated_hosts, tmp_path):
    run = cluster.train(tiny(tmp_path / "k", epochs=10000))
    deadline = time.monotonic() + 300
    while len(run.metrics) < 1:
        assert time.monotonic() < deadline and not run.done(), "no epoch before the host was lost"
        time.sleep(0.05)
    t0 = time.monotonic()
    emulated_hosts.kill("gmk-node1")
    with pytest.raises(RuntimeError, match=r"host gmk-node1 \(rank 1\) was lost") as raised:
        run.wait(timeout=LOST_HOST_LIMIT_S)
    print(f"\n[notebook, host killed] wait() raised {time.monotonic() - t0:.2f} s later: {raised.value}")
    finished = read_jsonl(tmp_path / "k" / "metrics.jsonl")
    assert finished and [r["epoch"] for r in finished] == list(range(1, len(finished) + 1))
    cluster.restart()
    assert [r.host for r in sorted(cluster.rank_map(refresh=True).values())] == emulated_hosts.names
    assert cluster.train(tiny(tmp_path / "after", epochs=1)).wait(timeout=300)["status"] == "max_epochs"


def test_an_elastic_run_that_loses_a_host_goes_on_with_the_engines_of_the_other(cluster, emulated_hosts, tmp_path):
    """Issue 27 in the notebook: an elastic exact strong run on one engine a host loses host 2 (its power: every
    process killed, its link down) after its first committed epoch; the engines start again on host 1 alone (host
    2 does not answer the probe) and the run ends there, on the losses and weights of an uninterrupted
    one-process run, the restart in summary.json, on the handle and in the lines the dashboard shows. (It replaces
    the test of an engine killed on this machine: a host's loss ends its engine too, and the hosts left answer.)"""
    from gmmkit.training import train

    one = tiny_config(tmp_path / "one", epochs=4, lr=2e-3, exact=True)
    run = cluster.train(one.replace(train={"workers": 2, "elastic": True}, out=str(tmp_path / "n2")))
    deadline = time.monotonic() + 300
    while not read_jsonl(tmp_path / "n2" / "metrics.jsonl"):
        assert time.monotonic() < deadline and not run.done(), "no epoch before the host was lost"
        time.sleep(0.05)
    assert not run.done(), "the run ended before the host could be lost"
    emulated_hosts.kill("gmk-node1")
    emulated_hosts.cut("gmk-node1")
    try:
        train(one)  # the uninterrupted run, in this process, while the run restarts in its own thread
        summary = run.wait(timeout=300)
    finally:
        emulated_hosts.kill("gmk-node1")
        emulated_hosts.restore("gmk-node1")
    assert summary["status"] == "max_epochs" and summary["epochs"] == 4, summary
    assert summary["hosts"] == ["gmk-node0"] and summary["workers"] == 1
    [restart] = summary["restarts"]
    assert "host gmk-node1 (rank 1) was lost" in restart["cause"] and restart["dropped"] == ["gmk-node1"], restart
    assert (restart["workers_before"], restart["workers_after"]) == (2, 1)
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3, 4]  # the handle's epochs: committed, then streamed
    lost, restarted = restart_news(DashboardRun(1, "#1", run.cfg, 0, 0.0, handle=run))  # the dashboard's lines
    assert lost.startswith(f"lost: {restart['cause']}") and restarted.startswith(f"restart 1/3: {restart['cause']}")
    assert "going on with 1 worker (2 before)" in restarted, restarted
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in read_jsonl(tmp_path / "n2" / "metrics.jsonl")] == [
            r[key] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")
        ]
    with np.load(tmp_path / "one" / "checkpoint.npz") as a, np.load(tmp_path / "n2" / "checkpoint.npz") as b:
        arrays = [k for k in a.files if k[0] in "wo" and k[1:].isdigit()]
        assert arrays and all(np.array_equal(a[k], b[k]) for k in arrays)
