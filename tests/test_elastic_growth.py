"""Elastic runs taking hosts back (issue 27): the host discovery script (horovodrun's contract: ``HOST:SLOTS``
lines), its errors naming the flag, the growth watcher of ``gmmkit.training.growth`` on a real run directory
(the hosts' probe stubbed), and a growth's entry in summary.json. The emulated hosts' growth, the same bits at
the end, is in test_elastic_hosts.py."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_config, wait_for

from gmmkit.errors import ConfigError
from gmmkit.parallel import discovery, launch
from gmmkit.parallel.placement import Placement, parse_hosts
from gmmkit.training import elastic, growth
from gmmkit.training.rundir import RunDir


def _script(path, body: str, mode: int = 0o755) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return str(path)


def test_the_script_prints_hosts_and_slots_as_horovodrun_reads_them(tmp_path):
    text = "node1:2\n\n  node2  \nnode1:2\n10.0.0.7:4\n"  # a host alone: one slot; a line twice: once
    where = discovery.parse_output(text, "/s")
    assert (where.hosts, where.source, where.origin) == (
        (("node1", 2), ("node2", 1), ("10.0.0.7", 4)),
        "discovery",
        "/s",
    )
    assert Placement.from_dict(json.loads(json.dumps(where.to_dict()))) == where
    assert where.by_name and where.describe() == "node1:2,node2:1,10.0.0.7:4 (host discovery script /s)"
    assert discovery.parse_output("", "/s", allow_empty=True).hosts == ()

    script = _script(tmp_path / "discover", "echo gmk-a:2\necho gmk-b\n")
    found = discovery.discover(script)
    assert (found.hosts, found.origin) == ((("gmk-a", 2), ("gmk-b", 1)), script)
    assert launch.mpirun_command(3, ["prog"], placement=found)[3:5] == ["--host", "gmk-a:2,gmk-b:1"]


@pytest.mark.parametrize(
    "text, says",
    [
        ("node1:0\n", "printed 'node1:0' on line 1: expected HOST or HOST:SLOTS"),
        ("node1\nnode 2:1\n", "printed 'node 2:1' on line 2"),
        ("node1:x\n", "printed 'node1:x' on line 1"),
        ("node1:1\nnode1:2\n", "printed host 'node1' twice, with 1 and 2 slots"),
        ("\n", "printed no host"),
    ],
)
def test_bad_output_is_an_error_naming_the_script_and_the_line(text, says):
    with pytest.raises(ConfigError) as exc:
        discovery.parse_output(text, "/s")
    assert exc.value.field == "placement.discovery" and says in str(exc.value), str(exc.value)


def test_a_script_that_cannot_run_is_an_error_naming_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(discovery, "TIMEOUT_S", 0.5)
    cases = [
        (_script(tmp_path / "hangs", "exec sleep 30\n"), "hangs did not end within 0.5 s"),
        (str(tmp_path / "absent"), "absent: no such file"),
        (_script(tmp_path / "plain", "echo a\n", mode=0o644), "plain: not executable (chmod +x"),
        (_script(tmp_path / "fails", "echo no scheduler >&2\nexit 3\n"), "fails exited with status 3: no scheduler"),
    ]
    for path, says in cases:
        with pytest.raises(ConfigError) as exc:
            discovery.discover(path)
        assert exc.value.field == "placement.discovery" and says in str(exc.value), str(exc.value)
    cfg = tiny_config(tmp_path / "run", workers=2)
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", str(tmp_path / "cfg.json")]
    done = subprocess.run(
        [*cmd, "--host-discovery-script", str(tmp_path / "plain")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--host-discovery-script (placement.discovery): " in done.stderr and "not executable" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def short(tmp_path):
    """An elastic run of 2 workers going on with 1 on h0 (its ranks began it), the hosts from a discovery
    script that prints h0 and h1; yields (cfg, run, given, where)."""
    cfg = tiny_config(tmp_path / "run", workers=2, elastic=True, max_restarts=1, checkpoint_every=5).resolved()
    run = RunDir(cfg.out)
    run.claim(cfg, "new")
    run.begin(cfg, [], {"status": "running", "epochs": 1, "hosts": ["h0"], "workers": 1})
    given = discovery.discover(_script(tmp_path / "discover", "echo h0:1\necho h1:1\n"))
    yield cfg, run, given, parse_hosts("h0:1")
    run.release()


def test_a_host_back_asks_the_ranks_to_end_at_once_with_mid_epoch_states(short, monkeypatch):
    cfg, run, given, where = short
    answering, probes = ["h0"], []

    def alive(hosts, stop=None, env=None):
        probes.append(hosts.names)
        return [n for n in hosts.names if n in answering]

    monkeypatch.setattr(launch, "alive_hosts", alive)
    with growth.Growth(run, cfg, given, where, 1, poll_s=0.02) as watcher:
        wait_for(lambda: len(probes) >= 2, timeout=30, what="two probes")
        assert not run.stop_requested() and probes[0] == ["h1"]  # h1 does not answer: nothing asked
        answering.append("h1")
        wait_for(run.stop_requested, timeout=30, what="the stop request of the growth")
    assert watcher.grown and watcher.back == ["h1"]


def test_without_mid_epoch_states_it_waits_for_the_next_state(short, monkeypatch):
    cfg, run, given, where = short
    cfg = cfg.replace(train={"checkpoint_every": None})
    probed = []
    monkeypatch.setattr(
        launch, "alive_hosts", lambda hosts, stop=None, env=None: probed.append(hosts.names) or hosts.names
    )
    with growth.Growth(run, cfg, given, where, 1, poll_s=0.02) as watcher:
        wait_for(lambda: watcher.back == ["h1"], timeout=30, what="h1 found back")
        assert probed[0] == ["h1"] and not run.stop_requested()  # only the host not in the job is probed
        run.commit([], {**run.summary(), "epochs": 2})  # the next state
        wait_for(run.stop_requested, timeout=30, what="the stop request after the next state")
    assert watcher.grown


def test_someone_elses_stop_is_never_taken_for_a_growth(short, monkeypatch):
    cfg, run, given, where = short
    monkeypatch.setattr(launch, "alive_hosts", lambda hosts, stop=None, env=None: hosts.names)
    assert run.request_stop()  # gmmkit stop, before the host came back
    with growth.Growth(run, cfg, given, where, 1, poll_s=0.02) as watcher:
        wait_for(lambda: watcher.overruled, timeout=30, what="the stop seen as someone else's")
    assert not watcher.grown
    with growth.Growth(run, cfg, given, parse_hosts("h0:1,h1:1"), 2, poll_s=0.02) as full:
        assert not full.active and full._thread is None  # a job with every worker watches nothing


def test_a_growth_is_listed_and_not_counted_against_max_restarts(short, monkeypatch):
    cfg, run, given, where = short
    monkeypatch.setattr(launch, "alive_hosts", lambda hosts, stop=None, env=None: ["h0"])
    said = []
    restarts = elastic.Restarts(cfg, given, said.append)
    n, after = restarts.grow(run, {**run.summary(), "status": "stopped"}, ["h1"], 1, where)
    assert (n, after.host_of_ranks(n)) == (2, ["h0", "h1"])
    [grown] = run.summary()["restarts"]
    assert run.summary()["status"] == "running" and grown["grown"] and grown["restart"] == 1
    assert (grown["cause"], grown["workers_before"], grown["workers_after"]) == ("host h1 came back", 1, 2)
    assert grown["hosts_before"] == ["h0"] and grown["hosts_after"] == ["h0", "h1"] and grown["dropped"] == []
    [line] = said
    assert line.startswith(
        "grown: host h1 came back; going on with 2 workers (1 before) on h0, h1 from the end of epoch 1"
    )
    # max_restarts=1: the growth took none of it, a loss is restarted once, then not
    assert restarts.next(run, run.summary(), "host h1 (rank 1) was lost", 2)[0] == 1
    assert [e.get("grown", False) for e in run.summary()["restarts"]] == [True, False]
    assert restarts.next(run, run.summary(), "host h1 (rank 1) was lost", 1) is None
    assert restarts.refused == "train.max_restarts=1 reached"


def test_bench_shows_a_failures_cost():
    """What ``gmmkit bench --hostfile`` prints of ``failure_cost``: the figures of benchmarks/failure-cost.json
    (measured on two emulated hosts) in one line of its table, or why they were not measured."""
    from pathlib import Path

    from gmmkit.study import bench

    here = Path(__file__).resolve().parents[1] / "benchmarks"
    result = json.loads((here / "results.json").read_text())
    cost = json.loads((here / "failure-cost.json").read_text())["runs"][0]
    line = next(r for r in bench.format_table({**result, "failure_cost": cost}).splitlines() if "failure's" in r)
    assert line.startswith("a failure's cost (gmk-node0, gmk-node1, rank 1 killed): ")
    assert f"{cost['to_first_step_s']:.1f} s from the kill to the first step after the restart" in line
    assert f"work done again {cost['redone_s']:.2f} s" in line
    failed = bench.format_table({**result, "failure_cost": {"error": "rank 1 was not killed"}})
    assert "a failure's cost: not measured (rank 1 was not killed)" in failed
    assert "failure's cost" not in bench.format_table(result)
