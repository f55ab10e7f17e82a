"""A run directory: the files one training run leaves behind.

=================  ==============================================================================
``config.json``    the :class:`~gmmkit.config.RunConfig`, written before the first epoch
``metrics.jsonl``  one line per epoch, flushed at once: epoch, train_loss, val_loss, lr, time_s
                   (since training began), epoch_time_s, samples_per_s, global_batch, steps
``summary.json``   status (reached_target | diverged | max_epochs | stopped | failed),
                   time_to_target_s, epochs, best/final validation loss, workers, backend
``checkpoint.npz`` weights, optimizer state and epoch after the last finished epoch
``STOP``           created by whoever wants the run to stop (dashboard, ``gmmkit stop``): the run
                   ends after the current step with status ``stopped``
=================  ==============================================================================

Only the chief (rank 0) writes; every write is atomic (:mod:`gmmkit.files`). This module is the one
place that knows what a run directory is (:meth:`RunDir.open`) and how to load a run's model and weights
(:meth:`RunDir.load_model`); the launcher and ``gmmkit stop`` import it without loading TensorFlow.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..errors import RunDirError
from ..files import append_jsonl, atomic_savez, atomic_write_json, atomic_write_text, read_jsonl

STATUSES = ("reached_target", "diverged", "max_epochs", "stopped", "failed", "running")


class RunDir:
    def __init__(self, path: str | os.PathLike, chief: bool = True):
        self.path = Path(path)
        self.chief = chief

    @classmethod
    def open(cls, path: str | os.PathLike, what: str = "run") -> "RunDir":
        """An existing run directory, or a :class:`RunDirError` naming ``what`` (a flag such as ``--run``)."""
        run = cls(path)
        if not run.exists():
            raise RunDirError(f"{what} {path}: not a gmmkit run directory (no config.json); train one first "
                              "(gmmkit train --out DIR, or gmmkit.training.train(cfg))")
        return run

    def exists(self) -> bool:
        """Whether this is a run directory: it holds the ``config.json`` every run writes first."""
        return self.config_path.is_file()

    # --- paths -----------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.npz")
    stop_path = property(lambda self: self.path / "STOP")

    # --- writing (chief only) ------------------------------------------------------------------
    def prepare(self, cfg: RunConfig, resume: bool = False) -> None:
        """Create the directory, check it is writable, write ``config.json``; start fresh unless resuming."""
        if not self.chief:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"--out {self.path}: cannot write there ({exc.strerror})") from None
        with contextlib.suppress(FileNotFoundError):
            self.stop_path.unlink()
        if not resume:
            for stale in (self.metrics_path, self.summary_path, self.checkpoint_path):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        atomic_write_text(self.config_path, cfg.to_json() + "\n")

    def append_metrics(self, record: dict) -> None:
        if self.chief:
            append_jsonl(self.metrics_path, record)

    def write_summary(self, summary: dict) -> None:
        if self.chief:
            atomic_write_json(self.summary_path, summary)

    def save_checkpoint(self, weights: list[np.ndarray], optimizer_state: list[np.ndarray], epoch: int,
                        time_s: float) -> None:
        if not self.chief:
            return
        arrays = {f"w{i:04d}": w for i, w in enumerate(weights)}
        arrays.update({f"o{i:04d}": v for i, v in enumerate(optimizer_state)})
        atomic_savez(self.checkpoint_path, epoch=np.int64(epoch), time_s=np.float64(time_s), **arrays)

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the metric lines up to ``last_epoch`` (on resume, drop epochs after the checkpoint)."""
        if not self.chief:
            return
        kept = [r for r in read_jsonl(self.metrics_path) if r.get("epoch", 0) <= last_epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def request_stop(self) -> None:
        """Ask a running run to stop (any process may call this)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.stop_path.write_text("stop\n")

    # --- reading (anyone) ------------------------------------------------------------------
    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def config(self) -> RunConfig:
        return RunConfig.load(self.config_path)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def load_checkpoint(self) -> dict | None:
        """``{"epoch", "time_s", "weights", "optimizer"}`` or None when there is no checkpoint."""
        if not self.checkpoint_path.exists():
            return None
        try:
            with np.load(self.checkpoint_path, allow_pickle=False) as f:
                names = sorted(f.files)
                return {
                    "epoch": int(f["epoch"]),
                    "time_s": float(f["time_s"]),
                    "weights": [f[n] for n in names if n.startswith("w")],
                    "optimizer": [f[n] for n in names if n.startswith("o")],
                }
        except Exception as exc:
            raise RunDirError(f"{self.checkpoint_path}: unreadable checkpoint ({exc})") from None

    def load_model(self, checkpoint: bool = True):
        """The run's Keras model with the weights of its last checkpoint, and that checkpoint's epoch.

        Without a checkpoint yet: a :class:`RunDirError` when ``checkpoint`` is required, else the model's
        seeded initial weights and epoch 0."""
        from ..model import from_config  # heavy: TensorFlow, only for the callers that need the model

        cfg = self.config()
        model = from_config(cfg)
        ckpt = self.load_checkpoint()
        if ckpt is None:
            if checkpoint:
                raise RunDirError(f"{self.path}: no checkpoint.npz (the run has not finished an epoch)")
            return model, 0
        try:
            model.set_weights(ckpt["weights"])
        except ValueError as exc:
            raise RunDirError(f"{self.checkpoint_path}: its weights do not fit the model config.json describes "
                              f"({exc})") from None
        return model, ckpt["epoch"]
