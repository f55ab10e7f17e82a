"""A worker count's real runs in a sweep: one mpirun job of ``python -m gmmkit.ranks batch`` trains them one after
another (:func:`run_real_batch`); in an elastic study (``study.elastic``) the batch goes on when a job loses a rank
or a host (:func:`run_batch`).

A job that ends with one of its runs still ``running`` (the ranks could not say how it ended) gets that run's
:class:`~gmmkit.training.elastic.Restarts` asked for the next job, as ``gmmkit train --elastic`` does: the hosts
are found again (a hostfile read again) and probed, the restart is committed to the run's ``summary.json``
(``restarts``) and announced in one line, and a new job resumes the run from its last committed state, then
trains the runs of the batch the lost job had not reached.

- A **strong** run goes on with the workers that the hosts that answer hold, at least ``study.min_workers``
  (on this machine: n again): its path does not depend on n, in exact mode not even in the last bit.
- **Weak, LSR and warm-up** runs grow the global batch with n: they go on with n workers or not at all. Their
  restart asks for n (their ``train.min_workers`` is n), so when the hosts that answer hold fewer, the run ends
  ``failed`` with every cause; never on fewer workers.
- The runs a lost job had not reached start on n workers on the hosts that answer a probe, or end ``failed``
  saying how many workers the hosts held.

A job lost before any of its runs committed a state is not restarted (as the launcher does not: nothing says
another would start); its runs end failed with what ended it, as in a study that is not elastic. Each run
may be restarted ``study.max_restarts`` times.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..config import RunConfig
from ..files import atomic_write_json, atomic_write_text
from ..parallel import launch
from ..parallel.placement import LOCAL, Placement
from ..signals import StopFlag
from ..training import RunDir
from ..training.elastic import Restarts, hosts_now, state_mark


def run_real_batch(
    cfgs: Sequence[RunConfig],
    workers: int,
    log: Path,
    stop: Optional[StopFlag],
    again: Sequence[bool],
    where: Placement,
) -> Optional[str]:
    """Train ``cfgs`` (all with ``workers`` workers; ``again``: which resume) one after another in one Horovod job
    placed by ``where``, its output in ``log``. Returns None when the job ended well, else what ended it, e.g.
    "rank 1 (pid 4242 on ci) was killed by SIGKILL" or "host node2 (rank 1) was lost" (mpirun then stops the
    other ranks, so the job never hangs). A stop request (``stop``, SIGINT, SIGTERM) asks every run of the batch
    to stop: the current one after its step, the rest at once."""
    log.parent.mkdir(parents=True, exist_ok=True)
    plan, stopped = log.with_suffix(".json"), log.with_suffix(".stop")
    stopped.unlink(missing_ok=True)  # an earlier job's request
    atomic_write_json(plan, [{"config": cfg.to_dict(), "resume": flag} for cfg, flag in zip(cfgs, again)])

    def stop_all() -> None:  # the batch's ranks stop at their next step, or before their next run
        atomic_write_text(stopped, "stop requested\n")
        for cfg in cfgs:
            RunDir(cfg.out).request_stop()  # the run in progress only: a stop belongs to the run asked

    try:
        code, failure = launch.run_ranks(
            workers, launch.ranks_argv("batch", str(plan)), log=log, on_interrupt=stop_all, stop=stop, placement=where
        )
    finally:
        stopped.unlink(missing_ok=True)
    if code == 0:
        return None
    return failure or f"the {workers}-rank job exited with status {code}"


def run_batch(
    cfgs: Sequence[RunConfig],
    n: int,
    log: Path,
    stop: Optional[StopFlag] = None,
    resume: Sequence[bool] = (),
    placement: Placement = LOCAL,
    elastic: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, str]:
    """Train the real runs ``cfgs`` of worker count ``n`` (:func:`run_real_batch`), carried on through lost
    jobs when ``elastic`` (module docstring; ``say`` gets one line per restart). Returns ``{run folder: why it
    did not finish}`` for each run a lost job left unfinished (empty when none)."""
    resume = list(resume) or [False] * len(cfgs)
    if not elastic:
        failure = run_real_batch(cfgs, n, log, stop, resume, placement)
        return {cfg.out: _died(failure, n, log) for cfg in cfgs} if failure else {}
    queue = list(zip(cfgs, resume))
    restarts: dict[str, Restarts] = {}
    hosts: dict[int, Placement] = {n: placement}  # where a job of so many workers goes, as last found
    left: dict[str, str] = {}
    for job_no in itertools.count(1):  # one job a turn: the runs at the head of the queue of one worker count
        if not queue or stop:
            return left
        workers = queue[0][0].train.workers
        job = list(itertools.takewhile(lambda item: item[0].train.workers == workers, queue))
        del queue[: len(job)]
        where = hosts[workers] if workers in hosts else _hosts_for(workers, placement, stop)
        if isinstance(where, str):
            left.update({cfg.out: where for cfg, _ in job})
            continue
        job_log = log if job_no == 1 else log.with_name(f"{log.stem}-job{job_no}{log.suffix}")
        marks = {cfg.out: state_mark(RunDir(cfg.out)) for cfg, _ in job}
        failure = run_real_batch([cfg for cfg, _ in job], workers, job_log, stop, [a for _, a in job], where)
        if failure is None:
            continue
        began = [item for item in job if state_mark(RunDir(item[0].out)) != marks[item[0].out]]
        lost = next((item for item in began if (RunDir(item[0].out).summary() or {}).get("status") == "running"), None)
        rest = [item for item in job if item not in began]  # not reached (or lost before their first state)
        if stop or not began:  # stopped, or lost before any run began: not restarted
            left.update({cfg.out: _died(failure, workers, job_log) for cfg, _ in [*([lost] if lost else []), *rest]})
            continue
        hosts = {}  # a host was lost, maybe: found again for the next job
        if lost is not None:
            cfg = lost[0]
            if cfg.out not in restarts:  # its config at n workers: a restart on more hosts goes back up to n
                label = f"{cfg.train.strategy} n={n}"
                restarts[cfg.out] = Restarts(cfg, placement, lambda line, label=label: say(f"{label}: {line}"))
            run = RunDir(cfg.out)
            found = restarts[cfg.out].next(run, run.summary() or {}, failure, workers, stop)
            if found is None:
                left[cfg.out] = _died(failure, workers, job_log) if stop else restarts[cfg.out].error()
            else:
                hosts[found[0]] = found[1]
                rest.insert(0, (cfg.replace(train={"workers": found[0]}), True))
        queue[:0] = rest


def _died(failure: str, n: int, log: Path) -> str:
    return f"{failure}; mpirun stopped the {n}-rank job before this run finished (see {log})"


def _hosts_for(workers: int, placement: Placement, stop: Optional[StopFlag]) -> Union[Placement, str]:
    """Where a job of ``workers`` ranks can go now: the hosts found again
    (:func:`~gmmkit.training.elastic.hosts_now`) that answer a probe, or why none can (one line)."""
    offered = hosts_now(placement)
    if offered.is_local:
        return offered
    alive = launch.alive_hosts(offered, stop=stop)
    pairs = tuple(pair for pair in offered.hosts if pair[0] in alive)
    held = sum(slots for _, slots in pairs)
    listed = ",".join(f"{name}:{slots}" for name, slots in pairs)
    if held < workers:
        return (
            f"not started: the hosts that answered ({listed or 'none'}) hold {held} of the {workers} workers it needs"
        )
    return Placement(pairs, "hosts", listed)
