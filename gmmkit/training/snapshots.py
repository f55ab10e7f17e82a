"""Epoch snapshots: the weights of a few chosen epochs, so the viewer can show how a run learned.

A run keeps ``snapshots/epoch-NNNNNN.npz`` for the epochs of the 1-2-5 series (1, 2, 5, 10, 20, 50, 100,
200, 500, ...); the last epoch is the run's ``checkpoint.npz`` itself. A snapshot holds the weights and the
epoch, in the checkpoint's layout (:func:`gmmkit.training.state.read_checkpoint` reads it, with no optimiser
state): a third of a checkpoint, since Adam's two moments are of no use to a viewer. It is written by rank 0
when that epoch's state is committed, atomically, a few times per run (never inside the step loop). A run
keeps at most three per power of ten of its epochs: 8 for the paper's 400.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from ..files import atomic_savez

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


def keep(run_path: Path, checkpoint: dict) -> Path | None:
    """Write the weights of ``checkpoint`` (``{"weights", "epoch", "time_s", ...}``) to ``snapshots/`` when its
    epoch is a milestone; returns the snapshot's path, or None."""
    epoch = int(checkpoint["epoch"])
    if not is_milestone(epoch):
        return None
    folder = run_path / FOLDER
    folder.mkdir(exist_ok=True)
    arrays = {f"w{i:04d}": w for i, w in enumerate(checkpoint["weights"])}
    atomic_savez(folder / name(epoch), epoch=np.int64(epoch), time_s=np.float64(checkpoint["time_s"]), **arrays)
    return folder / name(epoch)


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
