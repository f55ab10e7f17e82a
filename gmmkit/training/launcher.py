"""One training run on n ranks, started from one process (``gmmkit train --workers N`` from a shell), and the
decision whether a process trains itself or starts the ranks (:func:`train_or_launch`).

The launching process owns the run directory while the ranks train in it: it claims it (the checks and the
lock, so a second process is refused and ``gmmkit stop`` works from the first moment), tells the ranks it
holds the lock, starts them through :func:`gmmkit.parallel.launch.run_ranks`, turns SIGINT and SIGTERM into
a stop request, and when the ranks could not finish the run's files themselves (a rank died, or the job was
ended), it does: the run ends ``stopped`` or ``failed`` on the last state the ranks committed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

from .. import checks
from ..config import RunConfig
from ..data.sources import load_split
from ..parallel import discovery, launch, network
from ..parallel.backends import resolve_backend
from ..parallel.placement import LOCAL, Placement, resolve
from ..signals import Interrupted, StopFlag, signal_name, stop_on_signals
from . import elastic, growth
from .rundir import LOCK_HELD_BY_PARENT, RunDir


@dataclass(frozen=True)
class Launched:
    """How a launched run ended: mpirun's exit ``code``, the rank that ended the job (``failure``), and the
    run's final ``summary`` (None when the ranks never started writing it)."""

    code: int
    failure: Optional[str]
    summary: Optional[dict]
    finished_by_launcher: bool  # the ranks could not end the run themselves; the launcher did


def run_on_ranks(
    cfg: RunConfig,
    argv: Sequence[str],
    mode: str = "new",
    launcher: str = "mpirun",
    stop: Optional[StopFlag] = None,
    grace_s: float = 120.0,
    placement: Placement = LOCAL,
    say: Callable[[str], None] = lambda line: None,
) -> Launched:
    """Run ``argv`` (the same ``gmmkit train`` on every rank) on ``cfg.train.workers`` ranks placed by
    ``placement`` for the run ``cfg`` describes, owning its directory meanwhile (``mode`` as
    :meth:`RunDir.claim` takes it). The ranks learn that the lock is held through ``GMMKIT_RUN_LOCKED``,
    which :mod:`gmmkit.parallel.launch` forwards to other hosts with the rest of gmmkit's variables.

    An elastic run (``cfg.train.elastic``) whose job ends with the run still running (a rank or a host was
    lost) after its ranks began it is started again from its last committed state on the hosts that answer
    (:mod:`gmmkit.training.elastic`); one short of workers takes back the hosts that come back at its next
    checkpoint (:mod:`gmmkit.training.growth`); ``say`` gets one line per restart."""
    cfg = cfg.resolved()
    run = RunDir(cfg.out)
    claimed = run.claim(cfg, mode)
    stop = stop if stop is not None else StopFlag()
    try:
        try:
            with stop_on_signals(stop):  # the data set is built here, once, before any rank starts: a bad one is
                load_split(claimed.data)  # an error in one line, and a stop abandons the build at once
        except Interrupted as exc:
            summary = run.stopped_before_start(claimed, exc.signum)
            return Launched(0, None, summary, True)
        env = {**os.environ, LOCK_HELD_BY_PARENT: str(run.path.resolve())}
        restarts = elastic.Restarts(claimed, placement, say) if claimed.train.elastic else None
        workers, where, before = cfg.train.workers, placement, elastic.state_mark(run)
        while True:
            with growth.Growth(run, claimed, placement, where, workers, stop) as grow:
                code, failure = launch.run_ranks(
                    workers,
                    argv,
                    launcher,
                    env=env,
                    on_interrupt=run.request_stop,
                    grace_s=grace_s,
                    stop=stop,
                    placement=where,
                    rank_hosts=lambda: _hosts_of(run, workers),
                )
            if not run.exists():  # the ranks refused the run before writing anything (bad input), or never started
                return Launched(code, failure, None, False)
            summary = run.summary() or {}
            if restarts is not None and grow.grown and not code and summary.get("status") == "stopped":
                workers, where = restarts.grow(run, summary, grow.back, workers, where)  # ended to take hosts back
                argv = elastic.resume_argv(cfg.out, workers)
                continue
            ended_by_us = summary.get("status") in (None, "running")
            if not (ended_by_us and restarts is not None and not stop and elastic.state_mark(run) != before):
                break  # (a job lost before its ranks began the run is not restarted: nothing says it would start)
            cause = failure or f"{launcher} exited with status {code}"
            restart = restarts.next(run, summary, cause, workers, stop)
            if restart is None:
                failure = cause if stop else restarts.error()
                summary = {**(run.summary() or {}), "restarts": restarts.done}
                break
            workers, where = restart
            argv = elastic.resume_argv(cfg.out, workers)
        if ended_by_us:  # the ranks died or were ended before they could say how the run ended
            # asked to stop (a signal to the launcher, maybe to every process of the job at once): stopped, even
            # if mpirun had to end ranks that were slow to finish their step; else the job failed
            reason = failure or f"{launcher} exited with status {code}"
            if stop:
                reason = f"stopped by {signal_name(stop.signum)}" + (f" ({failure})" if failure else "")
            summary = {**summary, "status": "stopped" if stop else "failed", "error": reason}
            run.commit(run.metrics(), summary)
        run.stop_handled()
        return Launched(code, failure, summary, ended_by_us)
    finally:
        run.release() if run.exists() else run.abandon()


def _hosts_of(run: RunDir, workers: int) -> Optional[list]:
    """The host of each rank as the run's summary lists them, when it is of this job (as many ranks)."""
    hosts = (run.summary() or {}).get("hosts")
    return hosts if hosts and len(hosts) == workers else None


def train_or_launch(
    cfg: RunConfig,
    argv: Sequence[str],
    mode: str = "new",
    simulate: bool = False,
    hosts: Optional[str] = None,
    hostfile: Optional[str] = None,
    launcher: str = "mpirun",
    stop: Optional[StopFlag] = None,
    callbacks: Iterable[Callable[[dict], None]] = (),
    say: Callable[[str], None] = lambda line: None,
    discovery_script: Optional[str] = None,
) -> Union[dict, Launched]:
    """Train the run ``cfg`` (``mode``: "new", "resume" or "overwrite", as :meth:`RunDir.claim` takes it) where it
    belongs: in this process (one worker, a simulation of ``cfg.train.workers``, or one rank of a job someone
    started with mpirun or horovodrun), returning its summary; or, for n > 1 real workers from a plain
    process, by starting n ranks that each run ``argv`` (the same command) where ``hosts``, ``hostfile`` or
    the host discovery script ``discovery_script`` say (default: the SLURM allocation this runs in, else this
    machine), returning how that job ended (:class:`Launched`), restarted when elastic (:func:`run_on_ranks`).
    ``callbacks`` get each epoch's record where this process trains; ``say`` gets a line when ranks are
    started, and one per restart."""
    cfg.check_batch_fits()  # before ranks start and data is built
    n, inside = cfg.train.workers, launch.launched_in_parallel()
    if cfg.train.elastic and simulate:
        checks.fail("train.elastic", "real ranks (a simulation runs in one process: nothing to restart)", "--simulate")
    launching = n > 1 and not simulate and not inside
    if n > 1 and not simulate:
        resolve_backend(cfg.train.backend)  # an unknown or missing backend: one line, before ranks start
    if not inside and (launching or hosts or hostfile or discovery_script):
        where = discovery.discover(discovery_script) if discovery_script is not None else resolve(hosts, hostfile)
        where.check_workers(n)  # hosts given are checked, used or not
        network.check_hosts(where)
    if launching:
        say(f"launching {n} ranks with {launcher}" + ("" if where.is_local else f" on {where.describe()}"))
        return run_on_ranks(cfg, argv, mode, launcher, stop=stop, placement=where, say=say)
    if inside and not simulate and launch.launcher_size() != n:
        checks.fail("train.workers", f"{launch.launcher_size()}, the ranks this job was started with", n)
    from .loop import train  # heavy: TensorFlow

    return train(
        cfg, callbacks=callbacks, resume=mode == "resume", overwrite=mode == "overwrite", simulate=simulate, stop=stop
    )
