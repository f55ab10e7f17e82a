"""The two lanes (README "Two lanes"): TensorFlow 2.15 with Horovod (``.venv``) and TensorFlow 2.21 with tf-keras
(``.venv-current``). What one lane writes the other opens, and what exact mode's bits do across them.

These tests run in the current lane (``make test-current``, the tests marked ``lane``) and reach the Horovod
lane through its venv's Python (``.venv/bin/python``, or ``GMMKIT_HOROVOD_PYTHON``), each process a real
``gmmkit train`` or a script of its own. Measured on this machine (2026-12-02): the two TensorFlows' kernels
give other bits for the same model, weights and inputs (DeepDensity's forward pass already differs in about half
of its outputs, by up to 7e-7 relative, oneDNN on or off), so an exact run is exact within a lane, and a run
continued in the other lane is exact from the switch on; ``summary.json`` says which TensorFlow made each epoch.
"""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, gmmkit_train, tiny_config
from test_exact_runs import assert_identical

from gmmkit.data.cubes import CubeSet
from gmmkit.files import read_jsonl
from gmmkit.parallel.launch import mpi_env
from gmmkit.training import RunDir

CURRENT_LANE = importlib.util.find_spec("tf_keras") is not None
HOROVOD_PYTHON = Path(os.environ.get("GMMKIT_HOROVOD_PYTHON") or ROOT / ".venv" / "bin" / "python")

pytestmark = [
    pytest.mark.lane,
    pytest.mark.mpi,  # ranks under mpirun
    pytest.mark.skipif(not CURRENT_LANE, reason="runs in the current lane (make test-current), reaching this one"),
]
LOSSES = ("train_loss", "val_loss")


def exact_run(out, epochs: int):
    """tiny_config's run in exact mode on half its cubes (6 steps an epoch)."""
    return tiny_config(out, data={"train_size": 48, "val_size": 16}, epochs=epochs, exact=True, lr=2e-3)


def tensorflow_of(python) -> str:
    proc = subprocess.run(
        [str(python), "-c", "import tensorflow as tf; print(tf.__version__)"],
        capture_output=True,
        text=True,
        env=mpi_env(),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1]


def losses(run) -> list[tuple]:
    return [tuple(r[k] for k in LOSSES) for r in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An exact run's first epoch in the Horovod lane, continued to its second in this lane; and the whole run
    made in this lane in one process, on two real ranks that gmmkit launches and on three under the user's own
    mpirun (this lane's backend: mpi4py)."""
    assert HOROVOD_PYTHON.is_file(), f"the Horovod lane's venv is not there ({HOROVOD_PYTHON}): make setup"
    root = tmp_path_factory.mktemp("lanes")
    gmmkit_train(exact_run(root / "switched", 1), python=HOROVOD_PYTHON)
    gmmkit_train(exact_run(root / "switched", 2), "--resume")
    gmmkit_train(exact_run(root / "here", 2))
    gmmkit_train(exact_run(root / "here-n2", 2).replace(train={"workers": 2}))
    gmmkit_train(exact_run(root / "here-n3", 2).replace(train={"workers": 3}), mpirun=3)
    return root


def test_a_run_begun_in_the_horovod_lane_continues_here_and_its_summary_names_each_epochs_tensorflow(runs):
    import tensorflow as tf

    old, new = tensorflow_of(HOROVOD_PYTHON), tf.__version__
    assert old.startswith("2.15.") and new.startswith("2.21.")
    summary = json.loads((runs / "switched" / "summary.json").read_text())
    assert summary["status"] == "max_epochs" and summary["epochs"] == 2 and summary["resumes"][0]["from_epoch"] == 1
    assert summary["tensorflow"] == [{"tensorflow": old, "epochs": [1, 1]}, {"tensorflow": new, "epochs": [2, 2]}]
    assert [r["tensorflow"] for r in read_jsonl(runs / "switched" / "metrics.jsonl")] == [old, new]
    here = json.loads((runs / "here" / "summary.json").read_text())
    assert here["tensorflow"] == [{"tensorflow": new, "epochs": [1, 2]}]


def test_exact_mode_here_is_the_same_bits_on_one_two_and_three_real_ranks(runs):
    for n in (2, 3):
        summary = json.loads((runs / f"here-n{n}" / "summary.json").read_text())
        assert summary["workers"] == n and not summary["simulated"] and summary["backend"].startswith("mpi4py")
        assert_identical(runs / f"here-n{n}", runs / "here")


def test_the_lanes_kernels_give_other_bits_so_a_switched_run_is_not_the_uninterrupted_one(runs):
    """The measurement the README states: a run whose first epoch the Horovod lane made ends with other weights
    than the same run made here (the same data: both lanes read the one cached phantom set), the same run up to
    float32 rounding; from the switch on it is this lane's exact run (the same bits on any number of ranks: the
    test above). Should a TensorFlow make the lanes agree, the first assertion fails: then a run continued in
    the other lane would equal the uninterrupted one, and the README should say so."""
    with np.load(runs / "switched" / "checkpoint.npz") as a, np.load(runs / "here" / "checkpoint.npz") as b:
        weights = [k for k in a.files if k[0] == "w" and k[1:].isdigit()]
        differ = [k for k in weights if not np.array_equal(a[k], b[k])]
    assert weights and differ, "the lanes now agree bit for bit: update README 'Two lanes' and this test"
    flat = [np.ravel(losses(runs / name)) for name in ("switched", "here")]
    np.testing.assert_allclose(*flat, rtol=1e-4)


# What the Horovod lane makes of this lane's files: the run's model at its checkpoint and at its first snapshot,
# on the cubes of a cubes.npz written here, and the facts of those cubes; and a cubes.npz it writes for this lane.
OPEN_THERE = """
import json, sys
import numpy as np
from gmmkit.data.cubes import CubeSet
from gmmkit.training import RunDir
cubes = CubeSet.load(sys.argv[2])
run = RunDir(sys.argv[1])
model, epoch = run.load_model()
first = np.asarray(run.load_snapshot(1)["weights"][0])
np.savez(sys.argv[3], y=model.predict(cubes.cubes, verbose=0), epoch=epoch, first=first,
         malignancy=cubes.column("malignancy"))
CubeSet.of(cubes.cubes[::-1], malignancy=cubes.column("malignancy")[::-1]).save(sys.argv[4])
"""


def test_a_run_its_snapshots_and_a_cubes_npz_written_here_open_in_the_horovod_lane(runs, tmp_path):
    cubes = np.random.default_rng(1).random((6, 16, 16, 16), dtype=np.float32)
    CubeSet.of(cubes, malignancy=np.arange(6) + 1.0).save(tmp_path / "cubes.npz")
    proc = subprocess.run(
        [
            str(HOROVOD_PYTHON),
            "-c",
            OPEN_THERE,
            str(runs / "here"),
            str(tmp_path / "cubes.npz"),
            str(tmp_path / "o"),
            str(tmp_path / "back.npz"),
        ],
        capture_output=True,
        text=True,
        env=mpi_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    model, epoch = RunDir(runs / "here").load_model()
    with np.load(tmp_path / "o.npz") as there:
        assert int(there["epoch"]) == epoch == 2
        assert np.array_equal(there["malignancy"], np.arange(6) + 1.0)
        assert np.array_equal(there["first"], RunDir(runs / "here").load_snapshot(1)["weights"][0])
        # the same weights through the other TensorFlow's kernels: equal up to float32 rounding
        np.testing.assert_allclose(there["y"], model.predict(cubes, verbose=0), rtol=1e-4, atol=1e-6)
    back = CubeSet.load(tmp_path / "back.npz")
    assert np.array_equal(back.cubes, cubes[::-1]) and np.array_equal(back.column("malignancy"), np.arange(6, 0, -1))
