"""gmmkit inside SLURM allocations on emulated hosts (issue 17): the example batch scripts, ``salloc``, and
the notebook's engines as a SLURM job or started with ``ipcluster`` inside an allocation.

A real SLURM 22.05 runs on the emulated hosts (``tests/support/slurm.py``): gmmkit finds the allocation in
the job's environment and places its ranks on the allocated nodes with no host flags; mpirun starts its
daemons through SLURM. Jobs get the submitter's environment (sbatch's default ``--export=ALL``).
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, needs_horovod, tiny_config

from gmmkit.cluster import MPICluster
from gmmkit.files import read_jsonl

pytestmark = [pytest.mark.mpi, needs_horovod]
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
