"""The two collective backends (issue 29): ``--backend mpi`` (mpi4py, no Horovod) against the one-process run
and against ``--backend horovod``, on real ranks that gmmkit launches.

Exact mode's runs are the paper's model of ``test_exact_runs`` for one epoch of 4 steps (batch 8, 8
micro-shards): the MPI backend's 2-rank run must give the one-process run's losses and checkpoint bit for bit,
and so the Horovod backend's. Default mode: a tiny 2-rank run on each backend, whose float32 sums of two ranks
are the same whichever library adds them (a + b = b + a), so their losses agree to rounding.
"""

import subprocess
import sys

import numpy as np
import pytest
from conftest import gmmkit_train, losses, needs_horovod, tiny_config
from test_exact_runs import assert_identical, paper_model

from gmmkit.parallel import backends
from gmmkit.parallel.launch import mpi_env

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    run = tmp_path_factory.mktemp("backends") / "n1"
    gmmkit_train(paper_model(run, epochs=1))
    return run


def test_exact_mode_on_two_mpi_ranks_is_the_one_process_run_bit_for_bit(sequential, tmp_path):
    run = tmp_path / "mpi2"
    stdout, summary = gmmkit_train(paper_model(run, epochs=1, workers=2), "--backend", "mpi")
    assert "launching 2 ranks with mpirun" in stdout
    assert summary["backend"].startswith("mpi4py-") and summary["workers"] == 2 and not summary["simulated"]
    assert summary["hosts"] == [summary["hosts"][0]] * 2 and summary["local_ranks"] == [0, 1]
    assert_identical(run, sequential)


@needs_horovod
def test_exact_mode_on_two_horovod_ranks_is_the_same_run(sequential, tmp_path):
    run = tmp_path / "horovod2"
    _, summary = gmmkit_train(paper_model(run, epochs=1, workers=2), "--backend", "horovod")
    assert summary["backend"].startswith("horovod-")
    assert_identical(run, sequential)  # and so the MPI backend's run, which is the sequential one too


def test_default_mode_trains_on_the_mpi_backend_as_on_horovod(tmp_path):
    cfg = tiny_config(tmp_path / "mpi", workers=2, backend="mpi", lr=2e-3)
    _, summary = gmmkit_train(cfg)
    assert summary["backend"].startswith("mpi4py-") and summary["status"] == "max_epochs"
    got = losses(tmp_path / "mpi") + losses(tmp_path / "mpi", "train_loss")
    assert len(got) == 4 and np.all(np.isfinite(got))
    if backends.horovod_installed():
        gmmkit_train(cfg.replace(train={"backend": "horovod"}, out=str(tmp_path / "horovod")))
        want = losses(tmp_path / "horovod") + losses(tmp_path / "horovod", "train_loss")
        np.testing.assert_allclose(got, want, rtol=1e-5)


def _gmmkit(tmp_path, *args, prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "import sys\nfrom gmmkit.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, env=mpi_env(), timeout=300
    )


def test_an_unknown_or_missing_backend_is_one_line_and_starts_nothing(tmp_path):
    flags = ("train", "--workers", "2", "--phantoms", "40", "--val-size", "8", "--out", "run")
    proc = _gmmkit(tmp_path, *flags, "--backend", "nccl")
    assert proc.returncode == 2 and "--backend" in proc.stderr and "invalid choice: 'nccl'" in proc.stderr
    cfg = tiny_config(tmp_path / "run", workers=2, backend="gloo")
    (tmp_path / "bad.json").write_text(cfg.to_json())
    proc = _gmmkit(tmp_path, "train", "--config", "bad.json")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "train.backend: expected one of horovod, mpi, received 'gloo'" in proc.stderr
    # Horovod asked for where it is not installed (as in the current lane): refused before any rank starts
    hidden = "import importlib.util\nfind = importlib.util.find_spec\n"
    hidden += "importlib.util.find_spec = lambda name, *a: None if name == 'horovod' else find(name, *a)\n"
    proc = _gmmkit(tmp_path, *flags, "--backend", "horovod", prelude=hidden)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--backend (train.backend): expected a backend installed here (Horovod is not" in proc.stderr
    assert not (tmp_path / "run").exists()
