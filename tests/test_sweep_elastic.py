"""Elastic studies (issue 27): ``gmmkit sweep --elastic`` and ``gmmkit reproduce --elastic``. A real 2-rank batch
whose rank is killed goes on, its strong run on the sequential path to the last bit; the decisions of
``gmmkit.study.batch.run_batch`` on hosts that do not all answer (a strong run on fewer workers, an lsr run
never); the flags' errors and their way into the grid."""

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import losses, needs_horovod, tiny_config, wait_for

from gmmkit.cli import main
from gmmkit.files import read_jsonl
from gmmkit.parallel import launch
from gmmkit.parallel.launch import mpi_env
from gmmkit.parallel.placement import parse_hosts
from gmmkit.study import batch
from gmmkit.study.reproduce import ReproduceConfig, _protocol, grid_of
from gmmkit.training.rundir import RunDir


def _rank(root: psutil.Process, rank: str) -> list:
    found = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if child.environ().get("OMPI_COMM_WORLD_RANK") == rank:
                found.append(child)
    return found


@pytest.mark.mpi
@needs_horovod
def test_an_elastic_sweep_whose_rank_is_killed_goes_on_on_the_sequential_path(tmp_path):
    """strong and lsr at n = 2 share one job; rank 1 is killed once strong n=2 has committed its first epoch: the
    job is started again, strong n=2 resumes from that state and ends with the sequential run's losses to the
    last bit (exact mode), lsr n=2 then trains in the new job, and the restart is in summary.json, on stdout
    and in the table."""
    cfg_file, out = tmp_path / "base.json", tmp_path / "sweep"
    small = {"size": 72, "val_size": 8, "train_size": 64}  # 8 steps an epoch, of 2 micro-shards of 4 samples
    cfg_file.write_text(tiny_config(tmp_path / "unused", small, epochs=3, exact=True, micro_shards=2).to_json())
    cmd = [sys.executable, "-m", "gmmkit", "sweep", "--config", str(cfg_file), "--strategies", "strong,lsr"]
    cmd += ["--workers", "1,2", "--max-real", "2", "--no-calibrate", "--elastic", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    strong = out / "runs" / "strong-n2"
    try:
        victim = []  # found once the job's ranks began strong n=2, then killed the moment its first epoch is in
        wait_for(lambda: (strong / "config.json").exists(), proc, what="strong n=2's start")
        wait_for(lambda: victim.extend(_rank(psutil.Process(proc.pid), "1")) or victim, proc, what="rank 1")
        wait_for(lambda: read_jsonl(strong / "metrics.jsonl"), proc, what="strong n=2's first epoch")
        victim[0].kill()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    summary = json.loads((strong / "summary.json").read_text())
    assert summary["status"] == "max_epochs" and summary["epochs"] == 3, summary
    [restart] = summary["restarts"]
    assert restart["cause"].startswith("rank 1 (") and restart["cause"].endswith("was killed by SIGKILL"), restart
    assert (restart["workers_before"], restart["workers_after"]) == (2, 2) and 1 <= restart["from_epoch"] < 3, restart
    assert [r["from_epoch"] for r in summary["resumes"]] == [restart["from_epoch"]]
    sequential = out / "runs" / "sequential-n1"
    for key in ("train_loss", "val_loss"):  # exact mode: the sequential path, bit for bit (JSON keeps every bit)
        assert losses(strong, key) == losses(sequential, key)
    assert json.loads((strong / "config.json").read_text())["train"]["elastic"] is True
    lsr = out / "runs" / "lsr-n2"  # not reached by the lost job: trained by the next, on n workers, not elastic
    lsr_summary = json.loads((lsr / "summary.json").read_text())
    assert lsr_summary["status"] == "max_epochs" and lsr_summary["workers"] == 2 and "restarts" not in lsr_summary
    assert json.loads((lsr / "config.json").read_text())["train"]["elastic"] is False
    runs = {(r["strategy"], r["workers"]): r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert (runs[("strong", 2)]["restarts"], runs[("lsr", 2)]["restarts"]) == (1, 0)
    assert runs[("strong", 2)]["same_path"] == "yes"
    assert "| 2 | real, exact | max_epochs (restarted 1x) | 3 |" in stdout, stdout
    assert [line for line in stdout.splitlines() if line.startswith("strong n=2: restart 1/3: rank 1")], stdout
    assert (out / "logs" / "real-n2-job2.log").exists()


@pytest.fixture
def lost_job(tmp_path, monkeypatch):
    """A batch of strong and lsr at n = 2 on hosts h0:1,h1:1 of which only h0 answers; its first job is lost
    after strong began. ``jobs`` lists every job started: (runs, workers, hosts, resume flags)."""
    cfgs = [
        tiny_config(tmp_path / name, strategy=strategy, workers=2, elastic=strategy == "strong", min_workers=m)
        for name, strategy, m in (("strong-n2", "strong", 1), ("lsr-n2", "lsr", 2))
    ]
    jobs = []

    def job(cfgs_, n, log, stop, resume, where):
        jobs.append(([Path(c.out).name for c in cfgs_], n, where.host_list(), list(resume)))
        run = RunDir(cfgs_[0].out)
        run.claim(cfgs_[0], "resume" if resume[0] else "new")
        status = "running" if len(jobs) == 1 else "max_epochs"
        run.begin(cfgs_[0], [], {**(run.summary() or {}), "status": status, "epochs": 0, "hosts": ["h0", "h1"]})
        run.release()
        return "host h1 (rank 1) was lost" if len(jobs) == 1 else None

    monkeypatch.setattr(batch, "run_real_batch", job)
    monkeypatch.setattr(launch, "alive_hosts", lambda where, stop=None, env=None: ["h0"])
    return cfgs, jobs


def test_a_strong_run_goes_on_with_fewer_workers_and_an_lsr_run_does_not(lost_job, tmp_path):
    cfgs, jobs = lost_job
    said = []
    left = batch.run_batch(
        cfgs, 2, tmp_path / "real-n2.log", placement=parse_hosts("h0:1,h1:1"), elastic=True, say=said.append
    )
    # strong resumed alone on h0's one worker; lsr, never begun, needs 2: not started, the hosts named
    assert jobs == [(["strong-n2", "lsr-n2"], 2, "h0:1,h1:1", [False, False]), (["strong-n2"], 1, "h0:1", [True])]
    assert left == {cfgs[1].out: "not started: the hosts that answered (h0:1) hold 1 of the 2 workers it needs"}
    [restart] = RunDir(cfgs[0].out).summary()["restarts"]
    assert (restart["workers_before"], restart["workers_after"], restart["dropped"]) == (2, 1, ["h1"])
    [line] = said
    assert line.startswith(
        "strong n=2: restart 1/3: host h1 (rank 1) was lost; going on with 1 worker (2 before) on h0 (dropped h1)"
    )


def test_an_lsr_run_lost_on_too_few_hosts_fails_with_the_cause(lost_job, tmp_path):
    cfgs, jobs = lost_job
    left = batch.run_batch(cfgs[::-1], 2, tmp_path / "real-n2.log", placement=parse_hosts("h0:1,h1:1"), elastic=True)
    assert len(jobs) == 1  # lsr (first) was lost and is not restarted on fewer workers; strong never began: not run
    assert left[cfgs[1].out] == (
        "the job ended 1 time: (1) host h1 (rank 1) was lost; not restarted: the hosts that answered (h0:1) hold 1 "
        "of the train.min_workers=2 workers needed"
    )
    assert left[cfgs[0].out].startswith("not started: the hosts that answered (h0:1) hold 1 of the 2 workers")


def test_the_elastic_flags_reach_the_grid_and_their_errors_name_them(tmp_path, capsys):
    from gmmkit.commands import reproduce as command

    what = ReproduceConfig(out=str(tmp_path / "r"), elastic=True, min_workers=2, max_restarts=5).validate()
    grid = grid_of(what, what.run, tmp_path / "r")
    assert (grid.elastic, grid.min_workers, grid.max_restarts) == (True, 2, 5)
    # a reproduction continued with --elastic (or other bounds) is the same protocol
    assert _protocol(what.to_dict()) == _protocol(ReproduceConfig(out=str(tmp_path / "r")).to_dict())
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["reproduce", "--out", "x", "--elastic", "--max-restarts", "1"])
    assert (args.elastic, args.min_workers, args.max_restarts) == (True, 1, 1)
    for flags, said in (
        (["--min-workers", "0"], "--min-workers (study.min_workers): expected a positive integer, received 0"),
        (["--min-workers", "3"], "--min-workers (study.min_workers): expected at most the largest worker count, 2"),
        (["--max-restarts", "-1"], "--max-restarts (study.max_restarts): expected 0 or more, received -1"),
    ):
        assert main(["sweep", "--workers", "1,2", "--elastic", *flags, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gmmkit sweep: error: {said}") and err.count("\n") == 1, err
    assert main(["reproduce", "--out", str(tmp_path / "p"), "--elastic", "--min-workers", "64"]) == 2
    assert "--min-workers (reproduce.min_workers): expected at most the largest" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()
