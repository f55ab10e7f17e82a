"""Elastic strong scaling (``gmmkit train --elastic``): what the launcher does when a job loses a rank or a host.

:func:`gmmkit.training.launcher.run_on_ranks` starts the ranks; when the job ends with the run still
``running`` (a rank died, a host was lost: the ranks could not say how the run ended) and the run is elastic,
it asks :meth:`Restarts.next` for the next job: the hosts are found again (a hostfile is read again, so a host
put back in it, or one that came back, is taken back), each is probed (:func:`gmmkit.parallel.launch.alive_hosts`),
the dead are dropped, and the run is resumed from its last committed state on the slots of those that answered
(at least ``train.min_workers``, at most ``train.workers``), up to ``train.max_restarts`` times. Then the run
ends ``failed`` with every cause (:meth:`Restarts.error`). A job short of workers takes back the hosts that
come back at its next checkpoint (:mod:`.growth`, :meth:`Restarts.grow`): listed with the restarts
(``"grown": true``), not counted against ``train.max_restarts``.

Only strong scaling is elastic (:class:`~gmmkit.config.TrainConfig` refuses the others): its path does not
depend on the worker count, and in exact mode not even in the last bit, so a run that lost a host ends with
the weights of an uninterrupted one. The MPI job is restarted rather than kept alive with Horovod's elastic
API, which needs horovodrun with Gloo, catches the failure only inside a step, and resets the state from a
copy in memory (the README says more).

Every restart is committed to ``summary.json`` (``restarts``) before the next job starts; the resumed ranks keep
the list (:class:`~gmmkit.training.trainer.Trainer`), so a reader always sees every restart so far.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Optional

from ..config import RunConfig
from ..errors import InputError
from ..parallel import discovery, launch
from ..parallel.placement import Placement, parse_hostfile
from ..signals import StopFlag
from . import reached
from .rundir import RunDir
from .summary import restart_line


def state_mark(run: RunDir) -> Optional[str]:
    """Which committed state the run directory holds (where its ``state`` link points; None before any): a
    job whose ranks began the run changes it."""
    try:
        return os.readlink(run.state.link)
    except OSError:
        return None


def resume_argv(out: str, workers: int) -> list[str]:
    """The ranks' command of a restart: ``gmmkit train --resume`` of the run in ``out`` (its own config.json)
    on ``workers`` ranks."""
    return launch.gmmkit_argv("train", "--resume", "--out", out, "--workers", str(workers))


def hosts_now(given: Placement) -> Placement:
    """The hosts a restart may use: the hostfile as it reads now, the hosts the discovery script prints now
    (unreadable, failing: as at the start), else the hosts given (``--hosts``, the SLURM allocation, this
    machine)."""
    with contextlib.suppress(InputError, OSError):
        if given.source == "hostfile":
            return parse_hostfile(given.origin)
        if given.source == "discovery":
            return discovery.discover(given.origin, allow_empty=True)
    return given


class Restarts:
    """The restarts of one elastic run: ``done`` (what ``summary.json`` lists), every job's ``causes``, and
    why the last job was not restarted (``refused``)."""

    def __init__(
        self,
        cfg: RunConfig,
        placement: Placement,
        say: Callable[[str], None] = lambda line: None,
        env: Optional[dict] = None,
    ):
        """``env``: what the liveness probes start with on top of this process's environment (the notebook
        cluster's own settings, a site's launch agent: the engines' environment), so they start as the job does."""
        self.cfg, self.placement, self.say, self.env = cfg, placement, say, env
        self.done: list[dict] = []
        self.causes: list[str] = []
        self.refused: Optional[str] = None

    def next(
        self, run: RunDir, summary: dict, cause: str, workers: int, stop: Optional[StopFlag] = None
    ) -> Optional[tuple[int, Placement]]:
        """The job of ``workers`` ranks ended on ``cause`` with the run's ``summary`` still ``running``: the
        workers and the placement of the restart, committed to ``summary.json`` first; None when there is
        none (:attr:`refused` says why; a stop request: None and nothing refused)."""
        failed, began = time.time(), time.monotonic()
        self.causes.append(cause)
        t = self.cfg.train
        if self.losses >= t.max_restarts:
            self.refused = f"train.max_restarts={t.max_restarts} reached"
            return None
        offered = hosts_now(self.placement)
        alive = launch.alive_hosts(offered, stop=stop, env={**os.environ, **self.env} if self.env else None)
        if stop:
            return None
        if offered.is_local:
            where, n = offered, t.workers  # this machine: the lost rank is started again here
        else:
            pairs = tuple(pair for pair in offered.hosts if pair[0] in alive)
            n = min(t.workers, sum(slots for _, slots in pairs))
            if n < t.min_workers:
                answered = ", ".join(f"{name}:{slots}" for name, slots in pairs) or "none"
                self.refused = (
                    f"the hosts that answered ({answered}) hold {n} of the train.min_workers={t.min_workers} "
                    "workers needed"
                )
                return None
            # named host by host, also inside a SLURM allocation (mpirun takes --host as a subset of it)
            source = offered.source if offered.source == "hostfile" else "hosts"
            where = Placement(pairs, source, offered.origin if source == "hostfile" else _host_list(pairs))
        entry = self._entry(
            run, summary, cause, (workers, n), where, [name for name in offered.names if name not in alive], failed
        )
        entry["probe_s"] = round(time.monotonic() - began, 3)
        self._commit(run, summary, entry, failed)
        self.say(restart_line(entry, t.max_restarts))
        return n, where

    def grow(
        self, run: RunDir, summary: dict, back: list[str], workers: int, where: Placement
    ) -> tuple[int, Placement]:
        """The job of ``workers`` ranks on ``where`` ended ``stopped`` to take back the hosts ``back``
        (:mod:`.growth`): the workers and the placement of the next job, on those hosts and the job's, committed
        to ``summary.json`` first. Not counted against ``train.max_restarts``."""
        ended, t = time.time(), self.cfg.train
        offered, keep = hosts_now(self.placement), {*where.names, *back}
        pairs = tuple(p for p in offered.hosts if p[0] in keep) + tuple(
            p for p in where.hosts if p[0] not in offered.names
        )
        n = min(t.workers, sum(slots for _, slots in pairs))
        after = Placement(pairs, "hosts", _host_list(pairs))
        cause = f"host{'s' if len(back) > 1 else ''} {', '.join(back)} came back"
        entry = {**self._entry(run, summary, cause, (workers, n), after, [], ended), "grown": True}
        self._commit(run, {**summary, "status": "running"}, entry, ended)
        self.say(restart_line(entry))
        return n, after

    @property
    def losses(self) -> int:
        """The restarts after a loss so far (a growth is not one)."""
        return sum(1 for entry in self.done if not entry.get("grown"))

    def _entry(
        self, run: RunDir, summary: dict, cause: str, counts: tuple, where: Placement, dropped: list, at: float
    ) -> dict:
        """A restart's entry in ``summary.json``: when the job ended (``at``), why, the workers and hosts before
        and after."""
        workers, n = counts
        return {
            "restart": len(self.done) + 1,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
            "cause": cause,
            "workers_before": workers,
            "workers_after": n,
            "hosts_before": summary.get("hosts") or self.placement.host_of_ranks(workers),
            "hosts_after": where.host_of_ranks(n),
            "dropped": dropped,
            # where the next job goes on from (the committed state), and the steps the ended job did beyond it
            "from_epoch": reached.position(summary)[0],
            "from_step": reached.position(summary)[1],
            "steps_redone": reached.steps_redone(run.path, summary),
        }

    def _commit(self, run: RunDir, summary: dict, entry: dict, ended: float) -> None:
        """Add ``entry`` with the training since the last committed state, done again (``lost_s``: the job
        ended at ``ended``), and commit it."""
        try:
            since = ended - os.lstat(run.state.link).st_mtime
        except OSError:
            since = None
        entry["lost_s"] = round(since, 3) if since is not None else None
        self.done.append(entry)
        run.commit(run.metrics(), {**summary, "restarts": self.done})

    def error(self) -> str:
        """Every job's cause and why the run was not restarted again, in one line."""
        causes = "; ".join(f"({i}) {c}" for i, c in enumerate(self.causes, 1))
        ended = f"the job ended {len(self.causes)} time{'s' if len(self.causes) > 1 else ''}: {causes}"
        return ended + (f"; not restarted: {self.refused}" if self.refused else "")


def _host_list(pairs: tuple) -> str:
    return ",".join(f"{name}:{slots}" for name, slots in pairs)
