"""A run directory: the files one training run leaves behind, and the rules that keep them whole.

=================  ==============================================================================
``config.json``    the :class:`~gmmkit.config.RunConfig` (paths absolute), written when the run starts
``metrics.jsonl``  one line per finished epoch: epoch, train_loss, val_loss, lr, time_s (since training began),
                   epoch_time_s, samples_per_s, global_batch, steps, rank_step_s, rank_eval_s (each rank's)
``summary.json``   status (running | reached_target | diverged | max_epochs | stopped | failed),
                   time_to_target_s, epochs, best/final validation loss, workers, backend, resumes, restarts
                   (elastic), and ``checkpoint_at`` (epoch, step) while the checkpoint is a mid-epoch state
``checkpoint.npz`` weights, optimizer state and epoch after the last finished epoch, or (``--checkpoint-every``)
                   after a step inside the next one: then also the step, the epoch's loss sum and times so far
``snapshots/``     the weights of epochs 1, 2, 5, 10, 20, 50, ... (:mod:`gmmkit.training.snapshots`)
``events.out.*``   TensorBoard's event files (:mod:`gmmkit.training.tensorboard`)
``STOP``           a stop request (``gmmkit stop``, the dashboard, a signal to the launcher) naming the claim
                   it is for: that run ends after the current step with status ``stopped`` and removes it;
                   a request left by a claim that ended (killed, or finished first) stops nothing, and the
                   next claim removes it
``.lock``          held by the one process that owns the run while it runs (``flock``: a dead process
                   holds nothing); it names that process and its claim
=================  ==============================================================================

**The files agree at every instant.** ``metrics.jsonl``, ``summary.json`` and ``checkpoint.npz`` change
together, with one ``rename`` per state (:mod:`gmmkit.training.state`): one per epoch, and one per mid-epoch
state (whose metrics are the finished epochs'); a reader, a crash or a kill at any moment sees either the
previous state or the next. A killed writer's temporary files are removed by the next
process that claims the run (:meth:`RunDir.claim`).

**One run per directory.** :meth:`RunDir.claim` makes a process the run's owner: a new run needs an empty
directory (or ``overwrite``), ``resume`` needs a run there, and a second process is refused while the first
holds the lock. This module is also the one place that knows how to load a run's model
(:meth:`RunDir.load_model`); the launcher and ``gmmkit stop`` import it without loading TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from ..config import RunConfig
from ..errors import RunDirError
from ..files import atomic_write_text, read_jsonl, remove_temporaries, umask
from ..signals import Interrupted, signal_name
from . import snapshots
from .resume import resume_config
from .state import RunState, checkpoint_bytes, read_checkpoint

STATUSES = ("reached_target", "diverged", "max_epochs", "stopped", "failed", "running")
FINISHED = ("reached_target", "diverged")  # a resume reports these instead of training on
# A launcher that holds a run's lock for its ranks names the run directory here (the ranks skip the lock).
LOCK_HELD_BY_PARENT = "GMMKIT_RUN_LOCKED"
LOCK_TRIES = 10  # 0.5 s: far longer than a look by in_use(), far shorter than any run
_CLAIM = re.compile(r", claim ([0-9a-f]+)")  # a claim's mark in .lock and in STOP


class RunDir:
    def __init__(self, path: str | os.PathLike, chief: bool = True):
        self.path = Path(path)
        self.chief = chief
        self._lock_fd: Optional[int] = None
        self._mode = "new"
        self._created: list[Path] = []  # the folders the claim made (abandon removes them)
        self.previous_config: Optional[RunConfig] = None  # a resumed run's config before the resume
        self.begun = False  # this process has started writing the run (begin)
        self.state = RunState(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike, what: str = "run") -> "RunDir":
        """An existing run directory, or a :class:`RunDirError` naming ``what`` (a flag such as ``--run``)."""
        run = cls(path)
        if not run.exists():
            raise RunDirError(
                f"{what} {path}: not a gmmkit run directory (no config.json); train one first "
                "(gmmkit train --out DIR, or gmmkit.training.train(cfg))"
            )
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
    lock_path = property(lambda self: self.path / ".lock")

    # --- ownership ---------------------------------------------------------------------------
    def claim(self, cfg: RunConfig, mode: str = "new") -> RunConfig:
        """Become the owner of this run directory; returns the config the run goes on with.

        ``mode``: ``"new"`` (the directory must hold no run), ``"overwrite"`` (a run there is replaced) or
        ``"resume"`` (the run there continues from its own ``config.json``; ``cfg`` may change only what
        :func:`resume_config` allows). Takes the lock (unless a launcher holds it for this process) and
        removes what a killed writer left; nothing of the run changes until :meth:`begin`, and
        :meth:`abandon` undoes the claim (a bad input found after it leaves nothing behind)."""
        if mode not in ("new", "overwrite", "resume"):
            raise ValueError(f"mode: expected new, overwrite or resume, received {mode!r}")
        self._mode = mode
        if not self.chief:
            return resume_config(self.config(), cfg) if mode == "resume" else cfg
        missing = [q for q in (self.path, *self.path.absolute().parents) if not q.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test.tmp"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            detail = f"{self.path}: cannot write there ({exc.strerror})"
            raise RunDirError(f"--out {detail}", field="out", detail=detail) from None
        self._created = missing  # what abandon removes again, deepest first
        self.lock()
        try:
            for folder in (self.path, self.path / ".state", self.path / snapshots.FOLDER):
                if folder.is_dir():
                    remove_temporaries(folder)
            if self.stop_path.exists() and not self.stop_requested():  # left for a claim that has ended
                self.stop_path.unlink(missing_ok=True)
            if mode == "resume":
                if not self.exists():
                    raise RunDirError(f"--out {self.path}: no run to resume here (no config.json)")
                self.previous_config = self.config()
                cfg = resume_config(self.previous_config, cfg)
            elif self.exists() and mode == "new":
                summary = self.summary() or {}
                raise RunDirError(
                    f"--out {self.path}: holds a run already (status "
                    f"{summary.get('status', 'unknown')}, {summary.get('epochs', 0)} epochs); "
                    "continue it with --resume, or replace it with --overwrite"
                )
            return cfg
        except BaseException:
            self.abandon()
            raise

    @property
    def mode(self) -> str:
        """How this process claimed the run: ``new``, ``overwrite`` or ``resume``."""
        return self._mode

    def begin(self, cfg: RunConfig, records: list[dict], summary: dict) -> None:
        """The run starts writing: an earlier run is removed (``overwrite``), ``config.json`` written, and
        the first state (``records`` so far, ``summary``) committed. A resumed run killed between its last
        checkpoint and that epoch's snapshot gets the snapshot now, from the checkpoint."""
        if not self.chief:
            self.begun = True
            return
        if self._mode == "overwrite":
            self._remove_run()
        atomic_write_text(self.config_path, cfg.to_json() + "\n")
        self.state.link_files()
        self.commit(records, summary)
        ckpt = self.load_checkpoint() if self._mode == "resume" else None
        if ckpt is not None and not ckpt["step"] and ckpt["epoch"] not in snapshots.found(self.path):
            snapshots.keep(self.path, ckpt)
        self.begun = True
        self._created = []  # from here on the run's files are its own, kept whatever happens

    def stopped_before_start(self, cfg: RunConfig, signum: Optional[int]) -> dict:
        """The claimed run was stopped before its first step (while its data set was built): a new run is begun
        as ``stopped`` after 0 epochs, as a stop asked while a run starts ends it at its first step; a run
        resumed, or one that would have replaced another, leaves the one there as it was, and the stop goes
        on up (:class:`~gmmkit.signals.Interrupted`)."""
        if self._mode != "new":
            raise Interrupted(signum)
        t = cfg.train
        summary = {
            "status": "stopped",
            "epochs": 0,
            "strategy": t.strategy,
            "workers": t.workers,
            "target_loss": t.target_loss,
            "time_to_target_s": None,
            "best_val_loss": None,
            "final_val_loss": None,
            "error": f"stopped by {signal_name(signum)} before its first step, while its data set was built",
        }
        self.begin(cfg, [], summary)
        self.stop_handled()
        return summary

    def abandon(self) -> None:
        """Undo a claim that never began: release the lock, and remove the directory if the claim made it."""
        self.release()
        if self._created and self.chief:
            self.lock_path.unlink(missing_ok=True)
            self.stop_path.unlink(missing_ok=True)
            for folder in self._created:  # deepest first; one that is not empty stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            self._created = []

    def lock(self) -> None:
        """Hold the run's lock (``flock`` on ``.lock``), or raise naming the process that holds it."""
        if os.environ.get(LOCK_HELD_BY_PARENT) == str(self.path.resolve()) or self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        # in_use() (gmmkit stop, a dashboard) holds the lock for an instant: a few tries tell it from an owner
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt + 1 == LOCK_TRIES:
                    holder = _CLAIM.sub("", os.read(fd, 200).decode(errors="replace").strip()) or "another process"
                    os.close(fd)
                    raise RunDirError(
                        f"--out {self.path}: in use by {holder}; one process per run directory "
                        "(wait for it, or stop it with gmmkit stop)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        claim = secrets.token_hex(8)  # what a stop request names: this claim, not whoever holds the run later
        os.write(fd, f"gmmkit pid {os.getpid()} on {socket.gethostname()}, claim {claim}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def in_use(self) -> bool:
        """Whether some process holds this run's lock now (a run that is starting or running)."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def _remove_run(self) -> None:
        for name in ("config.json", "STOP"):
            (self.path / name).unlink(missing_ok=True)
        self.state.remove()
        for events in self.path.glob("events.out.tfevents.*"):
            events.unlink()
        snapshots.remove(self.path)

    # --- writing (the owner only) ---------------------------------------------------------------
    def commit(self, records: list[dict], summary: dict, checkpoint: Optional[dict] = None) -> None:
        """Write the next state: every epoch record so far, the summary and, when given, a new checkpoint
        (``{"weights", "optimizer", "epoch", "time_s"}``, and inside an epoch ``step`` and the rest of
        :data:`~gmmkit.training.state.POSITION`; else the previous one is kept). All three change together
        (module docstring). A full disk raises :class:`RunDirError` and leaves the last state."""
        if not self.chief:
            return
        try:
            if checkpoint is not None:
                self._check_space(checkpoint)
            self.state.commit(records, summary, checkpoint)
            if checkpoint is not None and not checkpoint.get("step"):  # a mid-epoch state is no epoch's weights
                snapshots.keep(self.path, checkpoint)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunDirError(
                    f"--out {self.path}: the disk is full ({exc.strerror}); the last good state "
                    f"(epoch {self._state_epoch()}) stays; free space and continue with "
                    "--resume"
                ) from None
            raise

    def _check_space(self, checkpoint: dict) -> None:
        need, free = checkpoint_bytes(checkpoint), shutil.disk_usage(self.path).free
        if free < 2 * need + (1 << 20):  # the new state beside the old one, and room to spare
            raise RunDirError(
                f"--out {self.path}: {free / 2**20:.1f} MB free, a checkpoint needs "
                f"{need / 2**20:.1f} MB; the last good state (epoch {self._state_epoch()}) stays; "
                "free space and continue with --resume"
            )

    def request_stop(self) -> bool:
        """Ask the run in progress to stop after its current step (any process may call this): ``STOP`` names
        the claim that holds the run now, so it stops that run and no later one. Returns False, and writes
        nothing, when no process holds the run."""
        if not self.in_use():
            return False
        for _ in range(LOCK_TRIES):  # a claim writes its mark just after it takes the lock
            claim = self._claim()
            if claim:
                break
            time.sleep(0.05)
        else:
            return False
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_text(self.stop_path, f"stop requested at {when}, claim {claim}\n")
        return True

    def _claim(self) -> Optional[str]:
        """The claim that holds (or last held) the run, from ``.lock``."""
        try:
            found = _CLAIM.search(self.lock_path.read_text(errors="replace"))
        except FileNotFoundError:
            return None
        return found.group(1) if found else None

    def stop_handled(self) -> None:
        """The run ended: a stop request is consumed (or came too late); either way it is done with."""
        if self.chief:
            self.stop_path.unlink(missing_ok=True)

    # --- reading (anyone) ------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """Whether ``STOP`` asks the claim that holds the run now to stop (one left for an earlier claim, or
        written by an older gmmkit without a claim, does not)."""
        try:
            found = _CLAIM.search(self.stop_path.read_text(errors="replace"))
        except FileNotFoundError:
            return False
        return found is not None and found.group(1) == self._claim()

    def config(self) -> RunConfig:
        return RunConfig.load(self.config_path)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def history(self) -> tuple[Optional[dict], list[dict]]:
        """The last checkpoint (None without one) and the epoch records up to it: what a resumed run goes on
        from. The checkpoint carries its records; a run written before it did gives them from metrics."""
        ckpt = self.load_checkpoint()
        if ckpt is None:
            return None, []
        return ckpt, ckpt["records"] or [r for r in self.metrics() if r.get("epoch", 0) <= ckpt["epoch"]]

    def _state_epoch(self) -> int:
        return int((self.summary() or {}).get("epochs", 0))

    def load_checkpoint(self) -> dict | None:
        """``{"epoch", "time_s", "weights", "optimizer", "records"}`` or None when there is no checkpoint."""
        return read_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def snapshot_epochs(self) -> list[int]:
        """The epochs whose snapshot the run keeps (:mod:`gmmkit.training.snapshots`), in order."""
        return list(snapshots.found(self.path))

    def load_snapshot(self, epoch: int) -> dict:
        """Epoch ``epoch``'s weights: its snapshot (no optimiser state), or the checkpoint if of that epoch."""
        path = snapshots.found(self.path).get(epoch)
        ckpt = read_checkpoint(path) if path is not None else self.load_checkpoint()
        if ckpt is None or ckpt["epoch"] != epoch:  # a mid-epoch checkpoint stands for its run's latest weights
            raise RunDirError(
                f"{self.path}: no snapshot of epoch {epoch!r} (kept: "
                f"{', '.join(map(str, self.snapshot_epochs())) or 'none'})"
            )
        return ckpt

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
            raise RunDirError(
                f"{self.checkpoint_path}: its weights do not fit the model config.json describes ({exc})"
            ) from None
        return model, ckpt["epoch"]
