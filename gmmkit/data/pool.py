"""Building data in a pool of processes: the one way gmmkit's data preparations use several cores.

A stop request (SIGINT, SIGTERM: :mod:`gmmkit.signals`) abandons the build within a fraction of a second:
the workers are ended (they ignore Ctrl-C, which a terminal sends to the whole process group, so that only
this process decides) and :class:`~gmmkit.signals.Interrupted` is raised. The pool's helper processes (the
forkserver, the resource tracker) end with this process."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from multiprocessing import forkserver
from typing import Callable, Iterator, Sequence

from tqdm.auto import tqdm

from .. import signals

POLL_S = 0.1  # how often a stop request is looked for while the workers build


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _born_deaf_to_ctrl_c():
    """While the pool's processes are started (the forkserver, whose children the workers are, or spawned
    workers), SIGINT is blocked in this thread and, from the main thread, ignored: they inherit both, so a
    terminal's Ctrl-C reaches none of them even before their initializer runs (it arrived during a worker's
    imports: a traceback, seen again under load with the mask alone). An ignored disposition survives exec, and
    Python keeps it at start-up; the forkserver hands it on to every worker it forks. A Ctrl-C that reaches this
    process meanwhile may be lost (another thread takes it, and it is ignored), so the block is kept short: the
    forkserver's start only, not the pool's (a test's Ctrl-C at the workers' start was lost that way)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    main = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _run_chunk(job: tuple) -> list:
    fn, chunk = job
    return [fn(task) for task in chunk]


def map_in_processes(fn: Callable, tasks: Sequence, jobs: int, progress: bool, what: str) -> Iterator:
    """``fn(task)`` for every task, in order: in this process when ``jobs`` is 1, else in a pool of ``jobs``
    processes (started by forkserver or spawn, so they start clean even when the caller has threads:
    TensorFlow, Jupyter, MPI). ``progress`` shows a bar counting ``what`` (a tqdm widget in a notebook)."""
    with tqdm(total=len(tasks), desc=what + "s", unit=what, disable=not progress) as bar:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                signals.check()
                yield fn(task)
                bar.update()
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        # a signal sets a flag while the pool lives (none is raised inside the pool's own machinery), and the
        # pool is ended (Pool.__exit__: terminate) on the way out, whatever ends the build
        with signals.stop_on_signals() as stop:
            # deaf to Ctrl-C only while the processes that inherit it start: the fork server (its workers are
            # forked from it later) or, with spawn, the workers themselves
            if method == "forkserver":
                with _born_deaf_to_ctrl_c():
                    forkserver.ensure_running()
            with _born_deaf_to_ctrl_c() if method == "spawn" else contextlib.nullcontext():
                pool = context.Pool(min(jobs, len(tasks)), initializer=_ignore_interrupts)
            with pool:
                size = max(1, min(8, len(tasks) // (4 * jobs)))
                chunks = [(fn, tasks[i : i + size]) for i in range(0, len(tasks), size)]
                results = pool.imap(_run_chunk, chunks)  # in order, one chunk at a time (next() can time out)
                for _ in chunks:
                    while True:
                        stop.check()
                        try:
                            done = results.next(timeout=POLL_S)
                            break
                        except multiprocessing.TimeoutError:
                            continue
                    for result in done:
                        yield result
                        bar.update()
