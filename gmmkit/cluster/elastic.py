"""An elastic run on the notebook's MPI cluster (``train.elastic``): a run that loses an engine or a host restarts
the engines on the hosts that answer and goes on from its last committed state.

:meth:`gmmkit.cluster.MPICluster.train` returns an :class:`ElasticRun` for such a config. A thread of its own
follows the run on the engines (one :class:`~gmmkit.cluster.training_run.TrainingRun` per MPI world). When the
engines' MPI job ends under it (mpiexec says which rank on which host, and how) or a rank fails, while the run's
folder still says ``running`` after its ranks began it, the thread does what ``gmmkit train --elastic`` does, with
the same decision (:class:`gmmkit.training.elastic.Restarts`):

1. what is left of the engines is stopped (ipyparallel's ``stop_engines``: their mpiexec), which frees the run;
2. holding the run's lock, the cluster's hosts are probed (a hostfile read again), and the restart (its cause, the
   workers before and after, the hosts dropped) is committed to ``summary.json`` ``restarts``;
3. an engine set of the workers the hosts that answered hold (at least ``train.min_workers``, at most
   ``train.workers``) starts on the same controller (:meth:`MPICluster.start_engines`; the cluster keeps its own
   placement for later restarts, so a host that comes back is taken back at the next one), and every engine
   resumes the run from its last committed state (``train(..., resume=True)``);

up to ``train.max_restarts`` times: then the run ends ``failed`` with every cause (:meth:`Restarts.error`) in its
summary, and :meth:`ElasticRun.wait` raises with them. A run whose ranks ended it themselves (a failure they
recorded), or one lost before its ranks began it, is not restarted, as on the command line. Only strong scaling is
elastic (the config refuses the others): in exact mode the run ends on the bits of an uninterrupted one.

The handle is a :class:`~gmmkit.cluster.training_run.RunHandle` (``metrics``, ``done()``, ``wait()``, ``stop()``)
that also lists the restarts so far (``restarts``: the entries of ``summary.json``) and ``events``: one line when
a loss is noticed and one per restart (``restart 1/3: <cause>; going on with k of n workers ...``), which the
dashboard's status line shows (:func:`gmmkit.ui.runs.restart_news`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from ..config import RunConfig
from ..errors import RunDirError
from ..training.elastic import Restarts, state_mark
from ..training.rundir import RunDir
from .training_run import TrainingRun

if TYPE_CHECKING:  # the cluster imports this module
    from .mpi_cluster import MPICluster

# How long the lost job's ranks may keep holding the run's lock once their engines were stopped
LOCK_S = 30.0


class ElasticRun:
    """An elastic run in progress on the cluster's engines, restarted on the hosts that answer when it loses an
    engine or a host (module docstring). ``metrics``: the epochs committed before the last restart, then those
    the engines stream; ``restarts``: what ``summary.json`` lists; ``events``: a line per loss and per restart."""

    def __init__(self, cluster: "MPICluster", cfg: RunConfig):
        self.cluster, self.cfg = cluster, cfg
        self.run_dir = RunDir(cfg.out)
        self.events: list[str] = []
        self.elastic = Restarts(cfg, cluster.placement, say=self.events.append, env=cluster.engine_env())
        self._unbegun = state_mark(self.run_dir)  # the run's state before its ranks began it
        self._now: tuple[list[dict], TrainingRun] = ([], cluster.start_run(cfg))  # (committed before, engines' run)
        self._summary: Optional[dict] = None
        self._error: Optional[str] = None
        self._stopping = False
        self._thread = threading.Thread(target=self._follow, name="gmmkit-elastic", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"ElasticRun({self.cfg.train.strategy}, workers={self.workers}/{self.cfg.train.workers}, "
            f"restarts={len(self.restarts)}, epochs so far={len(self.metrics)}, "
            f"{'done' if self.done() else 'running'})"
        )

    @property
    def workers(self) -> int:
        """The workers the run goes on with now."""
        return self._now[1].cfg.train.workers

    @property
    def restarts(self) -> list[dict]:
        """The restarts so far, as ``summary.json`` lists them."""
        return list(self.elastic.done)

    @property
    def metrics(self) -> list[dict]:
        """Epoch records so far, in epoch order: those committed before the engines' last restart, then the ones
        their rank 0 streams (the records of epochs done again are the committed ones: they are equal)."""
        before, engines = self._now
        last = before[-1]["epoch"] if before else 0
        return before + [r for r in engines.metrics if r["epoch"] > last]

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> dict:
        """Wait for the run's end, through its restarts; returns rank 0's summary. A run that could not go on
        (no restart left, too few workers, a failure its ranks recorded) raises with every cause."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"run {self.cfg.out}: still running after {timeout} s ({len(self.restarts)} restarts)")
        if self._error is not None:
            raise RuntimeError(f"run {self.cfg.out}: {self._error}")
        return self._summary

    def stop(self, wait: bool = True, timeout: float = 30.0) -> Optional[dict]:
        """Ask the run to stop after its current step, and not to be restarted; with ``wait``, its summary."""
        self._stopping = True
        engines = self._now[1]
        if not engines.done():
            engines.stop(wait=False)
        return self.wait(timeout=timeout) if wait else None

    @property
    def summary(self) -> Optional[dict]:
        """Rank 0's summary once the run has ended well, else None."""
        return self._summary if self.done() and self._error is None else None

    def output(self, rank: int = 0) -> str:
        """What rank ``rank`` of the engines' current world printed so far."""
        return self._now[1].output(rank)

    # --- the thread that follows the run ---------------------------------------------------------
    def _follow(self) -> None:
        try:
            while True:
                engines = self._now[1]
                try:
                    self._summary = engines.wait()
                    return
                except RuntimeError as exc:
                    if not self._restart(engines.failure() or str(exc), str(exc)):
                        return
        except Exception as exc:  # the restart itself failed (no engines came up, the run stayed locked): said
            self._error = self._error or f"the elastic restart failed: {type(exc).__name__}: {exc}"

    def _restart(self, cause: str, error: str) -> bool:
        """The engines lost a rank (``cause``; ``error``: the run's error if it is not restarted): restart them and
        resume the run on them; False when the run ends instead (``_summary`` or ``_error`` say how)."""
        run = RunDir(self.cfg.out)
        if not self._restartable(run):  # the engines are left as they are, as a run that is not elastic leaves them
            self._error = error
            return False
        self.events.append(f"lost: {cause}; stopping the engines, probing the hosts ...")
        workers = self.workers
        self.cluster.stop_engines()
        _lock(run)
        try:
            summary = run.summary() or {}
            if not self._restartable(run):  # its rank 0 ended it just before its engine was stopped
                self._error = error
                return False
            if self._stopping:  # asked to stop: ended here, on its last committed state
                self._summary = {**summary, "status": "stopped", "error": f"stopped ({cause})"}
                run.commit(run.metrics(), self._summary)
                return False
            restart = self.elastic.next(run, summary, cause, workers)
            if restart is None:
                self._error = self.elastic.error()
                failed = {**(run.summary() or {}), "status": "failed", "error": self._error}
                run.commit(run.metrics(), {**failed, "restarts": self.elastic.done})
                return False
            before = run.metrics()
        finally:
            run.release()
        n, where = restart
        self.cluster.start_engines(n, where)
        resumed = self.cluster.start_run(self.cfg.replace(train={"workers": n}), resume=True)
        self._now = (before, resumed)
        if self._stopping:
            resumed.stop(wait=False)
        return True

    def _restartable(self, run: RunDir) -> bool:
        """Whether the run is still ``running`` after its ranks began it (else they ended it themselves, a failure
        they recorded, or it was lost before they began it: not restarted, as on the command line)."""
        return (run.summary() or {}).get("status") in (None, "running") and state_mark(run) != self._unbegun


def _lock(run: RunDir) -> None:
    """Hold the run's lock, waiting up to :data:`LOCK_S` for the stopped engines' ranks to let it go."""
    deadline = time.monotonic() + LOCK_S
    while True:
        try:
            return run.lock()
        except RunDirError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
