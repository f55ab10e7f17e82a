"""Training runs: :func:`train` one run into its directory, :func:`train_many` several in one process (or
Horovod job), reusing one traced :class:`~gmmkit.training.trainer.Trainer`.

The same functions run on one process and on every Horovod rank; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Sequence

from ..config import RunConfig
from ..parallel.launch import launcher_rank
from ..signals import Interrupted, StopFlag, stop_on_signals
from .rundir import FINISHED, RunDir
from .trainer import EpochCallback, Trainer


def train(
    cfg: RunConfig,
    callbacks: Iterable[EpochCallback] = (),
    resume: bool = False,
    stop: Optional[StopFlag] = None,
    simulate: bool = False,
    ctx=None,
    handle_signals: bool = False,
    trainer: Optional[Trainer] = None,
    overwrite: bool = False,
) -> dict:
    """Train ``cfg`` and return its summary; files go to ``cfg.out`` (rank 0 only).

    ``cfg.out`` must hold no run, unless ``overwrite`` (the run there is replaced once this one starts) or
    ``resume`` (the run there continues from its last checkpoint and its own config, see
    :func:`gmmkit.training.resume.resume_config`; a run that reached its target or diverged is reported,
    not trained on). ``callbacks`` are called on rank 0 with each epoch's metrics record. ``stop`` ends the
    run after the current step with status ``stopped``; so does a ``STOP`` file in the run directory, and
    SIGINT or SIGTERM when ``handle_signals`` is set. Any exception writes ``status: failed`` with the error
    before propagating.
    """
    cfg = cfg.validate().check_batch_fits().resolved()
    run = RunDir(cfg.out, chief=(ctx.is_chief if ctx is not None else launcher_rank() == 0))
    signals = (
        stop_on_signals(stop) if handle_signals else contextlib.nullcontext(stop if stop is not None else StopFlag())
    )
    with signals as stop:
        cfg = run.claim(cfg, "resume" if resume else "overwrite" if overwrite else "new")
        try:
            done = finished(run, cfg) if resume else None
            if done is not None:
                return done
            try:
                if trainer is not None and trainer.can_run(cfg):
                    trainer.reset(cfg, simulate=simulate)
                else:
                    ctx = ctx if ctx is not None else getattr(trainer, "ctx", None)
                    trainer = Trainer(cfg, ctx=ctx, simulate=simulate)
                trainer.steps_per_epoch()  # refuse a training split smaller than one batch before writing anything
            except Interrupted as exc:  # stopped while its data set was built (the build is abandoned)
                return run.stopped_before_start(cfg, exc.signum)
            return trainer.fit(run, callbacks=callbacks, stop=stop, resume=resume)
        except Exception as exc:
            if run.begun and run.chief:
                _record_failure(run, exc)
            raise
        finally:
            run.release() if run.begun else run.abandon()


def finished(run: RunDir, cfg: RunConfig) -> Optional[dict]:
    """The summary of a run that has nothing left to do on resume (it reached its target or diverged, or
    has run the epochs ``cfg`` asks for), marked ``"resumed": False``; None when it goes on."""
    summary = run.summary() or {}
    if summary.get("status") in FINISHED or (
        summary.get("status") == "max_epochs" and summary.get("epochs", 0) >= cfg.train.epochs
    ):
        return {**summary, "resumed": False}
    return None


def _record_failure(run: RunDir, exc: BaseException) -> None:
    """Commit ``failed`` with the error, unless the run already ended; a failure to write (a full disk) leaves
    the last state as it is."""
    summary = run.summary() or {}
    if summary.get("status") in (None, "running"):
        with contextlib.suppress(Exception):
            run.commit(run.metrics(), {**summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})


def train_many(
    cfgs: Sequence[RunConfig],
    simulate: bool = False,
    callbacks: Iterable[EpochCallback] = (),
    trainer: Optional[Trainer] = None,
    stop: Optional[StopFlag] = None,
    resume: Sequence[bool] | bool = False,
) -> list[dict]:
    """Train ``cfgs`` one after another in this process (or Horovod job), reusing one traced model for all
    runs that :meth:`Trainer.can_run`. A run that raises is recorded as ``failed`` (its summary says why)
    and the next one starts; ``stop`` ends the current run and skips the rest. ``resume``: for every run,
    or one flag per run, continue the run its directory holds (:func:`train`)."""
    summaries = []
    stop = stop if stop is not None else StopFlag()
    flags = [resume] * len(cfgs) if isinstance(resume, bool) else list(resume)
    for cfg, again in zip(cfgs, flags):
        if stop:
            summaries.append({"status": "stopped", "epochs": 0})
            continue
        try:
            trainer = Trainer.for_config(cfg, simulate, reuse=trainer)
            summaries.append(
                train(cfg, callbacks=callbacks, simulate=simulate, trainer=trainer, stop=stop, resume=again)
            )
        except Exception as exc:  # the run's summary.json already says failed, with the error
            summaries.append({"status": "failed", "error": f"{type(exc).__name__}: {exc}", "epochs": 0})
    return summaries
