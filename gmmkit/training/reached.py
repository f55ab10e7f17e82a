"""How far an elastic run's ranks got: rank 0's mark of the steps done, so a restart can say how many steps it
does again (``steps_redone`` in ``summary.json``'s ``restarts``, :mod:`gmmkit.training.elastic`).

The run's states say where a restart goes on from, not how far the job that failed got beyond the last of them.
So rank 0 of an elastic run keeps ``.state/reached``: the position after its last step, ``epoch step`` (epochs
finished, steps of the next one done, as :class:`~gmmkit.training.epochs.Position` counts them), written in
place after every step, one ``pwrite`` of a few bytes with no rename and no flush (a step costs milliseconds
at least; this, microseconds). It is no part of a state: the state files still change together with one
rename, and the mark only ever runs ahead of them. Each job's rank 0 writes it first at the position it
resumes from, so a mark left by an earlier job is never counted twice. A mark lost with its host (not yet on
the shared disk) reads as fewer steps, or none.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

MARK = Path(".state") / "reached"
WIDTH = 24  # "epoch step", padded: every write covers the whole file


class Reached:
    """Rank 0's mark in the run directory ``path`` (whose ``.state`` folder the first commit made)."""

    def __init__(self, path: str | os.PathLike):
        self.file = Path(path) / MARK
        self._fd: Optional[int] = None

    def mark(self, epoch: int, step: int) -> None:
        """``step`` steps of epoch ``epoch + 1`` are done (``epoch`` epochs finished before)."""
        if self._fd is None:
            self.file.parent.mkdir(exist_ok=True)
            self._fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        os.pwrite(self._fd, f"{epoch} {step}".ljust(WIDTH - 1).encode() + b"\n", 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    __del__ = close  # a fit that raised (a long-lived engine process goes on)


def read(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    """The mark in the run directory ``path`` as (epochs finished, steps of the next one), or None."""
    with contextlib.suppress(OSError, ValueError):
        epoch, step = (int(v) for v in (Path(path) / MARK).read_text().split())
        return epoch, step
    return None


def position(summary: dict) -> tuple[int, int]:
    """Where the run's committed state stands, from its ``summary``: (epochs finished, steps of the next one)."""
    at = summary.get("checkpoint_at") or {}
    return int(summary.get("epochs") or 0), int(at.get("step") or 0)


def steps_redone(path: str | os.PathLike, summary: dict) -> Optional[int]:
    """The optimiser steps the last job did beyond the committed state ``summary`` describes (lost, so done
    again by the next job): the mark less that state's position, in steps of ``summary["steps_per_epoch"]``;
    None without a mark or the steps per epoch."""
    reached, steps = read(path), summary.get("steps_per_epoch")
    if reached is None or not steps:
        return None
    epoch, step = position(summary)
    return max(0, (reached[0] - epoch) * int(steps) + reached[1] - step)
