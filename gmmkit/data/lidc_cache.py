"""The LIDC cube set, built at first use into gmmkit's cache and shared by every process that asks for it.

Several processes may ask at once: the ranks of an MPI job, on one host or several sharing a file system.
Exactly one builds; the others wait for it and read its file (:func:`gmmkit.files.build_once`, the same
mechanism as the phantom cache's: a lock file and an atomic rename).

The entry's name holds a key: the options, the generator version and a hash of the database's content, so
a different selection, a new generator or another database never reads a stale set.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from ..errors import DatasetError
from ..files import build_once
from .lidc import LidcOptions, LidcSet, build_lidc, options_json
from .lidc_db import database_path
from .phantoms import cache_dir


def file_digest(path: Path) -> str:
    """SHA-1 of a file's content (the database's identity in cache keys)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(options: LidcOptions, database: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_lidc` keeps the set of these options built from this database."""
    db = database_path(database)
    key = hashlib.sha1(f"{options_json(options)}|{file_digest(db)}".encode()).hexdigest()[:16]
    return cache_dir() / f"lidc-{options.cube}-{key}.npz"


def cached_build(path: Path, build: Callable[[], LidcSet]) -> tuple[LidcSet, bool]:
    """The set at ``path``, built by ``build`` and saved there if no one has yet; and whether this call built
    it. Concurrent callers (threads, processes, hosts sharing the file system) build it once between them."""
    return build_once(path, build, _read, lambda p, data: data.save(p))


def load_lidc(options: LidcOptions = LidcOptions(), database: str | os.PathLike | None = None,
              jobs: int | None = None, progress: bool = False) -> LidcSet:
    """The LIDC cube set of ``options``: read from the cache, or built there first (``jobs`` processes, by
    default one per available core). Deterministic: the same options give the same arrays."""
    options.validate()
    jobs = len(os.sched_getaffinity(0)) if jobs is None else jobs
    data, _ = cached_build(cache_path(options, database), lambda: build_lidc(options, database, jobs, progress)[0])
    return data


def _read(path: Path) -> LidcSet | None:
    """The set at ``path``, or None when there is none or it cannot be read (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return LidcSet.load(path)
    except DatasetError:
        return None
