"""Real Horovod ranks under mpirun: strong scaling follows the sequential path, resume, simulation.

Each rank is a separate process with one TensorFlow thread; n = 3 oversubscribes a 2-core machine, which
is fine for correctness. The sequential reference is the shared 3-epoch run of ``conftest.reference``.
"""

import numpy as np
import pytest
from conftest import gmmkit_train, losses

from gmmkit.files import read_jsonl
from gmmkit.strategies import learning_rate
from gmmkit.training import train

pytestmark = pytest.mark.mpi
RTOL = 1e-4  # float32 reduction order differs between 1 and n ranks


def test_strong_scaling_on_two_ranks_is_sequential_and_resumes(reference, tmp_path):
    cfg, ref_run, _ = reference
    run = tmp_path / "n2"
    two = cfg.replace(train={"epochs": 2, "strategy": "strong", "workers": 2}, out=str(run))
    stdout, summary = gmmkit_train(two)  # gmmkit launches the 2 ranks itself
    assert "launching 2 ranks with mpirun" in stdout
    assert stdout.count("epoch    1/2") == 1  # only rank 0 prints
    assert summary["backend"].startswith("horovod-") and summary["workers"] == 2 and not summary["simulated"]
    assert summary["status"] == "max_epochs" and summary["global_batch"] == 8
    np.testing.assert_allclose(losses(run), losses(ref_run)[:2], rtol=RTOL)
    np.testing.assert_allclose(losses(run, "train_loss"), losses(ref_run, "train_loss")[:2], rtol=RTOL)
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
        "checkpoint.npz",
        "config.json",
        "input-config.json",
        "metrics.jsonl",
        "snapshots",
        "state",
        "summary.json",
    ]
    assert len(names) == 8  # and one TensorBoard event file, from rank 0 alone
    for record in read_jsonl(run / "metrics.jsonl"):  # each rank's own timings, gathered into every record
        assert len(record["rank_step_s"]) == 2 and len(record["rank_eval_s"]) == 2 and min(record["rank_eval_s"]) > 0

    # --resume continues from the epoch-2 checkpoint and lands on the uninterrupted path
    _, summary = gmmkit_train(two.replace(train={"epochs": 3}), "--resume")
    assert summary["epochs"] == 3
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    np.testing.assert_allclose(losses(run), losses(ref_run), rtol=RTOL)


def test_the_papers_model_on_two_real_ranks_follows_the_sequential_run(tmp_path):
    """The paper's own model (K = 50, 32 filters, latent 256), 512 samples, batch 32: a real 2-rank strong
    run against the sequential one over the first epoch (16 steps). Step by step the two agree to float32
    rounding (test_training's two-shares test); Adam then amplifies those last bits chaotically, by an
    amount that depends on the seed, not on the kernels: over 8 seeds each, the code of 2026-11-25 and
    this one differed by at most 1e-3 and 2.5e-3 after one epoch, and by up to 5.7 % and 2 % after two
    (benchmarks/RESULTS.md, "Path fidelity"). Hence one epoch and rtol 1e-2."""
    from gmmkit.config import RunConfig

    cfg = RunConfig().replace(
        data={"dataset": "phantoms", "size": 576, "train_size": 512, "val_size": 64},
        train={"epochs": 1, "target_loss": None, "threads": 1, "strategy": "strong"},
    )
    gmmkit_train(cfg.replace(out=str(tmp_path / "n1")))
    _, summary = gmmkit_train(cfg.replace(train={"workers": 2}, out=str(tmp_path / "n2")))
    assert summary["workers"] == 2 and summary["backend"].startswith("horovod")
    np.testing.assert_allclose(losses(tmp_path / "n2"), losses(tmp_path / "n1"), rtol=1e-2)


def test_strong_scaling_on_three_ranks_with_uneven_shares(reference, tmp_path):
    cfg, ref_run, _ = reference
    three = cfg.replace(train={"epochs": 2, "strategy": "strong", "workers": 3}, out=str(tmp_path / "n3"))
    # started by hand under mpirun: the ranks join instead of launching again; batch 8 = 3 + 3 + 2
    stdout, summary = gmmkit_train(three, mpirun=3)
    assert "launching" not in stdout and summary["workers"] == 3
    np.testing.assert_allclose(losses(tmp_path / "n3"), losses(ref_run)[:2], rtol=RTOL)


def test_simulation_follows_a_real_two_rank_warmup_run(reference, tmp_path):
    cfg, _, _ = reference
    warm = cfg.replace(train={"epochs": 2, "strategy": "warmup", "workers": 2, "warmup_epochs": 1})
    gmmkit_train(warm.replace(out=str(tmp_path / "real")))
    train(warm.replace(out=str(tmp_path / "sim")), simulate=True)
    real, sim = read_jsonl(tmp_path / "real" / "metrics.jsonl"), read_jsonl(tmp_path / "sim" / "metrics.jsonl")
    # each record holds the lr of the epoch's last step: 6 steps of 16, from lr to 2 lr over epoch 1
    expected = [learning_rate("warmup", 2, cfg.train.lr, e, warmup_epochs=1) for e in (5 / 6, 1 + 5 / 6)]
    assert [r["lr"] for r in real] == [r["lr"] for r in sim] == pytest.approx(expected)
    assert expected == pytest.approx([cfg.train.lr * (1 + 5 / 6), 2 * cfg.train.lr])
    assert real[0]["global_batch"] == sim[0]["global_batch"] == 16
    np.testing.assert_allclose([r["val_loss"] for r in real], [r["val_loss"] for r in sim], rtol=RTOL)
