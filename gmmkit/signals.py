"""Stop requests from signals: SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, SLURM's ``scancel``, job
managers).

Work that keeps what it did (a training run, a sweep) runs inside :func:`stop_on_signals`: a signal sets a
:class:`StopFlag` that its loops read, so a run ends as ``stopped`` with its files consistent instead of dying
mid-write. Work that is thrown away when stopped (a data build, a learning-rate range test, a calibration)
calls :func:`check` at its steps, which raises :class:`Interrupted` once the innermost flag is raised: the
work is abandoned whole, its temporary files removed on the way out. Outside any such block
:func:`raise_on_signals` (the command line's default) makes SIGTERM what Ctrl-C is, an exception
(:class:`Interrupted`) that unwinds the command and its clean-ups; :func:`deferred` keeps it out of the few
steps that must not be cut in two (a rename and its bookkeeping). Light on purpose: the command line
installs the handlers before it loads TensorFlow, so a signal during start-up is not lost either."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: Optional[int]) -> str:
    """``SIGTERM``, or "a stop request" for a flag raised by no signal."""
    if not signum:
        return "a stop request"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """Work abandoned because of a stop request (``signum``: the signal that asked, if one did). A
    :class:`KeyboardInterrupt`, so that ``except Exception`` clauses (a run recorded as failed, a sweep going
    on with its next run) let it pass."""

    def __init__(self, signum: Optional[int] = None):
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


class StopFlag:
    """A stop request that a signal handler, a thread or a notebook button can raise. ``signum``: the first
    signal that raised it, if one did; ``count``: how many times it was raised (a second Ctrl-C means
    "now"). :meth:`watch` adds a condition (a file's presence) that raises it when read."""

    def __init__(self):
        self._event = threading.Event()
        self._watched: list[Callable[[], bool]] = []
        self.signum: Optional[int] = None
        self.count = 0

    def set(self, signum: Optional[int] = None, _frame=None) -> None:
        if signum is not None and self.signum is None:
            self.signum = signum
        self.count += 1
        self._event.set()

    def watch(self, condition: Callable[[], bool]) -> "StopFlag":
        """Also count as raised once ``condition()`` is true (read whenever the flag is)."""
        self._watched.append(condition)
        return self

    def __bool__(self) -> bool:
        if not self._event.is_set() and any(condition() for condition in self._watched):
            self._event.set()
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise :class:`Interrupted` when the flag is raised."""
        if self:
            raise Interrupted(self.signum)


_ACTIVE: list[StopFlag] = []  # the flags of the stop_on_signals blocks open in the main thread, innermost last


def active() -> Optional[StopFlag]:
    """The flag of the innermost :func:`stop_on_signals` block, if one is open."""
    return _ACTIVE[-1] if _ACTIVE else None


def check() -> None:
    """At a step of work that is abandoned whole when stopped: raise :class:`Interrupted` when the innermost
    :func:`stop_on_signals` block's flag is raised (outside any, a signal raises by itself)."""
    flag = active()
    if flag is not None:
        flag.check()


@contextlib.contextmanager
def stop_on_signals(flag: Optional[StopFlag] = None) -> Iterator[StopFlag]:
    """While the block runs, SIGINT and SIGTERM set ``flag`` (by default the enclosing block's, else a new one)
    instead of ending the process; the previous handlers come back afterwards. Outside the main thread it
    only yields the flag (Python delivers signals to the main thread alone)."""
    flag = flag if flag is not None else (active() or StopFlag())
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.set) for s in SIGNALS}
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)
        for s, handler in previous.items():
            signal.signal(s, handler)


_DEFERRED = {"depth": 0, "pending": None}


def _raise(signum, _frame=None) -> None:
    flag = active()
    if flag is not None:  # the enclosing block's work learns of the stop too
        flag.set(signum)
    if _DEFERRED["depth"]:
        _DEFERRED["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """While the block runs (the main thread only), SIGINT and SIGTERM raise :class:`Interrupted` wherever the
    program is, as Ctrl-C raises :class:`KeyboardInterrupt`: ``finally`` and ``except BaseException`` clauses
    clean up on the way out (and the enclosing :func:`stop_on_signals` block's flag is raised too). For work
    that is thrown away whole when stopped, also inside TensorFlow's tracing, which no :func:`check` reaches.
    The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred(then_raise: bool = True) -> Iterator[None]:
    """A step that must not be cut in two (a rename and its bookkeeping): under :func:`raise_on_signals`, a
    signal that arrives meanwhile raises when the block ends (``then_raise``), not inside it; or not at all
    (a step that completes the work: the command then ends as it would have a moment later)."""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        if not _DEFERRED["depth"] and _DEFERRED["pending"] is not None:
            signum, _DEFERRED["pending"] = _DEFERRED["pending"], None
            if then_raise:
                raise Interrupted(signum)
