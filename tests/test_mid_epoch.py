"""States inside an epoch (``--checkpoint-every``, issue 27): a run resumed from any step of an epoch, on any
worker count, ends bit for bit on the uninterrupted run (exact mode), its files agreeing at every state.

Identity is ``==`` on every loss of ``metrics.jsonl`` and ``np.array_equal`` on every array of
``checkpoint.npz`` (weights ``w####``, Adam's state ``o####``, its step counter included). Every wait is for
an event of the run itself (a state committed, a process ended), never for the clock.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import gmmkit_train, tiny_config, wait_for

from gmmkit.files import read_jsonl
from gmmkit.parallel.launch import mpi_env
from gmmkit.training import RunDir, RunDirError

LOSSES = ("train_loss", "val_loss")
STEPS = 12  # tiny_config: 96 training cubes, batch 8


def exact_run(out, **train):
    return tiny_config(out, exact=True, lr=2e-3, **train)


def losses(run: Path) -> list[tuple]:
    return [tuple(r[k] for k in LOSSES) for r in read_jsonl(run / "metrics.jsonl")]


def arrays(run: Path) -> dict:
    with np.load(run / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k[:1] in "wo" and k[1:].isdigit()}


def assert_identical(run: Path, ref: Path) -> None:
    assert losses(run) == losses(ref), run.name
    got, want = arrays(run), arrays(ref)
    assert sorted(got) == sorted(want) and any(k.startswith("o") for k in got)
    different = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not different, f"{run.name}: {len(different)} arrays differ from {ref.name}'s, first {different[0]}"


# One process (exact mode fixes TensorFlow's threads, which a process sets once, so every run compared runs in
# the same one): the run uninterrupted; the same run committing a state after every step, whose every state
# of epoch 1 is copied aside as a kill would leave it; then each copy resumed (without --checkpoint-every).
EVERY_STEP = r"""
import shutil, sys
from pathlib import Path
from gmmkit.config import RunConfig
from gmmkit.training import Trainer, train, state

root, cfg = Path(sys.argv[1]), RunConfig.load(sys.argv[2]).resolved()
trainer = Trainer(cfg)
train(cfg.replace(out=str(root / "plain")), trainer=trainer)
commit = state.RunState.commit

def commit_and_copy(self, records, summary, checkpoint=None):
    commit(self, records, summary, checkpoint)
    if checkpoint is not None and checkpoint.get("step") and checkpoint["epoch"] == 0:
        shutil.copytree(self.path, root / f"step-{checkpoint['step']:03d}", symlinks=True)

state.RunState.commit = commit_and_copy
train(cfg.replace(out=str(root / "every"), train={"checkpoint_every": 1}), trainer=trainer)
state.RunState.commit = commit
for copy in sorted(root.glob("step-*")):
    (copy / "before").mkdir()
    for name in ("metrics.jsonl", "summary.json", "checkpoint.npz"):
        shutil.copy(copy / name, copy / "before" / name)
    train(cfg.replace(out=str(copy)), resume=True, trainer=trainer)
"""


def test_a_resume_from_every_step_of_an_epoch_is_the_uninterrupted_run(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(exact_run(tmp_path / "plain").to_json())
    proc = subprocess.run(
        [sys.executable, "-c", EVERY_STEP, str(tmp_path), str(cfg)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    assert_identical(tmp_path / "every", tmp_path / "plain")  # committing states changes no bit
    copies = sorted(tmp_path.glob("step-*"))
    assert [int(c.name[5:]) for c in copies] == list(range(1, STEPS))
    plain = read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    for copy in copies:
        step = int(copy.name[5:])
        # the state as a kill left it: no finished epoch, the checkpoint and the summary at the same step
        before = RunDir(copy / "before")
        ckpt, summary = before.load_checkpoint(), before.summary()
        assert before.metrics() == [] and (ckpt["epoch"], ckpt["step"]) == (0, step)
        assert summary["epochs"] == 0 and summary["checkpoint_at"] == {"epoch": 1, "step": step}
        assert_identical(copy, tmp_path / "plain")
        records, summary = read_jsonl(copy / "metrics.jsonl"), RunDir(copy).summary()
        assert [(r["steps"], r["global_batch"]) for r in records] == [(r["steps"], r["global_batch"]) for r in plain]
        assert records[0]["epoch_time_s"] >= ckpt["epoch_time_s"] > 0  # the epoch's time: its parts added
        assert records[0]["time_s"] >= ckpt["time_s"]
        assert summary["resumes"][-1]["from_epoch"] == 0 and summary["resumes"][-1]["from_step"] == step
        assert "checkpoint_at" not in summary and summary["status"] == "max_epochs"


EPOCHS = 4  # the killed and stopped runs': 48 steps, of which a state after step 2 leaves 46 to kill it in


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The uninterrupted one-process run the interrupted ones must end on."""
    run = tmp_path_factory.mktemp("mid-epoch") / "n1"
    _, summary = gmmkit_train(exact_run(run, epochs=EPOCHS))
    assert summary["workers"] == 1 and summary["exact"] and summary["epochs"] == EPOCHS
    return run


def start_train(cfg, *flags) -> subprocess.Popen:
    """``gmmkit train --config CFG FLAGS`` in a session of its own."""
    Path(cfg.out).mkdir(parents=True)
    config = Path(cfg.out).parent / f"{Path(cfg.out).name}-input.json"
    config.write_text(cfg.to_json())
    return subprocess.Popen(
        [sys.executable, "-m", "gmmkit", "train", "--config", str(config), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=mpi_env(),
        start_new_session=True,
    )


def resume(run: Path, *flags) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "gmmkit", "train", "--resume", "--out", str(run), *flags],
        capture_output=True,
        text=True,
        timeout=900,
        env=mpi_env(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads((run / "summary.json").read_text())


def _position(run: Path) -> tuple[int, int]:
    """(epochs finished, step of the next one) of the run's committed checkpoint; (0, 0) without one."""
    with contextlib.suppress(RunDirError, FileNotFoundError):
        ckpt = RunDir(run).load_checkpoint()
        return (ckpt["epoch"], ckpt["step"]) if ckpt else (0, 0)
    return (0, 0)


def assert_state_agrees(run: Path) -> dict:
    """metrics, summary and checkpoint describe the same place: the finished epochs, and the step reached."""
    r = RunDir(run)
    ckpt, summary = r.load_checkpoint(), r.summary()
    assert len(r.metrics()) == summary["epochs"] == ckpt["epoch"] == len(ckpt["records"])
    assert summary.get("checkpoint_at") == (
        {"epoch": ckpt["epoch"] + 1, "step": ckpt["step"]} if ckpt["step"] else None
    )
    return ckpt


@pytest.mark.mpi
def test_two_ranks_killed_after_a_mid_epoch_state_resume_on_one_bit_for_bit(sequential, tmp_path):
    run = tmp_path / "killed"
    proc, job = start_train(exact_run(run, epochs=EPOCHS, workers=2), "--checkpoint-every", "2"), []
    try:
        wait_for(lambda: _position(run)[1] > 0, proc, what="the first mid-epoch state")
        job = psutil.Process(proc.pid).children(recursive=True)  # mpirun and its two ranks
        assert len(job) >= 3
        for p in job:  # the job dies at once, as on a lost host: no rank writes anything more
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, err
    wait_for(
        lambda: not [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        timeout=60,
        what="the job's processes ending",
    )
    ckpt = assert_state_agrees(run)
    assert RunDir(run).summary()["status"] == "failed" and ckpt["epoch"] < EPOCHS  # the kill ended it
    summary = resume(run, "--workers", "1")
    assert summary["status"] == "max_epochs" and summary["workers"] == 1
    assert summary["resumes"][-1]["changed"]["train.workers"] == [2, 1]
    assert_identical(run, sequential)


def test_a_stop_commits_the_step_it_ended_and_the_resume_loses_nothing(sequential, tmp_path):
    run = tmp_path / "stopped"
    proc = start_train(exact_run(run, epochs=EPOCHS), "--checkpoint-every", "2")
    try:
        wait_for(lambda: _position(run)[1] > 0, proc, what="the first mid-epoch state")
        seen = _position(run)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    ckpt = assert_state_agrees(run)
    # the step that carried the stop was committed: later than the state seen (the signal came after it)
    assert RunDir(run).summary()["status"] == "stopped" and seen < (ckpt["epoch"], ckpt["step"])
    summary = resume(run)
    assert summary["status"] == "max_epochs"
    assert_identical(run, sequential)


def test_a_state_is_due_every_n_steps_or_seconds_since_the_last(monkeypatch):
    from gmmkit.training import epochs

    now = [100.0]
    monkeypatch.setattr(epochs.time, "perf_counter", lambda: now[0])  # the clock moved by hand
    steps = epochs.Every(("steps", 3))
    assert [steps.due() for _ in range(3)] == [False, False, True]
    steps.committed()  # an epoch's end, or a stop, counts as a state: the count starts again
    assert not steps.due()
    seconds = epochs.Every(("seconds", 30.0))
    assert not seconds.due()
    now[0] += 30.0
    assert seconds.due()
    seconds.committed()
    assert not seconds.due()
    never = epochs.Every(None)
    assert not never and not any(never.due() for _ in range(1000))
