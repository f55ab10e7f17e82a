"""One training run on n ranks, started from one process (``gmmkit train --workers N`` from a shell).

The launching process owns the run directory while the ranks train in it: it claims it (the checks and the
lock, so a second process is refused and ``gmmkit stop`` works from the first moment), tells the ranks it
holds the lock, starts them through :func:`gmmkit.parallel.launch.run_ranks`, turns SIGINT and SIGTERM into
a stop request, and when the ranks could not finish the run's files themselves (a rank died, or the job was
ended), it does: the run ends ``stopped`` or ``failed`` on the last state the ranks committed.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Optional, Sequence

from ..config import RunConfig
from ..parallel import launch
from ..parallel.placement import LOCAL, Placement
from ..signals import StopFlag
from .rundir import LOCK_HELD_BY_PARENT, RunDir


@dataclass(frozen=True)
class Launched:
    """How a launched run ended: mpirun's exit ``code``, the rank that ended the job (``failure``), and the
    run's final ``summary`` (None when the ranks never started writing it)."""

    code: int
    failure: Optional[str]
    summary: Optional[dict]
    finished_by_launcher: bool  # the ranks could not end the run themselves; the launcher did


def run_on_ranks(cfg: RunConfig, argv: Sequence[str], mode: str = "new", launcher: str = "mpirun",
                 stop: Optional[StopFlag] = None, grace_s: float = 120.0, placement: Placement = LOCAL) -> Launched:
    """Run ``argv`` (the same ``gmmkit train`` on every rank) on ``cfg.train.workers`` ranks placed by
    ``placement`` for the run ``cfg`` describes, owning its directory meanwhile (``mode`` as
    :meth:`RunDir.claim` takes it). The ranks learn that the lock is held through ``GMMKIT_RUN_LOCKED``,
    which :mod:`gmmkit.parallel.launch` forwards to other hosts with the rest of gmmkit's variables."""
    cfg = cfg.resolved()
    run = RunDir(cfg.out)
    run.claim(cfg, mode)
    stop = stop if stop is not None else StopFlag()
    try:
        env = {**os.environ, LOCK_HELD_BY_PARENT: str(run.path.resolve())}
        code, failure = launch.run_ranks(cfg.train.workers, argv, launcher, env=env, on_interrupt=run.request_stop,
                                         grace_s=grace_s, stop=stop, placement=placement,
                                         rank_hosts=lambda: (run.summary() or {}).get("hosts"))
        if not run.exists():  # the ranks refused the run before writing anything (bad input)
            return Launched(code, failure, None, False)
        summary = run.summary() or {}
        ended_by_us = summary.get("status") in (None, "running")
        if ended_by_us:  # the ranks died or were ended before they could say how the run ended
            # asked to stop (a signal to the launcher, maybe to every process of the job at once): stopped, even
            # if mpirun had to end ranks that were slow to finish their step; else the job failed
            reason = failure or f"{launcher} exited with status {code}"
            if stop:
                reason = f"stopped by {_signal_name(stop.signum)}" + (f" ({failure})" if failure else "")
            summary = {**summary, "status": "stopped" if stop else "failed", "error": reason}
            run.commit(run.metrics(), summary)
        run.stop_handled()
        return Launched(code, failure, summary, ended_by_us)
    finally:
        run.release() if run.exists() else run.abandon()


def _signal_name(signum: Optional[int]) -> str:
    try:
        return signal.Signals(signum).name if signum else "a stop request"
    except ValueError:
        return f"signal {signum}"
