"""A training run on an MPI cluster's engines: what runs on each engine, and the notebook's handle of it.

On every engine :func:`engine_train` calls :func:`gmmkit.training.train`; rank 0 publishes each epoch's
record with ``ipyparallel.datapub.publish_data``, which arrives in the notebook's ``AsyncResult.data``
without the notebook waiting. :class:`TrainingRun` reads those records, waits, and stops the run: Stop
writes the run directory's ``STOP`` file; the training loop checks it at every step and all ranks agree
through an allreduce, so the run ends cleanly with status ``stopped`` and the engines are free for the next
run. Functions that run on the engines import what they need themselves: they execute in the engines'
processes, where this module's globals do not travel.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional, Protocol, runtime_checkable

import ipyparallel as ipp

from ..config import RunConfig
from ..errors import InputError
from ..training.rundir import RunDir

METRIC_KEY = "epoch-{:06d}"
# After an engine died: how long mpiexec may take to end the job, and say why, before wait() raises without
# it (a rank that died alone, e.g. of an exception, leaves mpiexec running)
ENDING_S = 10.0
# After the result: how long the last streamed records (which travel apart from it) may take to arrive
OUTPUT_S = 30.0


# --- functions that run on the engines ----------------------------------------------------------


def engine_train(cfg_json: str, resume: bool = False) -> dict:
    """On every engine: train the run ``cfg_json`` describes under Horovod (``resume``: continue the run its
    folder holds from its last committed state); returns the run summary.

    Rank 0 (the only rank that calls epoch callbacks) publishes each epoch's metrics record under the key
    ``epoch-NNNNNN``; the notebook reads them from ``AsyncResult.data`` while the run goes on.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ipyparallel.datapub import publish_data

    from gmmkit.config import RunConfig
    from gmmkit.training import train

    cfg = RunConfig.from_json(cfg_json)

    def publish(record: dict) -> None:
        publish_data({METRIC_KEY.format(int(record["epoch"])): dict(record)})

    return train(cfg, callbacks=[publish], resume=resume)


# --- the notebook's handle ----------------------------------------------------------------------


@runtime_checkable
class RunHandle(Protocol):
    """What the dashboard needs of a run it started (:class:`TrainingRun` is one): its epoch records so
    far, whether it has ended, its summary once it has, and a way to ask it to stop."""

    @property
    def metrics(self) -> list[dict]: ...

    def done(self) -> bool: ...

    def wait(self, timeout: Optional[float] = None) -> dict: ...

    def stop(self, wait: bool = True, timeout: float = 30.0) -> Optional[dict]: ...


class TrainingRun:
    """A run in progress on the engines.

    ``metrics``: the epoch records rank 0 has streamed so far; ``done()``; ``wait()`` returns the summary;
    ``stop()`` ends the run after its current step (status ``stopped``), leaving the engines usable.
    ``hosts``: the host of each rank, to name it in errors; ``engine_failure``: says why the engines' MPI
    job ended, once it has (:meth:`gmmkit.cluster.MPICluster.engine_failure`), which ``wait()``
    reports as soon as it happens.
    """

    def __init__(
        self,
        cfg: RunConfig,
        results: dict,
        hosts: Optional[dict] = None,
        engine_failure: Optional[Callable[[], Optional[str]]] = None,
    ):
        if 0 not in results:
            raise InputError(
                f"results: expected one AsyncResult per rank including rank 0, received ranks {sorted(results)}"
            )
        self.cfg = cfg
        self.run_dir = RunDir(cfg.out)
        self.results = results
        self.hosts = dict(hosts or {})
        self.engine_failure = engine_failure or (lambda: None)
        self.started = time.perf_counter()
        self.stop_requested_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self._stop_pending = False  # asked before rank 0 claimed the run: asked again once it has

    def __repr__(self) -> str:
        return (
            f"TrainingRun({self.cfg.train.strategy}, workers={self.cfg.train.workers}, "
            f"epochs so far={len(self.metrics)}, {'done' if self.done() else 'running'})"
        )

    @property
    def metrics(self) -> list[dict]:
        """Epoch records streamed by rank 0 so far, in epoch order."""
        data = self.results[0].data or {}
        return [dict(data[k]) for k in sorted(data) if k.startswith("epoch-")]

    def done(self) -> bool:
        finished = all(ar.done() for ar in self.results.values())
        if finished and self.ended_at is None:
            self.ended_at = time.perf_counter()
        if self._stop_pending and not finished:  # a request names the claim that holds the run: once there is one
            self._stop_pending = not self.run_dir.request_stop()
        return finished

    def wait(self, timeout: Optional[float] = None) -> dict:
        """Wait for every rank; returns rank 0's summary. A failure on any rank, or the end of the engines' MPI
        job (a rank died, a host was lost), raises, naming the rank and its host."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            ended, job = self._failure()
            if ended:  # mpiexec ended the job (every rank is gone, whatever ipyparallel has noticed so far), or
                blocked = "" if job else "; the other ranks may be blocked"  # a rank failed and the others wait
                raise RuntimeError(
                    f"run {self.cfg.out}: {ended}; the metrics of the finished epochs are in its folder{blocked}; "
                    "restart the engines with cluster.restart()"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {self.cfg.out}: still running after {timeout} s; if ranks are stuck, "
                    "restart the engines with cluster.restart(n)"
                )
            time.sleep(0.05)
        failed = self._failures()
        if failed:
            raise RuntimeError(f"run {self.cfg.out}: {self._failed(*failed[0])}")
        # the result can arrive before rank 0's last published records; the engine's idle message follows them
        self.results[0].wait_for_output(OUTPUT_S)
        return self.results[0].get()

    def failure(self) -> Optional[str]:
        """Why the run's engines failed, once one has: the end of their MPI job in mpiexec's words (which rank on
        which host, how it ended), else the first failed rank's error; None while none has."""
        return self._failure()[0]

    def _failure(self) -> tuple[Optional[str], bool]:
        """:meth:`failure`, and whether the engines' MPI job has ended (else a rank failed and the others may wait
        in a collective forever: mpiexec, ending the job, may say more, such as which host was lost)."""
        ended = self.engine_failure()
        if ended:
            return ended, True
        failed = self._failures()
        if not failed:
            return None, False
        ended = self._job_end(ENDING_S)
        return (ended, True) if ended else (self._failed(*failed[0]), False)

    def _job_end(self, within_s: float) -> Optional[str]:
        """Why the engines' MPI job ended, waiting up to ``within_s`` for it to end."""
        deadline = time.monotonic() + within_s
        while True:
            ended = self.engine_failure()
            if ended or time.monotonic() > deadline:
                return ended
            time.sleep(0.05)

    def _failed(self, rank: int, error: str) -> str:
        host = self.hosts.get(rank)
        return f"rank {rank}{f' on {host}' if host else ''} failed: {error}"

    def stop(self, wait: bool = True, timeout: float = 30.0) -> Optional[dict]:
        """Ask the run to stop after its current step; with ``wait``, return its summary once it has."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.perf_counter()
        if not self.done():
            self._stop_pending = not self.run_dir.request_stop()
        return self.wait(timeout=timeout) if wait else None

    @property
    def summary(self) -> Optional[dict]:
        """Rank 0's summary once the run has ended, else None."""
        if not self.done() or self._failures():
            return None
        return self.results[0].get()

    @property
    def stop_seconds(self) -> Optional[float]:
        """Seconds from the stop request to the end of the run (None if not stopped or not ended)."""
        if self.stop_requested_at is None or not self.done():
            return None
        return self.ended_at - self.stop_requested_at

    def output(self, rank: int = 0) -> str:
        """What rank ``rank`` printed (stdout and stderr) so far."""
        ar = self.results[rank]
        return (ar.stdout or "") + (ar.stderr or "")

    def _failures(self) -> list[tuple[int, str]]:
        failed = []
        for rank, ar in sorted(self.results.items()):
            if ar.done():
                try:
                    ar.get(0)
                except Exception as exc:
                    failed.append((rank, _error_text(exc)))
        return failed


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ipp.error.RemoteError):
        return f"{exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}"
