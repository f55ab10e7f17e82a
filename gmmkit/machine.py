"""Facts about the machine this process runs on: its cores, its memory, its CPU, and how TensorFlow was set up
on it.

Plain Python: the placement, the data builders, the ranks' thread counts and the benchmark all ask here, so
there is one answer to "how many cores".
"""

from __future__ import annotations

import os
import platform
from typing import Optional

from . import TENSORFLOW_IMPORTED_FIRST


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation now (``MemAvailable``; None where it is not known)."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def resident_memory() -> int:
    """Bytes of memory this process holds now (its resident set; 0 where it is not known)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_model() -> Optional[str]:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        return None


def onednn_enabled() -> Optional[bool]:
    """Whether TensorFlow runs its CPU kernels through oneDNN. TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS``
    once, when it is imported; gmmkit sets it to 1 at its own import (``gmmkit/__init__.py``) unless it is
    set already. None when TensorFlow was imported before gmmkit and the variable was unset (TensorFlow's
    own default then decides, by CPU)."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if TENSORFLOW_IMPORTED_FIRST and value is None:
        return None
    return value == "1"


def describe() -> dict:
    """Python, platform, cores, CPU model and oneDNN: what a benchmark's figures were measured on (the
    libraries' versions are :func:`gmmkit.parallel.distributed.versions`)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": available_cores(),
        "cpu": cpu_model(),
        "onednn": onednn_enabled(),
    }
