"""An elastic run takes back the hosts that come back (``gmmkit train --elastic``, issue 27).

While a job of an elastic run has fewer ranks than ``train.workers`` (it lost a host, :mod:`.elastic`), a
:class:`Growth` thread of the launcher finds the hosts again every :data:`POLL_S` seconds, as a restart does
(:func:`.elastic.hosts_now`: the hostfile read again, the host discovery script run again, the SLURM
allocation's or ``--hosts``' nodes), and probes those not in the job (:func:`gmmkit.parallel.launch.alive_hosts`).
When some answer, it asks the ranks to end at the next checkpoint: with ``--checkpoint-every`` at once (a
stop request, which the ranks vote on inside a step, ends the run ``stopped`` after that step with the step's
state committed: nothing is done again); without, once the next epoch's end is committed (the state the
ranks would resume from), so that at most the steps between that end and the ranks reading the request are
done again. The launcher then resumes the run from that state on the job's hosts and those that came back
(:meth:`.elastic.Restarts.grow`): listed in ``summary.json``'s restarts, not counted against
``train.max_restarts``. Strong scaling's path does not depend on the worker count, so in exact mode the run
still ends on the uninterrupted run's bits.

A stop asked by someone else (a signal to the launcher, ``gmmkit stop``) is never taken for a growth: the
watcher asks nothing while one is pending and notices one written after its own (the ``STOP`` file changed).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Optional

from ..config import RunConfig
from ..parallel import launch
from ..parallel.placement import Placement
from ..signals import StopFlag
from . import elastic
from .rundir import RunDir

POLL_S = 3.0  # how often the hosts are found again while the job runs short of workers


class Growth:
    """The watcher of one job of ``workers`` ranks placed on ``where``, for an elastic run ``cfg`` whose hosts
    were given as ``given``: a context manager around the job. :attr:`back` lists the hosts that came back,
    :attr:`grown` says whether the job was ended to take them back."""

    def __init__(
        self,
        run: RunDir,
        cfg: RunConfig,
        given: Placement,
        where: Placement,
        workers: int,
        stop: Optional[StopFlag] = None,
        poll_s: float = POLL_S,
    ):
        self.run, self.cfg, self.given, self.where, self.workers = run, cfg, given, where, workers
        self.stop, self.poll_s = stop if stop is not None else StopFlag(), poll_s
        self.back: list[str] = []
        self.requested = False  # the ranks were asked to end for the growth
        self.overruled = False  # someone else asked the run to stop too
        self._ours: Optional[int] = None  # the STOP file this watcher wrote (its mtime_ns)
        self._quit = StopFlag()
        self._thread: Optional[threading.Thread] = None

    @property
    def active(self) -> bool:
        t = self.cfg.train
        return t.elastic and not self.where.is_local and self.workers < t.workers

    @property
    def grown(self) -> bool:
        """The job was ended to take back :attr:`back`, and nobody else asked the run to stop."""
        return self.requested and not self.overruled and not self.stop

    def __enter__(self) -> "Growth":
        if self.active:
            self._thread = threading.Thread(target=self._watch, name="gmmkit-growth", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._quit.set()  # abandons a probe in progress
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _watch(self) -> None:
        every = self.cfg.train.checkpoint_interval is not None
        mark = None
        while not self._quit.wait(self.poll_s) and not self.stop:
            if self.requested:
                self._overruled()
                continue
            if not self.back:
                self.back = self._came_back()
                mark = elastic.state_mark(self.run)
                if not self.back or not every:  # without mid-epoch states: wait for the next one committed
                    continue
            elif elastic.state_mark(self.run) == mark:
                continue
            if self.run.stop_requested():  # someone else's stop is pending: it is theirs, not a growth
                self.overruled = True
                return
            if self.run.request_stop():
                self.requested = True
                self._ours = self._stop_file()

    def _came_back(self) -> list[str]:
        """The hosts offered now, not in the job, that answer the liveness probe."""
        with contextlib.suppress(Exception):  # the thread never ends the launcher: a failed look finds none
            offered = elastic.hosts_now(self.given)
            new = tuple(pair for pair in offered.hosts if pair[0] not in self.where.names)
            if new:
                probe = Placement(new, "hosts", ",".join(f"{name}:{slots}" for name, slots in new))
                alive = launch.alive_hosts(probe, stop=self._quit)
                return [name for name, _ in new if name in alive]
        return []

    def _stop_file(self) -> Optional[int]:
        try:
            return self.run.stop_path.stat().st_mtime_ns
        except OSError:
            return None

    def _overruled(self) -> None:
        """After the request: a ``STOP`` written since (not the one this watcher wrote) is someone's stop."""
        now = self._stop_file()
        if now is not None and now != self._ours:
            self.overruled = True
