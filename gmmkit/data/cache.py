"""gmmkit's cache of built data sets, shared by every process that asks for them at once.

Several processes may ask for the same set at once: the ranks of an MPI job, on one host or on several that
share a file system. Exactly one builds it; the others wait and read its file. Two mechanisms make it safe:

* the file is written to a temporary name and renamed into place (:mod:`gmmkit.files`), so a reader sees
  no file or the whole file, never part of one;
* the builder holds an exclusive POSIX lock (``lockf``, which NFS carries to the server, unlike ``flock``
  on some systems) on a sibling ``.lock`` file; whoever finds no file takes the lock, looks again (someone
  may have finished meanwhile) and builds only if there is still none.

An entry's name carries a key of everything its content depends on, so a stale entry is never read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
_THREADS = threading.Lock()


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
    """The entry at ``path`` (``load`` gives None when it is missing or unreadable), else ``build()`` saved
    there with ``save`` (atomically); and whether this call built it. Concurrent callers (threads,
    processes, hosts sharing the file system) build it once between them. A read-only or full cache is no
    error: the set is then built in memory."""
    found = load(path)
    if found is not None:
        return found, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path.with_name(path.name + ".lock"), "a+b")
    except OSError:
        return build(), True
    # POSIX locks belong to the process, so threads of one process take turns on a lock of their own first
    with _THREADS, lock_file:
        fcntl.lockf(lock_file, fcntl.LOCK_EX)  # waits for a builder elsewhere; closing the file releases it
        found = load(path)
        if found is not None:
            return found, False
        data = build()
        with contextlib.suppress(OSError):
            save(data, path)
        return data, True
