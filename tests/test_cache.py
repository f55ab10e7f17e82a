"""The phantom cache when many ranks start at once (issue 17): built once, never read half-written
(``gmmkit.data.cache.cached_build``, which the LIDC set shares)."""

import fcntl
import os
import subprocess
import sys
import time

import numpy as np

from gmmkit.data.cache import key
from gmmkit.data.phantoms import GENERATOR_VERSION, PhantomSet, generate_phantoms, load_phantoms
from gmmkit.files import atomic_savez

READ = (
    "import sys; from gmmkit.data.phantoms import load_phantoms; "
    "print(float(load_phantoms(6, seed=3, cube=16).cubes.sum()), flush=True)"
)


def _path(cache, n=6, seed=3, cube=16):
    return cache / f"phantoms-{n}-{seed}-{cube}-{key(n, seed, cube, GENERATOR_VERSION)}.npz"


def _waits_for_a_lock(pid: int) -> bool:
    """Whether ``pid`` is blocked on a POSIX lock (``/proc/locks`` lists waiters with ``->``)."""
    with open("/proc/locks") as fh:  # "1: -> POSIX  ADVISORY  WRITE PID MAJ:MIN:INODE START END"
        rows = [line.split() for line in fh]
    return any(len(r) > 5 and r[1] == "->" and r[2] == "POSIX" and r[5] == str(pid) for r in rows)


def test_a_rank_waits_for_the_builder_and_reads_its_file(tmp_path):
    """While another process (here: the test) holds the cache entry's lock, load_phantoms neither builds nor
    reads; once the builder has renamed its file into place and released the lock, it reads that file."""
    cache = tmp_path / "cache"
    cache.mkdir()
    path = _path(cache)
    env = {**os.environ, "GMMKIT_CACHE": str(cache)}
    with open(str(path) + ".lock", "a+b") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # the test is "the builder on another host"
        reader = subprocess.Popen([sys.executable, "-c", READ], env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _waits_for_a_lock(reader.pid):  # the kernel lists it as blocked on our lock
            assert reader.poll() is None and time.monotonic() < deadline, "the reader did not wait for the lock"
            time.sleep(0.05)
        assert not path.exists()
        built = PhantomSet(
            np.full((6, 16, 16, 16), 0.25, np.float32), np.zeros(6, int), np.zeros(6, int), np.zeros(6, np.float32)
        )  # not what the generator makes: proves the reader read it
        atomic_savez(
            path, cubes=built.cubes, category=built.category, attachment=built.attachment, diameter_mm=built.diameter_mm
        )
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and float(out) == 0.25 * 6 * 16**3
    assert sorted(p.name for p in cache.iterdir()) == [path.name, path.name + ".lock"]  # nothing half-written


def test_processes_starting_at_once_build_the_set_once(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "GMMKIT_CACHE": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", READ], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    sums = {float(p.communicate(timeout=300)[0]) for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert sums == {float(generate_phantoms(6, 3, 16).cubes.sum())}
    assert sorted(p.name for p in cache.iterdir()) == [_path(cache).name, _path(cache).name + ".lock"]
    assert np.array_equal(load_phantoms(6, seed=3, cube=16, cache=False).cubes, np.load(_path(cache))["cubes"])
