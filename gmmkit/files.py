"""Files: atomic writes (a reader, or a crash, never sees a half-written file) and path checks.

Every file gmmkit writes goes through here: the content is written to a temporary file in the same
directory, flushed and fsynced, then renamed over the destination (``os.replace`` is atomic on POSIX).
:func:`existing_path` and :func:`writable_path` check, before any work, the paths a configuration names;
their errors carry the field (or flag) that named the path.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` atomically (the name is kept exactly, no ``.npz`` appended)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk at once."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
