"""Each rank's own timings, gathered into the epoch record, so a straggler is seen and named.

Every step ends in an allreduce, so every rank's step takes the same wall time: a slow rank makes all of
them wait. Two numbers per rank go into each record: ``rank_step_s``, the mean wall time of a training step
as the rank saw it, waiting included (what the run costs; timed from the end of the epoch's first step, since
ranks start an epoch apart while rank 0 writes the run's files), and ``rank_eval_s``, the seconds per
validation sample of the rank's own forward passes, which involve no other rank (how fast that rank really
is). The slowest rank is the one with the largest ``rank_eval_s``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def per_rank(ctx, *values: float) -> list[list[float]]:
    """Each value of every rank, on every rank: ``[[value 0 of rank 0, of rank 1, ...], ...]``. One sum of
    one-hot rows through the context (an allreduce under Horovod); every rank must call it."""
    rows = np.zeros((len(values), ctx.size))
    rows[:, ctx.rank] = values
    summed = np.asarray(ctx.sum(rows.ravel())).reshape(len(values), ctx.size)
    return [[float(v) for v in row] for row in summed]


def slowest_rank(record: dict) -> Optional[int]:
    """The rank with the largest own time per sample in ``record`` (None without per-rank times)."""
    times = record.get("rank_eval_s") or record.get("rank_step_s")
    if not times:
        return None
    return int(np.argmax(times))
