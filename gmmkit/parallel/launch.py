"""Starting n ranks with mpirun (or horovodrun): the only place gmmkit starts a parallel job.

``gmmkit train --workers 4`` run from a shell re-executes itself under ``mpirun -np 4``; each rank then sees
the launcher's environment (:func:`launched_in_parallel`) and joins the Horovod job. Started by hand
(``horovodrun -np 4 gmmkit train ...`` or ``mpirun -np 4 gmmkit train ...``) it joins directly. The sweep's
batches and the benchmark's probes run ``python -m gmmkit.parallel.ranks`` the same way
(:func:`ranks_argv`). ipyparallel's MPI engines take their placement flags and environment from here too
(:func:`placement_args`, :func:`mpi_env`).

Nothing here imports TensorFlow, Horovod or MPI: a launcher process stays light.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from ..errors import LaunchError
from ..signals import StopFlag, stop_on_signals

LAUNCHERS = ("mpirun", "horovodrun")

# What launchers tell their ranks: (size variable, rank variable) pairs, the first one set wins. A process
# is a rank of a parallel job exactly when one of the size variables is set.
_LAUNCHER_ENV = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # OpenMPI's mpirun and ipyparallel's engines
                 ("HOROVOD_SIZE", "HOROVOD_RANK"),  # horovodrun with Gloo
                 ("PMI_SIZE", "PMI_RANK"),  # MPICH, Intel MPI, srun --mpi=pmi2
                 ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))  # MVAPICH


def _launcher_pair() -> Optional[tuple[str, str]]:
    return next(((size, rank) for size, rank in _LAUNCHER_ENV if size in os.environ), None)


def launched_in_parallel() -> bool:
    """True when this process is one rank of a job started by mpirun, horovodrun or ipyparallel's MPI launcher."""
    return _launcher_pair() is not None


def launcher_size() -> int:
    """The job's rank count as the launcher announced it (1 outside a parallel job)."""
    pair = _launcher_pair()
    return int(os.environ[pair[0]]) if pair else 1


def launcher_rank() -> int:
    """This process's rank as the launcher announced it (0 outside a parallel job)."""
    pair = _launcher_pair()
    return int(os.environ.get(pair[1], 0)) if pair else 0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def mpi_env(base: dict | None = None) -> dict:
    """The environment for mpirun: OpenMPI's run-as-root switches only when the user is root, and idle
    ranks that yield the CPU.

    Each rank keeps two threads busy, TensorFlow's and Horovod's background loop, which waits inside MPI.
    OpenMPI busy-polls by default, so with one core per rank the waiting thread starves the computing one;
    ``mpi_yield_when_idle`` makes it yield (``benchmarks/RESULTS.md`` has the measurement). A value already
    in the environment wins.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def placement_args(n: int) -> list[str]:
    """mpirun's placement flags for n ranks: no core binding (TensorFlow manages its own threads), ranks
    filling slots in order, and oversubscription allowed when there are more ranks than cores."""
    args = ["--bind-to", "none", "--map-by", "slot"]
    if n > available_cores():
        args.append("--oversubscribe")
    return args


def mpirun_command(n: int, argv: Sequence[str], launcher: str = "mpirun") -> list[str]:
    """The command line that runs ``argv`` (a program and its arguments) on ``n`` ranks."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, received {launcher!r}")
    exe = shutil.which(launcher) or shutil.which(launcher, path=os.path.dirname(sys.executable))
    if exe is None:
        hint = "apt-get install openmpi-bin libopenmpi-dev" if launcher == "mpirun" else "make setup"
        raise LaunchError(f"--launcher {launcher}: '{launcher}' is not on PATH ({hint})")
    if launcher == "horovodrun":
        return [exe, "-np", str(n), "--mpi", *argv]
    return [exe, "-np", str(n), *placement_args(n), *argv]


def gmmkit_argv(*args: str) -> list[str]:
    """``python -m gmmkit ARGS`` with this interpreter, for the ranks."""
    return [sys.executable, "-m", "gmmkit", *args]


def ranks_argv(*args: str) -> list[str]:
    """``python -m gmmkit.parallel.ranks ARGS``: the program of every other job (sweep batches, probes)."""
    return [sys.executable, "-m", "gmmkit.parallel.ranks", *args]


# What OpenMPI's mpirun prints when a rank dies (signal) or fails (non-zero exit) and it ends the job.
_SIGNALLED = re.compile(r"process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+)")
_EXITED = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(\d+)")


def rank_failure(launcher_output: str) -> Optional[str]:
    """Which rank ended an mpirun job and how, from what mpirun printed (None when it does not say)."""
    m = _SIGNALLED.search(launcher_output)
    if m:
        rank, pid, node, sig = m.groups()
        try:
            name = signal.Signals(int(sig)).name
        except ValueError:
            name = f"signal {sig}"
        return f"rank {rank} (pid {pid} on {node}) was killed by {name}"
    m = _EXITED.search(launcher_output)
    if m:
        return f"rank {m.group(1)} exited with status {m.group(2)}"
    return None


def run_ranks(n: int, argv: Sequence[str], launcher: str = "mpirun", env: dict | None = None,
              on_interrupt: Optional[Callable[[], None]] = None, grace_s: float = 120.0,
              log: str | os.PathLike | None = None, stop: Optional[StopFlag] = None) -> tuple[int, Optional[str]]:
    """Run ``argv`` on ``n`` ranks and wait; returns the launcher's exit code and, when a rank died or
    failed, which one (:func:`rank_failure`). The ranks' output passes through unchanged, or goes to
    ``log`` (stdout and stderr together) when given.

    mpirun ends the whole job as soon as one rank dies, so the others never hang in an allreduce. It runs
    in a session of its own, so a terminal's Ctrl-C reaches only this process, and it dies with this
    process (``PR_SET_PDEATHSIG``): no job is ever left running without its launcher.

    SIGINT and SIGTERM (or ``stop``, a flag they set): the first calls ``on_interrupt`` (``gmmkit train``
    asks the run to stop after its current step) and waits up to ``grace_s`` for the job to end; a second
    signal, or the end of the grace, ends the job (SIGTERM to mpirun, which ends its ranks)."""
    cmd = mpirun_command(n, argv, launcher)
    tail: collections.deque = collections.deque(maxlen=400)
    sink = open(log, "w") if log is not None else None
    try:
        with stop_on_signals(stop) as interrupted:
            proc = subprocess.Popen(cmd, env=mpi_env(env), stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                    preexec_fn=_die_with_parent)

            def forward():
                for line in proc.stderr:
                    (sink or sys.stderr).write(line)
                    (sink or sys.stderr).flush()
                    tail.append(line)

            reader = threading.Thread(target=forward, daemon=True)
            reader.start()
            code = _wait(proc, interrupted, on_interrupt, grace_s)
            reader.join(timeout=5)
    finally:
        if sink is not None:
            sink.close()
    return code, (rank_failure("".join(tail)) if code else None)


def _wait(proc: subprocess.Popen, interrupted: StopFlag, on_interrupt, grace_s: float) -> int:
    """Wait for ``proc``, handling stop requests as :func:`run_ranks` describes."""
    deadline = None
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        if interrupted and deadline is None:
            deadline = time.monotonic() + grace_s
            if on_interrupt is not None:
                on_interrupt()
                print(f"stopping after the current step (up to {grace_s:.0f} s; Ctrl-C again to end the job now)",
                      file=sys.stderr, flush=True)
        if deadline is not None and (interrupted.count > 1 or time.monotonic() > deadline or on_interrupt is None):
            proc.terminate()  # mpirun ends its ranks
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (even of SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def run_json(n: int, argv: Sequence[str], timeout: float = 600) -> dict:
    """Run a probe (``argv``) on ``n`` ranks and return the JSON object its rank 0 printed on a line."""
    cmd = mpirun_command(n, argv)
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")

