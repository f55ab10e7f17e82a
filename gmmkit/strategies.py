"""The paper's four scaling strategies (Section IV) as pure functions of (strategy, n, B, eta, epoch).

============  =======================  ===============================================
strategy      global batch             learning rate
============  =======================  ===============================================
``strong``    B, split over n workers  eta
``weak``      n B (B per worker)       eta
``lsr``       n B                      n eta (linear scaling rule, Goyal et al.)
``warmup``    n B                      eta rising linearly to n eta over the first
                                       ``warmup_epochs`` epochs, then n eta
============  =======================  ===============================================

Sample order does not depend on n: each epoch draws one permutation from ``(seed, epoch)``, consecutive
global batches are cut from it (the last partial batch is dropped), and worker r takes the r-th share of
each global batch. Under strong scaling with n not dividing B the shares differ by one; the update stays the
sequential one because each worker contributes ``sum of its per-sample gradients / global batch`` and the
contributions are summed (see :mod:`gmmkit.training`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("strong", "weak", "lsr", "warmup")


@dataclass(frozen=True)
class StepPlan:
    """What every worker does at one point of training."""

    strategy: str
    workers: int
    global_batch: int
    shares: tuple[int, ...]  # samples per worker, summing to global_batch
    lr: float

    def offset(self, rank: int) -> int:
        """Where worker ``rank``'s share starts inside the global batch."""
        return sum(self.shares[:rank])


def _check(strategy: str, n: int, base_batch: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, received {strategy!r}")
    if n < 1:
        raise ValueError(f"workers: expected a positive integer, received {n!r}")
    if base_batch < 1:
        raise ValueError(f"batch_size: expected a positive integer, received {base_batch!r}")
    if strategy == "strong" and n > base_batch:
        raise ValueError(
            f"workers: strong scaling splits the batch of {base_batch} samples, so at most "
            f"{base_batch} workers, received {n}"
        )


def global_batch(strategy: str, n: int, base_batch: int) -> int:
    _check(strategy, n, base_batch)
    return base_batch if strategy == "strong" else n * base_batch


def shares(strategy: str, n: int, base_batch: int) -> tuple[int, ...]:
    """Samples per worker: B split as evenly as possible (strong) or B each (the others)."""
    _check(strategy, n, base_batch)
    if strategy != "strong":
        return (base_batch,) * n
    q, r = divmod(base_batch, n)
    return tuple(q + 1 if i < r else q for i in range(n))


def learning_rate(strategy: str, n: int, base_lr: float, epoch: float, warmup_epochs: int = 5) -> float:
    """Learning rate at (possibly fractional) ``epoch``, counted from 0."""
    if strategy in ("strong", "weak"):
        return base_lr
    if strategy == "lsr":
        return n * base_lr
    if strategy == "warmup":
        if warmup_epochs <= 0:
            return n * base_lr
        frac = min(max(epoch / warmup_epochs, 0.0), 1.0)
        return base_lr + (n * base_lr - base_lr) * frac
    raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, received {strategy!r}")


def plan(
    strategy: str, n: int, base_batch: int, base_lr: float, epoch: float = 0.0, warmup_epochs: int = 5
) -> StepPlan:
    """Global batch, per-worker shares and learning rate of ``strategy`` with ``n`` workers at ``epoch``."""
    parts = shares(strategy, n, base_batch)
    return StepPlan(strategy, n, sum(parts), parts, learning_rate(strategy, n, base_lr, epoch, warmup_epochs))


def steps_per_epoch(n_samples: int, global_batch_size: int) -> int:
    """Whole global batches in one pass (the last partial batch is dropped)."""
    return n_samples // global_batch_size


def epoch_permutation(seed: int, epoch: int, n_samples: int) -> np.ndarray:
    """The sample order of ``epoch``: the same on every worker and for every worker count."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_samples)


def worker_indices(perm: np.ndarray, step_plan: StepPlan, step: int, rank: int) -> np.ndarray:
    """Indices of the samples worker ``rank`` processes at ``step`` of the epoch with order ``perm``."""
    start = step * step_plan.global_batch + step_plan.offset(rank)
    return perm[start : start + step_plan.shares[rank]]
