"""Elastic runs (issue 27) on this machine: the restart decisions of ``gmmkit.training.elastic`` (which hosts,
how many workers, how many restarts, what summary.json lists) and a 2-rank run whose rank is killed.
The emulated hosts' cases (a host lost, the same bits on fewer workers) are in test_elastic_hosts.py."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import needs_horovod, tiny_config
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from gmmkit.files import read_jsonl
from gmmkit.parallel import launch
from gmmkit.parallel.launch import mpi_env
from gmmkit.parallel.placement import LOCAL, parse_hostfile, parse_hosts
from gmmkit.training import elastic, reached
from gmmkit.training.rundir import RunDir


@pytest.fixture
def begun(tmp_path):
    """An elastic run of 2 workers whose ranks began it (its first state committed), and its directory."""
    cfg = tiny_config(tmp_path / "run", workers=2, elastic=True, max_restarts=2).resolved()
    run = RunDir(cfg.out)
    run.claim(cfg, "new")
    run.begin(cfg, [], {"status": "running", "epochs": 0, "hosts": ["h0", "h1"]})
    yield cfg, run
    run.release()


def test_restarts_are_listed_in_the_summary_and_bounded(begun):
    cfg, run = begun
    said = []
    restarts = elastic.Restarts(cfg, LOCAL, said.append)
    for k in (1, 2):  # this machine: the lost rank starts again here, as many workers as before
        assert restarts.next(run, run.summary(), f"rank 1 (pid {k}) was killed by SIGKILL", 2) == (2, LOCAL)
        listed = run.summary()["restarts"]
        assert [r["restart"] for r in listed] == list(range(1, k + 1)) and run.summary()["status"] == "running"
        assert listed[-1]["cause"] == f"rank 1 (pid {k}) was killed by SIGKILL" and listed[-1]["from_epoch"] == 0
        assert (listed[-1]["workers_before"], listed[-1]["workers_after"]) == (2, 2) and listed[-1]["lost_s"] >= 0
    assert len(said) == 2 and said[1].startswith("restart 2/2: rank 1 (pid 2) was killed by SIGKILL; going on with 2")
    assert restarts.next(run, run.summary(), "host h1 (rank 1) was lost", 2) is None
    assert restarts.error() == (
        "the job ended 3 times: (1) rank 1 (pid 1) was killed by SIGKILL; (2) rank 1 (pid 2) was killed by "
        "SIGKILL; (3) host h1 (rank 1) was lost; not restarted: train.max_restarts=2 reached"
    )
    assert len(run.summary()["restarts"]) == 2


def test_a_restart_says_where_the_run_goes_on_and_the_steps_done_again(begun):
    """The committed state is 2 steps into epoch 2 (4 steps an epoch); rank 0's mark says the job that failed got
    to step 1 of epoch 3: 2 + 1 steps beyond that state, done again by the next job."""
    cfg, run = begun
    state = {**run.summary(), "epochs": 1, "checkpoint_at": {"epoch": 2, "step": 2}, "steps_per_epoch": 4}
    run.commit([], state)
    mark = reached.Reached(run.path)
    mark.mark(2, 1)
    said = []
    restarts = elastic.Restarts(cfg, LOCAL, said.append)
    restarts.next(run, run.summary(), "rank 1 (pid 9 on h1) was killed by SIGKILL", 2)
    entry = run.summary()["restarts"][-1]
    assert (entry["from_epoch"], entry["from_step"], entry["steps_redone"]) == (1, 2, 3)
    assert said == [
        f"restart 1/2: rank 1 (pid 9 on h1) was killed by SIGKILL; going on with 2 workers (2 before) on "
        f"{', '.join(dict.fromkeys(entry['hosts_after']))} from step 2 of epoch 2, 3 steps done again "
        f"({entry['lost_s']:.1f} s since that state)"
    ]
    mark.mark(1, 2)  # the next job's rank 0 marks the state it resumes from first: no step of its own yet
    restarts.next(run, run.summary(), "host h0 (rank 0) was lost", 2)
    assert run.summary()["restarts"][-1]["steps_redone"] == 0 and "0 steps done again" in said[-1]
    mark.close()
    assert reached.steps_redone(run.path, {"epochs": 1}) is None  # a summary without its steps per epoch
    assert reached.steps_redone(run.path / "elsewhere", state) is None  # no mark


def test_dead_hosts_are_dropped_and_the_hostfile_is_read_again(begun, tmp_path, monkeypatch):
    cfg, run = begun
    hostfile = tmp_path / "hosts"
    hostfile.write_text("h0 slots=1\nh1 slots=1\n")
    answering = []
    monkeypatch.setattr(
        launch, "alive_hosts", lambda where, stop=None, env=None: [n for n in where.names if n in answering]
    )
    restarts = elastic.Restarts(cfg, parse_hostfile(hostfile))

    answering[:] = ["h0"]
    workers, where = restarts.next(run, run.summary(), "host h1 (rank 1) was lost", 2)
    assert (workers, where.host_list(), where.source) == (1, "h0:1", "hostfile")
    entry = run.summary()["restarts"][-1]
    assert entry["dropped"] == ["h1"] and entry["hosts_before"] == ["h0", "h1"] and entry["hosts_after"] == ["h0"]

    hostfile.write_text("h0 slots=1\nh1 slots=1\nh2 slots=1\n")  # h1 is back and h2 is new: up to --workers
    answering[:] = ["h0", "h1", "h2"]
    workers, where = restarts.next(run, run.summary(), "rank 0 (pid 7 on h0) was killed by SIGKILL", 1)
    assert (workers, where.host_of_ranks(workers)) == (2, ["h0", "h1"])


def test_too_few_workers_left_is_not_restarted(begun, monkeypatch):
    cfg, run = begun
    cfg = cfg.replace(train={"min_workers": 2})
    monkeypatch.setattr(launch, "alive_hosts", lambda where, stop=None, env=None: ["h0"])
    restarts = elastic.Restarts(cfg, parse_hosts("h0:1,h1:1"))
    assert restarts.next(run, run.summary(), "host h1 (rank 1) was lost", 2) is None
    assert restarts.refused == "the hosts that answered (h0:1) hold 1 of the train.min_workers=2 workers needed"
    assert "restarts" not in run.summary()


@pytest.mark.mpi
@needs_horovod
def test_a_rank_killed_is_started_again_and_the_run_goes_on(tmp_path):
    """Two ranks on this machine; rank 1 is killed after the first epoch: the run restarts from its last state
    with both workers and ends as an uninterrupted run would, the restart in summary.json and on stdout."""
    cfg = tiny_config(tmp_path / "run", epochs=3, workers=2, elastic=True)
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    cmd = [sys.executable, "-m", "gmmkit", "train", "--config", str(tmp_path / "cfg.json")]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not read_jsonl(tmp_path / "run" / "metrics.jsonl"):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.communicate())
            time.sleep(0.05)
        ranks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if p.environ().get("OMPI_COMM_WORLD_RANK") == "1"
        ]
        os.kill(ranks[0].pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    assert proc.returncode == 0, stdout + stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "max_epochs" and summary["workers"] == 2, summary
    [restart] = summary["restarts"]
    assert restart["cause"].startswith("rank 1 (") and restart["cause"].endswith("was killed by SIGKILL"), restart
    assert (restart["workers_before"], restart["workers_after"], restart["dropped"]) == (2, 2, [])
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert [line for line in stdout.splitlines() if line.startswith("restart 1/3: rank 1")], stdout
    # rank 0 got as far as it did before mpirun ended it: at most one epoch beyond the state it goes on from
    assert restart["from_step"] == 0 and 0 <= restart["steps_redone"] <= summary["steps_per_epoch"], restart
    assert f"{restart['steps_redone']} step" in stdout and summary["restarts_marked"] == 1
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()  # TensorBoard marks it where the next job began
    assert [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("restarts")] == [
        (restart["from_epoch"], 1.0)
    ]
