"""No run is ever lost or mixed (README "When things go wrong"): one run per directory, --resume from the
run's own config, SIGTERM and stop requests at any moment (start-up included), kills at random moments, a
full disk, output folders replaced only as a whole, paths that open from anywhere, the user's umask.
Real processes and signals throughout; every run is tiny."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import killed_at_rename, tiny_config, wait_for

from gmmkit.cli import main
from gmmkit.data import load_phantoms
from gmmkit.files import read_jsonl
from gmmkit.parallel.launch import mpi_env
from gmmkit.training import RunDir

GMMKIT = [sys.executable, "-m", "gmmkit"]
TINY = [
    "--dataset",
    "phantoms",
    "--phantoms",
    "40",
    "--val-size",
    "8",
    "--components",
    "4",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--target-loss",
    "none",
]


def start(*args, cwd=None, **popen):
    return subprocess.Popen(
        [*GMMKIT, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=mpi_env(),
        **popen,
    )


def claimed_by(run: Path, proc) -> bool:
    """Whether ``proc`` has claimed the run: it writes its pid into ``.lock`` once it holds the lock. (Asking
    ``RunDir.in_use()`` takes the lock for an instant, and a claim falling in that instant would be refused.)"""
    try:
        return f"gmmkit pid {proc.pid} " in (run / ".lock").read_text()
    except FileNotFoundError:
        return False


def epochs_of(run: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")]


def assert_files_agree(run: Path) -> int:
    """metrics, summary and checkpoint describe the same last epoch; no temporary file is visible."""
    r = RunDir(run)
    records, summary, ckpt = r.metrics(), r.summary() or {}, r.load_checkpoint()
    last = len(records)
    assert [x["epoch"] for x in records] == list(range(1, last + 1))
    assert summary.get("epochs", 0) == last, (summary, last)
    assert (ckpt["epoch"] if ckpt else 0) == last
    if ckpt:
        assert [x["epoch"] for x in ckpt["records"]] == list(range(1, last + 1))
    return last


def no_process_left(parent_pid: int | None = None) -> bool:
    me = psutil.Process()
    alive = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    return not alive


# --- one run per directory; --resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def cubes_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cubes.npz"
    np.savez(path, cubes=load_phantoms(40, seed=5).cubes)
    return path


@pytest.mark.lane
def test_resume_continues_the_run_from_its_own_config(cubes_npz, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "cubes.npz").write_bytes(cubes_npz.read_bytes())
    monkeypatch.chdir(work)
    base = [*TINY[2:], "--out", "run"]  # a relative --dataset and --out
    assert main(["train", "--dataset", "cubes.npz", *base, "--epochs", "1"]) == 0
    cfg = json.loads((work / "run" / "config.json").read_text())
    assert cfg["data"]["dataset"] == str(work / "cubes.npz") and cfg["out"] == str(work / "run")  # absolute

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run opens the same from anywhere
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(work / "run"), "--epochs", "2"]) == 0
    assert epochs_of(work / "run") == [1, 2]
    resumed = json.loads((work / "run" / "config.json").read_text())
    assert resumed["data"]["dataset"] == str(work / "cubes.npz") and resumed["train"]["epochs"] == 2
    summary = RunDir(work / "run").summary()
    assert summary["resumes"] == [{"from_epoch": 1, "changed": {"train.epochs": [1, 2]}}]

    # a flag that changes the experiment is refused, naming it; the run is untouched
    before = {p.name: p.read_bytes() for p in (work / "run" / "state").iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(work / "run"), "--epochs", "3", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lr (train.lr)" in err and "train.lr=0.00105" in err, err
    assert {p.name: p.read_bytes() for p in (work / "run" / "state").iterdir()} == before
    # a config.json edited since (another model): one line naming the checkpoint, not Keras's traceback
    config = (work / "run" / "config.json").read_text()
    (work / "run" / "config.json").write_text(config.replace('"components": 4', '"components": 5'))
    assert main(["train", "--resume", "--out", str(work / "run"), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.npz: its weights do not fit the model" in err, err
    (work / "run" / "config.json").write_text(config)
    assert {p.name: p.read_bytes() for p in (work / "run" / "state").iterdir()} == before
    assert main(["train", "--resume", "--out", str(tmp_path / "nowhere")]) == 2  # nothing to resume
    assert "not a gmmkit run directory" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_resume_or_new_starts_the_run_then_resumes_it_then_leaves_it(tmp_path, capsys):
    """The one command of a batch job that SLURM may requeue (examples/slurm/train.sbatch)."""
    run = tmp_path / "run"
    again = ["train", "--resume-or-new", "--out", str(run)]
    assert main([*again, *TINY, "--epochs", "1"]) == 0  # nothing there: a new run
    assert epochs_of(run) == [1] and "resumes" not in RunDir(run).summary()
    assert main([*again, "--epochs", "2"]) == 0  # the run there goes on, with its own config
    assert epochs_of(run) == [1, 2] and RunDir(run).summary()["resumes"][0]["from_epoch"] == 1
    before = {p.name: p.read_bytes() for p in (run / "state").iterdir()}
    capsys.readouterr()
    assert main([*again, "--epochs", "2"]) == 0  # finished: not trained again
    assert "has already ended (max_epochs after 2 epochs); nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (run / "state").iterdir()} == before


def test_a_finished_run_is_reported_not_retrained(tmp_path, capsys):
    run = tmp_path / "done"
    assert main(["train", *TINY[:-2], "--target-loss", "1", "--epochs", "5", "--out", str(run)]) == 0
    assert RunDir(run).summary()["status"] == "reached_target" and epochs_of(run) == [1]
    before = {p.name: p.read_bytes() for p in (run / "state").iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "9"]) == 0
    assert "has already ended (reached_target after 1 epochs); nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (run / "state").iterdir()} == before


@pytest.mark.lane
def test_a_run_directory_belongs_to_one_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    first = (run / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds a run already (status max_epochs, 1 epochs)" in err and "--overwrite" in err
    assert (run / "checkpoint.npz").read_bytes() == first
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--overwrite", "--out", str(run)]) == 0
    assert (run / "checkpoint.npz").read_bytes() != first and RunDir(run).config().train.seed == 3
    kept = [p / "checkpoint.npz" for p in (run / ".state").iterdir()]
    assert kept and all(p.read_bytes() != first for p in kept if p.exists())  # no state of the old run is left


@pytest.mark.lane
def test_a_second_process_is_refused_and_a_dead_one_holds_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    first = start("train", *TINY, "--epochs", "400", "--out", run)
    try:
        wait_for(lambda: len(epochs_of(run)) >= 1, first, what="the first epoch")
        capsys.readouterr()
        # the second process is this one (gmmkit in a process of its own costs a TensorFlow start-up)
        assert main(["train", *TINY, "--epochs", "400", "--overwrite", "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"in use by gmmkit pid {first.pid}" in err and "claim" not in err, err
        # a stop asked of it that it never saw (stopped, then killed) belongs to it, not to the next process
        first.send_signal(signal.SIGSTOP)
        assert main(["stop", str(run)]) == 0 and (run / "STOP").exists()
        first.kill()  # a killed owner: its lock goes with it
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    done = epochs_of(run)
    assert main(["train", "--resume", "--out", str(run), "--epochs", str(len(done) + 1)]) == 0
    assert epochs_of(run) == list(range(1, len(done) + 2)) and RunDir(run).summary()["status"] == "max_epochs"
    assert not (run / "STOP").exists()

    # a run's folder is where it is now: a copy (or a renamed folder) continues there, the original untouched
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=True)
    before = {p.name: p.read_bytes() for p in (run / "state").iterdir()}
    assert main(["train", "--resume", "--out", str(copy), "--epochs", str(len(done) + 2)]) == 0
    assert epochs_of(copy) == list(range(1, len(done) + 3)) and RunDir(copy).config().out == str(copy)
    assert RunDir(copy).summary()["resumes"][-1]["changed"]["out"] == [str(run), str(copy)]
    assert {p.name: p.read_bytes() for p in (run / "state").iterdir()} == before


# --- signals and stop requests --------------------------------------------------------------


@pytest.mark.lane
@pytest.mark.parametrize("when", ["start-up", "training"])
def test_sigterm_stops_a_run_with_its_files_consistent(tmp_path, when):
    run = tmp_path / "run"
    proc = start("train", *TINY, "--epochs", "400", "--out", run)
    try:
        if when == "start-up":  # the run owns its directory, TensorFlow is still tracing its steps
            wait_for(lambda: claimed_by(run, proc), proc, what="the claim")
        else:
            wait_for(lambda: len(epochs_of(run)) >= 1, proc, what="the first epoch")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    summary = RunDir(run).summary()
    assert summary["status"] == "stopped" and "status stopped" in out
    epochs = assert_files_agree(run)
    assert (epochs == 0) == (when == "start-up")
    assert not list(run.glob(".*.tmp")) and not (run / "STOP").exists()


def test_a_stop_asked_for_while_the_run_starts_is_not_lost(tmp_path, capsys):
    run = tmp_path / "run"
    proc = start("train", *TINY, "--epochs", "400", "--out", run)
    try:
        wait_for(lambda: claimed_by(run, proc), proc, what="the claim")
        assert main(["stop", str(run)]) == 0  # before config.json exists, while TensorFlow traces
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert RunDir(run).summary()["status"] == "stopped" and assert_files_agree(run) == 0
    capsys.readouterr()
    assert main(["stop", str(run)]) == 2  # nothing runs there now: a request would stop its next --resume
    assert "no run is in progress there (status stopped)" in capsys.readouterr().err


@pytest.mark.mpi
@pytest.mark.parametrize("who", ["gmmkit", "every process"])
def test_sigterm_ends_a_multi_rank_run_and_leaves_no_process(tmp_path, who):
    run = tmp_path / "run"
    proc = start("train", *TINY, "--epochs", "400", "--workers", "2", "--out", run, start_new_session=True)
    try:
        wait_for(lambda: len(epochs_of(run)) >= 1, proc, what="the first epoch")
        job = psutil.Process(proc.pid).children(recursive=True)
        assert len(job) >= 3  # mpirun and two ranks
        # every rank is here: they talk through shared memory, and none opens a TCP port (each listened on
        # 0.0.0.0 and ::, issue 26)
        ranks = [p for p in job if "OMPI_COMM_WORLD_RANK" in p.environ()]
        assert len(ranks) == 2 and not [c for p in ranks for c in p.connections("tcp") if c.status == "LISTEN"]
        targets = [proc.pid] + ([p.pid for p in job] if who == "every process" else [])
        for pid in targets:  # a scheduler (scancel) signals them all at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_gone(job)
    summary = RunDir(run).summary()
    assert summary["status"] == "stopped" and summary["workers"] == 2
    assert_files_agree(run)
    assert not RunDir(run).in_use()


def wait_gone(job):
    """Every process of ``job`` ended (zombies count as ended)."""
    wait_for(
        lambda: not [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        timeout=30,
        what="the job's processes ending",
    )


@pytest.mark.mpi
def test_a_stop_left_by_a_killed_job_stops_nothing_later(tmp_path):
    """A scheduler signals every process of a starting job, then kills them before they could act on it: the
    launcher's stop request outlived them (it stopped the next run at once); it belongs to the run asked."""
    run = tmp_path / "run"
    proc = start("train", *TINY, "--epochs", "400", "--workers", "2", "--out", run, start_new_session=True)
    job = []
    try:
        wait_for(lambda: _ranks_started(proc), proc, what="the ranks' start")  # data built, ranks starting
        job = psutil.Process(proc.pid).children(recursive=True)  # mpirun and the ranks: too slow to act
        for p in job:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
        job.append(psutil.Process(proc.pid))
        for p in job:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        wait_for(lambda: (run / "STOP").exists(), timeout=60, what="the launcher's stop request")
        for p in job:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_gone(job)
    again = ["--resume"] if RunDir(run).exists() else [*TINY]  # the ranks may have been killed before they began
    assert main(["train", *again, "--epochs", "1", "--out", str(run)]) == 0
    assert epochs_of(run) == [1] and RunDir(run).summary()["status"] == "max_epochs"
    assert not (run / "STOP").exists()


def _ranks_started(proc) -> bool:
    """Whether ``gmmkit train --workers N`` has started its ranks (processes with OpenMPI's rank variable)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if "OMPI_COMM_WORLD_RANK" in child.environ():
                    return True
    return False


def test_a_launcher_killed_outright_takes_its_job_with_it(tmp_path):
    run = tmp_path / "run"
    proc = start("train", *TINY, "--epochs", "400", "--workers", "2", "--out", run)
    try:
        wait_for(lambda: len(epochs_of(run)) >= 1, proc, what="the first epoch")
        job = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()  # SIGKILL: no handler runs; mpirun dies with its parent (PR_SET_PDEATHSIG), the ranks with it
        proc.wait(timeout=30)
        wait_for(
            lambda: not [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            timeout=60,
            what="the orphaned job ending",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
    epochs = assert_files_agree(run)
    assert main(["train", "--resume", "--out", str(run), "--epochs", str(epochs + 1), "--workers", "1"]) == 0
    assert epochs_of(run) == list(range(1, epochs + 2))


# --- kills at random moments -------------------------------------------------------------------


def _state_link(run: Path) -> str | None:
    return os.readlink(run / "state") if (run / "state").is_symlink() else None


def test_killed_at_random_moments_the_files_agree_and_resume_reaches_the_uninterrupted_result(tmp_path):
    epochs, rng = 6, random.Random(11)
    straight = tmp_path / "straight"
    # in a process of its own, as the killed runs are: TensorFlow's threads, and with them oneDNN's bits,
    # are set once per process, and this one's were set by whichever test ran first
    subprocess.run(
        [sys.executable, "-m", "gmmkit", "train", *TINY, "--epochs", str(epochs), "--out", str(straight)],
        check=True,
        capture_output=True,
        env=mpi_env(),
    )
    # Each moment is read from the run itself, never from the clock, so every planned kill finds the run going
    # on any machine: "claimed" (the process holds the run's lock: nothing written yet), "begun" (it committed
    # its first state: TensorFlow traces its steps), "epoch" (it finished an epoch, plus a random fraction of
    # that epoch's own duration: anywhere in the next epoch, its commit included). Then a last process runs
    # to the end.
    plan = ["claimed", "begun", "epoch", "epoch"]
    run, kills = tmp_path / "run", []
    args = ["train", *TINY, "--epochs", str(epochs), "--out", run]
    while not (RunDir(run).summary() or {}).get("status") == "max_epochs":
        assert len(kills) <= len(plan), f"the run did not end after its kills: {kills}"
        done, link = len(epochs_of(run)), _state_link(run)
        # an epoch moment only while two epochs are left: the process cannot end before its kill
        moment = plan[len(kills)] if len(kills) < len(plan) and done <= epochs - 2 else None
        proc, killed = start(*args), False
        try:
            if moment == "claimed":
                wait_for(lambda: claimed_by(run, proc), proc, what="the claim")
            elif moment == "begun":
                wait_for(lambda: _state_link(run) not in (None, link), proc, what="the first state")
            elif moment == "epoch":
                wait_for(lambda: len(epochs_of(run)) > done, proc, what="an epoch")
                time.sleep(rng.random() * read_jsonl(run / "metrics.jsonl")[-1]["epoch_time_s"])
            if moment is not None and proc.poll() is None:
                proc.kill()
                killed = True
                kills.append((moment, done))
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert killed or proc.returncode == 0, err
        if RunDir(run).exists():
            assert_files_agree(run)
            args = ["train", "--resume", "--out", run]
    # the first three moments cannot be missed: each leaves at least four epochs to run
    assert len(kills) >= 3 and [m for m, _ in kills[:3]] == ["claimed", "begun", "epoch"], kills
    assert not [p for p in run.rglob("*.tmp")]  # the last claim removed what the killed writers left
    for key in ("train_loss", "val_loss"):  # bit for bit the uninterrupted path
        assert [r[key] for r in read_jsonl(run / "metrics.jsonl")] == [
            r[key] for r in read_jsonl(straight / "metrics.jsonl")
        ]
    a, b = RunDir(run).load_checkpoint(), RunDir(straight).load_checkpoint()
    assert all(np.array_equal(x, y) for x, y in zip(a["weights"] + a["optimizer"], b["weights"] + b["optimizer"]))


def test_a_writer_killed_at_a_rename_leaves_nothing_behind(tmp_path):
    """Killed as it renames epoch 1's snapshot into place: its temporary file is removed by the next process,
    and the snapshot it never wrote is written from the checkpoint (which is epoch 1's weights)."""
    run = tmp_path / "run"
    killed_at_rename("epoch-000001.npz", "train", *TINY, "--epochs", "3", "--out", run, env=mpi_env())
    assert len(list((run / "snapshots").glob(".epoch-000001.npz.*.tmp"))) == 1  # what the kill left
    epoch_1 = RunDir(run).load_checkpoint()
    assert epoch_1["epoch"] == 1 and not (run / "snapshots" / "epoch-000001.npz").exists()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    assert not list(run.rglob("*.tmp")) and RunDir(run).snapshot_epochs() == [1, 2]
    assert all(np.array_equal(a, b) for a, b in zip(RunDir(run).load_snapshot(1)["weights"], epoch_1["weights"]))


# --- resources ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs, to fill while a run writes to it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("a small tmpfs cannot be mounted here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_a_one_line_error_and_the_last_good_state_stays(small_disk, tmp_path):
    run = small_disk / "run"
    proc = start("train", "--config", _write(tmp_path / "c.json", tiny_config(run, epochs=400).to_json()))
    try:
        wait_for(lambda: len(epochs_of(run)) >= 1, proc, what="the first epoch")
        fd = os.open(small_disk / "ballast", os.O_WRONLY | os.O_CREAT)  # something else fills the disk
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        os.close(fd)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "free" in err and "last good state (epoch" in err and "--resume" in err, err
    epochs = assert_files_agree(run)
    assert epochs >= 1 and RunDir(run).summary()["status"] == "running"  # the last state it could write
    assert not list(run.rglob("*.tmp"))
    (small_disk / "ballast").unlink()  # room again: the run goes on from its last good state
    assert main(["train", "--resume", "--out", str(run), "--epochs", str(epochs + 1)]) == 0
    assert epochs_of(run) == list(range(1, epochs + 2))


def test_synthesis_sizes_are_checked_against_memory_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(run, epochs=1)
    assert main(["train", "--config", _write(tmp_path / "c.json", cfg.to_json())]) == 0
    capsys.readouterr()
    assert main(["synthesize", "--run", str(run), "--out", str(tmp_path / "big"), "--size", "4096"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--size (synthesis.size)" in err and "GiB" in err and not (tmp_path / "big").exists(), err


def test_results_folders_are_replaced_only_as_a_whole(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "new"
    assert main(["train", "--config", _write(tmp_path / "c.json", tiny_config(run, epochs=1).to_json())]) == 0
    synth = ["synthesize", "--run", str(run), "--out", str(out), "--no-progress", "--gallery", "0"]
    assert main([*synth, "--n", "5"]) == 0
    assert main([*synth, "--n", "2"]) == 2  # an earlier output: not without --overwrite
    assert "--overwrite" in capsys.readouterr().err and len(list(out.glob("nodule_*"))) == 5
    assert main([*synth, "--n", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.csv",
        "manifest.json",
        "mixtures.npz",
        "nodule_0000.nii.gz",
        "nodule_0001.nii.gz",
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([*synth[:3], "--out", str(tmp_path / "mine"), "--overwrite"]) == 2  # not ours: never removed
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    sweep = [
        "sweep",
        "--config",
        str(tmp_path / "c.json"),
        "--strategies",
        "strong",
        "--workers",
        "1",
        "--no-calibrate",
        "--out",
        str(tmp_path / "sweep"),
    ]
    assert main(sweep) == 0
    (tmp_path / "sweep" / "runs" / "stale").mkdir()
    assert main(sweep) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*sweep, "--overwrite"]) == 0
    assert not (tmp_path / "sweep" / "runs" / "stale").exists()


def test_files_follow_the_umask(tmp_path):
    run = tmp_path / "run"
    cfg = _write(tmp_path / "c.json", tiny_config(run, epochs=1).to_json())
    mask = os.umask(0o027)  # the user's umask, in this process (a process of its own costs a TensorFlow start-up)
    try:
        assert main(["train", "--config", cfg]) == 0
    finally:
        os.umask(mask)
    for path in [run / "config.json", *(run / "state").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o640, path
    assert (run / "state").stat().st_mode & 0o777 == 0o750


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
