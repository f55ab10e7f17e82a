"""Epoch snapshots: the weights of a few chosen epochs, so the viewer can show how a run learned.

A run keeps ``snapshots/epoch-NNNNNN.npz`` for the epochs of the 1-2-5 series (1, 2, 5, 10, 20, 50, 100,
200, 500, ...); the last epoch is the run's ``checkpoint.npz`` itself. A snapshot is a hard link to the
checkpoint of that epoch's state folder (:mod:`gmmkit.training.rundir`): making it copies nothing and the
state folder's file never changes, so the link is a complete, immutable checkpoint (weights, optimiser state,
records) readable with :func:`gmmkit.training.rundir.read_checkpoint`. A run keeps at most three per power of
ten of its epochs (8 for the paper's 400), each the size of one checkpoint once the run has moved on.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

FOLDER = "snapshots"
PATTERN = re.compile(r"^epoch-(\d{6})\.npz$")


def is_milestone(epoch: int) -> bool:
    """Whether ``epoch`` is in the 1-2-5 series (1, 2, 5, 10, 20, 50, ...)."""
    if epoch < 1:
        return False
    while epoch % 10 == 0:
        epoch //= 10
    return epoch in (1, 2, 5)


def milestones(epochs: int) -> list[int]:
    """The milestones up to ``epochs`` (what a run of that many epochs keeps besides its checkpoint)."""
    return [e for e in range(1, epochs + 1) if is_milestone(e)]


def name(epoch: int) -> str:
    return f"epoch-{epoch:06d}.npz"


def keep(run_path: Path, checkpoint: Path, epoch: int) -> Path | None:
    """Link ``checkpoint`` (the file of epoch ``epoch``'s state folder) into ``snapshots/`` when ``epoch`` is a
    milestone; returns the snapshot's path, or None. Atomic: a link under a temporary name, then a rename."""
    if not is_milestone(epoch):
        return None
    folder = run_path / FOLDER
    folder.mkdir(exist_ok=True)
    final, tmp = folder / name(epoch), folder / f".{name(epoch)}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError:  # a file system without hard links: a copy costs the same disk in the end
        shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, final)
    return final


def found(run_path: Path) -> dict[int, Path]:
    """``{epoch: path}`` of the snapshots in a run directory (empty for a run written before them)."""
    folder = run_path / FOLDER
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        match = PATTERN.match(path.name)
        if match:
            out[int(match.group(1))] = path
    return dict(sorted(out.items()))


def remove(run_path: Path) -> None:
    shutil.rmtree(run_path / FOLDER, ignore_errors=True)
