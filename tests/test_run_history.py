"""What a run keeps of its history besides metrics.jsonl: epoch snapshots, TensorBoard's event files read back
with TensorBoard's own reader, and each rank's timings in every epoch record."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from gmmkit.parallel import launch
from gmmkit.parallel.placement import LOCAL
from gmmkit.training import RunDir, elastic, reached, train
from gmmkit.training.rundir import RunDirError
from gmmkit.training.tensorboard import SCALARS

SMALL = {"data": {"size": 40, "val_size": 6, "train_size": 32}, "model": {"filters": 4, "latent": 16}}


def events(path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def scalar_series(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_snapshots_keep_the_weights_of_the_1_2_5_epochs(tmp_path):
    cfg = tiny_config(tmp_path / "run", **SMALL, epochs=6)
    train(cfg)
    run = RunDir(cfg.out)
    assert run.snapshot_epochs() == [1, 2, 5]  # epoch 6, the last, is the checkpoint itself
    assert sorted(os.listdir(run.path / "snapshots")) == ["epoch-000001.npz", "epoch-000002.npz", "epoch-000005.npz"]
    five, six = run.load_snapshot(5), run.load_snapshot(6)
    assert five["epoch"] == 5 and five["records"] == []
    assert six["epoch"] == 6 and not all(np.array_equal(a, b) for a, b in zip(five["weights"], six["weights"]))
    assert [w.shape for w in five["weights"]] == [w.shape for w in six["weights"]]
    assert five["optimizer"] == [] and len(six["optimizer"]) > 0  # weights only: a third of a checkpoint
    size = (run.path / "snapshots" / "epoch-000005.npz").stat().st_size
    assert size < 0.5 * os.path.getsize(run.checkpoint_path)
    with pytest.raises(RunDirError, match=r"no snapshot of epoch 3 \(kept: 1, 2, 5\)"):
        run.load_snapshot(3)
    # a resumed run keeps them and adds its own; an overwritten run starts without any
    train(cfg.replace(train={"epochs": 10}), resume=True)
    assert run.snapshot_epochs() == [1, 2, 5, 10] and run.load_snapshot(10)["epoch"] == 10
    train(cfg.replace(train={"epochs": 1}), overwrite=True)
    assert run.snapshot_epochs() == [1] and len(list(run.path.glob("events.out.tfevents.*"))) == 1


def test_tensorboard_reads_losses_learning_rate_throughput_and_hparams(tmp_path):
    cfg = tiny_config(tmp_path / "run", **SMALL, epochs=3, target_loss=10.0, lr=2e-3)  # reached at once
    summary = train(cfg)
    records = RunDir(cfg.out).metrics()
    acc = events(cfg.out)
    for key, tag in SCALARS.items():
        series = scalar_series(acc, tag)
        assert [step for step, _ in series] == [r["epoch"] for r in records], tag
        assert [v for _, v in series] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    assert scalar_series(acc, "time_to_target_s") == [(1, pytest.approx(summary["time_to_target_s"], rel=1e-6))]
    assert scalar_series(acc, "ranks/step_s_slowest")[0][1] == pytest.approx(records[0]["rank_step_s"][0], rel=1e-6)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    assert hp["strategy"] == "strong" and hp["workers"] == 1 and hp["lr"] == pytest.approx(2e-3)
    assert hp["target_loss"] == 10.0 and hp["components"] == 4 and hp["simulated"] is False


def test_records_carry_per_rank_times_and_a_simulated_run_has_one_rank(tmp_path):
    cfg = tiny_config(tmp_path / "run", **SMALL, epochs=2, strategy="strong", workers=4)
    train(cfg, simulate=True)
    for record in RunDir(cfg.out).metrics():
        assert len(record["rank_step_s"]) == 1 and len(record["rank_eval_s"]) == 1  # one process
        assert record["rank_eval_s"][0] > 0 and record["rank_step_s"][0] > 0


def test_each_restart_is_marked_on_tensorboard_once_by_the_job_that_goes_on(tmp_path, monkeypatch):
    """An elastic run of one epoch; a restart (as the launcher commits it when a job is lost) and the resumed
    job, twice: each restart marked once, at the epochs finished where its job began, its cause as text."""
    cfg = tiny_config(tmp_path / "run", **SMALL, epochs=1, elastic=True)
    train(cfg)
    run = RunDir(cfg.out)
    steps = run.summary()["steps_per_epoch"]
    assert reached.read(run.path) == (0, steps)  # rank 0's mark: every step of the first epoch done
    monkeypatch.setattr(launch, "alive_hosts", lambda where, stop=None, env=None: list(where.names))
    restarts = elastic.Restarts(cfg, LOCAL)
    for k in (1, 2):
        cause = f"rank 0 (pid {k}) was killed by SIGKILL"
        restarts.next(run, {**run.summary(), "status": "running"}, cause, 1)
        assert run.summary()["restarts"][-1]["steps_redone"] == 0  # the epoch's end was committed
        train(cfg.replace(train={"epochs": 1 + k}), resume=True)
        assert run.summary()["restarts_marked"] == k and len(run.summary()["restarts"]) == k
    acc = events(cfg.out)
    assert scalar_series(acc, "restarts") == [(1, 1.0), (2, 2.0)]
    texts = [(e.step, tf.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors("restarts/cause")]
    assert [step for step, _ in texts] == [1, 2]
    assert texts[0][1].startswith("restart 1: rank 0 (pid 1) was killed by SIGKILL; going on with 1 worker (1 before)")
    assert "from the end of epoch 2, 0 steps done again" in texts[1][1]
