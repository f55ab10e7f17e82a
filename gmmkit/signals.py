"""Stop requests from signals: SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, SLURM's ``scancel``, job
managers) set a :class:`StopFlag` that the training loop reads at every step, so a run ends as ``stopped``
with its files consistent instead of dying mid-write. Light on purpose: the command line installs the
handlers before it loads TensorFlow, so a signal during start-up is not lost either."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """A stop request that a signal handler, a thread or a notebook button can raise. ``signum``: the first
    signal that raised it, if one did; ``count``: how many times it was raised (a second Ctrl-C means
    "now")."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: Optional[int] = None
        self.count = 0

    def set(self, signum: Optional[int] = None, _frame=None) -> None:
        if signum is not None and self.signum is None:
            self.signum = signum
        self.count += 1
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)


@contextlib.contextmanager
def stop_on_signals(flag: Optional[StopFlag] = None) -> Iterator[StopFlag]:
    """While the block runs, SIGINT and SIGTERM set ``flag`` (a new one by default) instead of ending the
    process; the previous handlers come back afterwards. Outside the main thread it only yields the flag
    (Python delivers signals to the main thread alone)."""
    flag = flag if flag is not None else StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.set) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
