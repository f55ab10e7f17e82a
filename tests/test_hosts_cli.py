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

import numpy as np
import pytest

from gmmkit.files import read_jsonl

from conftest import needs_horovod, tiny_config

pytestmark = [pytest.mark.mpi, needs_horovod]
RTOL = 1e-4  # as tests/test_horovod.py: float32 reduction order differs between 1 and n ranks


def gmmkit(hosts, *args, timeout=300, check=True):
    """``gmmkit ARGS`` from the head (the root namespace), as a user on a login node types it."""
    cmd = [sys.executable, "-m", "gmmkit", *map(str, args)]
    proc = subprocess.run(cmd, env=hosts.mpi_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def losses(run_dir, key="val_loss"):
    return [r[key] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def test_strong_run_with_one_rank_per_host_follows_the_sequential_run(emulated_hosts, reference, tmp_path):
    cfg, ref_run, _ = reference
    run = tmp_path / "n2"
    two = cfg.replace(train={"epochs": 2, "strategy": "strong", "workers": 2}, out=str(run))
    cfg_file = tmp_path / "two.json"
    cfg_file.write_text(two.to_json())
    proc = gmmkit(emulated_hosts, "train", "--config", cfg_file, "--hostfile", emulated_hosts.hostfile)
    assert "launching 2 ranks with mpirun on gmk-node0:1,gmk-node1:1" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["hosts"] == ["gmk-node0", "gmk-node1"] and summary["local_ranks"] == [0, 0]
    assert summary["workers"] == 2 and summary["status"] == "max_epochs"
    np.testing.assert_allclose(losses(run), losses(ref_run)[:2], rtol=RTOL)
    np.testing.assert_allclose(losses(run, "train_loss"), losses(ref_run, "train_loss")[:2], rtol=RTOL)
