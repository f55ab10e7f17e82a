"""gmmkit's cache of built data sets, shared by every process that asks for them at once.

Several processes may ask for the same set at once: the ranks of an MPI job, on one host or on several that
share a file system. Exactly one builds it; the others wait and read its file. Two mechanisms make it safe:

* the file is written to a temporary name and renamed into place (:mod:`gmmkit.files`), so a reader sees
  no file or the whole file, never part of one;
* the builder holds an exclusive POSIX lock (``lockf``, which NFS carries to the server, unlike ``flock``
  on some systems) on a sibling ``.lock`` file; whoever finds no file takes the lock, looks again (someone
  may have finished meanwhile) and builds only if there is still none.

An entry's name carries a key of everything its content depends on, so a stale entry is never read. An
entry that cannot be read (a truncated file, a damaged block: the zip's checksums catch it) is built again;
a builder that was killed leaves its temporary file, which the next builder removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .. import signals

T = TypeVar("T")
_THREADS = threading.Lock()
LOCK_POLL_S = 0.1  # how often a process waiting for another builder looks again (and for a stop request)


def cache_dir() -> Path:
    """Where built sets are cached: ``$GMMKIT_CACHE`` or ``~/.cache/gmmkit``."""
    return Path(os.environ.get("GMMKIT_CACHE") or Path.home() / ".cache" / "gmmkit")


def key(*parts: object) -> str:
    """A short hash of ``parts`` for an entry's name."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """SHA-1 of a file's content (an input's identity in a key)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_build(
    path: Path, build: Callable[[], T], load: Callable[[Path], Optional[T]], save: Callable[[T, Path], None]
) -> tuple[T, bool]:
    """The entry at ``path`` (``load`` gives None when there is none, and raises when it cannot read it),
    else ``build()`` saved there with ``save`` (atomically); and whether this call built it. Concurrent callers
    (threads, processes, hosts sharing the file system) build it once between them. An entry that cannot be
    read (a truncated or damaged file) is built again, and replaced, saying so in one line on stderr. A
    read-only or full cache is no error: the set is then built in memory. A stop request while waiting for
    another builder, or while building, abandons the call (:class:`~gmmkit.signals.Interrupted`)."""
    found, damage = _load(path, load)
    if found is not None:
        return found, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path.with_name(path.name + ".lock"), "a+b")
    except OSError:
        return build(), True
    # POSIX locks belong to the process, so threads of one process take turns on a lock of their own first
    with _THREADS, lock_file:
        _lock(lock_file)  # waits for a builder elsewhere; closing the file releases it
        found, damage = _load(path, load)
        if found is not None:
            return found, False
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # what a killed builder left (we hold the lock)
            stale.unlink(missing_ok=True)
        if damage:
            print(f"gmmkit: the cached data set {path} is unreadable ({damage}); building it again", file=sys.stderr)
        data = build()
        with contextlib.suppress(OSError):
            save(data, path)
        return data, True


def _load(path: Path, load: Callable[[Path], Optional[T]]) -> tuple[Optional[T], Optional[str]]:
    """``load(path)``, or None and why the entry could not be read."""
    try:
        return load(path), None
    except Exception as exc:  # BadZipFile (truncated, bad CRC), EOFError (empty), ValueError, a DatasetError
        return None, str(exc).removeprefix(f"{path}: ") or type(exc).__name__


def _lock(lock_file) -> None:
    """Take the entry's lock, looking for a stop request while another process builds."""
    while True:
        try:
            fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        signals.check()
        time.sleep(LOCK_POLL_S)
