"""Single-process training: run files, stop rules, determinism and resume, on tiny configs.

Every training run costs tens of seconds of graph tracing on a small CPU, so the runs are shared: one
3-epoch reference run, and each other run compared with it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from gmmkit.errors import RunDirError
from gmmkit.files import read_jsonl
from gmmkit.training import RunDir, StopFlag, train

METRIC_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "lr",
    "time_s",
    "epoch_time_s",
    "samples_per_s",
    "global_batch",
    "steps",
    "rank_step_s",
    "rank_eval_s",
    "tensorflow",
}


def val_losses(run_dir):
    return [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.mark.lane
def test_run_files_and_learning(reference):
    cfg, run, summary = reference
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(set(r) == METRIC_KEYS for r in records)
    assert records[0]["steps"] == 96 // 8 and records[0]["global_batch"] == 8
    assert all(b["time_s"] > a["time_s"] for a, b in zip(records, records[1:]))
    assert records[-1]["val_loss"] < records[0]["val_loss"]  # it learns
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["status"] == "max_epochs" and summary["epochs"] == 3 and summary["time_to_target_s"] is None
    assert summary["best_val_loss"] == min(r["val_loss"] for r in records)
    ckpt = RunDir(run).load_checkpoint()
    assert ckpt["epoch"] == 3 and len(ckpt["weights"]) > 0 and len(ckpt["optimizer"]) > 0
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.lane
def test_same_seed_same_losses_and_resume_matches(reference, tmp_path):
    cfg, ref_run, _ = reference
    part = tmp_path / "part"
    train(cfg.replace(train={"epochs": 2}, out=str(part)))
    assert val_losses(part) == val_losses(ref_run)[:2]  # same seed: bit-identical losses
    summary = train(cfg.replace(out=str(part)), resume=True)
    resumed = read_jsonl(part / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2, 3] and summary["epochs"] == 3
    np.testing.assert_allclose([r["val_loss"] for r in resumed], val_losses(ref_run), rtol=1e-5)
    assert resumed[2]["time_s"] > resumed[1]["time_s"]  # the clock continues


def test_stops_at_target_with_time_to_target(reference, tmp_path):
    cfg, ref_run, _ = reference
    target = val_losses(ref_run)[1] * (1 + 1e-6)  # reached at epoch 2 exactly
    summary = train(cfg.replace(train={"target_loss": target}, out=str(tmp_path / "t")))
    records = read_jsonl(tmp_path / "t" / "metrics.jsonl")
    assert summary["status"] == "reached_target" and summary["epochs"] == 2 and len(records) == 2
    assert summary["time_to_target_s"] == records[-1]["time_s"]


def test_simulated_strong_scaling_is_the_sequential_path(reference, tmp_path):
    cfg, ref_run, _ = reference
    train(
        cfg.replace(train={"epochs": 2, "strategy": "strong", "workers": 4}, out=str(tmp_path / "sim")), simulate=True
    )
    np.testing.assert_allclose(val_losses(tmp_path / "sim"), val_losses(ref_run)[:2], rtol=1e-5)


def test_two_shares_of_a_batch_give_the_sequential_gradient_on_the_papers_model():
    """Strong scaling's invariant, step by step and free of Adam's chaos: on the paper's model (K = 50,
    32 filters, latent 256) the gradients of two 16-sample shares, each scaled by the global batch and
    summed as Horovod sums them, are the 32-sample gradient up to float32 summation order (measured
    <= 8e-6 of each weight's largest entry). A kernel whose result depends on how the batch is split
    beyond rounding fails here; a whole multi-epoch run cannot tell that from chaos (benchmarks/RESULTS.md)."""
    import tensorflow as tf

    from gmmkit.config import RunConfig
    from gmmkit.data import load_split
    from gmmkit.model import build_deepdensity, per_sample_msle
    from gmmkit.parallel import distributed

    distributed.init(1, parallel=False)
    data = {"dataset": "phantoms", "size": 96, "train_size": 32, "val_size": 64}
    x = load_split(RunConfig().replace(data=data).data).train
    model = build_deepdensity(seed=3)

    @tf.function
    def gradient(share):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_sample_msle(share, model(share, training=True))) / 32.0
        return tape.gradient(loss, model.trainable_variables)

    whole = gradient(x)
    summed = [a + b for a, b in zip(gradient(x[:16]), gradient(x[16:]))]
    for var, g, s in zip(model.trainable_variables, whole, summed):
        scale = float(tf.reduce_max(tf.abs(g)))
        assert scale > 0, var.name
        assert float(tf.reduce_max(tf.abs(g - s))) <= 1e-4 * scale, var.name


def test_weak_scaling_doubles_the_global_batch_and_another_seed_differs(reference, tmp_path):
    cfg, ref_run, _ = reference
    train(
        cfg.replace(train={"epochs": 1, "strategy": "weak", "workers": 2, "seed": 4}, out=str(tmp_path / "w")),
        simulate=True,
    )
    weak = read_jsonl(tmp_path / "w" / "metrics.jsonl")
    assert weak[0]["global_batch"] == 16 and weak[0]["steps"] == 96 // 16
    assert weak[0]["val_loss"] != val_losses(ref_run)[0]


def test_divergence_ends_the_run_with_its_log(tmp_path):
    summary = train(tiny_config(tmp_path / "d", epochs=5, lr=1e4))
    records = read_jsonl(tmp_path / "d" / "metrics.jsonl")
    assert summary["status"] == "diverged"
    assert len(records) == summary["epochs"] < 5
    # strict JSON: a non-finite loss is written as null, and every file parses without NaN
    assert records[-1]["val_loss"] is None or records[-1]["train_loss"] is None
    for name in ("metrics.jsonl", "summary.json"):
        text = (tmp_path / "d" / name).read_text()
        for line in text.splitlines() if name.endswith("jsonl") else [text]:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


def test_stop_flag_and_stop_file(tmp_path):
    stop = StopFlag()
    summary = train(tiny_config(tmp_path / "s", epochs=5), callbacks=[lambda r: stop.set()], stop=stop)
    assert summary["status"] == "stopped" and summary["epochs"] == 1
    assert len(read_jsonl(tmp_path / "s" / "metrics.jsonl")) == 1
    run = RunDir(tmp_path / "f")
    summary = train(tiny_config(tmp_path / "f", epochs=5), callbacks=[lambda r: run.request_stop()])
    assert summary["status"] == "stopped" and summary["epochs"] == 1


def test_unwritable_output_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="--out"):
        train(tiny_config(blocker / "run"))
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("asked", ["one", "every core"])
def test_threads_asked_for_after_tensorflow_started_warn_unless_they_match(asked):
    # Once TensorFlow has run an op its thread pools are fixed, by default (0) one thread per core. A rank
    # that then asks for fewer threads must hear that it did not get them.
    cores = len(os.sched_getaffinity(0))
    if asked == "one" and cores == 1:
        pytest.skip("one core: one thread is TensorFlow's default")
    threads = 1 if asked == "one" else cores
    code = (
        "import warnings, tensorflow as tf\n"
        "from gmmkit.parallel import distributed\n"
        "tf.constant(1.0) + 1.0\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    distributed.configure_devices(0, 1, {threads})\n"
        "print([str(w.message) for w in caught if w.category is RuntimeWarning])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    warned = f"already runs with {cores} threads per rank; asked for {threads}" in out.stdout
    assert warned == (asked == "one")
