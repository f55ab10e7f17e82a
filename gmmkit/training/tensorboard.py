"""TensorBoard event files in every run directory, so ``tensorboard --logdir runs`` compares runs.

Rank 0 writes, once per epoch (never inside the step loop): the losses, the learning rate, samples per second,
wall time and the slowest rank's times, under the tags of :data:`SCALARS`; when the run ends, its time to
target. The run's settings go in as HParams (``tensorboard.plugins.hparams``), one session per run directory
named after it, so TensorBoard's HParams tab lines the runs up against their losses and time to target.
The files sit beside ``metrics.jsonl``, which stays the run's own record; these are for TensorBoard.

An elastic run's restarts (``summary.json``'s ``restarts``) are marked by rank 0 of the job that goes on after
each: the scalar ``restarts`` (how many so far) and the text ``restarts/cause`` (the restart in words) at the
epochs finished when that job began (every scalar here counts epochs, so the mark lines up with the loss
curves; the text names the step in the epoch). ``summary.json``'s ``restarts_marked`` counts the restarts
marked, so a later resume marks only the new ones.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from ..checks import is_finite_number
from ..config import RunConfig
from ..errors import RunDirError
from .summary import restart_line

# record key -> TensorBoard tag
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "lr": "learning_rate",
    "samples_per_s": "samples_per_s",
    "time_s": "time/elapsed_s",
    "epoch_time_s": "time/epoch_s",
}
RANK_SCALARS = {"rank_step_s": "ranks/step_s_slowest", "rank_eval_s": "ranks/eval_s_per_sample_slowest"}
TIME_TO_TARGET = "time_to_target_s"
RESTARTS, RESTART_TEXT = "restarts", "restarts/cause"


def hparams(cfg: RunConfig, simulate: bool = False) -> dict:
    """The run's settings as HParams values (TensorBoard takes numbers, strings and booleans: no None)."""
    t, d, m = cfg.train, cfg.data, cfg.model
    values = {
        "strategy": t.strategy,
        "workers": t.workers,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "epochs": t.epochs,
        "warmup_epochs": t.warmup_epochs,
        "seed": t.seed,
        "target_loss": t.target_loss if t.target_loss is not None else "none",
        "dataset": d.dataset if d.dataset in ("phantoms", "lidc") else os.path.basename(d.dataset),
        "cube": d.cube,
        "val_size": d.val_size,
        "components": m.components,
        "filters": m.filters,
        "latent": m.latent,
        "simulated": bool(simulate),
    }
    if hasattr(t, "exact"):  # issue 16's exact sums, when this build has them
        values["exact"] = bool(t.exact)
    return values


class EventWriter:
    """An epoch callback (``writer(record)``) writing a run's TensorBoard events into ``path``; :meth:`close`
    adds the summary's time to target and closes the file. Nothing is created before the first epoch."""

    def __init__(self, path: str | os.PathLike, cfg: RunConfig, simulate: bool = False):
        self.path = Path(path)
        self.cfg, self.simulate = cfg, simulate
        self._writer = None
        self._last_epoch = 0

    def _open(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.path))
            with self._writer.as_default():
                hp.hparams(hparams(self.cfg, self.simulate), trial_id=self.path.name)
        return self._writer

    def __call__(self, record: dict) -> None:
        epoch = int(record["epoch"])
        with self._full_disk(epoch):
            with self._open().as_default():
                for key, tag in SCALARS.items():
                    if is_finite_number(record.get(key)):
                        tf.summary.scalar(tag, float(record[key]), step=epoch)
                for key, tag in RANK_SCALARS.items():
                    values = [v for v in record.get(key) or () if is_finite_number(v)]
                    if values:
                        tf.summary.scalar(tag, max(values), step=epoch)
            self._writer.flush()  # once an epoch: a TensorBoard open on the run shows it as it trains
        self._last_epoch = epoch

    def mark_restarts(self, summary: dict, epoch: int, step: int = 0) -> None:
        """Mark the restarts of ``summary`` (a resumed job's, before it is committed) not yet marked: the job
        goes on from ``step`` steps into the epoch after ``epoch``; sets ``summary["restarts_marked"]``."""
        listed, marked = summary.get("restarts") or [], int(summary.get("restarts_marked") or 0)
        if len(listed) <= marked:
            return
        with self._full_disk(epoch):
            with self._open().as_default():
                for entry in listed[marked:]:
                    count = entry.get("restart") if isinstance(entry.get("restart"), int) else listed.index(entry) + 1
                    tf.summary.scalar(RESTARTS, float(count), step=epoch)
                    tf.summary.text(RESTART_TEXT, restart_line(entry), step=epoch)
            self._writer.flush()
        summary["restarts_marked"] = len(listed)

    @contextlib.contextmanager
    def _full_disk(self, epoch: int):
        """A full disk is the run's full disk (a one-line error, as RunDir.commit's): epoch ``epoch`` is committed."""
        try:
            yield
        except tf.errors.ResourceExhaustedError:
            raise RunDirError(
                f"--out {self.path}: the disk is full (TensorBoard's events could not be written); the last good "
                f"state (epoch {epoch}) stays; free space and continue with --resume"
            ) from None

    def close(self, summary: Optional[dict] = None) -> None:
        ttt = (summary or {}).get(TIME_TO_TARGET)
        with self._full_disk(self._last_epoch):
            if is_finite_number(ttt):
                with self._open().as_default():
                    tf.summary.scalar(TIME_TO_TARGET, float(ttt), step=self._last_epoch)
            if self._writer is not None:
                self._writer.close()
                self._writer = None
