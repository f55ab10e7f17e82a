"""Which collectives a job's ranks use (``train.backend``, ``--backend``), decided without importing either
library (each is heavy): ``horovod`` (:mod:`.backend_horovod`) or ``mpi`` (:mod:`.backend_mpi`), by default
Horovod where it is installed, else MPI through mpi4py."""

from __future__ import annotations

import importlib.util
from typing import Optional

from .. import checks
from ..config import BACKENDS

PROBE_KEYS = {"horovod": "horovod_s", "mpi": "mpi4py_s"}  # each backend's figure in the allreduce probe's result


def horovod_installed() -> bool:
    """True when Horovod can be imported (found, without importing it)."""
    return importlib.util.find_spec("horovod") is not None


def default_backend() -> str:
    """``horovod`` where Horovod is installed, else ``mpi``."""
    return "horovod" if horovod_installed() else "mpi"


def resolve_backend(name: Optional[str]) -> str:
    """The backend ranks use for ``train.backend`` ``name`` (None: :func:`default_backend`); refuses one that
    is unknown or not installed here (a :class:`~gmmkit.errors.ConfigError` naming ``train.backend``)."""
    if name is None:
        return default_backend()
    if name not in BACKENDS:
        checks.fail("train.backend", "one of " + ", ".join(BACKENDS), name)
    if name == "horovod" and not horovod_installed():
        checks.fail("train.backend", "a backend installed here (Horovod is not; --backend mpi needs no Horovod)", name)
    return name


def installed_backends() -> tuple:
    """The backends ranks can use here, the default first."""
    return tuple(sorted(BACKENDS, key=lambda b: b != default_backend())) if horovod_installed() else ("mpi",)


def probe_key(name: Optional[str]) -> str:
    """The key of backend ``name``'s seconds in :func:`gmmkit.parallel.distributed.allreduce_probe`'s result."""
    return PROBE_KEYS[resolve_backend(name)]
