"""gmmkit inside SLURM allocations on emulated hosts (issue 17): the example batch scripts, ``salloc``, and
the notebook's engines as a SLURM job or started with ``ipcluster`` inside an allocation.

A real SLURM 22.05 runs on the emulated hosts (``tests/support/slurm.py``): gmmkit finds the allocation in
the job's environment and places its ranks on the allocated nodes with no host flags; mpirun starts its
daemons through SLURM. Jobs get the submitter's environment (sbatch's default ``--export=ALL``).
"""

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT, gmmkit_train, tiny_config, wait_for

from gmmkit.cluster import MPICluster
from gmmkit.files import read_jsonl
from gmmkit.training import RunDir

pytestmark = [pytest.mark.mpi]  # either lane: the ranks use Horovod where it is installed, else mpi4py
EXAMPLES = ROOT / "examples" / "slurm"
GMMKIT = shlex.join([sys.executable, "-m", "gmmkit"])  # how the example scripts call gmmkit here
RTOL = 1e-4  # as tests/test_horovod.py


def losses(run_dir):
    return [r["val_loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


def sbatch(slurm, script, *args, cwd, timeout=300) -> str:
    """``sbatch --wait SCRIPT ARGS``; returns the job's output (asserting that it succeeded)."""
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", str(script), *map(str, args)],
        cwd=cwd,
        env=slurm.env({**os.environ, "GMMKIT": GMMKIT}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    job = proc.stdout.strip().split(";")[0]
    name = Path(script).stem
    output = Path(cwd, f"gmmkit-{name}-{job}.out")
    text = output.read_text() if job and output.exists() else ""
    assert proc.returncode == 0, f"sbatch {script} failed ({proc.returncode}): {proc.stderr}\n{text}"
    return text


@pytest.mark.lane  # and in the current lane (make test-current): its ranks on mpi4py
def test_the_training_example_runs_one_rank_per_allocated_node(slurm_cluster, reference, tmp_path):
    cfg, ref_run, _ = reference
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.replace(train={"epochs": 2, "strategy": "strong"}).to_json())
    output = sbatch(
        slurm_cluster, EXAMPLES / "train.sbatch", "--config", cfg_file, "--out", tmp_path / "run", cwd=tmp_path
    )
    assert "launching 2 ranks with mpirun on gmk-node0:1,gmk-node1:1 (SLURM job" in output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hosts"] == ["gmk-node0", "gmk-node1"] and summary["status"] == "max_epochs"
    np.testing.assert_allclose(losses(tmp_path / "run"), losses(ref_run)[:2], rtol=RTOL)


def test_the_sweep_example_runs_real_ranks_up_to_the_jobs_tasks(slurm_cluster, tmp_path):
    cfg_file = tmp_path / "base.json"
    cfg_file.write_text(tiny_config(tmp_path / "unused", epochs=2).to_json())
    sbatch(
        slurm_cluster,
        EXAMPLES / "sweep.sbatch",
        "--config",
        cfg_file,
        "--strategies",
        "strong",
        "--workers",
        "1,2,4",
        "--no-calibrate",
        "--out",
        tmp_path / "sweep",
        cwd=tmp_path,
    )
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert {r["workers"]: r["mode"] for r in results["runs"]} == {1: "real", 2: "real", 4: "simulated"}
    assert all(r["status"] == "max_epochs" for r in results["runs"]), results["runs"]
    real = json.loads((tmp_path / "sweep" / "runs" / "strong-n2" / "summary.json").read_text())
    assert real["hosts"] == ["gmk-node0", "gmk-node1"]
    study = json.loads((tmp_path / "sweep" / "study.json").read_text())
    assert study["placement"]["source"] == "slurm" and study["placement"]["hosts"] == [
        ["gmk-node0", 1],
        ["gmk-node1", 1],
    ]


def test_salloc_then_gmmkit_train_uses_the_allocation(slurm_cluster, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(tiny_config(tmp_path / "run", epochs=1).to_json())
    proc = subprocess.run(
        ["salloc", "-N2", sys.executable, "-m", "gmmkit", "train", "--workers", "2", "--config", str(cfg_file)],
        env=slurm_cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"salloc -N2 gmmkit train failed:\n{proc.stdout}\n{proc.stderr}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hosts"] == ["gmk-node0", "gmk-node1"] and summary["workers"] == 2
    # three ranks do not fit the two tasks of the allocation: refused before anything starts
    proc = subprocess.run(
        [
            "salloc",
            "-N2",
            sys.executable,
            "-m",
            "gmmkit",
            "train",
            "--workers",
            "3",
            "--config",
            str(cfg_file),
            "--out",
            str(tmp_path / "three"),
        ],
        env=slurm_cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--workers (train.workers): expected at most the 2 slots" in proc.stderr
    assert not (tmp_path / "three").exists()


def test_notebook_engines_as_a_slurm_job_and_in_an_allocation(slurm_cluster, tmp_path, monkeypatch):
    """MPICluster.slurm submits the engines as one job (mpiexec over its allocation); MPICluster.connect
    joins engines that ``ipcluster start --engines=MPI`` started inside ``salloc``."""
    head = slurm_cluster.hosts.head_address
    for name, value in slurm_cluster.env({}).items():  # sbatch and the engines' mpiexec need SLURM_CONF
        monkeypatch.setenv(name, value)
    with MPICluster.slurm(
        2,
        controller_ip=head,
        profile_dir=str(tmp_path / "profile_slurm"),
        sbatch_options=["--nodes=2", "--ntasks-per-node=1"],
    ) as cluster:
        ranks = sorted(cluster.rank_map().values())
        assert ranks == [0, 1] and [r.host for r in ranks] == ["gmk-node0", "gmk-node1"]
        assert cluster.slots == 2

    profile = tmp_path / "profile_ipcluster"
    ipcluster = subprocess.Popen(
        [
            "salloc",
            "-N2",
            os.path.join(os.path.dirname(sys.executable), "ipcluster"),
            "start",
            "--engines=MPI",
            "-n",
            "2",
            f"--profile-dir={profile}",
            "--cluster-id=alloc",
            f"--ip={head}",
        ],
        env=slurm_cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    cluster_file = profile / "security" / "cluster-alloc.json"
    try:
        deadline = time.monotonic() + 120
        while not _has_engines(cluster_file):
            assert ipcluster.poll() is None and time.monotonic() < deadline, ipcluster.communicate(timeout=10)[0]
            time.sleep(0.2)
        c = MPICluster.connect(cluster_id="alloc", profile_dir=str(profile), timeout=120)
        ranks = sorted(c.rank_map().values())
        assert ranks == [0, 1] and [r.host for r in ranks] == ["gmk-node0", "gmk-node1"]
        c.stop()  # as `ipcluster stop`: ipcluster, then salloc, end
        assert ipcluster.wait(timeout=60) == 0
    finally:
        if ipcluster.poll() is None:
            ipcluster.kill()
            ipcluster.wait()


def _has_engines(cluster_file) -> bool:
    try:
        return bool(json.loads(cluster_file.read_text())["engines"]["sets"])
    except (OSError, ValueError, KeyError):
        return False


def _run_processes(run: Path) -> list:
    """The processes on any host (they share this machine's process table) whose command names ``run``."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(run) in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                mine.append(p)
    return mine


def _requeued(env, job: str, restarts: int, then=lambda: None) -> None:
    """Wait until SLURM has put ``job`` back in the queue for the ``restarts``-th time, call ``then``, and let
    the job start at once: SLURM holds a requeued batch job for two minutes (its EligibleTime), which an
    administrator may cut short."""

    def pending():
        show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        return f"Restarts={restarts} " in show and "Reason=BeginTime" in show

    wait_for(pending, timeout=120, what=f"job {job} requeued ({restarts})")
    then()
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True, capture_output=True)


def test_a_requeued_training_job_resumes_its_run_on_the_same_path(slurm_cluster, tmp_path):
    """The training example, preempted, then at its time limit: ``scontrol requeue`` (what a preemption does)
    sends SIGTERM to every process of the job, gmmkit ends the run ``stopped`` after its step, and the requeued
    job runs the example again, which resumes the run; then USR1 to the batch script (what ``--signal=B:USR1@180``
    sends before the time limit) makes the script requeue its own job, stopped and resumed the same way. The run
    ends as the uninterrupted one-process run, bit for bit (exact mode). Until the second requeue the run has
    far more epochs than it can reach, whatever the machine's speed; the last start asks for one epoch more than
    were done (a resumed run may change its epochs), so it ends."""
    run = tmp_path / "run"
    cfg = tiny_config(run, exact=True, lr=2e-3, epochs=10000, strategy="strong", workers=2)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    env = slurm_cluster.env({**os.environ, "GMMKIT": GMMKIT})
    submit = ["sbatch", "--wait", str(EXAMPLES / "train.sbatch"), "--config", str(cfg_file), "--out", str(run)]
    sbatch = subprocess.Popen(
        [*submit, "--checkpoint-every", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def summary():
        return RunDir(run).summary() or {}

    def resumed():
        return len(summary().get("resumes", ())) == 1 and summary().get("status") == "running"

    def one_epoch_more():  # the job is in the queue, its run stopped: the next start ends after one epoch more
        ours = lambda: [p for p in _run_processes(run) if p.pid != sbatch.pid]  # noqa: E731 (sbatch --wait lives on)
        wait_for(lambda: not ours(), timeout=60, what="the stopped job's processes ending")
        assert summary().get("status") == "stopped", summary()
        cfg_file.write_text(cfg.replace(train={"epochs": summary()["epochs"] + 1}).to_json())

    try:
        wait_for(lambda: "checkpoint_at" in summary(), sbatch, what="a state inside an epoch")
        (output,) = tmp_path.glob("gmmkit-train-*.out")
        job = output.stem.rsplit("-", 1)[1]
        subprocess.run(["scontrol", "requeue", job], env=env, check=True, capture_output=True, timeout=30)
        _requeued(env, job, 1)
        wait_for(resumed, sbatch, what="the requeued job resuming the run")
        stopped_at = summary().get("checkpoint_at")
        wait_for(lambda: summary().get("checkpoint_at") not in (None, stopped_at), sbatch, what="a state after it")
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True, capture_output=True)
        _requeued(env, job, 2, then=one_epoch_more)
        out, err = sbatch.communicate(timeout=300)
    finally:
        if sbatch.poll() is None:
            sbatch.kill()
            sbatch.wait()
    log = output.read_text()
    assert sbatch.returncode == 0, f"sbatch --wait: {err}\n{log}"
    epochs = json.loads(cfg_file.read_text())["train"]["epochs"]
    # one output, every start (--open-mode=append): the first two ended stopped, the last resumed and finished
    starts = log.split(f"job {job} on gmk-node[0-1], requeued ")
    assert [part[:7] for part in starts[1:]] == ["0 times", "1 times", "2 times"], log
    assert all("status stopped after" in part and "status max_epochs" not in part for part in starts[1:3]), log
    assert f"status max_epochs after {epochs} epochs" in starts[3], log
    assert summary()["status"] == "max_epochs" and summary()["epochs"] == epochs
    assert len(summary()["resumes"]) == 2, summary()["resumes"]
    wait_for(lambda: not _run_processes(run), timeout=60, what="the job's processes ending")

    gmmkit_train(cfg.replace(out=str(tmp_path / "n1"), train={"workers": 1, "epochs": epochs}))  # uninterrupted
    assert losses_of(run) == losses_of(tmp_path / "n1")  # every loss, bit for bit


def losses_of(run: Path) -> list[tuple]:
    return [(r["train_loss"], r["val_loss"]) for r in read_jsonl(run / "metrics.jsonl")]
