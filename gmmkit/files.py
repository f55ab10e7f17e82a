"""Files: atomic writes (a reader, or a crash, never sees a half-written file) and path checks.

Every file gmmkit writes goes through here: the content is written to a temporary file in the same
directory, flushed and fsynced, then renamed over the destination (``os.replace`` is atomic on POSIX). Files
get the permissions the user's umask gives (secrets such as ipyparallel's connection files are made
owner-only where they are written). JSON is strict: NaN and infinities are written as ``null``.
:func:`replace_folder` replaces a whole folder of results at once, so old and new files never mix.
:func:`existing_path` and :func:`writable_path` check, before any work, the paths a configuration names;
their errors carry the field (or flag) that named the path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .signals import deferred


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with deferred():  # a signal (gmmkit.signals) cannot fall between making the file and knowing its name
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600; a result file follows the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (parsers that reject NaN read it): non-finite floats become ``null``."""
    return json.dumps(_finite(obj), indent=indent, sort_keys=True, default=_json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, which races with threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` atomically (the name is kept exactly, no ``.npz`` appended)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Write a whole JSONL file atomically, one strict JSON object per line."""
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a JSONL file (a torn last line, from a crash, is ignored)."""
    records = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _path_error(field: str, detail: str) -> InputError:
    return InputError(f"{field}: {detail}", field=field, detail=detail)


def existing_path(field: str, path: str | os.PathLike, kind: str = "file") -> Path:
    """``path`` checked to be an existing ``kind`` ("file" or "folder"); ``field`` names who asked for it."""
    p = Path(path)
    if not p.exists():
        raise _path_error(field, f"{path}: no such {kind}")
    if p.is_dir() != (kind == "folder"):
        raise _path_error(field, f"{path}: expected a {kind}, found a {'folder' if p.is_dir() else 'file'}")
    return p


def writable_path(field: str, path: str | os.PathLike, kind: str = "folder") -> Path:
    """``path`` checked without creating anything: a ``kind`` ("file" or "folder") that exists or can be
    created, in a folder this process may write."""
    p = Path(path).absolute()
    existing = next(q for q in (p, *p.parents) if q.exists())
    if existing == p:
        if p.is_dir() != (kind == "folder"):
            raise _path_error(field, f"{path}: expected a {kind}, found a {'folder' if p.is_dir() else 'file'}")
        where = p if kind == "folder" else p.parent
    elif not existing.is_dir():
        raise _path_error(field, f"{path}: expected a {kind} that can be created, but {existing} is a file")
    else:
        where = existing
    if not os.access(where, os.W_OK | os.X_OK):
        raise _path_error(field, f"{path}: cannot write in {where} (permission denied)")
    return p


def _earlier_output(path: Path, owned: str, overwrite: bool, field: str) -> bool:
    """Whether ``path`` holds an earlier output of the command that writes ``owned`` there (and may be
    replaced: ``overwrite``); raises for a folder of other files, or an earlier output without
    ``overwrite``."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    if not path.is_dir() or not (path / owned).exists():
        raise _path_error(
            field,
            f"{path}: holds files that are not an earlier output of this command (no "
            f"{owned}); choose an empty or new folder",
        )
    if not overwrite:
        raise _path_error(
            field, f"{path}: holds an earlier output ({owned}); choose a new folder, or pass --overwrite to replace it"
        )
    return True


def fresh_folder(path: str | os.PathLike, owned: str, overwrite: bool = False, field: str = "out") -> Path:
    """``path`` as an empty folder for a command's results: new or empty, or holding this command's earlier
    output (marked by the file ``owned``), which ``overwrite`` removes as a whole. Anything else is refused,
    naming ``field``: a user's other files are never deleted, and old and new results never mix."""
    path = Path(path)
    if _earlier_output(path, owned, overwrite, field):
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike, owned: str, overwrite: bool = False, field: str = "out") -> Iterator[Path]:
    """Write a folder of results as a whole: yields an empty staging folder beside ``path``; when the block
    ends well, the staging folder takes ``path``'s place (an earlier output there, which needs
    ``overwrite``, is removed), else it is removed and ``path`` stays as it was. The rules of
    :func:`fresh_folder` apply."""
    path = Path(path)
    _earlier_output(path, owned, overwrite, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        with deferred():  # a signal (gmmkit.signals) cannot fall between making the folder and knowing its name
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        staging.chmod(0o777 & ~umask())
        yield staging
        # the swap is never cut in two (the earlier output is never left aside); a signal during it comes after
        # the work is done, and the command ends as it would have a moment later
        with deferred(then_raise=False):
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, old / path.name)
            os.replace(staging, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (``.NAME.*.tmp``); call it
    only while no other process writes there. Returns what was removed."""
    found = sorted(Path(folder).glob(".*.tmp"))
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found
