"""Single-process training: run files, stop rules, determinism and resume, on tiny configs."""
import json
import math

import numpy as np
import pytest

from gmmkit.io import read_jsonl
from gmmkit.training import RunDir, StopFlag, train

from conftest import tiny_config

METRIC_KEYS = {"epoch", "train_loss", "val_loss", "lr", "time_s", "epoch_time_s", "samples_per_s",
               "global_batch", "steps"}


def val_losses(run_dir):
    return [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_run_files_and_learning(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=4, lr=3e-3)
    summary = train(cfg)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(set(r) == METRIC_KEYS for r in records)
    assert records[0]["steps"] == 96 // 8 and records[0]["global_batch"] == 8
    assert all(b["time_s"] > a["time_s"] for a, b in zip(records, records[1:]))
    assert records[-1]["val_loss"] < records[0]["val_loss"]  # it learns
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    assert summary["status"] == "max_epochs" and summary["epochs"] == 4 and summary["time_to_target_s"] is None
    ckpt = RunDir(run).load_checkpoint()
    assert ckpt["epoch"] == 4 and len(ckpt["weights"]) > 0 and len(ckpt["optimizer"]) > 0


def test_same_seed_same_losses(tmp_path):
    a = val_losses_of(tmp_path / "a", seed=3)
    b = val_losses_of(tmp_path / "b", seed=3)
    c = val_losses_of(tmp_path / "c", seed=4)
    assert a == b
    assert a != c


def val_losses_of(out, **train_kw):
    train(tiny_config(out, **train_kw))
    return val_losses(out)


def test_stops_at_target_with_time_to_target(tmp_path):
    free = val_losses_of(tmp_path / "free", epochs=3)
    assert free[1] < free[0]
    target = free[1] * (1 + 1e-6)  # reached at epoch 2 exactly
    summary = train(tiny_config(tmp_path / "t", epochs=3, target_loss=target))
    records = read_jsonl(tmp_path / "t" / "metrics.jsonl")
    assert summary["status"] == "reached_target" and summary["epochs"] == 2 and len(records) == 2
    assert summary["time_to_target_s"] == records[-1]["time_s"]


def test_divergence_ends_the_run_with_its_log(tmp_path):
    summary = train(tiny_config(tmp_path / "d", epochs=5, lr=1e4))
    records = read_jsonl(tmp_path / "d" / "metrics.jsonl")
    assert summary["status"] == "diverged"
    assert len(records) == summary["epochs"] < 5
    assert not (math.isfinite(records[-1]["val_loss"]) and math.isfinite(records[-1]["train_loss"]))


def test_stop_flag_and_stop_file(tmp_path):
    stop = StopFlag()
    summary = train(tiny_config(tmp_path / "s", epochs=5), callbacks=[lambda r: stop.set()], stop=stop)
    assert summary["status"] == "stopped" and summary["epochs"] == 1
    assert len(read_jsonl(tmp_path / "s" / "metrics.jsonl")) == 1
    run = RunDir(tmp_path / "f")
    summary = train(tiny_config(tmp_path / "f", epochs=5), callbacks=[lambda r: run.request_stop()])
    assert summary["status"] == "stopped" and summary["epochs"] == 1


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = val_losses_of(tmp_path / "full", epochs=4)
    train(tiny_config(tmp_path / "part", epochs=2))
    summary = train(tiny_config(tmp_path / "part", epochs=4), resume=True)
    resumed = read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4] and summary["epochs"] == 4
    np.testing.assert_allclose([r["val_loss"] for r in resumed], full, rtol=1e-5)
    assert resumed[2]["time_s"] > resumed[1]["time_s"]  # the clock continues


def test_simulated_strong_scaling_is_the_sequential_path(tmp_path):
    seq = val_losses_of(tmp_path / "seq", epochs=2)
    train(tiny_config(tmp_path / "sim", epochs=2, strategy="strong", workers=4), simulate=True)
    np.testing.assert_allclose(val_losses(tmp_path / "sim"), seq, rtol=1e-5)
    train(tiny_config(tmp_path / "weak", epochs=2, strategy="weak", workers=2), simulate=True)
    weak = read_jsonl(tmp_path / "weak" / "metrics.jsonl")
    assert weak[0]["global_batch"] == 16 and weak[0]["steps"] == 96 // 16


def test_unwritable_output_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    from gmmkit.errors import RunDirError

    with pytest.raises(RunDirError, match="--out"):
        train(tiny_config(blocker / "run"))
