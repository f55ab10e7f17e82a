"""Building data in a pool of processes: the one way gmmkit's data preparations use several cores."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Callable, Iterator, Sequence

from tqdm.auto import tqdm


def map_in_processes(fn: Callable, tasks: Sequence, jobs: int, progress: bool, what: str) -> Iterator:
    """``fn(task)`` for every task, in order: in this process when ``jobs`` is 1, else in a pool of ``jobs``
    processes (started by forkserver or spawn, so they start clean even when the caller has threads:
    TensorFlow, Jupyter, MPI). ``progress`` shows a bar counting ``what`` (a tqdm widget in a notebook)."""
    with tqdm(total=len(tasks), desc=what + "s", unit=what, disable=not progress) as bar:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(tasks)), context) as pool:
            for result in pool.map(fn, tasks, chunksize=max(1, min(8, len(tasks) // (4 * jobs)))):
                yield result
                bar.update()
