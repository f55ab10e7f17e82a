"""The LIDC cube set, built at first use into gmmkit's cache and shared by every process that asks for it
(:func:`gmmkit.data.cache.cached_build`: built once, never read half-written). The entry's name holds a key:
the options, the generator version and a hash of the database's content, so a different selection, a new
generator or another database never reads a stale set.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..machine import available_cores
from .cache import cache_dir, cached_build, file_digest, key
from .cubes import CubeSet
from .lidc import LidcOptions, build_lidc, options_json
from .lidc_db import database_path


def cache_path(options: LidcOptions, database: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_lidc` keeps the set of these options built from this database."""
    return cache_dir() / f"lidc-{options.cube}-{key(options_json(options), file_digest(database_path(database)))}.npz"


def load_lidc(
    options: LidcOptions = LidcOptions(),
    database: str | os.PathLike | None = None,
    jobs: int | None = None,
    progress: bool = False,
) -> CubeSet:
    """The LIDC cube set of ``options``: read from the cache, or built there first (``jobs`` processes, by
    default one per available core). Deterministic: the same options give the same arrays."""
    options.validate()
    jobs = available_cores() if jobs is None else jobs
    build = lambda: build_lidc(options, database, jobs, progress)[0]  # noqa: E731
    return cached_build(cache_path(options, database), build, _read, CubeSet.save)[0]


def _read(path: Path) -> CubeSet | None:
    """The set at ``path``, None when there is none; raises when it cannot be read (it is then rebuilt)."""
    return CubeSet.load(path) if path.is_file() else None
