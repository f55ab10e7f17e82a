"""The epochs of a run: :func:`fit` trains a claimed run directory to its end, committing one state of it after
every epoch and, with ``train.checkpoint_every`` (``--checkpoint-every``), inside epochs too.

A mid-epoch state holds the checkpoint (the weights and Adam's state, its step counter included) and the
:class:`Position` in the epoch: the steps done, the sum of their losses (float64, added in step order), the
epoch's time so far and its steps' timing. Its metrics are the finished epochs' (``metrics.jsonl`` stays one
line per finished epoch) and its summary says where the checkpoint is (``checkpoint_at``). A resumed run
restores it on every rank and goes on at the next step: the sample order of an epoch depends on the seed and
the epoch alone (:func:`gmmkit.strategies.epoch_permutation`), the learning rate on the step, so the epoch's
record comes out as the uninterrupted run's would (its loss the same sum, its time the sum of its parts), and
in exact mode the weights are the uninterrupted run's to the last bit, whatever the worker counts before and
after (strong scaling, :mod:`gmmkit.training.exact`).

When: after every N steps or S seconds since the last state committed (an epoch's end included), and, once
``checkpoint_every`` is set, after the step a stop request ended (a stopped run then loses no step). Only rank
0 decides and writes (the weights are the same on every rank after a step), so the ranks exchange nothing
more. A state whose loss sum is not finite is not committed: a diverging run keeps its last finite one.
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from .. import strategies
from ..checks import is_finite_number
from ..errors import RunDirError
from ..signals import StopFlag
from .progress import per_rank
from .reached import Reached
from .resume import changes
from .rundir import RunDir
from .summary import record_epoch
from .tensorboard import EventWriter

if TYPE_CHECKING:
    from .trainer import EpochCallback, Trainer


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` epochs finished and ``step`` steps of the next one done, with that epoch's
    ``loss_sum`` so far; ``time_s`` of training since the run began, ``epoch_time_s`` of it in the epoch begun,
    and ``step_time_s`` over ``steps_timed`` steps of it (each part's steps but its first, :func:`fit`)."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    time_s: float = 0.0
    epoch_time_s: float = 0.0
    step_time_s: float = 0.0
    steps_timed: int = 0

    @classmethod
    def of(cls, checkpoint: Optional[dict]) -> "Position":
        """The position a checkpoint (:func:`gmmkit.training.state.read_checkpoint`) was taken at."""
        return cls(**{f.name: checkpoint[f.name] for f in fields(cls)}) if checkpoint else cls()

    @classmethod
    def shared(cls, ctx, mine: "Position") -> "Position":
        """Rank 0's position on every rank (``mine`` on rank 0, anything elsewhere): one sum, in float64, which
        keeps every bit of the loss sum (the others add zeros)."""
        values = ctx.sum(np.array(astuple(mine if ctx.is_chief else cls()), dtype=np.float64))
        return cls(*(int(v) if f.type == "int" else float(v) for f, v in zip(fields(cls), values)))

    def checkpoint(self, weights: list, moments: list) -> dict:
        """The checkpoint of this position (:meth:`RunDir.commit`)."""
        return {"weights": weights, "optimizer": moments, **{f.name: getattr(self, f.name) for f in fields(self)}}


class Every:
    """When a mid-epoch state is due: ``interval`` (:attr:`gmmkit.config.TrainConfig.checkpoint_interval`)
    steps or seconds after the last state; never without one."""

    def __init__(self, interval: Optional[tuple[str, float]]):
        self.kind, self.amount = interval or (None, 0)
        self.committed()

    def __bool__(self) -> bool:
        return self.kind is not None

    def committed(self) -> None:
        """A state was committed now: count from here."""
        self.steps, self.since = 0, time.perf_counter()

    def due(self) -> bool:
        """A step ended: whether a state is due after it."""
        self.steps += 1
        if self.kind == "steps":
            return self.steps >= self.amount
        return self.kind == "seconds" and time.perf_counter() - self.since >= self.amount


def fit(
    trainer: "Trainer",
    run: RunDir,
    callbacks: Iterable["EpochCallback"] = (),
    stop: Optional[StopFlag] = None,
    resume: bool = False,
) -> dict:
    """Train the claimed run ``run`` with ``trainer`` to its end (:meth:`~gmmkit.training.Trainer.fit`)."""
    return _Epochs(trainer, run, stop if stop is not None else StopFlag()).fit(callbacks, resume)


class _Epochs:
    """One fit: the run's records and summary as they grow, and its clock."""

    def __init__(self, trainer: "Trainer", run: RunDir, stop: StopFlag):
        self.trainer, self.run, self.stop, self.ctx = trainer, run, stop, trainer.ctx
        self.every = Every(trainer.cfg.train.checkpoint_interval)
        # an elastic run's rank 0 marks every step done, so a restart can count the steps it does again
        self.reached = Reached(run.path) if trainer.cfg.train.elastic and trainer.ctx.is_chief else None
        self.records: list[dict] = []
        self.summary: dict = {}
        self.began = time.perf_counter()

    def fit(self, callbacks: Iterable["EpochCallback"], resume: bool) -> dict:
        trainer, run, chief = self.trainer, self.run, self.ctx.is_chief
        board = EventWriter(run.path, trainer.cfg, trainer.simulate) if chief else None
        callbacks = [*callbacks, board] if chief else []
        at = self._begin(resume, board)
        # time to target counts training, not graph tracing: every run's clock starts on a traced model
        warm = trainer.warm_up_or_stop(trainer.plan(0.0), self.stop)
        self.began = time.perf_counter() - at.time_s
        self.every.committed()
        summary = self.summary
        for epoch in range(at.epoch, trainer.cfg.train.epochs if warm else at.epoch):
            record = self._epoch(epoch, at if epoch == at.epoch else Position(epoch=epoch))
            if record is None:
                summary["status"] = "stopped"
                break
            self.records.append(record)
            finite = record_epoch(summary, record, trainer.cfg.train.target_loss)
            if finite:
                summary.pop("checkpoint_at", None)
            ckpt = Position(record["epoch"], time_s=record["time_s"]).checkpoint(*trainer.state()) if finite else None
            run.commit(self.records, summary, ckpt)  # diverged: the last finite checkpoint stays
            self.every.committed()
            for callback in callbacks:
                callback(record)
            if summary["status"] != "running":
                break
        if summary["status"] == "running":
            summary["status"] = "max_epochs" if warm else "stopped"
        summary["elapsed_s"] = time.perf_counter() - self.began
        run.commit(self.records, summary)
        run.stop_handled()
        if self.reached is not None:
            self.reached.close()
        if board is not None:
            board.close(summary)
        return summary

    def _begin(self, resume: bool, board: Optional[EventWriter] = None) -> Position:
        """Restore a resumed run's checkpoint on every rank and begin the run directory: the records so far and
        the summary (an elastic run's restarts not yet on TensorBoard go there first, ``board``); returns the
        position to go on from."""
        trainer, run, ctx = self.trainer, self.run, self.ctx
        ckpt, self.records = run.history() if (resume and ctx.is_chief) else (None, [])
        at = Position.shared(ctx, Position.of(ckpt))
        if ckpt:
            try:
                trainer.restore(ckpt)
            except ValueError as exc:  # config.json no longer describes the model the checkpoint holds
                raise RunDirError(
                    f"{run.checkpoint_path}: its weights do not fit the model {run.config_path} describes ({exc}); "
                    "was config.json changed since? A resumed run continues its own model"
                ) from None
        trainer.broadcast_state()
        steps = trainer.steps_per_epoch()
        if at.step > steps:
            raise RunDirError(
                f"{run.checkpoint_path}: taken after step {at.step} of epoch {at.epoch + 1}, which has {steps} steps "
                "now; was the data set changed since? A resumed run continues its own epochs"
            )
        self.summary = summary = trainer.summary_of(self.records, at.epoch, trainer.plan(0.0).global_batch, steps)
        if at.step:
            summary["checkpoint_at"] = {"epoch": at.epoch + 1, "step": at.step}
        if resume and ctx.is_chief:
            previous = run.summary() or {}
            resumed = {"from_epoch": at.epoch, **({"from_step": at.step} if at.step else {})}
            summary["resumes"] = previous.get("resumes", []) + [
                {**resumed, "changed": changes(run.previous_config or trainer.cfg, trainer.cfg)}
            ]
            summary["time_to_target_s"] = previous.get("time_to_target_s")
            if previous.get("restarts"):  # an elastic run's launcher lists them (training/elastic.py): kept
                summary["restarts"] = previous["restarts"]
                summary["restarts_marked"] = previous.get("restarts_marked", 0)
                if board is not None:
                    board.mark_restarts(summary, at.epoch, at.step)
        if self.reached is not None and resume:  # first: the last job's mark is never counted from this state
            self.reached.mark(at.epoch, at.step)
        run.begin(trainer.cfg, self.records, summary)
        if self.reached is not None and not resume:  # after begin, which makes .state (or replaces a run's)
            self.reached.mark(at.epoch, at.step)
        return at

    def _epoch(self, epoch: int, at: Position) -> Optional[dict]:
        """Train epoch ``epoch`` (0-based) from ``at`` and validate: its metrics record, or None when the ranks
        voted to stop (after the same step on every rank)."""
        trainer, ctx = self.trainer, self.ctx
        steps, epoch_began = trainer.steps_per_epoch(), time.perf_counter() - at.epoch_time_s
        perm = strategies.epoch_permutation(trainer.cfg.train.seed, epoch, len(trainer.data.train))
        loss_sum, first_step_done = at.loss_sum, None
        for step in range(at.step, steps):
            plan = trainer.plan(epoch + step / steps)
            trainer.optimizer.learning_rate.assign(plan.lr)
            asked = bool(self.stop) or (ctx.is_chief and self.run.stop_requested())
            loss, stopped = trainer.step(trainer.batch(perm, plan, step), plan.global_batch, stop=asked)
            loss_sum += loss
            if self.reached is not None:
                self.reached.mark(epoch, step + 1)
            now = time.perf_counter()
            if first_step_done is None:  # ranks start apart (rank 0 writes the files); the first step aligns them
                first_step_done = now
            due = self.every.due() and step + 1 < steps  # the epoch's last step: its end commits a state
            if due or (stopped and self.every):
                # a part's timed steps: all but its first (the epoch's or a resumed run's)
                timed = (at.step_time_s + now - first_step_done, at.steps_timed + step - at.step)
                self._commit(Position(epoch, step + 1, loss_sum, now - self.began, now - epoch_began, *timed))
            if stopped:
                return None
        now = time.perf_counter()
        timed_s = at.step_time_s + (now - first_step_done if first_step_done is not None else 0.0)
        timed = at.steps_timed + max(steps - at.step - 1, 0)
        step_s = timed_s / timed if timed else (now - epoch_began) / steps
        val_loss = trainer.validation_loss()
        rank_step_s, rank_eval_s = per_rank(ctx, step_s, trainer.eval_s_per_sample)
        now = time.perf_counter()
        plan = trainer.plan(epoch + (steps - 1) / steps)
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / (steps * plan.global_batch),  # step(): loss sums
            "val_loss": val_loss,
            "lr": plan.lr,
            "time_s": now - self.began,
            "epoch_time_s": now - epoch_began,
            "samples_per_s": steps * plan.global_batch / (now - epoch_began),
            "global_batch": plan.global_batch,
            "steps": steps,
            "rank_step_s": rank_step_s,
            "rank_eval_s": rank_eval_s,
            "tensorflow": trainer.tensorflow,  # the lane that made the epoch (README "Two lanes")
        }

    def _commit(self, at: Position) -> None:
        """Commit the mid-epoch state ``at`` (rank 0 writes it; every rank counts from it)."""
        self.every.committed()
        if not is_finite_number(at.loss_sum):  # diverging: the last finite state stays
            return
        if self.ctx.is_chief:
            self.summary["checkpoint_at"] = {"epoch": at.epoch + 1, "step": at.step}
            self.run.commit(self.records, self.summary, at.checkpoint(*self.trainer.state()))
