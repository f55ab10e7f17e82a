"""The phantom cache when many ranks start at once (issue 17): built once, never read half-written
(``gmmkit.data.cache.cached_build``, which the LIDC set shares)."""

import fcntl
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import killed_at_rename

from gmmkit.data.cache import key
from gmmkit.data.phantoms import GENERATOR_VERSION, PhantomSet, generate_phantoms, load_phantoms
from gmmkit.files import atomic_savez

READ = (
    "import sys; from gmmkit.data.phantoms import load_phantoms; "
    "print(float(load_phantoms(6, seed=3, cube=16).cubes.sum()), flush=True)"
)


def _path(cache, n=6, seed=3, cube=16):
    return cache / f"phantoms-{n}-{seed}-{cube}-{key(n, seed, cube, GENERATOR_VERSION)}.npz"


def _has_open(pid: int, path) -> bool:
    """Whether process ``pid`` holds ``path`` open (it opens an entry's lock file to wait on it)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # the process, or one of its descriptors, went meanwhile
        return False


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
        while not _has_open(reader.pid, str(path) + ".lock"):  # it waits for our lock, looking again and again
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


def _damaged(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped block":  # 64 bytes in the middle of the cubes: the zip's checksum tells
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped block", "empty"])
def test_a_damaged_entry_is_built_again_saying_so(tmp_path, monkeypatch, capsys, how):
    """A damaged cache entry crashed every later run (BadZipFile, CRC, EOFError); it is built again, replaced,
    and one line says so."""
    monkeypatch.setenv("GMMKIT_CACHE", str(tmp_path))
    good = load_phantoms(6, seed=3, cube=16).cubes
    _damaged(_path(tmp_path), how)
    capsys.readouterr()
    assert np.array_equal(load_phantoms(6, seed=3, cube=16).cubes, good)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and _path(tmp_path).name in err[0] and "building it again" in err[0], err
    assert np.array_equal(np.load(_path(tmp_path))["cubes"], good)  # replaced: the next read is quiet
    assert np.array_equal(load_phantoms(6, seed=3, cube=16).cubes, good) and not capsys.readouterr().err


def test_a_builder_killed_at_its_rename_leaves_no_temporary_file(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "GMMKIT_CACHE": str(cache)}
    args = ["--dataset", "phantoms", "--phantoms", "40", "--val-size", "8", "--epochs", "1", "--out", tmp_path / "r"]
    killed_at_rename("phantoms-40-", "train", *args, env=env)
    assert len(list(cache.glob(".phantoms-40-*.npz.*.tmp"))) == 1  # the killed builder's whole file, not in place
    reader = subprocess.run([sys.executable, "-c", READ.replace("(6, seed=3", "(40, seed=0")], env=env, timeout=300)
    assert reader.returncode == 0
    assert sorted(p.name for p in cache.iterdir()) == [_path(cache, 40, 0).name, _path(cache, 40, 0).name + ".lock"]
